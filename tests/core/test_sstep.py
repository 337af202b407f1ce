"""The s-step: it never lowers its objective, and iterated it finds the maximum
that a scalar optimiser finds."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from scipy import optimize

from pollux.core import sstep
from pollux.core.blocks import make_block

s_step = jax.jit(sstep.s_step, static_argnames="scalar")


def _objective(t, err2, e, mask, prior):
    """F(t) of one output dimension, in float64 numpy: the exact objective of the
    s-step (module docstring of pollux.core.sstep)."""
    v = err2[mask] + t
    ll = np.sum(-0.5 * (np.log(v) + e[mask] / v))
    return ll + float(prior.log_prob(jnp.sqrt(t)))


def _inputs(rng, n, d, frac_missing=0.2):
    err = rng.uniform(0.02, 0.5, size=(n, d))
    y = rng.normal(size=(n, d))
    y[rng.random((n, d)) < frac_missing] = np.nan
    block = make_block(y, err)
    true_s = rng.uniform(0.0, 1.0, size=d)
    e = (err**2 + true_s**2) * rng.chisquare(1, size=(n, d))  # E[(y - W z - b)²]
    e = np.where(np.asarray(block.mask), e, 0.0)
    return block, e


# The first three: the one-pass bound step; Gamma (log p(√t) not convex in t): the
# checked Newton step.
PRIORS = [
    dist.HalfNormal(1.0),
    dist.HalfNormal(0.05),
    dist.HalfCauchy(0.5),
    dist.Gamma(2.0, 4.0),
]
IDS = ["HalfNormal1", "HalfNormal0.05", "HalfCauchy", "Gamma"]


@pytest.mark.parametrize("prior", PRIORS, ids=IDS)
@pytest.mark.parametrize("seed", range(5))
def test_s_step_never_lowers_the_objective(prior, seed):
    rng = np.random.default_rng(seed)
    n, d = 50, 8
    block, e = _inputs(rng, n, d)
    err2, mask = np.asarray(block.err2), np.asarray(block.mask)
    s0 = rng.uniform(0.0, 3.0, size=d)  # anywhere, including far from the optimum
    s1 = np.asarray(s_step(block, jnp.asarray(e), jnp.asarray(s0), prior, scalar=False))
    assert np.all(s1 >= 0)
    for j in range(d):
        before = _objective(s0[j] ** 2, err2[:, j], e[:, j], mask[:, j], prior)
        after = _objective(s1[j] ** 2, err2[:, j], e[:, j], mask[:, j], prior)
        # F is a sum of ~n terms of size ~|log v| ≲ 10: evaluating it in float64
        # is exact to ~n·10·eps; the step may not lower it by more than that.
        assert after >= before - n * 10 * np.finfo(float).eps, (j, before, after)


@pytest.mark.parametrize("prior", PRIORS, ids=IDS)
def test_iterated_s_step_reaches_the_scalar_maximum(prior):
    rng = np.random.default_rng(11)
    n, d = 200, 4
    block, e = _inputs(rng, n, d, frac_missing=0.1)
    err2, mask = np.asarray(block.err2), np.asarray(block.mask)
    s = jnp.ones(d)
    for _ in range(200):
        s = s_step(block, jnp.asarray(e), s, prior, scalar=False)
    s = np.asarray(s)
    for j in range(d):
        f = lambda u, j=j: (
            -_objective(np.exp(u), err2[:, j], e[:, j], mask[:, j], prior)
        )
        res = optimize.minimize_scalar(
            f, bounds=(-30.0, 5.0), method="bounded", options={"xatol": 1e-10}
        )
        best = -res.fun
        got = _objective(s[j] ** 2, err2[:, j], e[:, j], mask[:, j], prior)
        # Both maximise the same smooth 1-d function: values agree to rounding
        # (the maximum is flat, so a t within sqrt(eps) gives F within ~eps·|F|).
        assert got >= best - 1e-9 * max(1.0, abs(best)), (j, got, best)


def test_scalar_s_pools_every_dimension():
    rng = np.random.default_rng(3)
    block, e = _inputs(rng, 60, 5)
    prior = dist.HalfNormal(1.0)
    s = jnp.asarray(0.5)
    for _ in range(200):
        s = s_step(block, jnp.asarray(e), s, prior, scalar=True)
    err2, mask = np.asarray(block.err2), np.asarray(block.mask)
    f = lambda u: -_objective(np.exp(u), err2.ravel(), e.ravel(), mask.ravel(), prior)
    res = optimize.minimize_scalar(
        f, bounds=(-30.0, 5.0), method="bounded", options={"xatol": 1e-10}
    )
    got = _objective(float(s) ** 2, err2.ravel(), e.ravel(), mask.ravel(), prior)
    assert np.shape(s) == ()
    assert got >= -res.fun - 1e-9 * abs(res.fun)


def test_masked_entries_do_not_matter():
    rng = np.random.default_rng(4)
    block, e = _inputs(rng, 40, 3)
    garbage = np.where(np.asarray(block.mask), e, 1e6)  # values under the mask
    prior = dist.HalfNormal(1.0)
    a = s_step(block, jnp.asarray(e), jnp.ones(3), prior, scalar=False)
    b = s_step(block, jnp.asarray(garbage), jnp.ones(3), prior, scalar=False)
    np.testing.assert_array_equal(a, b)
