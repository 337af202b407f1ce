"""The M-step's ridge solves against dense numpy solves."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from pollux.core.blocks import make_block
from pollux.core.mstep import m_step_affine, ridge_solve
from pollux.core.posterior import precisions
from pollux.core.problem import OutputSpec


def test_ridge_solve_matches_dense_solve():
    rng = np.random.default_rng(0)
    d, m = 6, 4
    X = rng.normal(size=(d, 10, m))
    G = np.swapaxes(X, -1, -2) @ X + np.eye(m)
    c = rng.normal(size=(d, m))
    C = rng.normal(size=(d, m, 3))
    # cond(G) ≲ 100 here: a backward-stable solve is exact to ~m·eps·cond.
    tol = 10 * m * np.finfo(float).eps * np.linalg.cond(G).max()
    x = np.linalg.solve(G, c[..., None])[..., 0]
    np.testing.assert_allclose(ridge_solve(jnp.asarray(G), jnp.asarray(c)), x, rtol=tol)
    X3 = np.linalg.solve(G, C)
    np.testing.assert_allclose(
        ridge_solve(jnp.asarray(G), jnp.asarray(C)), X3, rtol=tol, atol=tol
    )


def test_ridge_solve_of_an_unconstrained_row_is_finite():
    # A row that no data constrain and no prior regularises has G = 0 and c = 0
    # (nothing to sum): the jitter makes the solve well defined, zero, not NaN.
    G = jnp.zeros((2, 3, 3)).at[1].set(jnp.eye(3))
    x = ridge_solve(G, jnp.zeros((2, 3)).at[1].set(1.0))
    assert np.all(np.isfinite(np.asarray(x)))
    np.testing.assert_array_equal(x[0], 0.0)
    np.testing.assert_allclose(x[1], 1.0, rtol=1e-14)


@pytest.mark.parametrize("solve_b", [True, False])
def test_m_step_is_weighted_ridge_regression(solve_b):
    """With known latents the M-step of each row is a weighted least-squares fit
    with a Normal(loc, 1/sqrt(prec)) prior: (ZᵀΛZ + T) w = ZᵀΛy + T loc."""
    rng = np.random.default_rng(1)
    n, d, k = 40, 5, 3
    z = rng.normal(size=(n, k))
    y = z @ rng.normal(size=(d, k)).T + 0.3 + 0.1 * rng.normal(size=(n, d))
    err = rng.uniform(0.05, 0.2, size=(n, d))
    y[rng.random((n, d)) < 0.2] = np.nan
    block = make_block(y, err)
    s2 = jnp.full(d, 0.01)
    lam = precisions(block, s2)
    A_loc, A_prec = rng.normal(size=(d, k)), rng.uniform(0.5, 2.0, size=(d, k))
    b_loc, b_prec = rng.normal(size=d), rng.uniform(0.5, 2.0, size=d)
    ridge = {
        "A": (jnp.asarray(A_loc), jnp.asarray(A_prec)),
        "b": (jnp.asarray(b_loc), jnp.asarray(b_prec)),
    }
    spec = OutputSpec(
        has_b=True, A_free=True, b_free=solve_b, s_kind="vector", s_free=False
    )
    b_fixed = rng.normal(size=d)
    W, b = m_step_affine(
        spec,
        block,
        lam,
        jnp.asarray(z),
        None,
        jnp.zeros((d, k)),
        jnp.asarray(b_fixed),
        ridge,
    )
    lam_np, mask = np.asarray(lam), np.asarray(block.mask)
    for j in range(d):
        m = mask[:, j]
        Z = np.c_[z[m], np.ones(m.sum())] if solve_b else z[m]
        target = y[m, j] if solve_b else y[m, j] - b_fixed[j]
        prec = np.r_[A_prec[j], b_prec[j]] if solve_b else A_prec[j]
        loc = np.r_[A_loc[j], b_loc[j]] if solve_b else A_loc[j]
        lhs = Z.T @ (lam_np[m, j, None] * Z) + np.diag(prec)
        rhs = Z.T @ (lam_np[m, j] * target) + prec * loc
        w = np.linalg.solve(lhs, rhs)
        tol = 100 * np.finfo(float).eps * np.linalg.cond(lhs)
        np.testing.assert_allclose(W[j], w[:k], rtol=tol, atol=tol)
        np.testing.assert_allclose(b[j], w[k] if solve_b else b_fixed[j], rtol=tol)
