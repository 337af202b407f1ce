"""Slow, obvious references for checking pollux's fast paths (tests, benchmarks).

Everything here is plain numpy/scipy, one star at a time, in float64: the joint
Gaussian of ``(z, y)`` conditioned directly, log-densities from
`scipy.stats`. Use them on small problems to check `LuxModel.fit`,
`LuxModel.infer_latents` and `LuxModel.predict` (the test suite does), never for
real work. Only outputs that are affine in the latents are covered.

Examples
--------
>>> import pollux as plx
>>> from pollux.models.transforms import LinearTransform
>>> obs, _ = plx.datasets.make_simulated_linear_data(30, 2, 2, 5, rng=0)
>>> data = plx.data.PolluxData(
...     flux=plx.data.OutputData(obs["flux"], err=obs["flux_err"]),
...     label=plx.data.OutputData(obs["label"], err=obs["label_err"]))
>>> model = plx.LuxModel(latent_size=2)
>>> model.register_output("flux", LinearTransform(5))
>>> model.register_output("label", LinearTransform(2))
>>> result = model.fit(data, max_iter=5, progress=False)
>>> mean, cov = dense_posterior(model, data, result.params, ["flux", "label"])
>>> bool(np.allclose(mean, result.posterior.mean))
True
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from scipy import stats

from ._params import LATENTS, SCATTER
from .data import PolluxData
from .models import LuxModel

__all__ = [
    "affine_rows",
    "dense_neg_log_lik_given_latents",
    "dense_neg_log_marginal",
    "dense_objective",
    "dense_posterior",
    "neg_log_prior",
    "observed",
]


def observed(data: PolluxData, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(y, var, mask)`` of an output in float64: the reference's own reading of
    missing values (NaN data or infinite error)."""
    y = np.asarray(data[name].data, dtype=float)
    err = np.asarray(data[name].err, dtype=float)
    mask = ~np.isnan(y) & np.isfinite(err)
    return y, err**2, mask


def affine_rows(
    params: Mapping[str, Any], name: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(W, b, s²)`` of an affine output (``b`` zero and ``s²`` zero when absent)."""
    p = params[name]
    W = np.asarray(p["A"], dtype=float)
    b = np.asarray(p["b"], dtype=float) if "b" in p else np.zeros(W.shape[0])
    s2 = np.square(np.asarray(p[SCATTER], dtype=float)) if SCATTER in p else 0.0
    return W, b, np.broadcast_to(s2, (W.shape[0],))


def _star_system(data, params, names, n):
    """Observed ``(y, b, W, noise variances)`` of star ``n`` over ``names``."""
    ys, bs, Ws, vs = [], [], [], []
    for name in names:
        y, var, mask = observed(data, name)
        W, b, s2 = affine_rows(params, name)
        m = mask[n]
        ys.append(y[n, m])
        bs.append(b[m])
        Ws.append(W[m])
        vs.append(var[n, m] + s2[m])
    return (
        np.concatenate(ys),
        np.concatenate(bs),
        np.concatenate(Ws, axis=0),
        np.concatenate(vs),
    )


def dense_posterior(
    model: LuxModel, data: PolluxData, params: Mapping[str, Any], names: Iterable[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Posterior ``(mean (N, K), cov (N, K, K))`` of each star's latents under a unit
    Normal prior: the joint Gaussian of ``(z, y_obs)`` conditioned star by star."""
    k = model.latent_size
    means, covs = [], []
    for n in range(len(data)):
        y, b, W, v = _star_system(data, params, tuple(names), n)
        if y.size == 0:
            means.append(np.zeros(k))
            covs.append(np.eye(k))
            continue
        C_yy = W @ W.T + np.diag(v)  # Cov(y); Cov(z, y) = Wᵀ
        gain = np.linalg.solve(C_yy, W).T  # Wᵀ C_yy⁻¹
        means.append(gain @ (y - b))
        covs.append(np.eye(k) - gain @ W)
    return np.array(means), np.array(covs)


def dense_neg_log_marginal(
    model: LuxModel, data: PolluxData, params: Mapping[str, Any], names: Iterable[str]
) -> float:
    """``-log p(y | θ)`` with the latents integrated out, star by star."""
    del model
    total = 0.0
    for n in range(len(data)):
        y, b, W, v = _star_system(data, params, tuple(names), n)
        if y.size:
            cov = W @ W.T + np.diag(v)
            total -= stats.multivariate_normal(mean=b, cov=cov).logpdf(y)
    return float(total)


def dense_neg_log_lik_given_latents(
    model: LuxModel,
    data: PolluxData,
    params: Mapping[str, Any],
    names: Iterable[str],
    z: Any,
) -> float:
    """``-log p(y | z, θ)`` at given latents."""
    del model
    total = 0.0
    for name in names:
        y, var, mask = observed(data, name)
        W, b, s2 = affine_rows(params, name)
        pred = np.asarray(z, dtype=float) @ W.T + b
        sd = np.sqrt(var + s2)
        total -= stats.norm.logpdf(y[mask], pred[mask], sd[mask]).sum()
    return float(total)


def neg_log_prior(
    model: LuxModel, params: Mapping[str, Any], fixed: Mapping[str, Any] | None
) -> float:
    """``-log p(θ)`` of every transform parameter not held in ``fixed``."""
    fixed = fixed or {}
    total = 0.0
    for name, t in model.outputs.items():
        priors = t.expanded_priors(model.latent_size, None)
        for pname, prior in priors.items():
            if pname in fixed.get(name, {}):
                continue
            total -= float(prior.log_prob(jnp.asarray(params[name][pname])))
    return total


def dense_objective(
    model: LuxModel,
    data: PolluxData,
    params: Mapping[str, Any],
    fixed: Mapping[str, Any] | None = None,
) -> float:
    """The objective `LuxModel.fit` reports (`FitResult.losses`) at ``params``:
    negative log marginal likelihood (or, with ``fixed["latents"]``, the negative
    log likelihood at those latents) plus the negative log prior of the free
    parameters."""
    names = tuple(model.outputs)
    if fixed and LATENTS in fixed:
        nll = dense_neg_log_lik_given_latents(
            model, data, params, names, fixed[LATENTS]
        )
    else:
        nll = dense_neg_log_marginal(model, data, params, names)
    return nll + neg_log_prior(model, params, fixed)
