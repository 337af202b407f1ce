"""Drivers of the closed-form path: `fit` (EM), `infer_latents` and `predict`.

Each checks its arguments (before any tracing), builds the kernels' inputs and
calls the numerical core.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

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
from ..core import em
from ..core.mstep import row_covariances
from ..core.pca import pca_latents
from ..core.posterior import posterior_moments, predictive
from ..data import OutputData, PolluxData
from ._affine import affine_params, require_affine
from ._checks import (
    blocks_for,
    check_data,
    check_latents_shape,
    check_params,
    resolve_names,
)
from ._results import FitResult, LatentPosterior
from ._setup import em_problem

if TYPE_CHECKING:
    from .lux import LuxModel

__all__ = ["fit_em", "infer_latents", "predict"]

_CHUNK = 10  # EM iterations per compiled call (one host sync per chunk)


def fit_em(
    model: LuxModel,
    data: PolluxData,
    *,
    fixed_params: Mapping[str, Any] | None,
    names: str | Iterable[str] | None,
    max_iter: int,
    tol: float,
    progress: bool,
    accelerate: bool,
) -> FitResult:
    call = "LuxModel.fit"
    data = check_data(data, call)
    names = resolve_names(model, names, call, data.names)
    require_affine(model, names, call)
    check_positive_int(max_iter, f"{call}(max_iter=...)")
    if isinstance(tol, bool) or not (isinstance(tol, (int, float)) and tol >= 0):
        msg = f"{call}(tol=...): expected a number >= 0, got {tol!r}"
        raise ValueError(msg)
    n, k = len(data), model.latent_size
    fixed = check_params(model, fixed_params, n, call)
    blocks = blocks_for(model, data, names, fixed, call)
    dtype = blocks[0].y.dtype
    problem, params = em_problem(
        model, names, blocks, fixed, call, fixed_latents=fixed.get(LATENTS)
    )
    z_fixed = problem.fixed_latents
    if any(s.A_free for s in problem.specs):
        # Deterministic start: regress free outputs on PCA (or the fixed) latents.
        z0 = z_fixed if z_fixed is not None else pca_latents(blocks, k)
        params = em.initialize(problem, params, z0)

    n_obs = max(int(sum(int(jnp.sum(b.mask)) for b in blocks)), 1)
    threshold = jnp.asarray(tol * n_obs, dtype)
    prev = jnp.asarray(jnp.inf, dtype)
    losses: list[np.ndarray] = []
    n_iter, converged = 0, False
    with tqdm(total=max_iter, desc="EM", disable=not progress, leave=False) as bar:
        while n_iter < max_iter and not converged:
            params, chunk, n_done, done = em.em_chunk(
                problem,
                params,
                prev,
                threshold,
                jnp.asarray(max_iter - n_iter),
                _CHUNK,
                accelerate,
            )
            n_done = int(n_done)
            chunk = np.asarray(chunk)[:n_done]
            if not np.all(np.isfinite(chunk)):
                msg = (
                    f"{call}: the objective became non-finite at iteration "
                    f"{n_iter + int(np.argmax(~np.isfinite(chunk)))}; check the data "
                    "scale (preprocess it) and the priors"
                )
                raise FloatingPointError(msg)
            losses.append(chunk)
            n_iter += n_done
            converged = bool(done)
            prev = jnp.asarray(chunk[-1], dtype)
            bar.update(n_done)
            bar.set_postfix(loss=f"{chunk[-1]:.6g}")
    post, final_loss = em.final_state(problem, params)
    all_losses = jnp.asarray(np.concatenate([*losses, np.asarray(final_loss)[None]]))

    out: dict[str, Any] = {
        key: dict(val) for key, val in without_latents(fixed).items()
    }
    for name, spec, p in zip(names, problem.specs, params, strict=True):
        entry = {"A": p["A"]}
        if spec.has_b:
            entry["b"] = p["b"]
        if spec.has_s:
            entry[SCATTER] = p[SCATTER]
        out[name] = entry
    if z_fixed is not None:
        out[LATENTS] = z_fixed
        cov = jnp.zeros((n, k, k), dtype)
    else:
        out[LATENTS] = post.mean
        cov = post.cov
    param_cov = {
        name: row_covariances(spec, block, p, post.mean, post.cov, ridge)
        for name, (spec, block, _, ridge), p in zip(
            names, problem.outputs(), params, strict=True
        )
    }
    return FitResult(
        params=out,
        posterior=LatentPosterior(post.mean, cov),
        losses=all_losses,
        n_iter=n_iter,
        converged=converged,
        param_cov=param_cov,
    )


def infer_latents(
    model: LuxModel,
    data: PolluxData,
    params: Mapping[str, Any],
    names: str | Iterable[str] | None,
) -> LatentPosterior:
    call = "LuxModel.infer_latents"
    data = check_data(data, call)
    names = resolve_names(model, names, call, data.names)
    require_affine(model, names, call)
    params = check_params(
        model, without_latents(params), len(data), call, "params", required=names
    )
    blocks = blocks_for(model, data, names, params, call)
    dtype = blocks[0].y.dtype
    mean, cov = posterior_moments(
        blocks, *affine_params(model, params, names, call, dtype)
    )
    return LatentPosterior(mean, cov)


def _check_param_cov(
    model: LuxModel, param_cov: Any, names: tuple[str, ...], call: str
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
        kt = k + 1 if "b" in t.param_shapes(k) else k
        shape = (t.output_size, kt, kt)
        if tuple(np.shape(C)) != shape:
            msg = (
                f"{call}(param_cov[{name!r}]): expected shape {shape}, "
                f"got {tuple(np.shape(C))}"
            )
            raise ValueError(msg)
        out[name] = jnp.asarray(C)
    return out


def predict(
    model: LuxModel,
    posterior: LatentPosterior,
    params: Mapping[str, Any],
    names: str | Iterable[str] | None,
    param_cov: Mapping[str, Any] | None = None,
) -> PolluxData:
    call = "LuxModel.predict"
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
    require_affine(model, names, call)
    params = check_params(
        model, without_latents(params), None, call, "params", required=names
    )
    row_covs = _check_param_cov(model, param_cov, names, call)
    dtype = posterior.mean.dtype
    out = {}
    for name, W, b, s2 in zip(
        names, *affine_params(model, params, names, call, dtype), strict=True
    ):
        C = row_covs.get(name)
        mean, err = predictive(
            posterior.mean,
            posterior.cov,
            W,
            b,
            s2,
            None if C is None else C.astype(dtype),
        )
        out[name] = OutputData(mean, err=err, preprocessed=True)
    return PolluxData(**out)
