r"""Exact Gaussian posterior of the latents when every output is affine in them.

For star :math:`n` with noise precisions :math:`\lambda_{nd} = m_{nd}/(\sigma_{nd}^2 + s_d^2)`
(:math:`m` the observed-mask) and outputs :math:`y = W z + b`,

.. math::

    P_n = \Lambda_0 + \sum_o W_o^\top \mathrm{diag}(\lambda_{no}) W_o, \qquad
    \mu_n = P_n^{-1} \sum_o W_o^\top \lambda_{no} (y_{no} - b_o), \qquad
    \Sigma_n = P_n^{-1}.

The :math:`(N, K, K)` precisions are one matrix product
:math:`\lambda\,(N{\times}D) \cdot \mathrm{vech}(W_d W_d^\top)\,(D{\times}K(K+1)/2)`
over the upper triangles of the symmetric outer products (half the work of the full
:math:`K^2`); no :math:`(N, D, K)` array is formed. The jitted entry points work
``chunk_size`` stars at a time (`pollux.core.chunks`).
"""

from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .blocks import Block
from .chunks import fold_chunks, put_rows, take_block, take_rows
from .features import outer_packed, sym_pack, sym_unpack
from .linalg import cholesky, inverse_from_cholesky, logdet_from_cholesky

__all__ = [
    "PosteriorStats",
    "cov_quadratic_form",
    "latent_posterior",
    "posterior_moments",
    "precisions",
    "predictive",
    "second_moments",
]


class PosteriorStats(NamedTuple):
    mean: Float[Array, "n_stars k"]
    cov: Float[Array, "n_stars k k"]
    neg_log_marginal: Float[Array, ""]  # -log p(y | params), latents integrated out


def cov_quadratic_form(
    cov: Float[Array, "n k k"], W: Float[Array, "d k"]
) -> Float[Array, "n d"]:
    """``W_d Σ_n W_dᵀ`` for every star and row: one product over packed triangles.

    >>> import numpy as np
    >>> cov = np.array([[[2.0, 0.5], [0.5, 1.0]]]); W = np.array([[1.0, 3.0]])
    >>> cov_quadratic_form(cov, W).tolist()
    [[14.0]]
    """
    return sym_pack(cov, doubled=True) @ outer_packed(W).T


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
    n = blocks[0].values.shape[0]
    k = Ws[0].shape[1]
    dtype = blocks[0].values.dtype
    P = jnp.broadcast_to(prior_precision * jnp.eye(k, dtype=dtype), (n, k, k))
    h = jnp.zeros((n, k), dtype)
    quad = jnp.zeros((), dtype)
    logdet_noise = jnp.zeros((), dtype)
    n_obs = jnp.zeros((), dtype)
    for block, W, b, s2 in zip(blocks, Ws, bs, s2s, strict=True):
        lam = precisions(block, s2)
        r = jnp.where(block.mask, block.y - b, 0.0)
        lr = lam * r
        P = P + sym_unpack(lam @ outer_packed(W), k)
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


@partial(jax.jit, static_argnames="chunk_size")
def posterior_moments(
    blocks: tuple[Block, ...],
    Ws: tuple[Float[Array, "d k"], ...],
    bs: tuple[Float[Array, " d"], ...],
    s2s: tuple[Array, ...],
    chunk_size: int | None = None,
) -> tuple[Float[Array, "n k"], Float[Array, "n k k"]]:
    """Jitted `latent_posterior` under a unit Normal prior: ``(mean, cov)``,
    ``chunk_size`` stars at a time (None: all at once)."""
    n, k = blocks[0].values.shape[0], Ws[0].shape[1]
    size = n if chunk_size is None else min(chunk_size, n)
    dtype = blocks[0].values.dtype

    def body(start, valid, carry):
        mean, cov = carry
        chunk = tuple(take_block(b, start, size, valid) for b in blocks)
        post = latent_posterior(chunk, Ws, bs, s2s)
        return put_rows(mean, post.mean, start, valid), put_rows(
            cov, post.cov, start, valid
        )

    init = (jnp.zeros((n, k), dtype), jnp.zeros((n, k, k), dtype))
    return fold_chunks(body, n, size, init)


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


@partial(jax.jit, static_argnames="chunk_size")
def predictive(
    mean: Float[Array, "n k"],
    cov: Float[Array, "n k k"],
    W: Float[Array, "d k"],
    b: Float[Array, " d"],
    s2: Array,
    row_cov: Float[Array, "d kt kt"] | None,
    chunk_size: int | None = None,
) -> tuple[Float[Array, "n d"], Float[Array, "n d"]]:
    r"""Predictive mean and standard deviation of ``y = W z + b`` (+ scatter ``s``).

    .. math::

        \operatorname{var}_{nd} = W_d \Sigma_n W_d^\top + s_d^2
            + E[\tilde z_n]^\top C_d E[\tilde z_n] + \operatorname{tr}(C_d \Sigma_n)

    where ``row_cov`` :math:`C_d` is the covariance of the row :math:`(W_d, b_d)`
    (None: exactly known rows). Computed ``chunk_size`` stars at a time (None: all
    at once).
    """
    n, k = mean.shape
    size = n if chunk_size is None else min(chunk_size, n)
    if row_cov is not None:  # uncertainty of the trained rows (W_d, b_d)
        with_one = row_cov.shape[-1] > k
        row_cov = sym_pack(row_cov)

    def moments(m, c):
        var = cov_quadratic_form(c, W) + s2
        if row_cov is not None:
            _, second = second_moments(m, c, with_one=with_one)
            var = var + sym_pack(second, doubled=True) @ row_cov.T
        return m @ W.T + b, jnp.sqrt(var)

    def body(start, valid, carry):
        mu, sd = moments(take_rows(mean, start, size), take_rows(cov, start, size))
        return put_rows(carry[0], mu, start, valid), put_rows(
            carry[1], sd, start, valid
        )

    d = W.shape[0]
    dtype = jnp.result_type(mean, W)
    init = (jnp.zeros((n, d), dtype), jnp.zeros((n, d), dtype))
    return fold_chunks(body, n, size, init)
