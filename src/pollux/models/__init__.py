"""The model layer: `LuxModel`, its transforms, and the drivers of its fitting calls."""

from . import transforms
from ._results import FitResult, LatentPosterior
from .cannon import CannonModel
from .lux import LuxModel

__all__ = ["CannonModel", "FitResult", "LatentPosterior", "LuxModel", "transforms"]
