"""Drivers of the closed-form path: `fit` (EM), `infer_latents` and `predict`.

Each checks its arguments (before any tracing), builds the kernels' inputs and
calls the numerical core.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from .._params import (
    LATENTS,
    SCATTER,
    check_positive_int,
    names_with_params,
    without_latents,
)
from ..core import vem
from ..core.blocks import count_observed
from ..core.chunks import auto_chunk_size, bucket, n_chunks, pad_block, pad_rows
from ..core.linalg import cholesky, inverse_from_cholesky
from ..core.pca import pca_latents
from ..data import OutputData, PolluxData
from ..data.values import is_lazy
from ..io import Checkpoint, fingerprint
from ._affine import affine_params
from ._protocol import Definition
from ._results import FitResult, LatentPosterior
from ._setup import em_problem, on_device
from .backends import _dask
from .backends import _sharded as _devices
from .checks import (
    blocks_for,
    check_data,
    check_latents_shape,
    check_params,
    require_scatter,
    resolve_names,
)
from .polynomial import (
    n_row_features,
    output_params,
    polynomial_thetas,
    posterior_polynomial,
    predictive_polynomial,
    require_polynomial,
    uses_quadratic,
    vem_problem,
)

if TYPE_CHECKING:
    from ._protocol import Model

__all__ = ["fit_em", "infer_latents", "predict"]

_CHUNK = 10  # EM iterations per compiled call (one host sync per chunk)
_INNER = 5  # natural-gradient updates of the latent posteriors per variational sweep

#: Closed-form fits, posteriors and predictions whose padded arrays take at most
#: this many bytes run on a number of stars padded with missing ones to its
#: `~pollux.core.chunks.bucket` (then a few more or fewer stars reuse the compiled
#: programs: cross-validation folds, batches). Larger problems are not padded: the
#: copy would cost memory, and compiling is short against their run time.
PAD_BYTES = 64 * 2**20


def _run(chunk, start, template, *, n_obs, max_iter, tol, progress, call, checkpoint):
    """Call ``chunk(state, prev_loss, threshold, max_steps)`` until converged or
    ``max_iter`` iterations, from ``start()`` (or from the state saved in
    ``checkpoint``, which has the structure of ``template``, saving it there as
    it goes); returns ``(state, losses, n_iter, converged)``."""
    dtype = jax.tree.leaves(template)[0].dtype
    threshold = np.asarray(tol * max(n_obs, 1), dtype)
    resumed = None if checkpoint is None else checkpoint.load(template)
    if resumed is None:
        state, losses, n_iter = start(), [], 0
    else:
        state, losses, n_iter = resumed
        if n_iter > max_iter:
            msg = (
                f"{call}(checkpoint=...): {checkpoint.path} holds {n_iter} "
                f"iterations, more than max_iter={max_iter}"
            )
            raise ValueError(msg)
    ran = np.concatenate([np.zeros(0, dtype), *losses])
    # The stopping rule of the compiled loop, applied to the iterations run.
    converged = len(ran) > 1 and bool(abs(ran[-2] - ran[-1]) <= threshold)
    prev = np.asarray(ran[-1] if len(ran) else np.inf, dtype)
    with tqdm(total=max_iter, desc="EM", disable=not progress, leave=False) as bar:
        bar.update(n_iter)
        while n_iter < max_iter and not converged:
            steps = max_iter - n_iter
            if checkpoint is not None:
                steps = min(steps, checkpoint.due(n_iter))
            state, chunk_losses, n_done, done = chunk(
                state, prev, threshold, np.asarray(steps)
            )
            n_done = int(n_done)
            values = np.asarray(chunk_losses)[:n_done]
            if not np.all(np.isfinite(values)):
                msg = (
                    f"{call}: the objective became non-finite at iteration "
                    f"{n_iter + int(np.argmax(~np.isfinite(values)))}; check the data "
                    "scale (preprocess it) and the priors"
                )
                raise FloatingPointError(msg)
            losses.append(values)
            n_iter += n_done
            converged = bool(done)
            prev = np.asarray(values[-1], dtype)
            bar.update(n_done)
            bar.set_postfix(loss=f"{values[-1]:.6g}")
            if checkpoint is not None and (
                converged
                or n_iter >= max_iter
                or checkpoint.due(n_iter) == checkpoint.every
            ):
                checkpoint.save(state, losses, n_iter)
    return state, losses, n_iter, converged


def padded_size(n: int, row_bytes: int) -> int:
    """Stars the kernels run on: ``n`` padded to its bucket when the padded arrays
    (``row_bytes`` per star) take at most `PAD_BYTES`, else ``n``."""
    size = bucket(n)
    return size if size * row_bytes <= PAD_BYTES else n


def _padded_rows(n: int, row_bytes: int, mesh) -> tuple[int, int]:
    """``(stars, stars per device)`` the kernels run on: `padded_size`, rounded up
    to a multiple of the devices of ``mesh``."""
    m = _devices.n_devices(mesh)
    total = -(-padded_size(n, row_bytes) // m) * m
    return total, total // m


def _pad_blocks(blocks: tuple, mesh) -> tuple[tuple, int, int]:
    """``blocks`` padded with missing stars (`_padded_rows`), their length and the
    stars per device."""
    row = sum(
        b.values.shape[1] * b.values.dtype.itemsize * (1 if b.errors is None else 2)
        for b in blocks
    )
    n_pad, n_local = _padded_rows(blocks[0].values.shape[0], row, mesh)
    return tuple(pad_block(b, n_pad) for b in blocks), n_pad, n_local


def _check_mesh(devices: Any, quadratic: bool, call: str):
    """The device mesh of ``devices=`` (None: one device), checked."""
    mesh = _devices.check_devices(devices, call)
    if mesh is not None and quadratic:
        msg = (
            f"{call}(devices=...): sharding over devices serves affine outputs "
            "only; leave devices=None with a QuadraticTransform output"
        )
        raise ValueError(msg)
    return mesh


def chunk_size_for(
    chunk_size: int | None, n: int, widths: Iterable[int], k: int, dtype
) -> int:
    """``chunk_size`` (checked by the caller), or, when None, the size of the
    fewest chunks within the memory budget that cover ``n`` stars evenly (the
    last chunk then overlaps the one before by less than their number)."""
    if chunk_size is None:
        size = auto_chunk_size(n, sum(widths), k, np.dtype(dtype).itemsize)
        return -(-n // n_chunks(n, size))
    return chunk_size


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
) -> FitResult:
    call = "LuxModel.fit"
    data = check_data(data, call)
    names = resolve_names(model, names, call, data.names)
    require_polynomial(model, names, call)
    quadratic = uses_quadratic(model, names)
    check_positive_int(max_iter, f"{call}(max_iter=...)")
    if chunk_size is not None:
        check_positive_int(chunk_size, f"{call}(chunk_size=...)")
    mesh = _check_mesh(devices, quadratic, call)
    if isinstance(tol, bool) or not (isinstance(tol, (int, float)) and tol >= 0):
        msg = f"{call}(tol=...): expected a number >= 0, got {tol!r}"
        raise ValueError(msg)
    n, k = len(data), model.latent_size
    fixed = check_params(model, fixed_params, n, call)
    settings = {
        "names": names,
        "max_iter": max_iter,
        "tol": tol,
        "accelerate": accelerate,
        "fixed": tuple(sorted(fixed)),
    }
    dtype = data[names[0]].data.dtype
    ckpt = _checkpoint(
        checkpoint,
        checkpoint_every,
        quadratic,
        lambda: fingerprint(
            model,
            names,
            fixed,
            [data[name].shape for name in names],
            dtype,
            accelerate,
        ),
        call,
    )
    run = partial(
        _run, max_iter=max_iter, tol=tol, progress=progress, call=call, checkpoint=ckpt
    )
    if _dask.is_lazy_data(data, names) and not quadratic and mesh is None:
        out = _dask.fit_dask(
            model,
            data,
            names,
            fixed,
            problem_for=lambda blocks, rows: em_problem(
                model,
                names,
                blocks,
                fixed,
                call,
                chunk_size=chunk_size_for(
                    chunk_size, rows, (b.values.shape[1] for b in blocks), k, dtype
                ),
            ),
            run=lambda chunk, params, n_obs, start: run(
                chunk, start, params, n_obs=n_obs
            ),
            accelerate=accelerate,
            call=call,
        )
    else:  # Dask data of other fits are computed into memory here
        blocks = blocks_for(model, data, names, fixed, call)
        if quadratic:
            return _fit_vem(
                model,
                data,
                names,
                fixed,
                blocks,
                settings,
                progress=progress,
                call=call,
            )
        out = _fit_memory(
            model, names, fixed, blocks, mesh, chunk_size, run, accelerate, call
        )
    (params, losses, n_iter, converged), final_loss, mean, cov, row_covs, problem = out
    all_losses = jax.device_put(np.concatenate([*losses, np.asarray(final_loss)[None]]))
    out_params: dict[str, Any] = {
        key: dict(val) for key, val in without_latents(fixed).items()
    }
    for name, spec, p in zip(names, problem.specs, params, strict=True):
        entry = {"A": p["A"]}
        if spec.has_b:
            entry["b"] = p["b"]
        if spec.has_s:
            entry[SCATTER] = p[SCATTER]
        out_params[name] = entry
    out_params[LATENTS] = mean
    return FitResult(
        params=out_params,
        posterior=LatentPosterior(mean, cov),
        losses=all_losses,
        n_iter=n_iter,
        converged=converged,
        param_cov=dict(zip(names, row_covs, strict=True)),
        settings=settings,
    )


def _fit_memory(model, names, fixed, blocks, mesh, chunk_size, run, accelerate, call):
    """The affine fit of in-memory ``blocks`` (on the devices of ``mesh``)."""
    k, n = model.latent_size, blocks[0].values.shape[0]
    dtype = blocks[0].values.dtype
    blocks, n_pad, n_local = _pad_blocks(blocks, mesh)
    n_obs = int(count_observed(blocks))
    size = chunk_size_for(
        chunk_size, n_local, (b.values.shape[1] for b in blocks), k, dtype
    )
    z_fixed = fixed.get(LATENTS)
    if z_fixed is not None:
        z_fixed = _devices.shard_stars(
            pad_rows(on_device(z_fixed, dtype), n_pad, 0.0), mesh
        )
    problem, params = em_problem(
        model,
        names,
        _devices.shard_stars(blocks, mesh),
        fixed,
        call,
        fixed_latents=z_fixed,
        chunk_size=size,
    )
    if mesh is not None:
        problem = _devices.sharded_problem(problem)

    def start():
        if not any(s.A_free for s in problem.specs):
            return params
        # Deterministic start: regress free outputs on PCA (or the fixed) latents.
        z0 = z_fixed if z_fixed is not None else pca_latents(blocks, k, size)
        return _devices.initialize(mesh, problem, params, z0)

    result = run(
        lambda p, prev, threshold, left: _devices.em_chunk(
            mesh, problem, p, prev, threshold, left, _CHUNK, accelerate
        ),
        start,
        params,
        n_obs=n_obs,
    )
    post, final_loss, row_covs = _devices.final_state(mesh, problem, result[0])
    if z_fixed is not None:
        mean, cov = z_fixed[:n], jnp.zeros((n, k, k), dtype)
    else:
        mean, cov = post.mean[:n], post.cov[:n]
    return result, final_loss, mean, cov, row_covs, problem


def _affine_start(
    model: Model,
    data: PolluxData,
    names: tuple[str, ...],
    fixed: Mapping[str, Any],
    settings: Mapping[str, Any],
) -> FitResult:
    """The converged fit of the model with every quadratic output made affine
    (``Q = 0``): the start of the variational EM."""
    outputs, twin_fixed = {}, {}
    for name in names:
        t = model.outputs[name].affine_view()
        outputs[name] = t
        if name in fixed:
            twin_fixed[name] = {
                p: v
                for p, v in fixed[name].items()
                if p in t.param_names or p == SCATTER
            }
    twin = Definition(model.latent_size, outputs)
    return fit_em(
        twin,
        data,
        fixed_params=twin_fixed,
        names=names,
        max_iter=settings["max_iter"],
        tol=settings["tol"],
        progress=False,
        accelerate=settings["accelerate"],
    )


def _fit_vem(
    model: Model,
    data: PolluxData,
    names: tuple[str, ...],
    fixed: Mapping[str, Any],
    blocks: tuple,
    settings: Mapping[str, Any],
    *,
    progress: bool,
    call: str,
) -> FitResult:
    """Variational EM (`pollux.core.vem`) for fits with a quadratic output."""
    k, n = model.latent_size, len(data)
    dtype = blocks[0].values.dtype
    z_fixed = fixed.get(LATENTS)
    problem, params = vem_problem(model, names, blocks, fixed, call, z_fixed)
    if problem.fixed_latents is not None:
        state = vem.VState(params, problem.fixed_latents, jnp.zeros((n, k, k), dtype))
    else:
        start = _affine_start(model, data, names, fixed, settings)
        started = []
        for name, spec, p in zip(names, problem.specs, params, strict=True):
            q = dict(p)
            fitted = start.params[name]
            if spec.free:
                q[vem.THETA] = polynomial_thetas(
                    model,
                    {name: {"Q": jnp.zeros((q[vem.THETA].shape[0], k, k)), **fitted}},
                    [name],
                    dtype,
                )[0][0]
            if spec.s_free:
                q[SCATTER] = jnp.asarray(fitted[SCATTER], dtype)
            started.append(q)
        params = tuple(started)
        prec = inverse_from_cholesky(cholesky(start.posterior.cov))
        state = vem.VState(params, start.posterior.mean, prec)
    state, losses, n_iter, converged = _run(
        lambda st, prev, threshold, left: vem.vem_chunk(
            problem, st, prev, threshold, left, _CHUNK, _INNER, settings["accelerate"]
        ),
        lambda: state,
        state,
        n_obs=int(count_observed(tuple(blocks))),
        max_iter=settings["max_iter"],
        tol=settings["tol"],
        progress=progress,
        call=call,
        checkpoint=None,
    )
    state, final_loss, row_covs = vem.vem_final(problem, state, _INNER)
    all_losses = jax.device_put(np.concatenate([*losses, np.asarray(final_loss)[None]]))
    out: dict[str, Any] = {
        key: dict(val) for key, val in without_latents(fixed).items()
    }
    for name, spec, p in zip(names, problem.specs, state.params, strict=True):
        out[name] = output_params(model.outputs[name], spec, p, k)
    out[LATENTS] = state.mean
    if problem.fixed_latents is not None:
        cov = jnp.zeros((n, k, k), dtype)
    else:
        cov = inverse_from_cholesky(cholesky(state.prec))
    return FitResult(
        params=out,
        posterior=LatentPosterior(state.mean, cov),
        losses=all_losses,
        n_iter=n_iter,
        converged=converged,
        param_cov=dict(zip(names, row_covs, strict=True)),
        settings=dict(settings),
    )


def infer_latents(
    model: Model,
    data: PolluxData,
    params: Mapping[str, Any],
    names: str | Iterable[str] | None,
    chunk_size: int | None = None,
    devices: Any = None,
) -> LatentPosterior:
    call = "LuxModel.infer_latents"
    data = check_data(data, call)
    if chunk_size is not None:
        check_positive_int(chunk_size, f"{call}(chunk_size=...)")
    names = resolve_names(model, names, call, data.names)
    require_polynomial(model, names, call)
    quadratic = uses_quadratic(model, names)
    mesh = _check_mesh(devices, quadratic, call)
    params = check_params(
        model, without_latents(params), len(data), call, "params", required=names
    )
    k = model.latent_size
    if _dask.is_lazy_data(data, names) and not quadratic and mesh is None:
        require_scatter(model, params, names, call)
        dtype = data[names[0]].data.dtype
        widths = [data[name].size for name in names]
        mean, cov = _dask.posterior_dask(
            model,
            data,
            names,
            params,
            affine_params(model, params, names, dtype),
            lambda rows: chunk_size_for(chunk_size, rows, widths, k, dtype),
            call,
        )
        return LatentPosterior(mean, cov)
    blocks = blocks_for(model, data, names, params, call)
    dtype = blocks[0].values.dtype
    require_scatter(model, params, names, call)
    if quadratic:
        thetas, kinds, s2s = polynomial_thetas(model, params, names, dtype)
        mean, cov, flags = posterior_polynomial(
            blocks, thetas, s2s, kinds, model.latent_size
        )
        return LatentPosterior(mean, cov, flags)
    n = len(data)
    blocks, _, n_local = _pad_blocks(blocks, mesh)
    size = chunk_size_for(
        chunk_size,
        n_local,
        (b.values.shape[1] for b in blocks),
        model.latent_size,
        dtype,
    )
    mean, cov = _devices.posterior_moments(
        mesh,
        _devices.shard_stars(blocks, mesh),
        *affine_params(model, params, names, dtype),
        size,
    )
    return LatentPosterior(mean[:n], cov[:n])


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


def predict(
    model: Model,
    posterior: LatentPosterior,
    params: Mapping[str, Any],
    names: str | Iterable[str] | None,
    param_cov: Mapping[str, Any] | None = None,
    chunk_size: int | None = None,
    devices: Any = None,
) -> PolluxData:
    call = "LuxModel.predict"
    if chunk_size is not None:
        check_positive_int(chunk_size, f"{call}(chunk_size=...)")
    if not isinstance(posterior, LatentPosterior):
        msg = (
            f"{call}(posterior=...): expected a LatentPosterior (from "
            f"LuxModel.infer_latents or LuxModel.fit), got {type(posterior).__name__}"
        )
        raise TypeError(msg)
    check_latents_shape(model, posterior.mean, None, f"{call}(posterior.mean)")
    if names is None:
        names = names_with_params(model.outputs, params, call)
    names = resolve_names(model, names, call)
    require_polynomial(model, names, call)
    params = check_params(
        model, without_latents(params), None, call, "params", required=names
    )
    row_covs = _check_param_cov(model, param_cov, names, call)
    dtype = posterior.mean.dtype
    out = {}
    require_scatter(model, params, names, call)
    quadratic = uses_quadratic(model, names)
    mesh = _check_mesh(devices, quadratic, call)
    if is_lazy(posterior.mean) and (quadratic or mesh is not None):
        # Dask posteriors serve affine outputs on the default device; others
        # are computed into memory.
        posterior = LatentPosterior(on_device(posterior.mean), on_device(posterior.cov))
    if quadratic:
        thetas, kinds, s2s = polynomial_thetas(model, params, names, dtype)
        for name, theta, kind, s2 in zip(names, thetas, kinds, s2s, strict=True):
            C = row_covs.get(name)
            mean, err = predictive_polynomial(
                posterior.mean,
                posterior.cov,
                theta,
                s2,
                None if C is None else C.astype(dtype),
                kind,
            )
            out[name] = OutputData(mean, err=err, preprocessed=True)
        return PolluxData(**out)
    n = posterior.mean.shape[0]
    affine = affine_params(model, params, names, dtype)
    k = model.latent_size
    if is_lazy(posterior.mean):
        for name, W, b, s2 in zip(names, *affine, strict=True):
            C = row_covs.get(name)
            mean, err = _dask.predictive_dask(
                posterior.mean,
                posterior.cov,
                W,
                b,
                s2,
                None if C is None else C.astype(dtype),
                lambda rows, d=W.shape[0]: chunk_size_for(
                    chunk_size, rows, [d], k, dtype
                ),
            )
            out[name] = OutputData(mean, err=err, preprocessed=True)
        return PolluxData(**out)
    width = 2 * sum(W.shape[0] for W in affine[0]) + k + k * k  # outputs + posterior
    row = width * np.dtype(dtype).itemsize
    n_pad, n_local = _padded_rows(n, row, mesh)
    z_mean, z_cov = _devices.shard_stars(
        (pad_rows(posterior.mean, n_pad, 0.0), pad_rows(posterior.cov, n_pad, 0.0)),
        mesh,
    )
    size = chunk_size_for(
        chunk_size,
        n_local,
        [max(W.shape[0] for W in affine[0])],
        k,
        dtype,
    )
    for name, W, b, s2 in zip(names, *affine, strict=True):
        C = row_covs.get(name)
        C = None if C is None else C.astype(dtype)
        mean, err = _devices.predictive(mesh, z_mean, z_cov, W, b, s2, C, size)
        out[name] = OutputData(mean[:n], err=err[:n], preprocessed=True)
    return PolluxData(**out)
