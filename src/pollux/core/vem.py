r"""Variational EM for outputs polynomial (at most quadratic) in the latents.

Each output is linear in the features :math:`\phi(z)` with weights :math:`\theta_d`
(`features`); each star's latents get a Gaussian :math:`q_n = N(\mu_n, \Sigma_n)`.
One sweep raises the evidence lower bound :math:`\sum_n \mathcal{L}_n` plus the log
prior of the parameters three times, so the objective (its negative) never increases:

1. **E-step** — natural-gradient updates of every :math:`q_n` (`e_step`), each kept
   only where it raises :math:`\mathcal{L}_n`;
2. **M-step** — row-wise ridge solves on the expected features,
   :math:`\big(\sum_n \lambda_{nd} E[\phi_n\phi_n^\top] + T_d\big)\theta_d
   = \sum_n \lambda_{nd} y_{nd} E[\phi_n] + T_d m_d` (one
   :math:`(D{\times}N)\cdot(N{\times}M^2)` product per output);
3. **s-step** — each free extra scatter (`s_step`) with the expected squared
   residual :math:`(y - \theta^\top E\phi)^2 + \theta^\top\operatorname{cov}(\phi)\theta`.

With latents held fixed the E-step is skipped and the objective is the negative log
likelihood plus the negative log prior.
"""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._params import SCATTER
from .blocks import Block, gaussian_loglike
from .em import positive_scatter, run_until_settled, squarem_point
from .features import (
    feature_index,
    moments,
    outer_packed,
    qab_from_theta,
    sym_pack,
    sym_unpack,
)
from .linalg import cholesky, inverse_from_cholesky
from .mstep import ridge_inverse, ridge_solve
from .posterior import precisions
from .sstep import s_step
from .variational import e_step, star_stats

__all__ = ["FeatureSpec", "VEMProblem", "named_params", "vem_chunk", "vem_final"]

THETA = "theta"
Params = tuple[dict[str, Array], ...]


class FeatureSpec(NamedTuple):
    """Static description of one output: its features and which parameters are free."""

    kind: str  # "linear", "affine" or "quadratic"
    free: bool  # whether the feature weights are fitted
    s_kind: str  # "none", "scalar" or "vector"
    s_free: bool

    @property
    def has_s(self) -> bool:
        return self.s_kind != "none"


class VEMProblem(eqx.Module):
    """Data and fixed ingredients of a variational EM fit, one entry per output.

    ``ridges`` are ``(loc, precision)`` of the Normal priors on each free output's
    feature weights (`theta_ridge`); ``priors`` the distributions of the named
    parameters (``Q``, ``A``, ``b``, ``s``) whose log density enters the objective.
    """

    specs: tuple[FeatureSpec, ...] = eqx.field(static=True)
    k: int = eqx.field(static=True)
    blocks: tuple[Block, ...]
    priors: tuple[dict[str, Any], ...]
    ridges: tuple[tuple[Array, Array] | None, ...]
    fixed_latents: Float[Array, "n k"] | None = None

    def index(self) -> tuple[np.ndarray, ...]:
        return tuple(feature_index(s.kind, self.k) for s in self.specs)


def named_params(kind: str, theta: Array, k: int) -> dict[str, Array]:
    """``Q``/``A``/``b`` of feature weights (the transform's own parameter names)."""
    if kind == "quadratic":
        Q, A, b = qab_from_theta(theta, k)
        return {"Q": Q, "A": A, "b": b}
    if kind == "affine":
        return {"A": theta[:, :k], "b": theta[:, k]}
    return {"A": theta}


def _s2(spec: FeatureSpec, p: dict[str, Array]) -> Array:
    return jnp.square(p[SCATTER]) if spec.has_s else jnp.zeros(())


