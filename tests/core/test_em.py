"""Closed-form EM sweeps against slow, obvious references: the dense marginal
likelihood of `pollux.testing` plus `scipy.stats` log priors, dense per-row ridge
solves, explicit loops; SQUAREM's extrapolation on linear iterations whose fixed
point is known; the compiled stopping loop against a Python loop."""

from __future__ import annotations

from functools import partial
from types import SimpleNamespace

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
import pytest  # noqa: E402
from scipy import stats  # noqa: E402
from stand_ins import ArrayData  # noqa: E402

from pollux import testing as ref  # noqa: E402
from pollux.core import em  # noqa: E402
from pollux.core.blocks import make_block  # noqa: E402
from pollux.core.posterior import posterior_moments, precisions  # noqa: E402
from pollux.core.problem import EMProblem, OutputSpec  # noqa: E402

EPS = np.finfo(np.float64).eps
N, K = 30, 2
A_SCALE, B_SCALE = 1.0, 2.0  # Normal prior scales of A and b (ridge precisions)
FLUX_S = dist.HalfNormal(1.0)  # the one-pass bound s-step
LABEL_S = dist.Gamma(2.0, 4.0)  # the checked Newton s-step (passes B and C)

em_iteration = jax.jit(em.em_iteration)
final_state = em.final_state
initialize = em.initialize


# name: (rows, spec). "flux": W, b and a scatter per row fitted; "label": a known
# W, only b and one scalar scatter fitted.
OUTPUTS = {
    "flux": (6, OutputSpec(True, True, True, "vector", True)),
    "label": (3, OutputSpec(True, False, True, "scalar", True)),
}


def _setup(seed=0, chunk_size=None, fixed_latents=None):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(N, K))
    blocks, priors, ridges, params, arrays = [], [], [], [], {}
    for name, (d, spec) in OUTPUTS.items():
        W = rng.normal(size=(d, K))
        b = rng.normal(size=d)
        err = rng.uniform(0.1, 0.4, size=(N, d))
        y = z @ W.T + b + np.hypot(err, 0.2) * rng.normal(size=(N, d))
        y[rng.random((N, d)) < 0.2] = np.nan
        err[rng.random((N, d)) < 0.05] = np.inf
        arrays[name] = (y, err)
        blocks.append(make_block(y, err))
        pr, ridge = {}, {}
        if spec.A_free:
            pr["A"] = dist.Normal(0.0, A_SCALE).expand((d, K))
            ridge["A"] = (jnp.zeros((d, K)), jnp.full((d, K), A_SCALE**-2))
        pr["b"] = dist.Normal(0.0, B_SCALE).expand((d,))
        ridge["b"] = (jnp.zeros(d), jnp.full(d, B_SCALE**-2))
        p = {
            "A": jnp.asarray(0.3 * rng.normal(size=(d, K)) if spec.A_free else W),
            "b": jnp.zeros(d),
        }
        if spec.has_s:
            pr["s"] = FLUX_S if name == "flux" else LABEL_S
            p["s"] = jnp.ones(d) if spec.s_kind == "vector" else jnp.ones(())
        priors.append(pr)
        ridges.append(ridge)
        params.append(p)
    problem = EMProblem(
        specs=tuple(spec for _, spec in OUTPUTS.values()),
        blocks=tuple(blocks),
        priors=tuple(priors),
        ridges=tuple(ridges),
        fixed_latents=None if fixed_latents is None else jnp.asarray(fixed_latents),
        chunk_size=chunk_size,
    )
    return SimpleNamespace(
        problem=problem, params=tuple(params), data=ArrayData(arrays), z=z
    )


@pytest.fixture(scope="module")
def setup():
    return _setup()


def _named(params):
    return {
        name: {key: np.asarray(v) for key, v in p.items()}
        for name, p in zip(OUTPUTS, params, strict=True)
    }


def _dense_neg_log_prior(params):
    total = 0.0
    for name, p in _named(params).items():
        spec = OUTPUTS[name][1]
        if spec.A_free:
            total -= stats.norm.logpdf(p["A"], 0.0, A_SCALE).sum()
        total -= stats.norm.logpdf(p["b"], 0.0, B_SCALE).sum()
        if spec.has_s:
            if name == "flux":
                total -= stats.halfnorm.logpdf(p["s"], scale=1.0).sum()
            else:
                total -= stats.gamma.logpdf(p["s"], a=2.0, scale=1 / 4.0).sum()
    return total


