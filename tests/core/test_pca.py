"""Start latents from a randomized PCA against a dense numpy SVD of the mean-imputed,
centred data matrix (the documented reading of missing values)."""

from __future__ import annotations

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from pollux.core.blocks import make_block  # noqa: E402
from pollux.core.pca import pca_latents  # noqa: E402

EPS = np.finfo(np.float64).eps


def _data(rng, n, dims, k, noise=0.3, frac_missing=0.15):
    """Blocks of a rank-``k`` signal (latent scales 3, 2, 1, ...) plus noise, with
    missing values (NaN data and infinite errors)."""
    z = rng.normal(size=(n, k)) * np.linspace(3.0, 1.0, k)
    out = []
    for d in dims:
        y = z @ rng.normal(size=(d, k)).T + rng.normal(size=d)
        y = y + noise * rng.normal(size=(n, d))
        err = np.full((n, d), 0.1)
        y[rng.random((n, d)) < frac_missing] = np.nan
        err[rng.random((n, d)) < 0.03] = np.inf
        out.append((y, err))
    return out


def _dense_pca(arrays):
    """Left singular vectors of the data with missing entries set to their
    column's observed mean, centred (numpy SVD), and the number of stars with any
    observed value."""
    cols, seen = [], None
    for y, err in arrays:
        m = ~np.isnan(y) & np.isfinite(err)
        mean = np.where(m, y, 0.0).sum(0) / np.maximum(m.sum(0), 1)
        cols.append(np.where(m, y - mean, 0.0))
        seen = m.any(1) if seen is None else seen | m.any(1)
    X = np.concatenate(cols, axis=1)
    U, S, _ = np.linalg.svd(X, full_matrices=False)
    return U, S, int(seen.sum())


def _align(z, ref):
    """``z`` with each column's sign matching ``ref``'s (PCA fixes no sign)."""
    signs = np.sign(np.sum(np.asarray(z) * ref, axis=0))
    return np.asarray(z) * signs


def _blocks(arrays, dtype=np.float64):
    return tuple(make_block(y.astype(dtype), err.astype(dtype)) for y, err in arrays)


def _svd_tol(S, k, n_seen, eps=EPS):
    """Rounding of the leading ``k`` singular vectors: ``eps · σ₁ / gap`` (the
    perturbation bound of Wedin / Davis–Kahan), scaled like the scores
    (``√n_seen``), with 100x for the QR/SVD chain."""
    gaps = np.abs(np.diff(np.r_[S, 0.0][: k + 1]))
    return 100 * eps * S[0] / gaps.min() * np.sqrt(n_seen)


@pytest.fixture(scope="module")
def arrays():
    arrays = _data(np.random.default_rng(0), 40, (5, 3), 3)
    for y, err in arrays:  # star 7 has no observed value at all
        y[7] = np.nan
        err[7] = 0.1
    return arrays


@pytest.mark.parametrize("chunk_size", [None, 6])
def test_pca_latents_equal_the_dense_svd(arrays, chunk_size):
    # D = 8 ≤ k + 8: the range finder spans all the data, so the randomized PCA is
    # the exact one up to rounding.
    k = 3
    z = np.asarray(pca_latents(_blocks(arrays), k, chunk_size=chunk_size))
    U, S, n_seen = _dense_pca(arrays)
    assert n_seen == 39
    expected = U[:, :k] * np.sqrt(n_seen)
    tol = _svd_tol(S, k, n_seen)
    np.testing.assert_allclose(_align(z, expected), expected, rtol=0, atol=tol)
    # unit variance over the stars with data, centred; the star without data is 0
    np.testing.assert_allclose(z.T @ z / n_seen, np.eye(k), rtol=0, atol=tol)
    np.testing.assert_allclose(z.mean(axis=0), 0.0, rtol=0, atol=tol)
    np.testing.assert_allclose(z[7], 0.0, rtol=0, atol=tol)


def test_pca_latents_are_deterministic(arrays):
    blocks = _blocks(arrays)
    a = np.asarray(pca_latents(blocks, 3))
    b = np.asarray(pca_latents(_blocks(arrays), 3))
    np.testing.assert_array_equal(a, b)
    # also in another process's sense: nothing depends on a global random state
    np.random.default_rng(99).normal(size=10)
    np.testing.assert_array_equal(np.asarray(pca_latents(blocks, 3)), a)


def test_blocks_are_columns_of_one_data_matrix(arrays):
    joined = (
        np.concatenate([y for y, _ in arrays], axis=1),
        np.concatenate([e for _, e in arrays], axis=1),
    )
    a = np.asarray(pca_latents(_blocks(arrays), 3))
    b = np.asarray(pca_latents(_blocks([joined]), 3))
    _, S, n_seen = _dense_pca(arrays)
    np.testing.assert_allclose(_align(b, a), a, rtol=0, atol=_svd_tol(S, 3, n_seen))


