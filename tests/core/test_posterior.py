"""The exact latent posterior, its evidence and the predictive moments against slow,
obvious references: the joint Gaussian of ``(z, y)`` conditioned star by star
(`pollux.testing`), dense per-star precision solves, `scipy.stats` densities and
explicit loops over stars and output rows."""

from __future__ import annotations

from types import SimpleNamespace

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from scipy import stats  # noqa: E402
from stand_ins import ArrayData  # noqa: E402

from pollux import testing as ref  # noqa: E402
from pollux.core.blocks import make_block  # noqa: E402
from pollux.core.posterior import (  # noqa: E402
    cov_quadratic_form,
    latent_posterior,
    posterior_moments,
    precisions,
    predictive,
    second_moments,
)

EPS = np.finfo(np.float64).eps
N, K = 23, 3
DIMS = {"flux": 7, "label": 3}

_latent_posterior = jax.jit(latent_posterior, static_argnames="prior_precision")


def _make(seed=0, with_missing=True):
    """Two outputs: "flux" (errors, a scatter per row, some infinite errors) and
    "label" (no reported errors, one scalar scatter). With ``with_missing``, star 0
    has no data at all and star 1 no flux."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(N, K))
    arrays, blocks, Ws, bs, s2s, params = {}, [], [], [], [], {}
    for name, d in DIMS.items():
        W = rng.normal(size=(d, K))
        b = rng.normal(size=d)
        if name == "flux":
            err = rng.uniform(0.1, 0.5, size=(N, d))
            s2 = rng.uniform(0.01, 0.1, size=d)
        else:
            err = None
            s2 = np.float64(0.05)
        sd = np.sqrt((0.0 if err is None else err**2) + s2)
        y = z @ W.T + b + sd * rng.normal(size=(N, d))
        if with_missing:
            y[rng.random((N, d)) < 0.25] = np.nan
            y[0] = np.nan
            if name == "flux":
                y[1] = np.nan
                err[rng.random((N, d)) < 0.05] = np.inf  # missing by its error
        blocks.append(make_block(y, err))
        Ws.append(jnp.asarray(W))
        bs.append(jnp.asarray(b))
        s2s.append(jnp.asarray(s2))
        arrays[name] = (y, np.zeros((N, d)) if err is None else err)
        params[name] = {"A": W, "b": b, "s": np.sqrt(s2)}
    return SimpleNamespace(
        blocks=tuple(blocks),
        Ws=tuple(Ws),
        bs=tuple(bs),
        s2s=tuple(s2s),
        data=ArrayData(arrays),
        params=params,
    )


@pytest.fixture(scope="module")
def problem():
    return _make()


def _dense_star(problem, n, prior_precision):
    """Observed ``(W, y - b, noise variances)`` of star ``n`` over all outputs."""
    rows, resid, var = [], [], []
    for name in DIMS:
        y, err = problem.data.arrays[name]
        p = problem.params[name]
        m = ~np.isnan(y[n]) & np.isfinite(err[n])
        rows.append(p["A"][m])
        resid.append(y[n, m] - p["b"][m])
        var.append(err[n, m] ** 2 + np.broadcast_to(p["s"] ** 2, m.shape)[m])
    W, r, v = np.concatenate(rows), np.concatenate(resid), np.concatenate(var)
    P = prior_precision * np.eye(K) + W.T @ (W / v[:, None])
    cov = np.linalg.inv(P)
    return W, r, v, P, cov, cov @ (W.T @ (r / v))


def _cond(problem, prior_precision):
    """Largest condition number of the per-star systems (posterior precisions and
    covariances of the observed values): the scale of every solve's rounding."""
    worst = 1.0
    for n in range(N):
        W, _, v, P, _, _ = _dense_star(problem, n, prior_precision)
        worst = max(worst, np.linalg.cond(P))
        if len(v) and prior_precision > 0:
            worst = max(worst, np.linalg.cond(W @ W.T / prior_precision + np.diag(v)))
    return worst