def _neg_log_prior(problem: VEMProblem, params: Params) -> Array:
    total = jnp.zeros(())
    for spec, p, pr in zip(problem.specs, params, problem.priors, strict=True):
        if spec.free:
            for name, value in named_params(spec.kind, p[THETA], problem.k).items():
                total = total - jnp.sum(pr[name].log_prob(value))
        if spec.has_s and spec.s_free:
            total = total - jnp.sum(pr[SCATTER].log_prob(p[SCATTER]))
    return total


def _feature_moments(mean: Array, cov: Array | None) -> tuple[Array, Any, Array]:
    """``E[φ]``, ``cov(φ)`` (None at a point) and ``E[φφᵀ]``."""
    Ephi, cov_phi = moments(mean, cov)
    second = Ephi[:, :, None] * Ephi[:, None, :]
    return Ephi, cov_phi, second if cov_phi is None else second + cov_phi


def _normal_matrix(second: Array, lam: Array, idx: np.ndarray, prec: Array) -> Array:
    """``Σ_n λ_nd E[φφᵀ]_n + diag(prec_d)`` on the features ``idx`` of an output
    (one product over the packed feature pairs): the M-step's left-hand sides."""
    S = sym_pack(second[:, idx[:, None], idx[None, :]])
    return sym_unpack(lam.T @ S, len(idx)) + jax.vmap(jnp.diag)(prec)


def _m_step(problem, params, mean, cov) -> Params:
    """Ridge solves for the free feature weights, then the s-steps."""
    Ephi, cov_phi, second = _feature_moments(mean, cov)
    new = []
    for spec, block, prior, ridge, idx, p in zip(
        problem.specs,
        problem.blocks,
        problem.priors,
        problem.ridges,
        problem.index(),
        params,
        strict=True,
    ):
        q = dict(p)
        lam = precisions(block, _s2(spec, p))
        E = Ephi[:, idx]
        if spec.free:
            loc, prec = ridge
            G = _normal_matrix(second, lam, idx, prec)
            c = (lam * block.y).T @ E + prec * loc
            q[THETA] = ridge_solve(G, c)
        if spec.has_s and spec.s_free:
            theta = q[THETA]
            e = jnp.square(block.y - E @ theta.T)
            if cov_phi is not None:
                C = sym_pack(cov_phi[:, idx[:, None], idx[None, :]], doubled=True)
                e = e + C @ outer_packed(theta).T
            e = jnp.where(block.mask, e, 0.0)
            q[SCATTER] = s_step(
                block, e, p[SCATTER], prior[SCATTER], scalar=spec.s_kind == "scalar"
            )
        new.append(q)
    return tuple(new)


def _fixed_nll(problem: VEMProblem, params: Params) -> Array:
    Ephi, _ = moments(problem.fixed_latents, None)
    nll = jnp.zeros(())
    for spec, block, idx, p in zip(
        problem.specs, problem.blocks, problem.index(), params, strict=True
    ):
        pred = Ephi[:, idx] @ p[THETA].T
        nll = nll - gaussian_loglike(block, pred, p[SCATTER] if spec.has_s else None)
    return nll


def _stats(problem: VEMProblem, params: Params):
    return star_stats(
        problem.blocks,
        tuple(p[THETA] for p in params),
        problem.index(),
        tuple(_s2(s, p) for s, p in zip(problem.specs, params, strict=True)),
        problem.k,
    )


class VState(NamedTuple):
    params: Params
    mean: Float[Array, "n k"]
    prec: Float[Array, "n k k"]


def _sweep(problem: VEMProblem, state: VState, n_inner: int) -> tuple[VState, Array]:
    """One sweep; returns the new state and the objective after its E-step."""
    if problem.fixed_latents is not None:
        loss = _fixed_nll(problem, state.params) + _neg_log_prior(problem, state.params)
        params = _m_step(problem, state.params, problem.fixed_latents, None)
        return VState(params, state.mean, state.prec), loss
    mean, prec, nelbo = e_step(
        _stats(problem, state.params), state.mean, state.prec, n_inner
    )
    loss = jnp.sum(nelbo) + _neg_log_prior(problem, state.params)
    cov = inverse_from_cholesky(cholesky(prec))
    params = _m_step(problem, state.params, mean, cov)
    return VState(params, mean, prec), loss


