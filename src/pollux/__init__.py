"""pollux: Lux models of stellar spectra and labels, in JAX."""

from . import data, datasets, models
from .fit import FitResult, LatentPosterior
from .models import LuxModel

__version__ = "0.1.0"

__all__ = [
    "FitResult",
    "LatentPosterior",
    "LuxModel",
    "__version__",
    "data",
    "datasets",
    "models",
]
