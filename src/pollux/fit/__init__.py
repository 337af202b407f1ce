"""The fitting layer: the drivers of every fitting call and their results.

The drivers take any object with a ``latent_size`` and ``outputs`` (`Model`);
`pollux.models` builds its public objects on them.
"""

from ._calibrate import calibrate
from ._em import fit_em
from ._optimize import optimize_map
from ._posterior import infer_latents, predict
from ._protocol import Definition, Model, RefittableModel
from ._results import FitResult, LatentPosterior

__all__ = [
    "Definition",
    "FitResult",
    "LatentPosterior",
    "Model",
    "RefittableModel",
    "calibrate",
    "fit_em",
    "infer_latents",
    "optimize_map",
    "predict",
]
