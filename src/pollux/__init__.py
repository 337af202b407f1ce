"""pollux: Lux models of stellar spectra and labels, in JAX."""

from . import data, datasets, fit, models, validation
from .models import (
    CannonModel,
    FitResult,
    LatentPosterior,
    LuxModel,
    TrainedModel,
    load,
)

__version__ = "0.1.0"

__all__ = [
    "CannonModel",
    "FitResult",
    "LatentPosterior",
    "LuxModel",
    "TrainedModel",
    "__version__",
    "data",
    "datasets",
    "fit",
    "load",
    "models",
    "validation",
]
