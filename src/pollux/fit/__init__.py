"""Fitting: numpyro MAP (`optimize`) and the closed-form path (`fit`)."""

from ._results import FitResult, LatentPosterior

__all__ = ["FitResult", "LatentPosterior"]
