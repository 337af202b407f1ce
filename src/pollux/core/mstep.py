r"""M-step of the closed-form EM: row-wise ridge solves for affine outputs.

For each output dimension :math:`d` the rows :math:`\tilde w_d = (W_d, b_d)` solve

.. math::

    \Big(\sum_n \lambda_{nd} E[\tilde z_n \tilde z_n^\top] + T_d\Big)\tilde w_d
    = \sum_n \lambda_{nd}\, y_{nd}\, E[\tilde z_n] + T_d m_d,

with :math:`\tilde z = (z, 1)` and a Normal(:math:`m_d`, :math:`T_d^{-1/2}`) prior
(ridge) on the row. The :math:`(D, K^2)` left-hand sides are one
:math:`(D{\times}N)\cdot(N{\times}K^2)` product; no :math:`(N, D, K)` array is formed.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .blocks import Block
from .linalg import cho_solve, cholesky, inverse_from_cholesky
from .posterior import outer_rows, precisions, second_moments
from .problem import OutputSpec

__all__ = [
    "expected_sq_resid",
    "m_step_affine",
    "normal_equations",
    "ridge_solve",
    "row_covariances",
]

Ridge = dict[str, tuple[Array, Array]]


def _ridge_cholesky(G: Float[Array, "d m m"]) -> Float[Array, "d m m"]:
    """Cholesky factor of ``G`` plus a jitter of one machine epsilon times its mean
    diagonal, which keeps rows that no data constrain (``G`` = 0 without a prior)
    solvable; it changes a well-posed result by a relative ``O(eps · cond(G))``."""
    m = G.shape[-1]
    scale = jnp.trace(G, axis1=-2, axis2=-1)[:, None, None] / m
    jitter = jnp.finfo(G.dtype).eps * (scale + 1.0) * jnp.eye(m, dtype=G.dtype)
    return cholesky(G + jitter)


def ridge_solve(G: Float[Array, "d m m"], c: Array) -> Array:
    """Batched SPD solve ``G x = c`` (``c``: ``(d, m)`` vectors or ``(d, m, r)``)."""
    return cho_solve(_ridge_cholesky(G), c)


def normal_equations(
    spec: OutputSpec,
    block: Block,
    lam: Float[Array, "n d"],
    mean: Float[Array, "n k"],
    cov: Float[Array, "n k k"] | None,
    b: Float[Array, " d"],
    ridge: Ridge,
) -> tuple[Float[Array, "d m m"], Float[Array, "d m"]]:
    """``(G, c)`` of the row-wise ridge solves ``G_d w̃_d = c_d`` for a free ``A``
    (and ``b`` when it is free); ``G_d⁻¹`` is the conditional covariance of row d."""
    n = mean.shape[0]
    d = lam.shape[1]
    first, second = second_moments(mean, cov, with_one=spec.solve_b)
    kt = first.shape[1]
    y = block.y if spec.solve_b else jnp.where(block.mask, block.y - b, 0.0)
    G = (lam.T @ second.reshape(n, kt * kt)).reshape(d, kt, kt)
    c = (lam * y).T @ first
    A_loc, A_prec = ridge["A"]
    if spec.solve_b:
        b_loc, b_prec = ridge["b"]
        prec = jnp.concatenate([A_prec, b_prec[:, None]], axis=1)
        loc = jnp.concatenate([A_loc, b_loc[:, None]], axis=1)
    else:
        prec, loc = A_prec, A_loc
    return G + jax.vmap(jnp.diag)(prec), c + prec * loc


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
    """Maximise the expected log posterior over ``W`` and/or ``b`` (others fixed)."""
    k = mean.shape[1]
    if spec.A_free:
        sol = ridge_solve(*normal_equations(spec, block, lam, mean, cov, b, ridge))
        return (sol[:, :k], sol[:, k]) if spec.solve_b else (sol, b)
    if spec.solve_b:
        b_loc, b_prec = ridge["b"]
        r = jnp.where(block.mask, block.y - mean @ W.T, 0.0)
        b = (jnp.sum(lam * r, axis=0) + b_prec * b_loc) / (
            jnp.sum(lam, axis=0) + b_prec
        )
    return W, b


@partial(jax.jit, static_argnames=("spec",))
def row_covariances(
    spec: OutputSpec,
    block: Block,
    params: dict[str, Array],
    mean: Float[Array, "n k"],
    cov: Float[Array, "n k k"] | None,
    ridge: Ridge,
) -> Float[Array, "d kt kt"]:
    """Covariance of each row ``(W_d, b_d)`` of the free parameters given the latent
    posterior (zero for fixed ones): the inverse of the M-step's normal matrix.

    Shape ``(d, k+1, k+1)`` when the output has an offset ``b``, else ``(d, k, k)``.
    """
    k = mean.shape[1]
    d = params["A"].shape[0]
    kt = k + 1 if spec.has_b else k
    lam = precisions(block, spec.scatter2(params))
    out = jnp.zeros((d, kt, kt), mean.dtype)
    if spec.A_free:
        G, _ = normal_equations(spec, block, lam, mean, cov, params["b"], ridge)
        m = G.shape[-1]
        return out.at[:, :m, :m].set(inverse_from_cholesky(_ridge_cholesky(G)))
    if spec.solve_b:
        b_prec = ridge["b"][1]
        return out.at[:, k, k].set(1.0 / (jnp.sum(lam, axis=0) + b_prec))
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
        n = mean.shape[0]
        e = e + cov.reshape(n, -1) @ outer_rows(W).T
    return jnp.where(block.mask, e, 0.0)
