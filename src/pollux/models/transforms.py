"""Old home of the transforms (`pollux.transforms`), kept importable here."""

from ..transforms import *  # noqa: F403
from ..transforms import __all__  # noqa: F401
