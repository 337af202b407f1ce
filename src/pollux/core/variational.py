r"""Gaussian posteriors of the latents for outputs polynomial in them.

Every output is linear in the features :math:`\phi(z)` (`features`), so for fixed
parameters the data enter each star's problem only through

.. math::

    R_n = \sum_{o,d} \lambda_{nd}\, \theta_d \theta_d^\top, \qquad
    h_n = \sum_{o,d} \lambda_{nd}\, y_{nd}\, \theta_d, \qquad
    c_n = \sum_{o,d} \lambda_{nd}\, y_{nd}^2

(`StarStats`, one :math:`(N{\times}D)\cdot(D{\times}M^2)` product per output), and
:math:`\sum_d \lambda_{nd} (y_{nd} - f_d(z))^2 = c_n - 2 h_n^\top\phi + \phi^\top R_n\phi`.
Under :math:`q(z_n) = N(\mu_n, \Sigma_n)` its expectation is closed-form
(:math:`E[\phi]`, :math:`\operatorname{cov}\phi` from `moments`), which gives the
evidence lower bound of each star

.. math::

    \mathcal{L}_n = -\tfrac12\big[c_n - 2 h_n^\top E\phi
        + E\phi^\top R_n E\phi + \operatorname{tr}(R_n \operatorname{cov}\phi)\big]
        - \tfrac12 \sum_{o,d} \log(2\pi/\lambda_{nd})
        - \mathrm{KL}\big(q \,\|\, N(0, I)\big).

`e_step` raises it star by star with natural-gradient steps (Stein's lemma turns
the gradients of the closed-form expectation into :math:`E_q[\nabla\log p]` and
:math:`E_q[\nabla^2\log p]`); a step is kept only where it raises
:math:`\mathcal{L}_n`. `map_modes` finds each star's posterior mode by Gauss–Newton
from several starting points. For affine outputs the bound is the exact evidence.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

from .blocks import Block
from .features import features, moments, n_features, outer_packed, sym_unpack
from .linalg import cho_solve, cholesky, inverse_from_cholesky, logdet_from_cholesky
from .posterior import precisions

__all__ = [
    "StarStats",
    "e_step",
    "map_modes",
    "neg_elbo",
    "star_stats",
]

_STEPS = (1.0, 0.5, 0.2)  # natural-gradient step sizes tried in each E-step update


class StarStats(NamedTuple):
    """Sufficient statistics of each star's likelihood in feature space."""

    R: Float[Array, "n m m"]
    h: Float[Array, "n m"]
    c: Float[Array, " n"]
    lognorm: Float[Array, " n"]  # ½ Σ_d log(2π / λ_nd) over observed entries


def star_stats(
    blocks: tuple[Block, ...],
    thetas: tuple[Float[Array, "d mo"], ...],
    index: tuple[np.ndarray, ...],
    s2s: tuple[Array, ...],
    k: int,
) -> StarStats:
    """`StarStats` of outputs with feature weights ``thetas`` on the features
    ``index`` (positions in ``φ``) and extra scatter ``s2s``."""
    n = blocks[0].values.shape[0]
    m = n_features(k)
    dtype = blocks[0].values.dtype
    R = jnp.zeros((n, m, m), dtype)
    h = jnp.zeros((n, m), dtype)
    c = jnp.zeros((n,), dtype)
    lognorm = jnp.zeros((n,), dtype)
    for block, theta, idx, s2 in zip(blocks, thetas, index, s2s, strict=True):
        lam = precisions(block, s2)
        mo = theta.shape[1]
        Ro = sym_unpack(lam @ outer_packed(theta), mo)
        R = R.at[:, idx[:, None], idx[None, :]].add(Ro)
        h = h.at[:, idx].add((lam * block.y) @ theta)
        c = c + jnp.sum(lam * block.y**2, axis=1)
        safe = jnp.where(block.mask, lam, 1.0)
        lognorm = lognorm + 0.5 * jnp.sum(
            jnp.where(block.mask, math.log(2 * math.pi) - jnp.log(safe), 0.0), axis=1
        )
    return StarStats(R, h, c, lognorm)


def _expected_nll(stats: StarStats, mean: Array, cov: Array | None) -> Array:
    """``E_q[-log p(y_n | z)]`` of each star (``cov=None``: at the point ``mean``)."""
    Ephi, cov_phi = moments(mean, cov)
    quad = jnp.einsum("nm,nml,nl->n", Ephi, stats.R, Ephi)
    if cov_phi is not None:
        quad = quad + jnp.sum(stats.R * cov_phi, axis=(1, 2))
    return 0.5 * (stats.c - 2 * jnp.sum(stats.h * Ephi, axis=1) + quad) + stats.lognorm


def neg_elbo(
    stats: StarStats,
    mean: Float[Array, "n k"],
    cov: Float[Array, "n k k"],
    logdet_cov: Float[Array, " n"],
) -> Float[Array, " n"]:
    """``-𝓛_n`` of each star under ``q = N(mean, cov)`` and a unit Normal prior."""
    k = mean.shape[1]
    kl = 0.5 * (
        jnp.trace(cov, axis1=1, axis2=2) + jnp.sum(mean**2, axis=1) - k - logdet_cov
    )
    return _expected_nll(stats, mean, cov) + kl


def _evaluate(stats: StarStats, mean: Array, prec: Array) -> tuple[Array, Array]:
    """``(-𝓛_n, cov)`` for a precision; ``+inf`` where it is not positive definite."""
    L = cholesky(prec)
    cov = inverse_from_cholesky(L)
    val = neg_elbo(stats, mean, cov, -logdet_from_cholesky(L))
    ok = jnp.isfinite(val) & jnp.all(jnp.isfinite(cov), axis=(1, 2))
    return jnp.where(ok, val, jnp.inf), cov


