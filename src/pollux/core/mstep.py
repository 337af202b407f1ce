r"""M-step of the closed-form EM: row-wise ridge solves for affine outputs.

For each output dimension :math:`d` the rows :math:`\tilde w_d = (W_d, b_d)` solve

.. math::

    \Big(\sum_n \lambda_{nd} E[\tilde z_n \tilde z_n^\top] + T_d\Big)\tilde w_d
    = \sum_n \lambda_{nd}\, y_{nd}\, E[\tilde z_n] + T_d m_d,

with :math:`\tilde z = (z, 1)` and a Normal(:math:`m_d`, :math:`T_d^{-1/2}`) prior
(ridge) on the row. The data enter only through the sufficient statistics
(`affine_stats`): the :math:`(D, K(K+1)/2)` packed upper triangles of the left-hand
sides are one :math:`(D{\times}N)\cdot(N{\times}K(K+1)/2)` product, and sums of
them over chunks of stars are the statistics of all the stars; no :math:`(N, D, K)`
array is formed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .blocks import Block
from .features import sym_pack, sym_unpack
from .linalg import cho_solve, cholesky, inverse_from_cholesky, map_batch
from .posterior import cov_quadratic_form, second_moments
from .problem import OutputSpec

__all__ = [
    "affine_stats",
    "expected_sq_resid",
    "m_step_affine",
    "normal_equations",
    "ridge_solve",
    "row_covariances",
    "solve_affine",
    "zero_stats",
]

Ridge = dict[str, tuple[Array, Array]]


def ridge_cholesky(G: Float[Array, "d m m"]) -> Float[Array, "d m m"]:
    """Cholesky factor of ``G`` plus a jitter of one machine epsilon times its mean
    diagonal, which keeps rows that no data constrain (``G`` = 0 without a prior)
    solvable; it changes a well-posed result by a relative ``O(eps · cond(G))``."""
    m = G.shape[-1]
    scale = jnp.trace(G, axis1=-2, axis2=-1)[:, None, None] / m
    jitter = jnp.finfo(G.dtype).eps * (scale + 1.0) * jnp.eye(m, dtype=G.dtype)
    return cholesky(G + jitter)


def ridge_solve(G: Float[Array, "d m m"], c: Array) -> Array:
    """Batched SPD solve ``G x = c`` (``c``: ``(d, m)`` vectors or ``(d, m, r)``),
    a cache-sized slice of rows at a time (`map_batch`)."""
    return map_batch(lambda g, r: cho_solve(ridge_cholesky(g), r), G, c)


def ridge_inverse(G: Float[Array, "d m m"]) -> Float[Array, "d m m"]:
    """``G⁻¹`` of each row's normal matrix (with `ridge_cholesky`'s jitter), a
    cache-sized slice of rows at a time."""
    return map_batch(lambda g: inverse_from_cholesky(ridge_cholesky(g)), G)


def affine_stats(
    spec: OutputSpec,
    block: Block,
    lam: Float[Array, "n d"],
    mean: Float[Array, "n k"],
    cov: Float[Array, "n k k"] | None,
    W: Float[Array, "d k"],
    b: Float[Array, " d"],
) -> tuple[Array, ...]:
    """The M-step's sufficient statistics of these stars (sums over them).

    A free ``A``: the packed normal matrices ``Σ λ E[z̃z̃ᵀ]`` ``(d, m(m+1)/2)`` and
    right-hand sides ``Σ λ y E[z̃]`` ``(d, m)``. Only ``b`` free: ``Σ λ (y - W z)``
    and ``Σ λ``. Nothing free: ``()``.
    """
    if spec.A_free:
        first, second = second_moments(mean, cov, with_one=spec.solve_b)
        y = block.y if spec.solve_b else jnp.where(block.mask, block.y - b, 0.0)
        return lam.T @ sym_pack(second), (lam * y).T @ first
    if spec.solve_b:
        r = jnp.where(block.mask, block.y - mean @ W.T, 0.0)
        return jnp.sum(lam * r, axis=0), jnp.sum(lam, axis=0)
    return ()


def zero_stats(spec: OutputSpec, d: int, k: int, dtype) -> tuple[Array, ...]:
    """Zeros shaped like `affine_stats` of an output with ``d`` rows."""
    if spec.A_free:
        m = k + 1 if spec.solve_b else k
        return jnp.zeros((d, m * (m + 1) // 2), dtype), jnp.zeros((d, m), dtype)
    if spec.solve_b:
        return jnp.zeros(d, dtype), jnp.zeros(d, dtype)
    return ()


def normal_equations(
    spec: OutputSpec, stats: tuple[Array, ...], ridge: Ridge
) -> tuple[Float[Array, "d m m"], Float[Array, "d m"]]:
    """``(G, c)`` of the row-wise ridge solves ``G_d w̃_d = c_d`` for a free ``A``
    (and ``b`` when it is free) from `affine_stats`; ``G_d⁻¹`` is the conditional
    covariance of row d."""
    G_packed, c = stats
    m = c.shape[1]
    A_loc, A_prec = ridge["A"]
    if spec.solve_b:
        b_loc, b_prec = ridge["b"]
        prec = jnp.concatenate([A_prec, b_prec[:, None]], axis=1)
        loc = jnp.concatenate([A_loc, b_loc[:, None]], axis=1)
    else:
        prec, loc = A_prec, A_loc
    G = sym_unpack(G_packed, m)
    return G + jax.vmap(jnp.diag)(prec), c + prec * loc


def solve_affine(
    spec: OutputSpec,
    stats: tuple[Array, ...],
    ridge: Ridge,
    W: Float[Array, "d k"],
    b: Float[Array, " d"],
) -> tuple[Float[Array, "d k"], Float[Array, " d"]]:
    """Maximise the expected log posterior over ``W`` and/or ``b`` (others fixed),
    given the sufficient statistics of all the stars (`affine_stats`)."""
    k = W.shape[1]
    if spec.A_free:
        sol = ridge_solve(*normal_equations(spec, stats, ridge))
        return (sol[:, :k], sol[:, k]) if spec.solve_b else (sol, b)
    if spec.solve_b:
        lam_r, lam_sum = stats
        b_loc, b_prec = ridge["b"]
        b = (lam_r + b_prec * b_loc) / (lam_sum + b_prec)
    return W, b


def m_step_affine(
    spec: OutputSpec,
    block: Block,
    lam: Float[Array, "n d"],
    mean: Float[Array, "n k"],
    cov: Float[Array, "n k k"] | None,
    W: Float[Array, "d k"],
    b: Float[Array, " d"],
    ridge: Ridge,
) -> tuple[Float[Array, "d k"], Float[Array, " d"]]:
    """`solve_affine` on the statistics of all the stars at once."""
    stats = affine_stats(spec, block, lam, mean, cov, W, b)
    return solve_affine(spec, stats, ridge, W, b)


def row_covariances(
    spec: OutputSpec, stats: tuple[Array, ...], ridge: Ridge, W: Float[Array, "d k"]
) -> Float[Array, "d kt kt"]:
    """Covariance of each row ``(W_d, b_d)`` of the free parameters given the latent
    posterior (zero for fixed ones): the inverse of the M-step's normal matrix,
    from the statistics `affine_stats` gives at the final parameters ``W``.

    Shape ``(d, k+1, k+1)`` when the output has an offset ``b``, else ``(d, k, k)``.
    """
    d, k = W.shape
    kt = k + 1 if spec.has_b else k
    out = jnp.zeros((d, kt, kt), W.dtype)
    if spec.A_free:
        G, _ = normal_equations(spec, stats, ridge)
        m = G.shape[-1]
        return out.at[:, :m, :m].set(ridge_inverse(G))
    if spec.solve_b:
        b_prec = ridge["b"][1]
        return out.at[:, k, k].set(1.0 / (stats[1] + b_prec))
    return out


def expected_sq_resid(
    block: Block,
    mean: Float[Array, "n k"],
    cov: Float[Array, "n k k"] | None,
    W: Float[Array, "d k"],
    b: Float[Array, " d"],
) -> Float[Array, "n d"]:
    """``E[(y - W z - b)²]`` under the latent posterior, zero where missing."""
    r = jnp.where(block.mask, block.y - mean @ W.T - b, 0.0)
    e = r**2
    if cov is not None:
        e = e + cov_quadratic_form(cov, W)
    return jnp.where(block.mask, e, 0.0)