def test_latent_posterior_equals_the_conditioned_joint_gaussian(problem):
    post = _latent_posterior(problem.blocks, problem.Ws, problem.bs, problem.s2s)
    model = SimpleNamespace(latent_size=K)
    mean, cov = ref.dense_posterior(model, problem.data, problem.params, DIMS)
    nlm = ref.dense_neg_log_marginal(model, problem.data, problem.params, DIMS)
    tol = 100 * EPS * _cond(problem, 1.0)
    np.testing.assert_allclose(post.mean, mean, rtol=0, atol=tol * np.abs(mean).max())
    np.testing.assert_allclose(post.cov, cov, rtol=0, atol=tol)
    n_obs = sum(int(np.sum(b.mask)) for b in problem.blocks)
    assert abs(float(post.neg_log_marginal) - nlm) <= tol * (abs(nlm) + n_obs)
    # the star without data keeps its prior and adds nothing to the evidence
    np.testing.assert_array_equal(post.mean[0], 0.0)
    np.testing.assert_allclose(post.cov[0], np.eye(K), rtol=0, atol=EPS)
    # the star with labels only is still informed by them
    assert np.all(np.asarray(jnp.diag(post.cov[1])) < 1.0)


@pytest.mark.parametrize("prior_precision", [2.0])
def test_latent_posterior_under_a_scaled_prior(problem, prior_precision):
    post = _latent_posterior(
        problem.blocks, problem.Ws, problem.bs, problem.s2s, prior_precision
    )
    tol = 100 * EPS * _cond(problem, prior_precision)
    nlm = 0.0
    for n in range(N):
        W, r, v, _, cov, mean = _dense_star(problem, n, prior_precision)
        np.testing.assert_allclose(
            post.cov[n], cov, rtol=0, atol=tol * np.abs(cov).max()
        )
        np.testing.assert_allclose(
            post.mean[n], mean, rtol=0, atol=tol * max(np.abs(mean).max(), 1.0)
        )
        if len(r):  # y ~ N(b, W Wᵀ / p0 + D): the latents integrated out
            C = W @ W.T / prior_precision + np.diag(v)
            nlm -= stats.multivariate_normal(mean=np.zeros(len(r)), cov=C).logpdf(r)
    n_obs = sum(int(np.sum(b.mask)) for b in problem.blocks)
    assert abs(float(post.neg_log_marginal) - nlm) <= tol * (abs(nlm) + n_obs)


def test_latent_posterior_with_a_flat_prior_is_weighted_least_squares():
    problem = _make(seed=1, with_missing=False)  # every star fully observed
    post = _latent_posterior(
        problem.blocks, problem.Ws, problem.bs, problem.s2s, prior_precision=0.0
    )
    tol = 100 * EPS * _cond(problem, 0.0)
    for n in range(N):
        W, r, v, P, _, _ = _dense_star(problem, n, 0.0)
        sw = 1 / np.sqrt(v)
        mean = np.linalg.lstsq(W * sw[:, None], r * sw, rcond=None)[0]
        np.testing.assert_allclose(
            post.mean[n], mean, rtol=0, atol=tol * np.abs(mean).max()
        )
        np.testing.assert_allclose(post.cov[n] @ P, np.eye(K), rtol=0, atol=tol)


@pytest.mark.parametrize("chunk_size", [1, 7, N + 5])
def test_posterior_moments_chunked_equal_the_posterior(problem, chunk_size):
    post = _latent_posterior(problem.blocks, problem.Ws, problem.bs, problem.s2s)
    mean, cov = posterior_moments(
        problem.blocks, problem.Ws, problem.bs, problem.s2s, chunk_size=chunk_size
    )
    # the same per-star arithmetic on fewer stars: equal to the solves' rounding
    tol = 10 * EPS * _cond(problem, 1.0)
    np.testing.assert_allclose(
        mean, post.mean, rtol=0, atol=tol * np.abs(post.mean).max()
    )
    np.testing.assert_allclose(cov, post.cov, rtol=0, atol=tol)


def test_precisions_are_masked_inverse_variances(problem):
    block, s2 = problem.blocks[0], problem.s2s[0]
    y, err = problem.data.arrays["flux"]
    lam = np.asarray(precisions(block, s2))
    for n in range(N):
        for j in range(DIMS["flux"]):
            observed = not np.isnan(y[n, j]) and np.isfinite(err[n, j])
            expected = 1.0 / (err[n, j] ** 2 + float(s2[j])) if observed else 0.0
            assert lam[n, j] == pytest.approx(expected, rel=2 * EPS, abs=0.0)
    # no errors: the scatter alone
    lab = np.asarray(precisions(problem.blocks[1], problem.s2s[1]))
    mask = np.asarray(problem.blocks[1].mask)
    np.testing.assert_allclose(lab, np.where(mask, 1 / 0.05, 0.0), rtol=2 * EPS)


