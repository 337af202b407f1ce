"""``pollux.demo``: the study behind ``pollux demo``, kept importable under its old
name. It lives in `pollux.studies.underestimated`."""

from .studies.underestimated import *  # noqa: F403
from .studies.underestimated import __all__  # noqa: F401