def _dense_objective(setup, params, latents=None):
    model = SimpleNamespace(latent_size=K)
    names = tuple(OUTPUTS)
    if latents is None:
        nll = ref.dense_neg_log_marginal(model, setup.data, _named(params), names)
    else:
        nll = ref.dense_neg_log_lik_given_latents(
            model, setup.data, _named(params), names, latents
        )
    return nll + _dense_neg_log_prior(params)


def _n_obs(problem):
    return sum(int(np.sum(b.mask)) for b in problem.blocks)


def _sum_tol(problem, loss):
    """Rounding of an objective summed over the observed values (and a few log
    determinants per star): ``n·eps`` relative, the a-priori bound of recursive
    summation of ``n`` terms (Higham, §4.2)."""
    return _n_obs(problem) * EPS * (abs(float(loss)) + _n_obs(problem))


def _iterate(problem, params, n):
    losses = []
    for _ in range(n):
        params, loss = em_iteration(problem, params)
        losses.append(float(loss))
    return params, np.array(losses)


# The s-step compares candidates by their objective values, so its result is
# determined only to ~sqrt(eps) relative (the objective is flat to second order at
# a maximiser): a near tie goes either way with the rounding of the sums.
S_TOL = 10 * np.sqrt(EPS)


def _ab_tol(setup, params):
    """Rounding of the M-step's small ridge solves: ``10 (K+1) eps cond(G)`` with
    ``G`` the normal matrices (the inverses of `final_state`'s row covariances)."""
    _, _, row_covs = final_state(setup.problem, params)
    cond = max(
        np.linalg.cond(np.asarray(rc)[:, : K + 1, : K + 1]).max()
        for rc, (_, spec) in zip(row_covs, OUTPUTS.values(), strict=True)
        if spec.A_free
    )
    return 10 * (K + 1) * EPS * cond


def _assert_params_close(a, b, ab_tol, s_tol=S_TOL):
    for p, q in zip(a, b, strict=True):
        assert p.keys() == q.keys()
        for key in p:
            tol = s_tol if key == "s" else ab_tol
            scale = max(1.0, float(np.abs(np.asarray(q[key])).max()))
            np.testing.assert_allclose(p[key], q[key], rtol=0, atol=tol * scale)


# ----------------------------------------------------------------------------------
# The objective and its monotone descent
# ----------------------------------------------------------------------------------
def test_objective_is_the_dense_negative_log_posterior(setup):
    params = setup.params
    for _ in range(3):  # at the start and after some sweeps
        new, loss = em_iteration(setup.problem, params)
        dense = _dense_objective(setup, params)
        assert abs(float(loss) - dense) <= _sum_tol(setup.problem, dense), (
            float(loss),
            dense,
        )
        params = new


def test_em_iteration_never_increases_the_objective(setup):
    params, losses = _iterate(setup.problem, setup.params, 40)
    tol = _sum_tol(setup.problem, losses[0])
    assert np.all(np.diff(losses) <= tol), np.diff(losses).max()
    assert losses[-1] < losses[0] - 0.1 * abs(losses[0])  # and it does descend
    # the scatters stay non-negative and finite
    for p in params:
        if "s" in p:
            assert np.all(np.isfinite(p["s"])) and np.all(np.asarray(p["s"]) >= 0)
    # the fixed A of "label" is untouched
    np.testing.assert_array_equal(params[1]["A"], setup.params[1]["A"])


def test_em_iteration_with_fixed_latents(setup):
    s = _setup(fixed_latents=setup.z)
    params = s.params
    losses = []
    for _ in range(15):
        new, loss = em_iteration(s.problem, params)
        dense = _dense_objective(s, params, latents=s.z)
        assert abs(float(loss) - dense) <= _sum_tol(s.problem, dense)
        losses.append(float(loss))
        params = new
    assert np.all(np.diff(losses) <= _sum_tol(s.problem, losses[0]))
    assert losses[-1] < losses[0]


