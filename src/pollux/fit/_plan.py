"""One checked plan per call: the arguments of `fit`, `infer_latents` or
`predict` checked in one pass (before any tracing) and frozen into a `Plan`;
`pollux.fit.backends.select` then picks the back-end from it."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from .._params import check_positive_int, names_with_params, without_latents
from ..data.values import is_lazy
from ._results import LatentPosterior
from ._setup import on_device
from .backends import check_devices
from .checks import (
    check_data,
    check_latents_shape,
    check_output,
    check_params,
    require_data,
    require_scatter,
    require_stars,
    resolve_names,
)
from .polynomial import n_row_features, require_polynomial, uses_quadratic

if TYPE_CHECKING:
    from ._protocol import Model

__all__ = ["Plan", "plan_fit", "plan_posterior", "plan_predict"]


@dataclasses.dataclass(frozen=True)
class Plan:
    """What one call will do, checked.

    Attributes
    ----------
    call
        The public call, for messages (``"LuxModel.fit"``).
    names
        The outputs used, in order.
    k
        The latent size.
    dtype
        The data's (or the posterior's) float type.
    variational
        Whether an output is not affine in the latents (variational EM, in
        memory on one device or sharded; Gauss–Newton posteriors on one).
    lazy
        Whether the stars are in Dask arrays.
    mesh
        The device mesh of ``devices=`` (None: the default device).
    chunk_size
        Stars per chunk of the data passes (None: from the memory budget).
    fixed
        The checked fixed parameters of a fit, or the parameters of a
        posterior or prediction.
    """

    call: str
    names: tuple[str, ...]
    k: int
    dtype: Any
    variational: bool
    lazy: bool
    mesh: Any
    chunk_size: int | None
    fixed: Mapping[str, Any]


def _outputs(
    model: Model, names: Any, call: str, available: Iterable[str] | None = None
) -> tuple[tuple[str, ...], bool]:
    """The outputs a call uses (checked, and polynomial in the latents), and
    whether one of them is not affine (the variational path)."""
    names = resolve_names(model, names, call, available)
    require_polynomial(model, names, call)
    return names, uses_quadratic(model, names)


def _chunk_size(chunk_size: Any, call: str) -> int | None:
    if chunk_size is not None:
        check_positive_int(chunk_size, f"{call}(chunk_size=...)")
    return chunk_size


def _mesh(devices: Any, variational: bool, call: str):
    """The device mesh of ``devices=`` (None: one device), checked; the
    posteriors and predictions of outputs that are not affine run on one."""
    mesh = check_devices(devices, call)
    if mesh is not None and variational:
        msg = (
            f"{call}(devices=...): with a QuadraticTransform output this call "
            "runs on one device (fit shards it); leave devices=None"
        )
        raise ValueError(msg)
    return mesh


def plan_fit(
    model: Model,
    data: Any,
    *,
    fixed_params: Any,
    names: Any,
    max_iter: Any,
    tol: Any,
    chunk_size: Any,
    devices: Any,
    call: str = "LuxModel.fit",
) -> Plan:
    """The checked plan of `LuxModel.fit` (the checks that need no values)."""
    data = check_data(data, call)
    names, variational = _outputs(model, names, call, data.names)
    check_positive_int(max_iter, f"{call}(max_iter=...)")
    chunk_size = _chunk_size(chunk_size, call)
    mesh = check_devices(devices, call)
    if isinstance(tol, bool) or not (isinstance(tol, (int, float)) and tol >= 0):
        msg = f"{call}(tol=...): expected a number >= 0, got {tol!r}"
        raise ValueError(msg)
    fixed = check_params(model, fixed_params, len(data), call)
    return _data_plan(
        model, data, names, fixed, variational, mesh, chunk_size, call, fit=True
    )


def plan_posterior(
    model: Model,
    data: Any,
    params: Any,
    names: Any,
    chunk_size: Any,
    devices: Any,
    call: str = "LuxModel.infer_latents",
) -> Plan:
    """The checked plan of `LuxModel.infer_latents`."""
    data = check_data(data, call)
    chunk_size = _chunk_size(chunk_size, call)
    names, variational = _outputs(model, names, call, data.names)
    mesh = _mesh(devices, variational, call)
    params = check_params(
        model, without_latents(params), len(data), call, "params", required=names
    )
    plan = _data_plan(
        model, data, names, params, variational, mesh, chunk_size, call, fit=False
    )
    require_scatter(model, params, names, call)
    return plan


def _data_plan(
    model, data, names, fixed, variational, mesh, chunk_size, call, *, fit: bool
) -> Plan:
    """The `Plan` of a call on ``data``: stars to work on, each output's size and
    variance checked, and for a posterior (in memory) something observed to
    infer from; a fit counts each output where its back-end placed the data."""
    for name in names:
        check_output(model, name, data[name], fixed, call)
    if fit:
        require_stars(len(data), call)
    else:
        require_data(data, names, call, each=False)
    return Plan(
        call=call,
        names=names,
        k=model.latent_size,
        dtype=data[names[0]].data.dtype,
        variational=variational,
        lazy=any(data[name].lazy for name in names),
        mesh=mesh,
        chunk_size=chunk_size,
        fixed=fixed,
    )


def _check_param_cov(
    model: Model, param_cov: Any, names: tuple[str, ...], call: str
) -> dict[str, Any]:
    if param_cov is None:
        return {}
    if not isinstance(param_cov, Mapping):
        msg = f"{call}(param_cov=...): expected a dict such as FitResult.param_cov"
        raise TypeError(msg)
    k = model.latent_size
    out = {}
    for name, C in param_cov.items():
        if name not in names:
            continue
        t = model.outputs[name]
        kt = n_row_features(t, k)
        shape = (t.output_size, kt, kt)
        if tuple(np.shape(C)) != shape:
            msg = (
                f"{call}(param_cov[{name!r}]): expected shape {shape}, "
                f"got {tuple(np.shape(C))}"
            )
            raise ValueError(msg)
        out[name] = on_device(C)
    return out


def plan_predict(
    model: Model,
    posterior: LatentPosterior,
    params: Any,
    names: str | Iterable[str] | None,
    param_cov: Any,
    chunk_size: Any,
    devices: Any,
    call: str = "LuxModel.predict",
) -> tuple[Plan, dict[str, Any]]:
    """The checked plan of `LuxModel.predict` and the row covariances to use."""
    chunk_size = _chunk_size(chunk_size, call)
    if not isinstance(posterior, LatentPosterior):
        msg = (
            f"{call}(posterior=...): expected a LatentPosterior (from "
            f"LuxModel.infer_latents or LuxModel.fit), got {type(posterior).__name__}"
        )
        raise TypeError(msg)
    check_latents_shape(model, posterior.mean, None, f"{call}(posterior.mean)")
    require_stars(posterior.mean.shape[0], call, "posterior")
    if names is None:
        names = names_with_params(model.outputs, params, call)
    names, variational = _outputs(model, names, call)
    params = check_params(
        model, without_latents(params), None, call, "params", required=names
    )
    row_covs = _check_param_cov(model, param_cov, names, call)
    require_scatter(model, params, names, call)
    plan = Plan(
        call=call,
        names=names,
        k=model.latent_size,
        dtype=posterior.mean.dtype,
        variational=variational,
        lazy=is_lazy(posterior.mean),
        mesh=_mesh(devices, variational, call),
        chunk_size=chunk_size,
        fixed=params,
    )
    return plan, row_covs
