"""Results of the closed-form path (kept importable here: `pollux.fit.FitResult`)."""

from ..models._results import FitResult, LatentPosterior

__all__ = ["FitResult", "LatentPosterior"]
