r"""Star chunks: loops over blocks of rows inside a compiled program.

A kernel that touches ``(N, D)`` data does it ``size`` stars at a time, so its
intermediates are ``(size, D)`` instead of ``(N, D)``. The chunks are slices of the
caller's arrays (no padded copy): the last one starts at ``N - size`` and overlaps
the one before; `chunk_rows` marks the rows an earlier chunk already covered as not
``valid``, and kernels treat them as missing data (they add exactly zero to every
sum) and leave their stored results untouched.

Sums over chunks are Kahan-compensated (`Accumulator`): inside a chunk the matrix
products and reductions accumulate in the working precision over ``size`` stars,
across chunks the rounding error does not grow with their number, so float32 sums
over 10⁵ stars keep about float32's precision.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Int

from .blocks import Block

__all__ = [
    "DEFAULT_MEMORY",
    "Accumulator",
    "auto_chunk_size",
    "bucket",
    "chunk_rows",
    "fold_chunks",
    "n_chunks",
    "pad_block",
    "pad_rows",
    "put_rows",
    "take_block",
    "take_rows",
]


DEFAULT_MEMORY = 512 * 2**20  # bytes of intermediates per chunk


def auto_chunk_size(
    n: int, width: int, k: int, itemsize: int, budget: int = DEFAULT_MEMORY
) -> int:
    """Stars per chunk whose intermediates fit in ``budget`` bytes: about eight
    ``(stars, width)`` arrays (``width``: a star's values over all outputs) and four
    ``(stars, K+1, K+1)`` ones.

    >>> auto_chunk_size(100_000, 7214 + 4, 32, 4)
    2161
    """
    per_star = itemsize * (8 * width + 4 * (k + 1) ** 2)
    return int(max(1, min(n, budget // per_star)))


def n_chunks(n: int, size: int) -> int:
    """Number of chunks of ``size`` rows that cover ``n`` rows.

    >>> n_chunks(10, 4)
    3
    """
    return -(-n // size)


def bucket(n: int) -> int:
    """The smallest of 8, 12, 16, 24, 32, 48, … (``2^j`` and ``3·2^j``) that is ≥ ``n``.

    Padding a number of stars (above 8) to its bucket adds at most half as many
    rows and leaves two shapes per doubling, so that problems of similar sizes share
    their compiled programs.

    >>> [bucket(n) for n in (1, 8, 9, 13, 100, 1024, 1025)]
    [8, 8, 12, 16, 128, 1024, 1536]
    """
    size = 8
    while True:
        if n <= size:
            return size
        if n <= size + size // 2:
            return size + size // 2
        size *= 2


def pad_rows(x: Array, n: int, fill: float) -> Array:
    """``x`` with rows of ``fill`` appended up to ``n`` rows (``x`` itself when it has
    them already)."""
    if n <= x.shape[0]:
        return x
    return _padded(x, n, fill)


@partial(jax.jit, static_argnames="n")
def _padded(x: Array, n: int, fill: float) -> Array:
    # (one program: eager concatenate and full would compile three small ones)
    extra = jnp.full((n - x.shape[0], *x.shape[1:]), fill, x.dtype)
    return jnp.concatenate([x, extra])


def pad_block(block: Block, n: int) -> Block:
    """A `Block` padded to ``n`` stars with missing data (they add exactly zero to
    every sum of the kernels)."""
    errors = None if block.errors is None else pad_rows(block.errors, n, jnp.inf)
    return Block(pad_rows(block.values, n, jnp.nan), errors)


def chunk_rows(
    i: Int[Array, ""] | int, size: int, n: int
) -> tuple[Int[Array, ""], Bool[Array, " size"]]:
    """``(start, valid)`` of chunk ``i``: rows ``start .. start + size`` of an
    ``(n, ...)`` array, ``valid`` False for rows an earlier chunk covered.

    >>> start, valid = chunk_rows(2, 4, 10)
    >>> int(start), valid.tolist()
    (6, [False, False, True, True])
    """
    start = jnp.minimum(i * size, n - size)
    return start, start + jnp.arange(size) >= i * size


def take_rows(x: Array, start: Array, size: int) -> Array:
    """Rows ``start .. start + size`` of ``x``."""
    return jax.lax.dynamic_slice_in_dim(x, start, size, axis=0)


def put_rows(
    buf: Array, new: Array, start: Array, valid: Bool[Array, " size"]
) -> Array:
    """``buf`` with its rows ``start .. start + size`` replaced by ``new`` where valid."""
    valid = valid.reshape(valid.shape + (1,) * (new.ndim - 1))
    old = take_rows(buf, start, new.shape[0])
    return jax.lax.dynamic_update_slice_in_dim(
        buf, jnp.where(valid, new, old), start, axis=0
    )


def take_block(block: Block, start: Array, size: int, valid: Array) -> Block:
    """The chunk of a `Block`, rows that are not ``valid`` marked missing."""
    values = take_rows(block.values, start, size)
    errors = None if block.errors is None else take_rows(block.errors, start, size)
    return Block(jnp.where(valid[:, None], values, jnp.nan), errors)


def fold_chunks(
    body: Callable[[Array, Array, Any], Any], n: int, size: int, init: Any
) -> Any:
    """``carry = body(start, valid, carry)`` over the chunks of ``n`` rows, in a
    ``fori_loop`` (one call, no loop, when one chunk covers them)."""
    if size >= n:
        return body(jnp.asarray(0), jnp.ones(n, bool), init)
    return jax.lax.fori_loop(
        0, n_chunks(n, size), lambda i, c: body(*chunk_rows(i, size, n), c), init
    )


class Accumulator(NamedTuple):
    """Kahan-compensated running sum of a pytree of arrays.

    >>> acc = Accumulator.zeros(jnp.zeros((), jnp.float32))
    >>> for _ in range(1000):
    ...     acc = acc.add(jnp.float32(0.1))
    >>> float(acc.total)  # a plain float32 sum gives 99.99905
    100.0
    """

    total: Any
    carry: Any

    @classmethod
    def zeros(cls, like: Any) -> Accumulator:
        zero = jax.tree.map(jnp.zeros_like, like)
        return cls(zero, zero)

    def add(self, x: Any) -> Accumulator:
        y = jax.tree.map(jnp.subtract, x, self.carry)
        t = jax.tree.map(jnp.add, self.total, y)
        c = jax.tree.map(lambda t_, s, y_: (t_ - s) - y_, t, self.total, y)
        return Accumulator(t, c)
