"""Deterministic starting latents from a randomized PCA of the observed outputs."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .blocks import Block

__all__ = ["pca_latents"]


def _pca(x: Float[Array, "n d"], omega: Float[Array, "d r"]) -> Array:
    q, _ = jnp.linalg.qr(x @ omega)
    for _ in range(2):  # power iterations sharpen the leading subspace
        q, _ = jnp.linalg.qr(x @ (x.T @ q))
    u_small, _, _ = jnp.linalg.svd(q.T @ x, full_matrices=False)
    return q @ u_small


@partial(jax.jit, static_argnames=("k",))
def pca_latents(blocks: tuple[Block, ...], k: int) -> Float[Array, "n k"]:
    """Leading ``k`` principal-component scores of the mean-centred outputs,
    scaled to unit variance (missing entries count as the column mean).

    Uses a randomized range finder with a fixed key: ``O(n d k)``, reproducible.
    Its QR and SVD calls (LAPACK) each take one matrix and run one after another,
    which jaxlib 0.10 handles safely (unlike concurrent batched calls: see
    `pollux.core.linalg`).
    """
    cols = []
    for b in blocks:
        count = jnp.maximum(jnp.sum(b.mask, axis=0), 1)
        mean = jnp.sum(b.y, axis=0) / count
        cols.append(jnp.where(b.mask, b.y - mean, 0.0))
    x = jnp.concatenate(cols, axis=1)
    n, d = x.shape
    r = min(k + 8, d, n)
    omega = jax.random.normal(jax.random.PRNGKey(0), (d, r), x.dtype)
    u = _pca(x, omega)[:, : min(k, r)]
    z = u * jnp.sqrt(n)
    if z.shape[1] < k:  # fewer data dimensions than latents: small fixed noise
        extra = 0.1 * jax.random.normal(jax.random.PRNGKey(1), (n, k - z.shape[1]))
        z = jnp.concatenate([z, extra.astype(z.dtype)], axis=1)
    return z
