"""Drivers of the closed-form path: `fit` (EM), `infer_latents` and `predict`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from ..data import OutputData, PolluxData
from ..models._checks import (
    LATENTS,
    check_data,
    check_latents_shape,
    check_params,
    resolve_names,
    transform_params,
)
from ..models.transforms import SCATTER
from . import _em
from ._blocks import blocks_for
from ._init import pca_latents
from ._linear import affine_parts, is_affine
from ._posterior import latent_posterior, outer_rows
from ._results import FitResult, LatentPosterior

if TYPE_CHECKING:
    from ..models.lux import LuxModel

_CHUNK = 10  # EM iterations per compiled call (one host sync per chunk)


def _require_affine(model: LuxModel, names: tuple[str, ...], call: str) -> None:
    for name in names:
        t = model.outputs[name]
        if not is_affine(t):
            msg = (
                f"{call}: output {name!r} uses {type(t).__name__}, which is not "
                "linear in the latents; the closed-form path handles LinearTransform "
                "and AffineTransform. Use LuxModel.optimize (numpyro MAP) instead."
            )
            raise ValueError(msg)


def em_setup(
    model: LuxModel,
    names: tuple[str, ...],
    fixed: dict[str, Any],
    n: int,
    dtype: Any,
    call: str,
    ridge_from_priors: bool = True,
) -> tuple[tuple, tuple, tuple, tuple]:
    """Static specs, priors, ridges and start parameters of each output for the EM
    kernels. ``ridge_from_priors=False`` uses flat ridges (any prior accepted)."""
    k = model.latent_size
    specs, priors, ridges, params = [], [], [], []
    for name in names:
        t = model.outputs[name]
        fx = fixed.get(name, {})
        shapes = t.param_shapes(k, n)
        expanded = t.expanded_priors(k, n)
        has_b = "b" in shapes
        s_prior = t.scatter_prior
        has_s = s_prior is not None or SCATTER in fx
        s_shape = shapes[SCATTER] if SCATTER in shapes else np.shape(fx.get(SCATTER))
        specs.append(
            _em.OutputSpec(
                has_b=has_b,
                A_free="A" not in fx,
                b_free=has_b and "b" not in fx,
                s_kind="none"
                if not has_s
                else ("scalar" if s_shape == () else "vector"),
                s_free=s_prior is not None and SCATTER not in fx,
            )
        )
        ridge = {}
        for p in ("A", "b"):
            if p in shapes and p not in fx:
                ridge[p] = (
                    _em.ridge_from_prior(
                        expanded[p],
                        shapes[p],
                        f"{call}: prior of {name!r} parameter {p!r}",
                    )
                    if ridge_from_priors
                    else (jnp.zeros(shapes[p]), jnp.zeros(shapes[p]))
                )
        ridges.append(jax.tree.map(lambda a: jnp.asarray(a, dtype), ridge))
        pr = {p: expanded[p] for p in ("A", "b") if p in expanded}
        if s_prior is not None:
            pr[SCATTER] = s_prior
        priors.append(pr)
        d = t.output_size
        p0 = {
            "A": jnp.asarray(fx.get("A", jnp.zeros((d, k))), dtype),
            "b": jnp.asarray(fx.get("b", jnp.zeros(d)), dtype),
        }
        if has_s:
            p0[SCATTER] = jnp.asarray(fx.get(SCATTER, jnp.ones(s_shape)), dtype)
        params.append(p0)
    return tuple(specs), tuple(priors), tuple(ridges), tuple(params)


def fit_em(
    model: LuxModel,
    data: PolluxData,
    *,
    fixed_params: dict | None,
    names: Any,
    max_iter: int,
    tol: float,
    progress: bool,
    accelerate: bool,
) -> FitResult:
    call = "LuxModel.fit"
    data = check_data(data, call)
    names = resolve_names(model, names, call, data.names)
    _require_affine(model, names, call)
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        msg = f"{call}(max_iter=...): expected a positive int, got {max_iter!r}"
        raise ValueError(msg)
    if not (isinstance(tol, (int, float)) and tol >= 0):
        msg = f"{call}(tol=...): expected a number >= 0, got {tol!r}"
        raise ValueError(msg)
    n, k = len(data), model.latent_size
    fixed = check_params(model, fixed_params, n, call)
    blocks = blocks_for(model, data, names, fixed, call)
    dtype = blocks[0].y.dtype
    fixed_latents = fixed.get(LATENTS)
    if fixed_latents is not None:
        fixed_latents = fixed_latents.astype(dtype)

    specs, priors, ridges, params = em_setup(model, names, fixed, n, dtype, call)
    if any(s.A_free for s in specs):
        # Deterministic start: regress free outputs on PCA (or the fixed) latents.
        z0 = fixed_latents if fixed_latents is not None else pca_latents(blocks, k)
        params = _em.initialize(specs, params, blocks, priors, ridges, z0)

    n_obs = max(int(sum(int(jnp.sum(b.mask)) for b in blocks)), 1)
    threshold = jnp.asarray(tol * n_obs, dtype)
    prev = jnp.asarray(jnp.inf, dtype)
    losses: list[np.ndarray] = []
    n_iter, converged = 0, False
    with tqdm(total=max_iter, desc="EM", disable=not progress, leave=False) as bar:
        while n_iter < max_iter and not converged:
            params, chunk, n_done, done = _em.em_chunk(
                specs,
                params,
                blocks,
                priors,
                ridges,
                fixed_latents,
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
    post, final_loss = _em.final_state(specs, params, blocks, priors, fixed_latents)
    all_losses = jnp.asarray(np.concatenate([*losses, np.asarray(final_loss)[None]]))

    out: dict[str, Any] = {
        key: dict(val) for key, val in fixed.items() if key != LATENTS
    }
    for name, spec, p in zip(names, specs, params, strict=True):
        entry = {"A": p["A"]}
        if spec.has_b:
            entry["b"] = p["b"]
        if spec.s_kind != "none":
            entry[SCATTER] = p[SCATTER]
        out[name] = entry
    if fixed_latents is not None:
        out[LATENTS] = fixed_latents
        cov = jnp.zeros((n, k, k), dtype)
    else:
        out[LATENTS] = post.mean
        cov = post.cov
    param_cov = {
        name: _em.row_covariances(spec, block, p, post.mean, post.cov, ridge)
        for name, spec, block, p, ridge in zip(
            names, specs, blocks, params, ridges, strict=True
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


def _affine_params(model, params, names, call):
    """``(W, b, s²)`` per output from a checked nested parameter dict."""
    Ws, bs, s2s = [], [], []
    for name in names:
        t = model.outputs[name]
        p = params[name]
        if t.scatter_prior is not None and SCATTER not in p:
            msg = (
                f"{call}(params=...): output {name!r} declares an extra scatter 's' "
                f"but params[{name!r}] has no 's'"
            )
            raise ValueError(msg)
        W, b = affine_parts(t, p)
        Ws.append(W)
        bs.append(b)
        s2s.append(jnp.square(p[SCATTER]) if SCATTER in p else jnp.zeros(()))
    return tuple(Ws), tuple(bs), tuple(s2s)


@jax.jit
def _posterior_kernel(blocks, Ws, bs, s2s):
    post = latent_posterior(blocks, Ws, bs, s2s)
    return post.mean, post.cov


def infer_latents(
    model: LuxModel, data: PolluxData, params: dict, names: Any
) -> LatentPosterior:
    call = "LuxModel.infer_latents"
    data = check_data(data, call)
    names = resolve_names(model, names, call, data.names)
    _require_affine(model, names, call)
    params = check_params(
        model, transform_params(params), len(data), call, "params", required=names
    )
    blocks = blocks_for(model, data, names, params, call)
    dtype = blocks[0].y.dtype
    Ws, bs, s2s = jax.tree.map(
        lambda a: jnp.asarray(a, dtype), _affine_params(model, params, names, call)
    )
    mean, cov = _posterior_kernel(blocks, Ws, bs, s2s)
    return LatentPosterior(mean, cov)


@jax.jit
def _predict_kernel(mean, cov, W, b, s2, row_cov):
    n, k = mean.shape
    var = cov.reshape(n, -1) @ outer_rows(W).T + s2
    if row_cov is not None:  # uncertainty of the trained rows (W_d, b_d)
        _, second = _em.second_moments(mean, cov, with_one=row_cov.shape[-1] > k)
        var = var + second.reshape(n, -1) @ row_cov.reshape(row_cov.shape[0], -1).T
    return mean @ W.T + b, jnp.sqrt(var)


def _check_param_cov(model, param_cov, names, call) -> dict[str, Any]:
    if param_cov is None:
        return {}
    if not isinstance(param_cov, dict):
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
    params: dict,
    names: Any,
    param_cov: dict | None = None,
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
        if not isinstance(params, dict):
            msg = f"{call}(params=...): expected a dict like {{'label': {{'A': ...}}}}"
            raise TypeError(msg)
        names = [n for n in model.outputs if n in params]
    names = resolve_names(model, names, call)
    _require_affine(model, names, call)
    params = check_params(
        model, transform_params(params), None, call, "params", required=names
    )
    row_covs = _check_param_cov(model, param_cov, names, call)
    dtype = posterior.mean.dtype
    out = {}
    for name, W, b, s2 in zip(
        names, *_affine_params(model, params, names, call), strict=True
    ):
        C = row_covs.get(name)
        mean, err = _predict_kernel(
            posterior.mean,
            posterior.cov,
            W.astype(dtype),
            b.astype(dtype),
            s2.astype(dtype),
            None if C is None else C.astype(dtype),
        )
        out[name] = OutputData(mean, err=err, preprocessed=True)
    return PolluxData(**out)