def test_pca_latents_recover_the_span_of_a_rank_k_matrix():
    # D = 50 > k + 8: the randomized range finder; a rank-k matrix (after
    # centring) has its range found exactly, up to rounding
    rng = np.random.default_rng(1)
    n, d, k = 60, 50, 3
    z0 = rng.normal(size=(n, k))
    W = rng.normal(size=(d, k))
    y = z0 @ W.T + rng.normal(size=d)
    z = np.asarray(pca_latents((make_block(y, None),), k))
    zc = z0 - z0.mean(axis=0)
    # the part of the true (centred) latents outside the span of z
    coef = np.linalg.lstsq(z, zc, rcond=None)[0]
    resid = np.linalg.norm(zc - z @ coef) / np.linalg.norm(zc)
    S = np.linalg.svd(zc @ W.T, compute_uv=False)
    assert resid <= 100 * EPS * np.sqrt(n * d) * S[0] / S[k - 1], resid
    np.testing.assert_allclose(z.T @ z / n, np.eye(k), rtol=0, atol=100 * EPS * n)
    # and the scores are those of the dense SVD (σ₁, σ₂, σ₃ distinct)
    U, S, _ = _dense_pca([(y, np.zeros_like(y))])
    expected = U[:, :k] * np.sqrt(n)
    np.testing.assert_allclose(
        _align(z, expected), expected, rtol=0, atol=_svd_tol(S, k, n)
    )


def test_a_noisy_matrix_gives_the_leading_components():
    # D = 30 > k + 8, full rank but a fast-decaying spectrum: the randomized PCA
    # with two power iterations matches the leading subspace closely
    rng = np.random.default_rng(2)
    arrays = _data(rng, 80, (30,), 2, noise=0.01, frac_missing=0.0)
    z = np.asarray(pca_latents(_blocks(arrays), 2))
    U, S, n_seen = _dense_pca(arrays)
    # subspace error of the range finder ~ (σ_{r+1}/σ_k)^(2q+1), q = 2, r = 10
    bound = (S[10] / S[1]) ** 5 + _svd_tol(S, 2, n_seen) / np.sqrt(n_seen)
    cosines = np.linalg.svd(U[:, :2].T @ z / np.sqrt(n_seen), compute_uv=False)
    sines = np.sqrt(np.clip(1 - cosines**2, 0, None))
    assert np.all(sines <= 10 * bound), (sines, bound)


def test_fewer_data_dimensions_than_latents():
    rng = np.random.default_rng(3)
    arrays = _data(rng, 25, (2,), 1, frac_missing=0.1)
    blocks = _blocks(arrays)
    z4 = np.asarray(pca_latents(blocks, 4))
    z2 = np.asarray(pca_latents(blocks, 2))
    assert z4.shape == (25, 4)
    assert np.all(np.isfinite(z4))
    # the data's two components, then small fixed noise for the other latents
    np.testing.assert_allclose(z4[:, :2], z2, rtol=0, atol=100 * EPS * np.sqrt(25))
    U, S, n_seen = _dense_pca(arrays)
    expected = U[:, :2] * np.sqrt(n_seen)
    np.testing.assert_allclose(
        _align(z2, expected), expected, atol=_svd_tol(S, 2, n_seen)
    )
    extra = z4[:, 2:]
    rms = np.sqrt(np.mean(extra**2))
    assert 0 < rms < 0.5 * np.sqrt(np.mean(z2**2))
    assert np.linalg.matrix_rank(z4) == 4  # usable start latents: no dead column
    np.testing.assert_array_equal(np.asarray(pca_latents(blocks, 4)), z4)


def test_fewer_stars_than_latents():
    rng = np.random.default_rng(4)
    arrays = _data(rng, 3, (6,), 2, frac_missing=0.0)
    z = np.asarray(pca_latents(_blocks(arrays), 5))
    assert z.shape == (3, 5) and np.all(np.isfinite(z))


def test_float32_data_give_float32_latents_close_to_float64(arrays):
    z64 = np.asarray(pca_latents(_blocks(arrays), 3))
    z32 = pca_latents(_blocks(arrays, np.float32), 3)
    assert z32.dtype == jnp.float32
    _, S, n_seen = _dense_pca(arrays)
    tol = _svd_tol(S, 3, n_seen, eps=np.finfo(np.float32).eps)
    np.testing.assert_allclose(_align(np.asarray(z32, np.float64), z64), z64, atol=tol)
