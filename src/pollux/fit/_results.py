"""Immutable results of the closed-form path."""

from __future__ import annotations

from typing import Any

import equinox as eqx
from jaxtyping import Array, Bool, Float

__all__ = ["FitResult", "LatentPosterior"]


class LatentPosterior(eqx.Module):
    """Gaussian posterior of each star's latents: ``mean`` (N, K), ``cov`` (N, K, K).

    ``multimodal`` (N,) flags stars whose posterior has a second mode nearly as
    probable as the one described (only outputs quadratic in the latents can
    produce one; None when not checked).
    """

    mean: Float[Array, "n_stars k"]
    cov: Float[Array, "n_stars k k"]
    multimodal: Bool[Array, " n_stars"] | None = None

    def __check_init__(self):
        n, k = self.mean.shape
        if self.cov.shape != (n, k, k):
            msg = (
                f"LatentPosterior: cov must have shape ({n}, {k}, {k}) to match "
                f"mean {self.mean.shape}, got {self.cov.shape}"
            )
            raise ValueError(msg)

    def __len__(self) -> int:
        return int(self.mean.shape[0])

    def __getitem__(self, index: Any) -> LatentPosterior:
        flags = None if self.multimodal is None else self.multimodal[index]
        return LatentPosterior(self.mean[index], self.cov[index], flags)


class FitResult(eqx.Module):
    """Outcome of `LuxModel.fit`.

    Attributes
    ----------
    params
        Nested parameters ``{output: {name: array}, "latents": (N, K)}`` (the
        latents are the posterior means), the same layout as `LuxModel.optimize`.
    posterior
        The latent posterior at the final parameters.
    losses
        Objective before each iteration and, last, at the returned parameters:
        negative log marginal likelihood plus negative log prior of the free
        parameters (with fixed latents: negative log likelihood plus prior).
        EM never increases it.
    n_iter
        Number of EM iterations run.
    converged
        Whether the objective's change per iteration fell below the tolerance.
    param_cov
        ``{output: (n_dim, m, m)}``: covariance of each row of the fitted
        transform's weights given the training latents (zero where fixed): the rows
        ``(A_d, b_d)`` of affine outputs (``m = k + 1``, or ``k`` without offset),
        the feature weights ``θ_d`` of quadratic ones (``m = (k+1)(k+2)/2``; see
        `pollux.core.features`).
        Pass it to `LuxModel.predict` to include the uncertainty of the trained
        transforms in predictions.
    settings
        The arguments of the `LuxModel.fit` call that produced it (``names``,
        ``max_iter``, ``tol``, ``accelerate``, and the names of the fixed
        parameters), so that a refit (e.g. `LuxModel.calibrate`) can repeat it.
    calibration
        Empty for a plain fit; `LuxModel.calibrate` records here what it changed.
    stats
        What the fit ran on and what it cost there: ``backend`` (``"local"``,
        ``"sharded"`` or ``"dask"``), ``devices``; for Dask data ``workers``
        (groups of chunks), ``passes`` over the data, and the ``bytes_sent``
        (parameters) and ``bytes_received`` (sums) by the client. Not stored in
        model files.
    """

    params: dict[str, Any]
    posterior: LatentPosterior
    losses: Float[Array, " n"]
    n_iter: int = eqx.field(static=True)
    converged: bool = eqx.field(static=True)
    param_cov: dict[str, Any] = eqx.field(default_factory=dict)
    settings: dict[str, Any] = eqx.field(default_factory=dict, static=True)
    calibration: dict[str, Any] = eqx.field(default_factory=dict, static=True)
    stats: dict[str, Any] = eqx.field(default_factory=dict, static=True)
