"""Data blocks as the numerical kernels see them, and the masked Gaussian likelihood."""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float

__all__ = ["Block", "gaussian_loglike", "make_block"]


class Block(NamedTuple):
    """One output in kernel form; missing entries have ``mask`` False and ``y`` 0."""

    y: Float[Array, "n_stars n_dim"]
    err2: Float[Array, "n_stars n_dim"]
    mask: Bool[Array, "n_stars n_dim"]


def make_block(
    y: Float[ArrayLike, "n_stars n_dim"], err: Float[ArrayLike, "n_stars n_dim"] | None
) -> Block:
    """Masked arrays for the likelihood: NaN data or infinite error -> missing.

    ``err=None`` means no reported errors (variance zero, only an extra scatter).

    >>> import numpy as np
    >>> b = make_block(np.array([[1.0, np.nan]]), np.array([[0.5, 0.5]]))
    >>> b.y.tolist(), b.err2.tolist(), b.mask.tolist()
    ([[1.0, 0.0]], [[0.25, 0.0]], [[True, False]])
    """
    y = jnp.asarray(y)
    mask = ~jnp.isnan(y)
    if err is None:
        err2 = jnp.zeros_like(y)
    else:
        err = jnp.asarray(err)
        mask = mask & jnp.isfinite(err)
        err2 = jnp.where(mask, err**2, 0.0).astype(y.dtype)
    return Block(jnp.where(mask, y, 0.0), err2, mask)


def gaussian_loglike(
    block: Block, pred: Float[Array, "n_stars n_dim"], s: Array | None
) -> Float[Array, ""]:
    """Sum of Normal log-densities over observed entries, variance ``err² + s²``."""
    var = block.err2 if s is None else block.err2 + jnp.square(s)
    var = jnp.where(block.mask, var, 1.0)
    resid = jnp.where(block.mask, block.y - pred, 0.0)
    terms = -0.5 * (resid**2 / var + jnp.log(2 * jnp.pi * var))
    return jnp.sum(jnp.where(block.mask, terms, 0.0))
