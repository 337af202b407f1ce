"""Deterministic starting latents from a randomized PCA of the observed outputs."""

from __future__ import annotations

from functools import partial, reduce
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .blocks import Block
from .chunks import Accumulator, fold_chunks, put_rows, take_block, take_rows

__all__ = ["pca_latents", "pca_scores"]


class _Centred:
    """Products with the mean-centred, zero-filled outputs ``X`` (N, D), read in
    chunks of stars so that ``X`` itself is never stored."""

    def __init__(self, blocks: tuple[Block, ...], size: int):
        self.blocks, self.size = blocks, size
        self.n = blocks[0].values.shape[0]
        self.d = sum(b.values.shape[1] for b in blocks)
        self.dtype = blocks[0].values.dtype

        def sums(start, valid, acc):
            chunk = self._chunk(start, valid)
            seen = reduce(jnp.logical_or, [b.mask.any(axis=1) for b in chunk])
            columns = tuple(
                (jnp.sum(b.y, axis=0), jnp.sum(b.mask, axis=0, dtype=self.dtype))
                for b in chunk
            )
            return acc.add((columns, jnp.sum(seen, dtype=self.dtype)))

        zeros = tuple(
            (
                jnp.zeros(b.values.shape[1], self.dtype),
                jnp.zeros(b.values.shape[1], self.dtype),
            )
            for b in blocks
        )
        init = Accumulator.zeros((zeros, jnp.zeros((), self.dtype)))
        totals, n_seen = fold_chunks(sums, self.n, size, init).total
        self.means = tuple(s / jnp.maximum(c, 1) for s, c in totals)
        self.n_seen = jnp.maximum(n_seen, 1)  # stars with any observed value

    def _chunk(self, start, valid):
        return tuple(take_block(b, start, self.size, valid) for b in self.blocks)

    def _x(self, start, valid):
        chunk = self._chunk(start, valid)
        return jnp.concatenate(
            [
                jnp.where(b.mask, b.y - m, 0.0)
                for b, m in zip(chunk, self.means, strict=True)
            ],
            axis=1,
        )

    def matmul(self, v: Float[Array, "d r"]) -> Float[Array, "n r"]:
        """``X @ v``."""

        def body(start, valid, out):
            return put_rows(out, self._x(start, valid) @ v, start, valid)

        init = jnp.zeros((self.n, v.shape[1]), self.dtype)
        return fold_chunks(body, self.n, self.size, init)

    def rmatmul(self, q: Float[Array, "n r"]) -> Float[Array, "d r"]:
        """``Xᵀ @ q``."""

        def body(start, valid, acc):  # rows not valid are zero in _x
            return acc.add(self._x(start, valid).T @ take_rows(q, start, self.size))

        init = Accumulator.zeros(jnp.zeros((self.d, q.shape[1]), self.dtype))
        return fold_chunks(body, self.n, self.size, init).total


def pca_scores(x: Any, k: int) -> Float[Array, "n k"]:
    """The randomized PCA of `pca_latents` from products with the centred data.

    ``x`` has ``n``, ``d``, ``dtype``, ``n_seen`` (stars with data) and the
    products ``matmul(v) = X v`` and ``rmatmul(q) = Xᵀ q``: computed in chunks
    here, or on the chunks of Dask arrays (`pollux.fit.backends`), so that both
    start from the same latents. Its QR and SVD calls (LAPACK) each take one
    matrix and run one after another, which jaxlib 0.10 handles safely (unlike
    concurrent batched calls: see `pollux.core.linalg`).
    """
    n, d = x.n, x.d
    r = min(k + 8, d, n)
    omega = jax.random.normal(jax.random.PRNGKey(0), (d, r), x.dtype)
    q, _ = jnp.linalg.qr(x.matmul(omega))
    for _ in range(2):  # power iterations sharpen the leading subspace
        q, _ = jnp.linalg.qr(x.matmul(x.rmatmul(q)))
    u_small, _, _ = jnp.linalg.svd(x.rmatmul(q).T, full_matrices=False)
    z = (q @ u_small)[:, : min(k, r)] * jnp.sqrt(x.n_seen)
    if z.shape[1] < k:  # fewer data dimensions than latents: small fixed noise
        extra = 0.1 * jax.random.normal(jax.random.PRNGKey(1), (n, k - z.shape[1]))
        z = jnp.concatenate([z, extra.astype(z.dtype)], axis=1)
    return z


@partial(jax.jit, static_argnames=("k", "chunk_size"))
def pca_latents(
    blocks: tuple[Block, ...], k: int, chunk_size: int | None = None
) -> Float[Array, "n k"]:
    """Leading ``k`` principal-component scores of the mean-centred outputs,
    scaled to unit variance over the stars with data (missing entries count as the
    column mean; stars without any observed value, such as padding, do not count
    in that variance).

    Uses a randomized range finder with a fixed key (`pca_scores`): ``O(n d k)``,
    reproducible; the data are read ``chunk_size`` stars at a time (None: all at
    once).
    """
    n = blocks[0].values.shape[0]
    return pca_scores(
        _Centred(blocks, n if chunk_size is None else min(chunk_size, n)), k
    )
