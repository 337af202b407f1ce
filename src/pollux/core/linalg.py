r"""Batched Cholesky factorisation and triangular solves for small matrices, written
with plain array operations (no LAPACK calls).

Why not ``jnp.linalg.cholesky`` / ``jax.scipy.linalg.cho_solve``: on the CPU,
jaxlib 0.10 runs those as LAPACK kernels that split their batch over XLA's thread
pool and block a pool thread until the pieces are done; a program with as many
independent batched calls as the pool has threads then deadlocks
(``docs/troubleshooting.md``, ``benchmarks/xla_cpu_hang.py``). pollux's matrices
are K×K with K ≲ 100 and come in batches of one per star or per pixel, so a loop
over the K columns, each step vectorised over the batch, costs
:math:`O(B K^3)` like LAPACK and is negligible next to the :math:`(N{\times}D)
\cdot(D{\times}K^2)` products of an EM sweep.

Each loop is a ``lax.fori_loop`` (compile time independent of K; unrolling was
measured to multiply the compile time of a fit by 2-3 for little gain). Each of
its K steps reads the whole batch, so a batch much larger than the CPU's cache is
better factorised a cache-sized slice at a time (`map_batch`: 3-4x faster for
7,214 matrices of 28x28).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

__all__ = [
    "cho_solve",
    "cholesky",
    "inverse_from_cholesky",
    "logdet_from_cholesky",
    "map_batch",
    "solve_lower",
    "solve_upper_t",
]


def cholesky(A: Float[Array, "*batch m m"]) -> Float[Array, "*batch m m"]:
    r"""Lower Cholesky factor ``L`` (``A = L Lᵀ``) of each symmetric positive
    definite matrix in the batch (only the lower triangle of ``A`` is read).

    Column by column (Cholesky–Crout): :math:`v = A_{:,j} - L L_{j,:}^\top`,
    :math:`L_{jj} = \sqrt{v_j}`, :math:`L_{i>j,\,j} = v_i / L_{jj}`. A matrix that is
    not positive definite gives NaN, as LAPACK's does in JAX.

    >>> import numpy as np
    >>> A = np.array([[4.0, 2.0], [2.0, 3.0]])
    >>> np.allclose(cholesky(A), np.linalg.cholesky(A))
    True
    """
    A = jnp.asarray(A)
    m = A.shape[-1]
    rows = jnp.arange(m)

    def column(j, L):
        v = A[..., :, j] - jnp.einsum("...ik,...k->...i", L, L[..., j, :])
        d = jnp.sqrt(v[..., j])
        col = jnp.where(rows > j, v / d[..., None], 0.0)
        col = jnp.where(rows == j, d[..., None], col)
        return L.at[..., :, j].set(col)

    return jax.lax.fori_loop(0, m, column, jnp.zeros_like(A))


def solve_lower(
    L: Float[Array, "*batch m m"], B: Float[Array, "*batch m r"]
) -> Float[Array, "*batch m r"]:
    """``L⁻¹ B`` for lower-triangular ``L`` (forward substitution, row by row).

    >>> import numpy as np
    >>> L = np.array([[2.0, 0.0], [1.0, 3.0]])
    >>> np.allclose(solve_lower(L, np.eye(2)), np.linalg.inv(L))
    True
    """
    L, B = jnp.asarray(L), jnp.asarray(B)
    m = L.shape[-1]

    def row(i, X):
        xi = (B[..., i, :] - jnp.einsum("...k,...kr->...r", L[..., i, :], X)) / L[
            ..., i, i, None
        ]
        return X.at[..., i, :].set(xi)

    return jax.lax.fori_loop(0, m, row, jnp.zeros_like(B))


def solve_upper_t(
    L: Float[Array, "*batch m m"], B: Float[Array, "*batch m r"]
) -> Float[Array, "*batch m r"]:
    """``L⁻ᵀ B`` for lower-triangular ``L`` (back substitution, row by row)."""
    L, B = jnp.asarray(L), jnp.asarray(B)
    m = L.shape[-1]

    def row(step, X):
        i = m - 1 - step
        xi = (B[..., i, :] - jnp.einsum("...k,...kr->...r", L[..., :, i], X)) / L[
            ..., i, i, None
        ]
        return X.at[..., i, :].set(xi)

    return jax.lax.fori_loop(0, m, row, jnp.zeros_like(B))


def cho_solve(L: Float[Array, "*batch m m"], B: Array) -> Array:
    """``A⁻¹ B`` given ``L = cholesky(A)``; ``B`` is ``(*batch, m)`` or
    ``(*batch, m, r)``.

    >>> import numpy as np
    >>> A = np.array([[4.0, 2.0], [2.0, 3.0]]); b = np.array([1.0, 2.0])
    >>> np.allclose(cho_solve(cholesky(A), b), np.linalg.solve(A, b))
    True
    """
    L, B = jnp.asarray(L), jnp.asarray(B)
    vector = B.ndim == L.ndim - 1
    X = B[..., None] if vector else B
    X = solve_upper_t(L, solve_lower(L, X))
    return X[..., 0] if vector else X


def inverse_from_cholesky(L: Float[Array, "*batch m m"]) -> Float[Array, "*batch m m"]:
    """``A⁻¹ = L⁻ᵀ L⁻¹`` given ``L = cholesky(A)`` (exactly symmetric)."""
    L = jnp.asarray(L)
    eye = jnp.broadcast_to(jnp.eye(L.shape[-1], dtype=L.dtype), L.shape)
    Linv = solve_lower(L, eye)
    return jnp.einsum("...ki,...kj->...ij", Linv, Linv)


def logdet_from_cholesky(L: Float[Array, "*batch m m"]) -> Float[Array, "*batch"]:
    """``log |A|`` given ``L = cholesky(A)``."""
    return 2.0 * jnp.sum(jnp.log(jnp.diagonal(L, axis1=-2, axis2=-1)), axis=-1)


_CACHE_ENTRIES = 1 << 17  # matrix entries per slice of `map_batch` (512 KiB in float32)


def map_batch(fn, *arrays: Array) -> Array:
    """``fn(*arrays)`` on slices of the leading (batch) axis that fit in a CPU
    cache, concatenated; ``arrays[0]`` is the batch of ``(m, m)`` matrices that
    sets the slice size, and the rows that pad the last slice are identity
    matrices (zeros in the other arrays), so any factorisation stays finite.

    >>> import numpy as np
    >>> A = np.broadcast_to(4.0 * np.eye(2), (1000, 2, 2)); b = np.ones((1000, 2))
    >>> np.allclose(map_batch(lambda a, c: cho_solve(cholesky(a), c), A, b), 0.25)
    True
    """
    A = arrays[0]
    n, m = A.shape[0], A.shape[-1]
    size = 1 << max(3, (_CACHE_ENTRIES // (m * m)).bit_length() - 1)
    if n <= size:
        return fn(*arrays)
    pad = (-n) % size
    eye = jnp.broadcast_to(jnp.eye(m, dtype=A.dtype), (pad, *A.shape[1:]))
    padded = [jnp.concatenate([A, eye])] + [
        jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)])
        for x in arrays[1:]
    ]
    sliced = [x.reshape(-1, size, *x.shape[1:]) for x in padded]
    out = jax.lax.map(lambda xs: fn(*xs), tuple(sliced))
    return out.reshape(-1, *out.shape[2:])[:n]
