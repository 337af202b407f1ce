"""Data blocks as the numerical kernels see them, and the masked Gaussian likelihood."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float

__all__ = ["Block", "count_observed", "gaussian_loglike", "make_block"]


class Block(NamedTuple):
    """One output in kernel form: the caller's arrays, not copies of them.

    ``values`` are NaN where missing and ``errors`` (standard deviations; None:
    no reported errors) infinite or NaN where missing. The kernels read the
    derived ``mask``, ``y`` (0 where missing) and ``err2`` (0 where missing),
    which XLA computes inside each fused loop (or chunk) instead of storing three
    more ``(N, D)`` arrays.
    """

    values: Float[Array, "n_stars n_dim"]
    errors: Float[Array, "n_stars n_dim"] | None

    @property
    def mask(self) -> Bool[Array, "n_stars n_dim"]:
        """Observed entries."""
        observed = ~jnp.isnan(self.values)
        if self.errors is None:
            return observed
        return observed & jnp.isfinite(self.errors)

    @property
    def y(self) -> Float[Array, "n_stars n_dim"]:
        """Values, zero where missing."""
        return jnp.where(self.mask, self.values, 0.0)

    @property
    def err2(self) -> Float[Array, "n_stars n_dim"]:
        """Squared errors, zero where missing (all zero without errors)."""
        if self.errors is None:
            return jnp.zeros_like(self.values)
        return jnp.where(self.mask, jnp.square(self.errors), 0.0)


def make_block(
    y: Float[ArrayLike, "n_stars n_dim"], err: Float[ArrayLike, "n_stars n_dim"] | None
) -> Block:
    """A `Block` of arrays (no copy when they are already arrays of the dtype of
    ``y``): NaN data or non-finite error -> missing; ``err=None`` means no
    reported errors (variance zero, only an extra scatter).

    >>> import numpy as np
    >>> b = make_block(np.array([[1.0, np.nan]]), np.array([[0.5, 0.5]]))
    >>> b.y.tolist(), b.err2.tolist(), b.mask.tolist()
    ([[1.0, 0.0]], [[0.25, 0.0]], [[True, False]])
    """
    y = jnp.asarray(y)
    return Block(y, None if err is None else jnp.asarray(err, y.dtype))


@jax.jit
def count_observed(blocks: tuple[Block, ...]) -> Array:
    """Observed values in all ``blocks`` (in their dtype)."""
    return sum(jnp.sum(b.mask, dtype=b.values.dtype) for b in blocks)


def gaussian_loglike(
    block: Block, pred: Float[Array, "n_stars n_dim"], s: Array | None
) -> Float[Array, ""]:
    """Sum of Normal log-densities over observed entries, variance ``err² + s²``."""
    var = block.err2 if s is None else block.err2 + jnp.square(s)
    var = jnp.where(block.mask, var, 1.0)
    resid = jnp.where(block.mask, block.y - pred, 0.0)
    terms = -0.5 * (resid**2 / var + jnp.log(2 * jnp.pi * var))
    return jnp.sum(jnp.where(block.mask, terms, 0.0))
