r"""Exact Gaussian posterior of the latents when every output is affine in them.

For star :math:`n` with noise precisions :math:`\lambda_{nd} = m_{nd}/(\sigma_{nd}^2 + s_d^2)`
(:math:`m` the observed-mask) and outputs :math:`y = W z + b`,

.. math::

    P_n = \Lambda_0 + \sum_o W_o^\top \mathrm{diag}(\lambda_{no}) W_o, \qquad
    \mu_n = P_n^{-1} \sum_o W_o^\top \lambda_{no} (y_{no} - b_o), \qquad
    \Sigma_n = P_n^{-1}.

The :math:`(N, K, K)` precisions are one matrix product
:math:`\lambda\,(N{\times}D) \cdot \mathrm{vec}(W_d W_d^\top)\,(D{\times}K^2)`;
no :math:`(N, D, K)` array is formed.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .blocks import Block
from .linalg import cholesky, inverse_from_cholesky, logdet_from_cholesky

__all__ = [
    "PosteriorStats",
    "latent_posterior",
    "outer_rows",
    "posterior_moments",
    "precisions",
    "predictive",
    "second_moments",
]


class PosteriorStats(NamedTuple):
    mean: Float[Array, "n_stars k"]
    cov: Float[Array, "n_stars k k"]
    neg_log_marginal: Float[Array, ""]  # -log p(y | params), latents integrated out


def outer_rows(W: Float[Array, "d k"]) -> Float[Array, "d kk"]:
    """Row-wise outer products ``W_d W_dᵀ``, flattened to ``(d, k*k)``."""
    return (W[:, :, None] * W[:, None, :]).reshape(W.shape[0], -1)


def precisions(block: Block, s2: Array | float) -> Float[Array, "n d"]:
    """Per-entry noise precisions, zero where missing."""
    var = jnp.where(block.mask, block.err2 + s2, 1.0)
    return jnp.where(block.mask, 1.0 / var, 0.0)


def latent_posterior(
    blocks: tuple[Block, ...],
    Ws: tuple[Float[Array, "d k"], ...],
    bs: tuple[Float[Array, " d"], ...],
    s2s: tuple[Array, ...],
    prior_precision: float = 1.0,
) -> PosteriorStats:
    """Posterior mean and covariance of every star's latents, and the evidence.

    The latent prior is Normal(0, I / prior_precision) (``prior_precision=0``: flat).
    """
    n = blocks[0].y.shape[0]
    k = Ws[0].shape[1]
    dtype = blocks[0].y.dtype
    P = jnp.broadcast_to(prior_precision * jnp.eye(k, dtype=dtype), (n, k, k))
    h = jnp.zeros((n, k), dtype)
    quad = jnp.zeros((), dtype)
    logdet_noise = jnp.zeros((), dtype)
    n_obs = jnp.zeros((), dtype)
    for block, W, b, s2 in zip(blocks, Ws, bs, s2s, strict=True):
        lam = precisions(block, s2)
        r = jnp.where(block.mask, block.y - b, 0.0)
        lr = lam * r
        P = P + (lam @ outer_rows(W)).reshape(n, k, k)
        h = h + lr @ W
        quad = quad + jnp.sum(lr * r)
        logdet_noise = logdet_noise - jnp.sum(jnp.where(block.mask, jnp.log(lam), 0.0))
        n_obs = n_obs + jnp.sum(block.mask)
    L = cholesky(P)
    cov = inverse_from_cholesky(L)
    mean = jnp.einsum("nij,nj->ni", cov, h)
    logdet_P = jnp.sum(logdet_from_cholesky(L))
    # (a flat prior has no normalisation; its evidence is up to a constant)
    logdet_prior = n * k * math.log(prior_precision) if prior_precision > 0 else 0.0
    # -log N(y; b, D + W Wᵀ) via the matrix determinant lemma and Woodbury.
    nlm = 0.5 * (
        n_obs * jnp.log(2 * jnp.pi)
        + logdet_noise
        + logdet_P
        - logdet_prior
        + quad
        - jnp.sum(h * mean)
    )
    return PosteriorStats(mean, cov, nlm)


@jax.jit
def posterior_moments(
    blocks: tuple[Block, ...],
    Ws: tuple[Float[Array, "d k"], ...],
    bs: tuple[Float[Array, " d"], ...],
    s2s: tuple[Array, ...],
) -> tuple[Float[Array, "n k"], Float[Array, "n k k"]]:
    """Jitted `latent_posterior` under a unit Normal prior: ``(mean, cov)``."""
    post = latent_posterior(blocks, Ws, bs, s2s)
    return post.mean, post.cov


def second_moments(
    mean: Float[Array, "n k"], cov: Float[Array, "n k k"] | None, with_one: bool
) -> tuple[Float[Array, "n kt"], Float[Array, "n kt kt"]]:
    """``E[z̃]`` and ``E[z̃ z̃ᵀ]`` with ``z̃ = (z, 1)`` when ``with_one``, else ``z``."""
    second = mean[:, :, None] * mean[:, None, :]
    if cov is not None:
        second = second + cov
    if not with_one:
        return mean, second
    n = mean.shape[0]
    ones = jnp.ones((n, 1), mean.dtype)
    first = jnp.concatenate([mean, ones], axis=1)
    top = jnp.concatenate([second, mean[:, :, None]], axis=2)
    bottom = first[:, None, :]
    return first, jnp.concatenate([top, bottom], axis=1)


@jax.jit
def predictive(
    mean: Float[Array, "n k"],
    cov: Float[Array, "n k k"],
    W: Float[Array, "d k"],
    b: Float[Array, " d"],
    s2: Array,
    row_cov: Float[Array, "d kt kt"] | None,
) -> tuple[Float[Array, "n d"], Float[Array, "n d"]]:
    r"""Predictive mean and standard deviation of ``y = W z + b`` (+ scatter ``s``).

    .. math::

        \operatorname{var}_{nd} = W_d \Sigma_n W_d^\top + s_d^2
            + E[\tilde z_n]^\top C_d E[\tilde z_n] + \operatorname{tr}(C_d \Sigma_n)

    where ``row_cov`` :math:`C_d` is the covariance of the row :math:`(W_d, b_d)`
    (None: exactly known rows).
    """
    n, k = mean.shape
    var = cov.reshape(n, -1) @ outer_rows(W).T + s2
    if row_cov is not None:  # uncertainty of the trained rows (W_d, b_d)
        _, second = second_moments(mean, cov, with_one=row_cov.shape[-1] > k)
        var = var + second.reshape(n, -1) @ row_cov.reshape(row_cov.shape[0], -1).T
    return mean @ W.T + b, jnp.sqrt(var)
