"""Driver of `LuxModel.fit`: plan → problem → the back-end's loop → `FitResult`.

Every fit runs on a back-end (`pollux.fit.backends`): the EM of affine outputs,
or, for a fit with an output that is not affine, the variational EM of
`pollux.core.vem`, started from the converged fit of its affine view on the same
back-end.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from .._params import LATENTS, SCATTER, check_positive_int, without_latents
from ..core import em, vem
from ..data import PolluxData
from ..io import Checkpoint, fingerprint
from ._plan import Plan, plan_fit
from ._protocol import Definition
from ._results import FitResult, LatentPosterior
from ._run import run
from ._setup import em_problem, on_device
from .backends import select
from .checks import blocks_for, fully_fixed, require_observed
from .polynomial import output_params, polynomial_thetas, vem_problem

if TYPE_CHECKING:
    from ._protocol import Model

__all__ = ["fit_em"]

_CHUNK = 10  # EM iterations per compiled call (one host sync per chunk)
# Natural-gradient updates of the latent posteriors per variational sweep: one
# (each sweep's M-step moves the parameters anyway; 2,000 APOGEE-like stars,
# quadratic K = 6: 42 SQUAREM cycles with one, 41 with five, same objective and
# held-out RMSE, 101 s against 158 s), and five in the final E-step.
_INNER = 1
_FINAL_INNER = 5


def _checkpoint(
    checkpoint: Any, every: Any, quadratic: bool, digest, call: str
) -> Checkpoint | None:
    """The `Checkpoint` of ``fit(checkpoint=..., checkpoint_every=...)``, checked
    (``digest()`` gives the fit's fingerprint)."""
    check_positive_int(every, f"{call}(checkpoint_every=...)")
    if checkpoint is None:
        return None
    if not isinstance(checkpoint, (str, os.PathLike)):
        msg = (
            f"{call}(checkpoint=...): expected a file path, got "
            f"{type(checkpoint).__name__}"
        )
        raise TypeError(msg)
    if quadratic:
        msg = (
            f"{call}(checkpoint=...): checkpoints serve fits of affine outputs "
            "only; leave checkpoint=None with a QuadraticTransform output"
        )
        raise ValueError(msg)
    return Checkpoint(checkpoint, every, digest(), call)


def fit_em(
    model: Model,
    data: PolluxData,
    *,
    fixed_params: Mapping[str, Any] | None,
    names: str | Iterable[str] | None,
    max_iter: int,
    tol: float,
    progress: bool,
    accelerate: bool,
    chunk_size: int | None = None,
    devices: Any = None,
    checkpoint: Any = None,
    checkpoint_every: int = 10,
    start: Any = None,
) -> FitResult:
    """`LuxModel.fit` of any `Model` (its docstring describes the arguments)."""
    plan = plan_fit(
        model,
        data,
        fixed_params=fixed_params,
        names=names,
        max_iter=max_iter,
        tol=tol,
        chunk_size=chunk_size,
        devices=devices,
    )
    settings = {
        "names": plan.names,
        "max_iter": max_iter,
        "tol": tol,
        "accelerate": accelerate,
        "fixed": tuple(sorted(plan.fixed)),
    }
    ckpt = _checkpoint(
        checkpoint,
        checkpoint_every,
        plan.variational,
        lambda: fingerprint(
            model,
            plan.names,
            plan.fixed,
            [data[name].shape for name in plan.names],
            plan.dtype,
            accelerate,
        ),
        plan.call,
    )
    loop = partial(
        run,
        max_iter=max_iter,
        tol=tol,
        progress=progress,
        call=plan.call,
        checkpoint=ckpt,
    )
    _check_start(start, model, plan, len(data))
    if plan.variational:
        return _fit_vem(model, data, plan, settings, loop, start)
    return _fit_affine(model, data, plan, settings, loop, accelerate)


def _check_start(start: Any, model: Model, plan: Plan, n: int) -> None:
    """Refuse a ``start=`` that the fit of ``plan`` cannot start from."""
    call = f"{plan.call}(start=...)"
    if start is None:
        return
    if not isinstance(start, FitResult):
        msg = f"{call}: expected the FitResult of a fit, got {type(start).__name__}"
        raise TypeError(msg)
    if not plan.variational:
        msg = (
            f"{call}: a start serves fits with an output that is not affine "
            "(QuadraticTransform); affine fits start from PCA. Leave start=None"
        )
        raise ValueError(msg)
    if LATENTS in plan.fixed:
        msg = f"{call}: the latents are fixed; leave start=None"
        raise ValueError(msg)
    shape = tuple(start.posterior.mean.shape)
    if shape != (n, model.latent_size):
        msg = (
            f"{call}: its posterior has shape {shape}, expected ({n}, "
            f"{model.latent_size}): a fit of these stars with this latent size"
        )
        raise ValueError(msg)
    for name in plan.names:
        p = start.params.get(name)
        if p is not None and model.outputs[name].scatter_prior is not None:
            if SCATTER not in p:
                msg = f"{call}: params[{name!r}] has no extra scatter 's'"
                raise ValueError(msg)


def _fit_affine(model, data, plan: Plan, settings, loop, accelerate) -> FitResult:
    """The EM of affine outputs on the back-end of ``plan``: prepare, start,
    sweep until settled, final state."""
    backend = select(plan)
    prepared = backend.prepare(
        plan,
        model,
        data,
        lambda blocks, size, z_fixed: em_problem(
            model,
            plan.names,
            blocks,
            plan.fixed,
            plan.call,
            fixed_latents=z_fixed,
            chunk_size=size,
        ),
    )
    _require_observed(model, plan, prepared.observed)
    params, losses, n_iter, converged = loop(
        backend.sweeps(prepared, _CHUNK, accelerate),
        lambda: backend.start(prepared),
        prepared.params,
        n_obs=prepared.n_obs,
    )
    final = backend.final(prepared, params)
    out: dict[str, Any] = {k: dict(v) for k, v in without_latents(plan.fixed).items()}
    for name, spec, p in zip(plan.names, prepared.problem.specs, params, strict=True):
        entry = {"A": p["A"]}
        if spec.has_b:
            entry["b"] = p["b"]
        if spec.has_s:
            entry[SCATTER] = p[SCATTER]
        out[name] = entry
    out[LATENTS] = final.mean
    return FitResult(
        params=out,
        posterior=LatentPosterior(final.mean, final.cov),
        losses=_all_losses(losses, final.loss),
        n_iter=n_iter,
        converged=converged,
        param_cov=dict(zip(plan.names, final.row_covs, strict=True)),
        settings=settings,
        stats=backend.stats(prepared),
    )


def _require_observed(model: Model, plan: Plan, observed: tuple[int, ...]) -> None:
    """Refuse a fit with an output of which no value is observed (counted
    where the back-end placed the data: Dask data in its first pass)."""
    counts = dict(zip(plan.names, observed, strict=True))
    require_observed(counts, plan.call, each=True, fixed=fully_fixed(model, plan.fixed))


def _all_losses(losses: list, final_loss: Any) -> jax.Array:
    """The objective before each iteration and, last, at the returned parameters."""
    return jax.device_put(np.concatenate([*losses, np.asarray(final_loss)[None]]))


def _affine_twin(model: Model, names: Iterable[str]) -> Definition:
    """The model with each output of ``names`` replaced by its affine view
    (e.g. ``Q = 0``)."""
    views = {name: model.outputs[name].affine_view() for name in names}
    return Definition(model.latent_size, views)


def _affine_start(model: Model, data: PolluxData, plan: Plan, settings) -> FitResult:
    """The converged fit of the model's affine twin (`_affine_twin`), on the same
    devices: the start of the variational EM."""
    twin = _affine_twin(model, plan.names)
    twin_fixed = {}
    for name in plan.names:
        if name in plan.fixed:
            kept = (*twin.outputs[name].param_names, SCATTER)
            twin_fixed[name] = {p: v for p, v in plan.fixed[name].items() if p in kept}
    return fit_em(
        twin,
        data,
        fixed_params=twin_fixed,
        names=plan.names,
        max_iter=settings["max_iter"],
        tol=settings["tol"],
        progress=False,
        accelerate=settings["accelerate"],
        chunk_size=plan.chunk_size,
        devices=None if plan.mesh is None else list(plan.mesh.devices.flat),
    )


def _given_start(model: Model, data: PolluxData, plan: Plan, start: FitResult):
    """The parameters and latent posterior of ``start`` (e.g. a fit of the flux
    alone); the outputs it did not fit start from an unweighted regression of
    their affine views on its latents (`pollux.core.em.initialize`)."""
    mean = start.posterior.mean
    fitted = {n: dict(start.params[n]) for n in plan.names if n in start.params}
    others = tuple(n for n in plan.names if n not in fitted)
    if others:
        twin = _affine_twin(model, others)
        blocks = blocks_for(twin, data, others, {}, plan.call)
        dtype = blocks[0].values.dtype
        problem, params = em_problem(
            twin, others, blocks, {}, plan.call, fixed_latents=on_device(mean, dtype)
        )
        regressed = em.initialize(problem, params, problem.fixed_latents)
        fitted.update(zip(others, regressed, strict=True))
    return fitted, mean, start.posterior.cov


def _start_params(model, names, specs, params, fitted_params, dtype) -> tuple:
    """The variational EM's start parameters: the fitted weights of each free
    output (e.g. its affine view's, the other terms zero) and its scatter."""
    k = model.latent_size
    started = []
    for name, spec, p in zip(names, specs, params, strict=True):
        q = dict(p)
        fitted = fitted_params[name]
        if spec.free:
            t = model.outputs[name]
            shapes = t.param_shapes(k)
            named = {p: np.zeros(shapes[p]) for p in t.param_names}
            named.update({p: v for p, v in fitted.items() if p in named})
            theta = polynomial_thetas(model, {name: named}, [name], dtype)[0][0]
            q[vem.THETA] = theta
        if spec.s_free:
            q[SCATTER] = jnp.asarray(fitted[SCATTER], dtype)
        started.append(q)
    return tuple(started)


def _fit_vem(
    model: Model, data: PolluxData, plan: Plan, settings, loop, start
) -> FitResult:
    """Variational EM (`pollux.core.vem`) for fits with a non-affine output, on
    the back-end of ``plan`` (in memory on one device or sharded over several,
    the stars a chunk at a time; or on the chunks of Dask data, whose workers
    keep their stars' posteriors); started from ``start`` (`_given_start`) or
    else from the converged fit of the affine view on the same back-end."""
    names, fixed, call = plan.names, plan.fixed, plan.call
    backend = select(plan)
    prepared = backend.vem_prepare(
        plan,
        model,
        data,
        lambda blocks, size, z_fixed: vem_problem(
            model, names, blocks, fixed, call, z_fixed, chunk_size=size
        ),
    )
    _require_observed(model, plan, prepared.observed)
    problem, params = prepared.problem, prepared.params
    mean = cov = None
    if LATENTS not in fixed:
        if start is None:
            begun = _affine_start(model, data, plan, settings)
            fitted, mean, cov = begun.params, begun.posterior.mean, begun.posterior.cov
        else:
            fitted, mean, cov = _given_start(model, data, plan, start)
        dtype = jax.tree.leaves(params)[0].dtype
        params = _start_params(model, names, problem.specs, params, fitted, dtype)
    state, losses, n_iter, converged = loop(
        backend.vem_sweeps(prepared, _CHUNK, _INNER, settings["accelerate"]),
        lambda: backend.vem_start(prepared, params, mean, cov),
        params,
        n_obs=prepared.n_obs,
    )
    params, final = backend.vem_final(prepared, state, _FINAL_INNER)
    out: dict[str, Any] = {
        key: dict(val) for key, val in without_latents(fixed).items()
    }
    k = model.latent_size
    for name, spec, p in zip(names, problem.specs, params, strict=True):
        out[name] = output_params(model.outputs[name], spec, p, k)
    out[LATENTS] = final.mean
    return FitResult(
        params=out,
        posterior=LatentPosterior(final.mean, final.cov),
        losses=_all_losses(losses, final.loss),
        n_iter=n_iter,
        converged=converged,
        param_cov=dict(zip(names, final.row_covs, strict=True)),
        settings=dict(settings),
        stats=backend.stats(prepared),
    )
