"""Quadratic features of the latents and their Gaussian moments against slow,
obvious references: a recursive (brute-force) Isserlis expansion, Monte Carlo,
explicit products, and the log density of the Normal priors on ``Q``, ``A``, ``b``.
"""

from __future__ import annotations

import itertools

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from scipy import stats  # noqa: E402

from pollux.core.features import (  # noqa: E402
    feature_index,
    features,
    moments,
    n_features,
    qab_from_theta,
    theta_from_qab,
    theta_ridge,
)

EPS = np.finfo(np.float64).eps


# ----------------------------------------------------------------------------------
# References
# ----------------------------------------------------------------------------------
def _pairs(k: int) -> list[tuple[int, int]]:
    """The documented order of φ: z_i z_j (i ≤ j, row by row), z_i, 1, as index
    pairs into z̃ = (z, 1)."""
    quad = [(i, j) for i in range(k) for j in range(i, k)]
    return [*quad, *[(i, k) for i in range(k)], (k, k)]


def _isserlis(idx: tuple[int, ...], m: np.ndarray, S: np.ndarray) -> float:
    """E[Π_{i in idx} x_i] for x ~ N(m, S), by the recursive (non-central)
    Isserlis rule: the first factor is either its mean, or paired with another."""
    if not idx:
        return 1.0
    first, rest = idx[0], idx[1:]
    total = m[first] * _isserlis(rest, m, S)
    for pos, j in enumerate(rest):
        total += S[first, j] * _isserlis(rest[:pos] + rest[pos + 1 :], m, S)
    return total


def _brute_moments(mu: np.ndarray, Sigma: np.ndarray):
    """E[φ] and cov(φ) with explicit loops over the four indices of z̃ = (z, 1)."""
    k = len(mu)
    m = np.append(mu, 1.0)
    S = np.zeros((k + 1, k + 1))
    S[:k, :k] = Sigma
    second = np.zeros((k + 1, k + 1))
    fourth = np.zeros((k + 1,) * 4)
    for a in range(k + 1):
        for b in range(k + 1):
            second[a, b] = _isserlis((a, b), m, S)
            for c in range(k + 1):
                for d in range(k + 1):
                    fourth[a, b, c, d] = _isserlis((a, b, c, d), m, S)
    pairs = _pairs(k)
    mean = np.array([second[a, b] for a, b in pairs])
    cov = np.array(
        [
            [fourth[a, b, c, d] - second[a, b] * second[c, d] for c, d in pairs]
            for a, b in pairs
        ]
    )
    return mean, cov


def _random_gaussian(k: int, rng: np.random.Generator):
    mu = rng.normal(size=k)
    X = rng.normal(size=(k, k))
    Sigma = X @ X.T / k + 0.3 * np.eye(k)  # SPD, well conditioned
    return mu, Sigma


# ----------------------------------------------------------------------------------
# Features
# ----------------------------------------------------------------------------------
def test_n_features_and_index():
    for k in (1, 2, 3, 5):
        assert n_features(k) == len(_pairs(k))
    # K = 3: 6 quadratic, 3 linear, 1 constant.
    assert feature_index("quadratic", 3).tolist() == list(range(10))
    assert feature_index("affine", 3).tolist() == [6, 7, 8, 9]
    assert feature_index("linear", 3).tolist() == [6, 7, 8]
    with pytest.raises(ValueError, match="unknown kind"):
        feature_index("cubic", 3)


def test_features_are_the_explicit_products():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(7, 3))
    z0, z1, z2 = z.T
    expected = np.stack(
        [z0 * z0, z0 * z1, z0 * z2, z1 * z1, z1 * z2, z2 * z2, z0, z1, z2, 1 + 0 * z0],
        axis=1,
    )
    # A product of two float64 numbers is correctly rounded in both: exact.
    np.testing.assert_array_equal(features(jnp.asarray(z)), expected)
    # K = 1: (z², z, 1).
    np.testing.assert_array_equal(
        features(jnp.asarray(z[:, :1])), np.stack([z0 * z0, z0, 1 + 0 * z0], 1)
    )


# ----------------------------------------------------------------------------------
# Gaussian moments
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 2, 3])
def test_moments_match_brute_force_isserlis(k):
    rng = np.random.default_rng(10 + k)
    mus, Sigmas, refs = [], [], []
    for _ in range(4):
        mu, Sigma = _random_gaussian(k, rng)
        mus.append(mu)
        Sigmas.append(Sigma)
        refs.append(_brute_moments(mu, Sigma))
    mean, cov = moments(jnp.asarray(np.stack(mus)), jnp.asarray(np.stack(Sigmas)))
    # Both sum at most ~10 products of ≤ 4 factors of size O(1–10) in float64, so
    # each errs by a few eps relative to the largest term: 1e-12 of the scale of
    # the moments leaves a margin of ~100.
    for n, (ref_mean, ref_cov) in enumerate(refs):
        scale = max(np.abs(ref_cov).max(), 1.0)
        np.testing.assert_allclose(mean[n], ref_mean, rtol=1e-12, atol=1e-12 * scale)
        np.testing.assert_allclose(cov[n], ref_cov, rtol=1e-12, atol=1e-12 * scale)
        # cov(φ) is symmetric (up to the order of the six terms summed: a few eps)
        # and positive semi-definite (the constant has zero variance).
        np.testing.assert_allclose(
            cov[n], np.swapaxes(cov[n], 0, 1), rtol=0, atol=8 * EPS * scale
        )
        assert np.linalg.eigvalsh(np.asarray(cov[n])).min() > -1e-12 * scale