def test_chunked_sweeps_equal_the_plain_ones(setup):
    """From the same parameters (a few points along the plain trajectory), one
    sweep over chunks of stars (7 does not divide N: the last chunk overlaps the
    one before) equals the plain sweep."""
    other = _setup(chunk_size=7).problem
    params = setup.params
    ab_tol = _ab_tol(setup, params)
    for _ in range(3):
        new, loss = em_iteration(setup.problem, params)
        new_other, loss_other = em_iteration(other, params)
        # the same sums in another order
        assert abs(float(loss_other - loss)) <= _sum_tol(setup.problem, loss)
        _assert_params_close(new_other, new, ab_tol)
        params = new


# ----------------------------------------------------------------------------------
# The compiled loop
# ----------------------------------------------------------------------------------
def test_em_chunk_is_repeated_iterations(setup):
    n = 8
    ref_params, ref_losses = _iterate(setup.problem, setup.params, n)
    params, losses, n_run, converged = em.em_chunk(
        setup.problem,
        setup.params,
        jnp.asarray(jnp.inf),
        jnp.asarray(0.0),
        jnp.asarray(n),
        n_steps=n + 2,
    )
    assert int(n_run) == n and not bool(converged)
    assert np.all(np.isnan(np.asarray(losses[n:])))
    # the same sweeps in one compiled loop: equal but for the s-steps' near ties,
    # which move later sweeps by ~sqrt(eps) relative
    np.testing.assert_allclose(losses[:n], ref_losses, rtol=S_TOL)
    _assert_params_close(params, ref_params, S_TOL)


def test_squarem_cycles_never_increase_the_objective(setup):
    n = 15
    params, losses, n_run, _ = em.em_chunk(
        setup.problem,
        setup.params,
        jnp.asarray(jnp.inf),
        jnp.asarray(-1.0),  # never settles: all n cycles run
        jnp.asarray(n),
        n_steps=n,
        accelerate=True,
    )
    losses = np.asarray(losses)
    assert int(n_run) == n
    tol = _sum_tol(setup.problem, losses[0])
    assert np.all(np.diff(losses) <= tol), np.diff(losses).max()
    # a cycle is at least two EM sweeps: 15 cycles reach at least as low as 30
    _, plain = _iterate(setup.problem, setup.params, 2 * n)
    final = float(em_iteration(setup.problem, params)[1])
    assert final <= plain[-1] + tol
    assert abs(final - _dense_objective(setup, params)) <= tol


# ----------------------------------------------------------------------------------
# final_state and initialize
# ----------------------------------------------------------------------------------
def test_final_state_posterior_objective_and_row_covariances(setup):
    params, _ = _iterate(setup.problem, setup.params, 5)
    post, loss, row_covs = final_state(setup.problem, params)
    problem = setup.problem
    Ws = tuple(p["A"] for p in params)
    bs = tuple(p["b"] for p in params)
    s2s = tuple(spec.scatter2(p) for spec, p in zip(problem.specs, params, strict=True))
    mean, cov = posterior_moments(problem.blocks, Ws, bs, s2s)
    np.testing.assert_allclose(post.mean, mean, rtol=0, atol=1e3 * EPS)
    np.testing.assert_allclose(post.cov, cov, rtol=0, atol=1e3 * EPS)
    dense = _dense_objective(setup, params)
    assert abs(float(loss) - dense) <= _sum_tol(problem, dense)
    mean, cov = np.asarray(mean), np.asarray(cov)
    for (d, spec), block, s2, rc in zip(
        OUTPUTS.values(), problem.blocks, s2s, row_covs, strict=True
    ):
        assert rc.shape == (d, K + 1, K + 1)
        lam = np.asarray(precisions(block, s2))
        for j in range(d):
            if spec.A_free:  # inverse of Σ_n λ E[z̃ z̃ᵀ] + T, by a loop over stars
                G = np.diag(np.r_[np.full(K, A_SCALE**-2), B_SCALE**-2])
                for n in range(N):
                    zt = np.r_[mean[n], 1.0]
                    S = np.zeros((K + 1, K + 1))
                    S[:K, :K] = cov[n]
                    G += lam[n, j] * (np.outer(zt, zt) + S)
                expected = np.linalg.inv(G)
            else:  # only b free: its variance, 1 / (Σ λ + prior precision)
                expected = np.zeros((K + 1, K + 1))
                expected[K, K] = 1.0 / (lam[:, j].sum() + B_SCALE**-2)
            tol = 100 * EPS * np.linalg.cond(np.linalg.pinv(expected) + np.eye(K + 1))
            np.testing.assert_allclose(rc[j], expected, rtol=0, atol=tol)