def _squarem_cycle(
    problem: VEMProblem, state: VState, n_inner: int
) -> tuple[VState, Array]:
    """Two sweeps and a squared extrapolation of the whole state (SQUAREM, as in
    `pollux.core.em`), then a sweep from the extrapolated state, kept when the
    objective after its E-step is no worse than after the second sweep's.

    Stars whose extrapolated precision is not positive definite keep the second
    sweep's posterior; the objective never increases.
    """
    s1, loss0 = _sweep(problem, state, n_inner)
    s2, loss1 = _sweep(problem, s1, n_inner)
    ext = squarem_point(state, s1, s2)
    params = positive_scatter(ext.params)
    L = cholesky(ext.prec)
    pd = jnp.all(jnp.isfinite(L), axis=(1, 2)) & jnp.all(jnp.isfinite(ext.mean), axis=1)
    mean = jnp.where(pd[:, None], ext.mean, s2.mean)
    prec = jnp.where(pd[:, None, None], ext.prec, s2.prec)
    from_ext, loss_ext = _sweep(problem, VState(params, mean, prec), n_inner)
    ok = jnp.isfinite(loss_ext) & (loss_ext <= loss1)
    new = jax.tree.map(lambda a, b: jnp.where(ok, a, b), from_ext, s2)
    return new, loss0


@partial(jax.jit, static_argnames=("n_steps", "n_inner", "accelerate"))
def vem_chunk(
    problem: VEMProblem,
    state: VState,
    prev_loss: Array,
    threshold: Array,
    max_steps: Array,
    n_steps: int,
    n_inner: int,
    accelerate: bool = False,
) -> tuple[VState, Float[Array, " n_steps"], Array, Array]:
    """Up to ``min(max_steps, n_steps)`` sweeps (or SQUAREM cycles) in one compiled
    loop; stops once one changes the objective by at most ``threshold``. Same
    returns as `em_chunk` (state, objective of each, number run, converged)."""
    accelerate = accelerate and problem.fixed_latents is None
    iteration = _squarem_cycle if accelerate else _sweep
    return run_until_settled(
        lambda st: iteration(problem, st, n_inner),
        state,
        prev_loss,
        threshold,
        max_steps,
        n_steps,
    )


@partial(jax.jit, static_argnames=("n_inner",))
def vem_final(
    problem: VEMProblem, state: VState, n_inner: int
) -> tuple[VState, Array, tuple[Array, ...]]:
    """E-step at the final parameters: the state, the objective, and each output's
    row covariances (inverse normal matrices of the M-step; zero where fixed)."""
    if problem.fixed_latents is None:
        mean, prec, nelbo = e_step(
            _stats(problem, state.params), state.mean, state.prec, n_inner
        )
        loss = jnp.sum(nelbo) + _neg_log_prior(problem, state.params)
        cov = inverse_from_cholesky(cholesky(prec))
    else:
        mean, prec, cov = problem.fixed_latents, state.prec, None
        loss = _fixed_nll(problem, state.params) + _neg_log_prior(problem, state.params)
    _, _, second = _feature_moments(mean, cov)
    row_covs = []
    for spec, block, ridge, idx, p in zip(
        problem.specs,
        problem.blocks,
        problem.ridges,
        problem.index(),
        state.params,
        strict=True,
    ):
        mo = len(idx)
        d = p[THETA].shape[0]
        if not spec.free:
            row_covs.append(jnp.zeros((d, mo, mo), mean.dtype))
            continue
        G = _normal_matrix(second, precisions(block, _s2(spec, p)), idx, ridge[1])
        row_covs.append(ridge_inverse(G))
    return VState(state.params, mean, prec), loss, tuple(row_covs)