def test_cov_quadratic_form_and_second_moments():
    rng = np.random.default_rng(4)
    n, d, k = 6, 5, 3
    X = rng.normal(size=(n, k, k))
    cov = X @ np.swapaxes(X, 1, 2) + np.eye(k)
    W = rng.normal(size=(d, k))
    mean = rng.normal(size=(n, k))
    q = np.asarray(cov_quadratic_form(jnp.asarray(cov), jnp.asarray(W)))
    for i in range(n):
        for j in range(d):
            expected = W[j] @ cov[i] @ W[j]
            assert q[i, j] == pytest.approx(expected, rel=20 * EPS * k * k)
    for with_one in (False, True):
        for c in (cov, None):
            first, second = second_moments(
                jnp.asarray(mean), None if c is None else jnp.asarray(c), with_one
            )
            for i in range(n):
                zt = np.r_[mean[i], 1.0] if with_one else mean[i]
                S = np.zeros((len(zt), len(zt)))
                if c is not None:
                    S[:k, :k] = c[i]
                np.testing.assert_array_equal(first[i], zt)
                np.testing.assert_allclose(
                    second[i], np.outer(zt, zt) + S, rtol=4 * EPS, atol=4 * EPS
                )


def _predictive_reference(mean, cov, W, b, s2, row_cov):
    """Mean and sd of y = W z + b (+ s): loops over stars and rows."""
    n, k = mean.shape
    d = W.shape[0]
    mu, var = np.zeros((n, d)), np.zeros((n, d))
    for i in range(n):
        for j in range(d):
            mu[i, j] = W[j] @ mean[i] + b[j]
            var[i, j] = W[j] @ cov[i] @ W[j] + np.broadcast_to(s2, d)[j]
            if row_cov is not None:
                C = row_cov[j]
                zt = np.r_[mean[i], 1.0][: C.shape[0]]
                S = np.zeros_like(C)
                S[:k, :k] = cov[i]
                var[i, j] += zt @ C @ zt + np.trace(C @ S)
    return mu, np.sqrt(var)


@pytest.mark.parametrize("row_cov_kind", [None, "W only", "W and b"])
@pytest.mark.parametrize("chunk_size", [None, 4])
def test_predictive_matches_the_dense_formula(row_cov_kind, chunk_size):
    rng = np.random.default_rng(7)
    n, d, k = 11, 4, 3
    X = rng.normal(size=(n, k, k))
    cov = 0.3 * X @ np.swapaxes(X, 1, 2) + 0.1 * np.eye(k)
    mean = rng.normal(size=(n, k))
    W, b = rng.normal(size=(d, k)), rng.normal(size=d)
    s2 = rng.uniform(0.01, 0.2, size=d)
    row_cov = None
    if row_cov_kind is not None:
        m = k if row_cov_kind == "W only" else k + 1
        Y = rng.normal(size=(d, m, m))
        row_cov = 0.05 * Y @ np.swapaxes(Y, 1, 2)
    mu, sd = predictive(
        jnp.asarray(mean),
        jnp.asarray(cov),
        jnp.asarray(W),
        jnp.asarray(b),
        jnp.asarray(s2),
        None if row_cov is None else jnp.asarray(row_cov),
        chunk_size=chunk_size,
    )
    mu_ref, sd_ref = _predictive_reference(mean, cov, W, b, s2, row_cov)
    # sums of ≲ (k+1)² products of O(1) terms; the sd halves the relative error
    scale = (k + 1) ** 2 * 20 * EPS
    np.testing.assert_allclose(mu, mu_ref, rtol=0, atol=scale * np.abs(mu_ref).max())
    np.testing.assert_allclose(
        sd, sd_ref, rtol=scale * sd_ref.max() ** 2 / sd_ref.min() ** 2
    )
    if row_cov is not None:  # the rows' uncertainty only widens the prediction
        _, sd0 = _predictive_reference(mean, cov, W, b, s2, None)
        assert np.all(np.asarray(sd) > sd0)