def test_initialize_is_an_unweighted_ridge_regression(setup):
    z = setup.z
    problem = setup.problem
    new = initialize(problem, setup.params, jnp.asarray(z))
    for (d, spec), block, p, q, priors in zip(
        OUTPUTS.values(), problem.blocks, setup.params, new, problem.priors, strict=True
    ):
        if not spec.A_free:  # outputs with a fixed A keep their start values
            for key in p:
                np.testing.assert_array_equal(q[key], p[key])
            continue
        mask = np.asarray(block.mask)
        y = np.asarray(block.y)
        T = np.diag(np.r_[np.full(K, A_SCALE**-2), B_SCALE**-2])
        for j in range(d):
            m = mask[:, j]
            Z = np.c_[z[m], np.ones(m.sum())]
            w = np.linalg.solve(Z.T @ Z + T, Z.T @ y[m, j])
            tol = 100 * EPS * np.linalg.cond(Z.T @ Z + T) * np.abs(w).max()
            np.testing.assert_allclose(q["A"][j], w[:K], rtol=0, atol=tol)
            np.testing.assert_allclose(q["b"][j], w[K], rtol=0, atol=tol)
        # the scatter then follows the residuals: the s-step objective (exact
        # F(t) of pollux.core.sstep, data + prior) is no lower than at the start
        err2 = np.asarray(block.err2)
        e = np.where(mask, (y - z @ np.asarray(q["A"]).T - np.asarray(q["b"])) ** 2, 0)
        prior = priors["s"]

        def F(s, err2=err2, e=e, mask=mask, prior=prior):
            v = np.where(mask, err2 + np.square(s), 1.0)
            data = np.where(mask, -0.5 * (np.log(v) + e / v), 0.0).sum()
            return data + float(jnp.sum(prior.log_prob(jnp.asarray(s))))

        s_new = np.asarray(q["s"])
        assert np.all(s_new >= 0)
        assert F(s_new) >= F(np.asarray(p["s"])) - _n_obs(problem) * EPS * 10


# ----------------------------------------------------------------------------------
# SQUAREM's extrapolation and helpers
# ----------------------------------------------------------------------------------
def test_squarem_point_jumps_to_the_fixed_point_of_a_scalar_contraction():
    # p_{t+1} = p* + c (p_t - p*): r = (c-1)e, v = (c-1)²e, α = -1/(1-c), and
    # p0 - 2αr + α²v = p0 - e = p* exactly (in exact arithmetic).
    rng = np.random.default_rng(0)
    star = {"A": rng.normal(size=(3, 2)), "b": (rng.normal(size=4), np.float64(1.5))}
    p0 = jax.tree.map(lambda x: x + rng.normal(size=np.shape(x)), star)
    for c in (0.1, 0.5, 0.9, 0.99):
        step = lambda p, c=c: jax.tree.map(lambda x, s: s + c * (x - s), p, star)
        p1 = step(p0)
        p2 = step(p1)
        out = em.squarem_point(p0, p1, p2)
        # the rounding of r and v, amplified by α² = 1/(1-c)²
        tol = 20 * EPS / (1 - c) ** 2 * 10
        for got, want in zip(jax.tree.leaves(out), jax.tree.leaves(star), strict=True):
            np.testing.assert_allclose(got, want, rtol=0, atol=tol)