def e_step(
    stats: StarStats,
    mean: Float[Array, "n k"],
    prec: Float[Array, "n k k"],
    n_steps: int,
) -> tuple[Float[Array, "n k"], Float[Array, "n k k"], Float[Array, " n"]]:
    r"""Raise every star's bound with ``n_steps`` natural-gradient updates.

    With :math:`g = E_q[\nabla \log p(y, z)]` and
    :math:`H = E_q[-\nabla^2 \log p(y, z)]` (Stein's lemma: the gradients of the
    closed-form expectation in :math:`\mu` and :math:`2\times` in :math:`\Sigma`),
    a step of size :math:`\rho` is :math:`\Lambda' = (1-\rho)\Lambda + \rho H`,
    :math:`\mu' = \mu + \rho\,\Lambda'^{-1} g`. Of the step sizes in ``_STEPS``
    the best is kept where it raises :math:`\mathcal{L}_n` (never lowers it).

    Returns ``(mean, precision, -𝓛_n)``.
    """
    k = mean.shape[1]
    eye = jnp.eye(k, dtype=mean.dtype)

    def total_nll(mu, cov):
        return jnp.sum(_expected_nll(stats, mu, cov))

    grad_nll = jax.grad(total_nll, argnums=(0, 1))

    def update(_, state):
        mu, lam, cur = state
        cov = inverse_from_cholesky(cholesky(lam))
        g_mu, g_cov = grad_nll(mu, cov)
        g = -g_mu - mu
        H = eye + g_cov + jnp.swapaxes(g_cov, 1, 2)
        for rho in _STEPS:
            lam_r = (1 - rho) * lam + rho * H
            L = cholesky(lam_r)
            mu_r = mu + rho * cho_solve(L, g)
            val, _ = _evaluate(stats, mu_r, lam_r)
            better = val < cur
            mu = jnp.where(better[:, None], mu_r, mu)
            lam = jnp.where(better[:, None, None], lam_r, lam)
            cur = jnp.where(better, val, cur)
        return mu, lam, cur

    cur, _ = _evaluate(stats, mean, prec)
    return jax.lax.fori_loop(0, n_steps, update, (mean, prec, cur))


def _feature_jacobian(z: Float[Array, "n k"]) -> Float[Array, "n m k"]:
    return jax.vmap(jax.jacfwd(lambda x: features(x[None])[0]))(z)


class Modes(NamedTuple):
    mean: Float[Array, "n k"]
    prec: Float[Array, "n k k"]  # Gauss–Newton precision at the mode
    multimodal: Bool[Array, " n"]


def map_modes(
    stats: StarStats,
    starts: Float[Array, "s k"] | Float[Array, "s n k"],
    n_iter: int,
    prior_precision: float = 1.0,
    delta: float = 2.0,
    distance: float = 3.0,
) -> Modes:
    r"""Posterior modes of every star by Gauss–Newton from several starting points.

    Minimises :math:`j(z) = \tfrac12(\phi^\top R\phi - 2h^\top\phi)
    + \tfrac{p_0}{2}|z|^2` with steps :math:`-(J^\top R J + p_0 I)^{-1}\nabla j`
    (``J = ∂φ/∂z``) halved until :math:`j` decreases, from each row of ``starts``;
    keeps the best. A star is ``multimodal`` when another start ends within
    ``delta`` of the best :math:`j` but more than ``distance`` posterior standard
    deviations (Mahalanobis, Gauss–Newton precision) away from it.
    """
    n, k = stats.h.shape[0], starts.shape[-1]
    eye = jnp.eye(k, dtype=stats.h.dtype)

    def objective(z):
        phi = features(z)
        quad = jnp.einsum("nm,nml,nl->n", phi, stats.R, phi)
        return 0.5 * (quad - 2 * jnp.sum(stats.h * phi, axis=1)) + 0.5 * (
            prior_precision * jnp.sum(z**2, axis=1)
        )

    def gn_system(z):
        phi = features(z)
        J = _feature_jacobian(z)
        RJ = jnp.einsum("nml,nlk->nmk", stats.R, J)
        resid = jnp.einsum("nml,nl->nm", stats.R, phi) - stats.h
        grad = jnp.einsum("nmk,nm->nk", J, resid) + prior_precision * z
        H = jnp.einsum("nmi,nmj->nij", J, RJ) + prior_precision * eye
        return grad, H

    def descend(z0):
        def step(_, state):
            z, cur = state
            grad, H = gn_system(z)
            direction = -cho_solve(cholesky(H), grad)
            for alpha in (1.0, 0.5, 0.25, 0.125):
                cand = z + alpha * direction
                val = objective(cand)
                better = jnp.isfinite(val) & (val < cur)
                z = jnp.where(better[:, None], cand, z)
                cur = jnp.where(better, val, cur)
            return z, cur

        z = jnp.broadcast_to(z0, (n, k))
        return jax.lax.fori_loop(0, n_iter, step, (z, objective(z)))

    zs, vals = jax.lax.map(descend, starts)  # (s, n, k), (s, n)
    best = jnp.argmin(vals, axis=0)
    z_best = jnp.take_along_axis(zs, best[None, :, None], axis=0)[0]
    v_best = jnp.min(vals, axis=0)
    _, H = gn_system(z_best)
    diff = zs - z_best[None]
    maha = jnp.einsum("snk,nkl,snl->sn", diff, H, diff)
    rival = (vals <= v_best[None] + delta) & (maha > distance**2)
    return Modes(z_best, H, jnp.any(rival, axis=0))
