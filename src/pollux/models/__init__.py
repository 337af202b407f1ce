"""The model layer: `LuxModel`, `CannonModel` and `TrainedModel`, thin objects over
the fitting layer (`pollux.fit`) and the file format (`pollux.io`)."""

from ..fit import FitResult, LatentPosterior
from . import transforms
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
