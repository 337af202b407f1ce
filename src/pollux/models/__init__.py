"""The model layer: `LuxModel`, its transforms, and the drivers of its fitting calls."""

from . import transforms
from ._results import FitResult, LatentPosterior
from .cannon import CannonModel
from .lux import LuxModel
from .trained import Labels, TrainedModel, load, model_file_info

__all__ = [
    "CannonModel",
    "FitResult",
    "Labels",
    "LatentPosterior",
    "LuxModel",
    "TrainedModel",
    "load",
    "model_file_info",
    "transforms",
]