def test_squarem_point_against_its_formula_and_its_clamp():
    rng = np.random.default_rng(1)
    M = np.diag([0.2, 0.5, 0.8])
    star = rng.normal(size=3)
    p0 = rng.normal(size=3)
    step = lambda p: star + M @ (p - star)
    p1, p2 = step(p0), step(step(p0))
    r, v = p1 - p0, p2 - 2 * p1 + p0
    alpha = min(-np.linalg.norm(r) / np.linalg.norm(v), -1.0)
    expected = p0 - 2 * alpha * r + alpha**2 * v
    got = np.asarray(
        em.squarem_point(jnp.asarray(p0), jnp.asarray(p1), jnp.asarray(p2))
    )
    np.testing.assert_allclose(got, expected, rtol=100 * EPS)
    # |r| < |v| (an oscillating iteration, c = -1.5): α is clamped to -1, which
    # gives p0 + 2r + v = p2
    osc = lambda p: star - 1.5 * (p - star)
    q1, q2 = osc(p0), osc(osc(p0))
    got = np.asarray(
        em.squarem_point(jnp.asarray(p0), jnp.asarray(q1), jnp.asarray(q2))
    )
    np.testing.assert_allclose(got, q2, rtol=0, atol=100 * EPS * np.abs(q2).max())
    # v = 0 exactly (a straight line of exactly representable points, or no
    # change at all): α = -1, no division by zero. (A v that is zero only up to
    # rounding gives a huge α: the callers' objective checks catch that point.)
    p0, d = np.array([1.0, 2.0, -3.0]), np.array([0.5, 0.25, -1.0])
    got = np.asarray(
        em.squarem_point(jnp.asarray(p0), jnp.asarray(p0 + d), jnp.asarray(p0 + 2 * d))
    )
    np.testing.assert_allclose(
        got, p0 + 2 * d, rtol=0, atol=10 * EPS * np.abs(p0 + 2 * d).max()
    )
    same = np.asarray(
        em.squarem_point(jnp.asarray(p0), jnp.asarray(p0), jnp.asarray(p0))
    )
    np.testing.assert_array_equal(same, p0)


def test_positive_scatter():
    params = (
        {"A": jnp.array([[-1.0]]), "s": jnp.array([-0.5, 0.2])},
        {"b": jnp.array([-2.0])},
    )
    out = em.positive_scatter(params)
    np.testing.assert_array_equal(out[0]["s"], [0.5, 0.2])
    np.testing.assert_array_equal(out[0]["A"], [[-1.0]])
    np.testing.assert_array_equal(out[1]["b"], [-2.0])
    assert "s" not in out[1]


# ----------------------------------------------------------------------------------
# run_until_settled
# ----------------------------------------------------------------------------------
def _halving(x):
    """A step whose objective at the old state is x; x halves each step."""
    return x / 2, x


@partial(jax.jit, static_argnames="n_steps")
def _settle(x0, prev_loss, threshold, max_steps, n_steps):
    return em.run_until_settled(_halving, x0, prev_loss, threshold, max_steps, n_steps)


def _settle_reference(x0, prev_loss, threshold, max_steps, n_steps):
    x, last, losses, done = x0, prev_loss, [], False
    while len(losses) < min(max_steps, n_steps) and not done:
        x, loss = _halving(x)
        losses.append(loss)
        done = abs(last - loss) <= threshold
        last = loss
    return x, losses, len(losses), done


@pytest.mark.parametrize(
    ("prev_loss", "threshold", "max_steps", "n_steps"),
    [
        (np.inf, 1e-3, 100, 40),  # settles: |Δ| = x/2 ≤ 1e-3 after 12 steps
        (np.inf, 1e-3, 5, 40),  # max_steps first
        (np.inf, 1e-3, 100, 7),  # the buffer's length first
        (np.inf, 0.0, 100, 20),  # threshold 0: never within 20 halvings
        (8.0, 1e-3, 100, 40),  # prev_loss equal to the first objective: one step
        (np.inf, 1.0, 0, 10),  # no step at all
    ],
)
def test_run_until_settled_matches_a_python_loop(
    prev_loss, threshold, max_steps, n_steps
):
    x0 = 8.0
    state, losses, n, done = _settle(
        jnp.asarray(x0),
        jnp.asarray(prev_loss),
        jnp.asarray(threshold),
        jnp.asarray(max_steps),
        n_steps,
    )
    x_ref, losses_ref, n_ref, done_ref = _settle_reference(
        x0, prev_loss, threshold, max_steps, n_steps
    )
    assert int(n) == n_ref and bool(done) == done_ref
    assert float(state) == x_ref  # halving is exact in binary
    losses = np.asarray(losses)
    assert losses.shape == (n_steps,)
    np.testing.assert_array_equal(losses[:n_ref], losses_ref)
    assert np.all(np.isnan(losses[n_ref:]))
