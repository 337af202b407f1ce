"""Drivers of `LuxModel.infer_latents` and `LuxModel.predict`: plan → the
back-end's posterior or predictive (affine outputs), or the Gauss–Newton and
exact polynomial moments (`pollux.fit.polynomial`) in memory."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ..data import OutputData, PolluxData
from ._affine import affine_params
from ._plan import plan_posterior, plan_predict
from ._results import LatentPosterior
from ._setup import on_device
from .backends import select
from .checks import blocks_for
from .polynomial import polynomial_thetas, posterior_polynomial, predictive_polynomial

if TYPE_CHECKING:
    from ._protocol import Model

__all__ = ["infer_latents", "predict"]


def infer_latents(
    model: Model,
    data: PolluxData,
    params: Mapping[str, Any],
    names: str | Iterable[str] | None,
    chunk_size: int | None = None,
    devices: Any = None,
) -> LatentPosterior:
    """`LuxModel.infer_latents` of any `Model`."""
    plan = plan_posterior(model, data, params, names, chunk_size, devices)
    if plan.variational:  # Dask data are read into memory here
        blocks = blocks_for(model, data, plan.names, plan.fixed, plan.call)
        thetas, kinds, s2s = polynomial_thetas(
            model, plan.fixed, plan.names, blocks[0].values.dtype
        )
        mean, cov, flags = posterior_polynomial(blocks, thetas, s2s, kinds, plan.k)
        return LatentPosterior(mean, cov, flags)
    affine = affine_params(model, plan.fixed, plan.names, plan.dtype)
    mean, cov = select(plan).posterior(plan, model, data, affine)
    return LatentPosterior(mean, cov)


def predict(
    model: Model,
    posterior: LatentPosterior,
    params: Mapping[str, Any],
    names: str | Iterable[str] | None,
    param_cov: Mapping[str, Any] | None = None,
    chunk_size: int | None = None,
    devices: Any = None,
) -> PolluxData:
    """`LuxModel.predict` of any `Model`."""
    plan, row_covs = plan_predict(
        model, posterior, params, names, param_cov, chunk_size, devices
    )
    mean, cov = posterior.mean, posterior.cov
    if plan.lazy and (plan.variational or plan.mesh is not None):
        # Dask posteriors serve affine outputs on the default device; others
        # are computed into memory.
        mean, cov = on_device(mean), on_device(cov)
    if plan.variational:
        thetas, kinds, s2s = polynomial_thetas(
            model, plan.fixed, plan.names, plan.dtype
        )
        out = {}
        for name, theta, kind, s2 in zip(plan.names, thetas, kinds, s2s, strict=True):
            C = row_covs.get(name)
            mu, err = predictive_polynomial(
                mean, cov, theta, s2, None if C is None else C.astype(plan.dtype), kind
            )
            out[name] = OutputData(mu, err=err, preprocessed=True)
        return PolluxData(**out)
    affine = affine_params(model, plan.fixed, plan.names, plan.dtype)
    predicted = select(plan).predictive(plan, mean, cov, affine, row_covs)
    return PolluxData(
        **{
            name: OutputData(mu, err=err, preprocessed=True)
            for name, (mu, err) in predicted.items()
        }
    )