def test_moments_of_a_point_are_the_features():
    rng = np.random.default_rng(3)
    z = rng.normal(size=(5, 2))
    mean, cov = moments(jnp.asarray(z), None)
    assert cov is None
    np.testing.assert_array_equal(mean, features(jnp.asarray(z)))
    # A zero covariance gives the same mean and a zero feature covariance.
    mean0, cov0 = moments(jnp.asarray(z), jnp.zeros((5, 2, 2)))
    np.testing.assert_array_equal(mean0, mean)
    np.testing.assert_array_equal(cov0, 0.0)


@pytest.mark.parametrize("k", [1, 3])
def test_moments_match_monte_carlo(k):
    rng = np.random.default_rng(20 + k)
    mu, Sigma = _random_gaussian(k, rng)
    n = 200_000
    z = rng.multivariate_normal(mu, Sigma, size=n)
    phi = np.asarray(features(jnp.asarray(z)))
    mc_mean = phi.mean(0)
    dev = phi - mc_mean
    prods = dev[:, :, None] * dev[:, None, :]
    mc_cov = prods.mean(0)
    # Standard errors of the Monte-Carlo estimates, from the samples themselves.
    se_mean = phi.std(0) / np.sqrt(n)
    se_cov = prods.std(0) / np.sqrt(n)
    mean, cov = moments(jnp.asarray(mu[None]), jnp.asarray(Sigma[None]))
    mean, cov = np.asarray(mean[0]), np.asarray(cov[0])
    # 5 standard errors: a normal deviate exceeds it with probability 6e-7, so
    # none of the ≤ 110 entries should (the seed is fixed; this is not flaky). The
    # constant feature has zero spread: there the estimate is exact (atol 1e-12).
    assert np.all(np.abs(mc_mean - mean) <= 5 * se_mean + 1e-12), (mc_mean, mean)
    assert np.all(np.abs(mc_cov - cov) <= 5 * se_cov + 1e-12), (mc_cov, cov)
    # ... and the test has power: the errors are not all hidden in a huge SE.
    assert np.all(se_cov[:-1, :-1] < 0.05 * np.abs(cov).max())


