"""The transforms in one place: those of `pollux.transforms` and the observation
transforms of `pollux.observation` (Doppler shift, continuum)."""

from ..observation import ContinuumTransform, DopplerTransform
from ..transforms import *  # noqa: F403
from ..transforms import __all__ as _base

__all__ = [*_base, "ContinuumTransform", "DopplerTransform"]