# ----------------------------------------------------------------------------------
# Q, A, b <-> feature weights
# ----------------------------------------------------------------------------------
def _random_qab(d: int, k: int, rng: np.random.Generator):
    return rng.normal(size=(d, k, k)), rng.normal(size=(d, k)), rng.normal(size=d)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_theta_round_trip_on_symmetric_q(k):
    rng = np.random.default_rng(30 + k)
    Q, A, b = _random_qab(4, k, rng)
    Qs = 0.5 * (Q + np.swapaxes(Q, 1, 2))
    theta = theta_from_qab(jnp.asarray(Qs), jnp.asarray(A), jnp.asarray(b))
    assert theta.shape == (4, n_features(k))
    Q2, A2, b2 = qab_from_theta(theta, k)
    # Off-diagonal: 2·Q_ij then ½ of it; doubling and halving are exact in binary,
    # but Q_ij + Q_ji of a symmetrised Q rounds once: a few eps.
    np.testing.assert_allclose(Q2, Qs, rtol=4 * EPS, atol=4 * EPS)
    np.testing.assert_array_equal(np.swapaxes(Q2, 1, 2), Q2)
    np.testing.assert_array_equal(A2, A)
    np.testing.assert_array_equal(b2, b)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_only_the_symmetric_part_of_q_acts(k):
    rng = np.random.default_rng(40 + k)
    Q, A, b = _random_qab(4, k, rng)
    Qs = 0.5 * (Q + np.swapaxes(Q, 1, 2))
    z = rng.normal(size=(9, k))
    # The slow, obvious evaluation of zᵀQz + Az + b with the non-symmetric Q.
    direct = np.einsum("ni,dij,nj->nd", z, Q, z) + z @ A.T + b
    for QQ in (Q, Qs):
        theta = np.asarray(theta_from_qab(jnp.asarray(QQ), jnp.asarray(A), b))
        via_features = np.asarray(features(jnp.asarray(z))) @ theta.T
        # Sums of ~k² + k + 1 products of O(1) terms: a few eps times their size.
        np.testing.assert_allclose(via_features, direct, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(
        theta_from_qab(jnp.asarray(Q), jnp.asarray(A), jnp.asarray(b)),
        theta_from_qab(jnp.asarray(Qs), jnp.asarray(A), jnp.asarray(b)),
        rtol=4 * EPS,
        atol=4 * EPS,
    )
    # Back from the weights of the non-symmetric Q: its symmetric part.
    Q2, _, _ = qab_from_theta(theta_from_qab(jnp.asarray(Q), A, b), k)
    np.testing.assert_allclose(Q2, Qs, rtol=4 * EPS, atol=4 * EPS)


# ----------------------------------------------------------------------------------
# Normal priors on Q, A, b -> ridge on the feature weights
# ----------------------------------------------------------------------------------
def _neg_log_prior(Q, A, b, locs, scales) -> np.ndarray:
    """−log N(Q, A, b; locs, scales) per output row (scipy, element by element)."""
    out = 0.0
    for x, loc, scale in zip((Q, A, b), locs, scales, strict=True):
        lp = stats.norm.logpdf(x, loc, scale)
        out = out - lp.reshape(lp.shape[0], -1).sum(1)
    return out


def _ridge(theta, loc, prec) -> np.ndarray:
    return 0.5 * np.sum(prec * (theta - loc) ** 2, axis=1)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_theta_ridge_is_the_log_prior_of_the_symmetric_q(k):
    """½ Σ prec (θ − loc)² equals −log p(Q_sym(θ), A, b) up to a constant in θ: the
    difference between two parameter values agrees."""
    rng = np.random.default_rng(50 + k)
    d = 4
    locs = _random_qab(d, k, rng)
    scales = tuple(rng.uniform(0.3, 3.0, size=np.shape(x)) for x in locs)
    loc, prec = theta_ridge(
        *(
            (jnp.asarray(lo), jnp.asarray(1 / s**2))
            for lo, s in zip(locs, scales, strict=True)
        )
    )
    loc, prec = np.asarray(loc), np.asarray(prec)
    thetas = [rng.normal(size=(d, n_features(k))) * 2 for _ in range(3)]
    nlp = [
        _neg_log_prior(
            *map(np.asarray, qab_from_theta(jnp.asarray(t), k)), locs, scales
        )
        for t in thetas
    ]
    ridge = [_ridge(t, loc, prec) for t in thetas]
    # Values of O(10–100) from sums of ~M terms: differences good to ~1e-13
    # relative to the terms; 1e-10 absolute leaves a wide margin.
    for i, j in itertools.combinations(range(3), 2):
        np.testing.assert_allclose(
            ridge[i] - ridge[j], nlp[i] - nlp[j], rtol=1e-11, atol=1e-10
        )
    # The minimum of the ridge is at loc: the prior mode of the symmetric Q.
    for i in range(3):
        assert np.all(ridge[i] >= 0)


def test_theta_ridge_of_iid_priors_is_the_profile_over_the_antisymmetric_part():
    """With the same Normal prior on Q_ij and Q_ji (as with the default priors) the
    antisymmetric part of a full Q, which only the prior sees, is 0 at the MAP and
    the ridge is the prior's profile: the MAP over a full Q (numpyro) and over the
    symmetric one agree."""
    rng = np.random.default_rng(60)
    d, k = 3, 3
    l_mat = rng.normal(size=(d, k, k))
    l_mat = l_mat + np.swapaxes(l_mat, 1, 2)  # l_ij = l_ji
    s_mat = rng.uniform(0.3, 3.0, size=(d, k, k))
    s_mat = np.sqrt(s_mat * np.swapaxes(s_mat, 1, 2))  # scale_ij = scale_ji
    A_loc, A_s = rng.normal(size=(d, k)), rng.uniform(0.3, 3, size=(d, k))
    b_loc, b_s = rng.normal(size=d), rng.uniform(0.3, 3, size=d)
    loc, prec = theta_ridge(
        (jnp.asarray(l_mat), jnp.asarray(1 / s_mat**2)),
        (jnp.asarray(A_loc), jnp.asarray(1 / A_s**2)),
        (jnp.asarray(b_loc), jnp.asarray(1 / b_s**2)),
    )
    theta = rng.normal(size=(d, n_features(k)))
    Qs, A, b = map(np.asarray, qab_from_theta(jnp.asarray(theta), k))
    locs, scales = (l_mat, A_loc, b_loc), (s_mat, A_s, b_s)
    base = _neg_log_prior(Qs, A, b, locs, scales)
    # Adding any antisymmetric part only raises −log prior (the profile is at 0).
    for _ in range(5):
        X = rng.normal(size=(d, k, k))
        anti = 0.1 * (X - np.swapaxes(X, 1, 2))
        assert np.all(_neg_log_prior(Qs + anti, A, b, locs, scales) > base)
    theta0 = np.asarray(loc)
    base0 = _neg_log_prior(
        *map(np.asarray, qab_from_theta(jnp.asarray(theta0), k)), locs, scales
    )
    np.testing.assert_allclose(
        _ridge(theta, np.asarray(loc), np.asarray(prec)),
        base - base0,
        rtol=1e-11,
        atol=1e-10,
    )
