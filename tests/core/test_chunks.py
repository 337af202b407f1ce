"""Loops over chunks of stars and compensated sums against brute-force references:
explicit enumeration of the bucket sizes, ceiling division by counting, plain
(and exactly rounded, `math.fsum`) sums over every row."""

from __future__ import annotations

import math

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from pollux.core.blocks import count_observed, gaussian_loglike, make_block  # noqa: E402
from pollux.core.chunks import (  # noqa: E402
    DEFAULT_MEMORY,
    Accumulator,
    auto_chunk_size,
    bucket,
    chunk_rows,
    fold_chunks,
    n_chunks,
    pad_block,
    pad_rows,
    put_rows,
    take_block,
    take_rows,
)
from pollux.core.posterior import latent_posterior, precisions  # noqa: E402

EPS64 = np.finfo(np.float64).eps
EPS32 = np.finfo(np.float32).eps


# ----------------------------------------------------------------------------------
# Sizes
# ----------------------------------------------------------------------------------
def _bucket_reference(n: int) -> int:
    """Smallest member ≥ n of the sorted list {2^j, 3·2^j} ∩ [8, ∞)."""
    sizes = sorted({2**j for j in range(3, 40)} | {3 * 2**j for j in range(2, 40)})
    return next(s for s in sizes if s >= 8 and s >= n)


def test_bucket_matches_enumeration_of_the_sizes():
    for n in range(0, 5000):
        assert bucket(n) == _bucket_reference(n), n
    for n in (2**20, 2**20 + 1, 3 * 2**19, 3 * 2**19 + 1, 10**7):
        assert bucket(n) == _bucket_reference(n), n


def test_bucket_pads_by_at_most_half():
    # the docstring's promise: above 8, at most half as many rows again
    for n in range(9, 5000):
        b = bucket(n)
        assert n <= b <= n + n // 2, (n, b)
    assert all(bucket(n) == 8 for n in range(0, 9))


def test_n_chunks_is_the_least_cover():
    for n in range(1, 70):
        for size in range(1, n + 4):
            c = 1
            while c * size < n:  # count chunks until they cover n rows
                c += 1
            assert n_chunks(n, size) == c, (n, size)


def test_auto_chunk_size_is_the_largest_that_fits():
    for n, width, k, itemsize, budget in [
        (100_000, 7218, 32, 4, DEFAULT_MEMORY),
        (100_000, 7218, 32, 8, DEFAULT_MEMORY),
        (50, 10, 2, 8, DEFAULT_MEMORY),  # everything fits: all n stars
        (10_000, 1000, 4, 8, 1),  # nothing fits: still one star
        (10_000, 300, 7, 4, 10**6),
    ]:
        per_star = itemsize * (8 * width + 4 * (k + 1) ** 2)
        size = auto_chunk_size(n, width, k, itemsize, budget)
        fits = [s for s in range(1, n + 1) if s * per_star <= budget]
        assert size == (max(fits) if fits else 1), (n, width, k, itemsize, budget)
        assert 1 <= size <= n


_COVER_CASES = [(n, s) for n in range(1, 10) for s in range(1, n + 1)] + [
    (37, 5),
    (37, 36),
    (64, 16),
    (100, 7),
]


def test_chunk_rows_cover_every_row_exactly_once():
    for n, size in _COVER_CASES:
        seen = np.zeros(n, int)
        for i in range(n_chunks(n, size)):
            start, valid = chunk_rows(i, size, n)
            start, valid = int(start), np.asarray(valid)
            assert 0 <= start and start + size <= n  # a slice, no padding
            rows = start + np.arange(size)
            seen[rows[valid]] += 1
            # an invalid row was covered by an earlier chunk
            assert np.all(rows[~valid] < i * size)
        np.testing.assert_array_equal(seen, 1, err_msg=f"n={n}, size={size}")


# ----------------------------------------------------------------------------------
# Padding
# ----------------------------------------------------------------------------------
def test_pad_rows_appends_fill_rows_and_keeps_the_data():
    x = jnp.arange(12.0).reshape(4, 3)
    assert pad_rows(x, 4, 0.0) is x
    assert pad_rows(x, 2, 0.0) is x
    p = np.asarray(pad_rows(x, 7, -1.5))
    assert p.shape == (7, 3)
    np.testing.assert_array_equal(p[:4], np.asarray(x))
    np.testing.assert_array_equal(p[4:], -1.5)
    cube = jnp.ones((2, 2, 2), jnp.float32)
    q = pad_rows(cube, 5, jnp.nan)
    assert q.shape == (5, 2, 2) and q.dtype == jnp.float32
    assert np.all(np.isnan(np.asarray(q[2:])))


_posterior = jax.jit(latent_posterior)


def _block(rng, n, d, with_errors=True):
    y = rng.normal(size=(n, d))
    y[rng.random((n, d)) < 0.2] = np.nan
    err = rng.uniform(0.1, 0.5, size=(n, d)) if with_errors else None
    return make_block(y, err)


@pytest.mark.parametrize("with_errors", [True, False])
def test_pad_block_rows_are_missing_and_add_exactly_zero(with_errors):
    rng = np.random.default_rng(3)
    n, d, k, n_pad = 13, 5, 2, 24
    block = _block(rng, n, d, with_errors)
    padded = pad_block(block, n_pad)
    assert padded.values.shape == (n_pad, d)
    assert (padded.errors is None) == (not with_errors)
    # the original rows are unchanged, the new ones are missing
    np.testing.assert_array_equal(padded.values[:n], block.values)
    np.testing.assert_array_equal(padded.mask[:n], block.mask)
    assert not np.any(np.asarray(padded.mask[n:]))
    # every per-entry quantity the kernels sum is exactly zero on the new rows
    s2 = jnp.full(d, 0.3)
    np.testing.assert_array_equal(padded.y[n:], 0.0)
    np.testing.assert_array_equal(padded.err2[n:], 0.0)
    np.testing.assert_array_equal(precisions(padded, s2)[n:], 0.0)
    # counts are exact; the log-likelihood terms of the new rows are exact zeros,
    # so the sums agree to the rounding of a sum of n·d terms
    assert float(count_observed((padded,))) == float(count_observed((block,)))
    pred = jnp.asarray(rng.normal(size=(n_pad, d)))
    ll = float(gaussian_loglike(block, pred[:n], jnp.sqrt(s2)))
    ll_pad = float(gaussian_loglike(padded, pred, jnp.sqrt(s2)))
    terms = -0.5 * np.log(2 * np.pi * (np.asarray(block.err2) + 0.3)) - 0.5 * (
        (np.asarray(block.y) - np.asarray(pred[:n])) ** 2
        / (np.asarray(block.err2) + 0.3)
    )
    scale = np.sum(np.abs(np.where(np.asarray(block.mask), terms, 0.0)))
    assert abs(ll_pad - ll) <= n_pad * d * EPS64 * scale
    # the padded stars' posterior is the prior and their evidence zero
    W = jnp.asarray(rng.normal(size=(d, k)))
    b = jnp.asarray(rng.normal(size=d))
    post = _posterior((block,), (W,), (b,), (s2,))
    post_pad = _posterior((padded,), (W,), (b,), (s2,))
    np.testing.assert_array_equal(post_pad.mean[n:], 0.0)
    np.testing.assert_array_equal(
        post_pad.cov[n:], np.broadcast_to(np.eye(k), (n_pad - n, k, k))
    )
    np.testing.assert_allclose(post_pad.mean[:n], post.mean, rtol=0, atol=100 * EPS64)
    tol = n_pad * d * EPS64 * abs(float(post.neg_log_marginal)) * 10
    assert abs(float(post_pad.neg_log_marginal - post.neg_log_marginal)) <= tol


def test_pad_block_to_fewer_rows_is_the_block():
    block = _block(np.random.default_rng(0), 6, 3)
    padded = pad_block(block, 4)
    assert padded.values is block.values and padded.errors is block.errors


# ----------------------------------------------------------------------------------
# Rows of a chunk
# ----------------------------------------------------------------------------------
def test_take_put_rows_and_take_block():
    rng = np.random.default_rng(5)
    n, size = 10, 4
    x = jnp.asarray(rng.normal(size=(n, 3)))
    buf = jnp.zeros((n, 3))
    for i in range(n_chunks(n, size)):
        start, valid = chunk_rows(i, size, n)
        s = int(start)
        chunk = take_rows(x, start, size)
        np.testing.assert_array_equal(chunk, x[s : s + size])
        new = put_rows(buf, chunk + 100.0, start, valid)
        v = np.asarray(valid)
        rows = s + np.arange(size)
        expected = np.asarray(buf).copy()
        expected[rows[v]] = np.asarray(x)[rows[v]] + 100.0
        np.testing.assert_array_equal(new, expected)  # invalid rows untouched
        buf = new
    np.testing.assert_array_equal(buf, np.asarray(x) + 100.0)

    block = _block(rng, n, 3)
    start, valid = chunk_rows(2, size, n)
    sub = take_block(block, start, size, valid)
    s, v = int(start), np.asarray(valid)
    np.testing.assert_array_equal(sub.errors, block.errors[s : s + size])
    np.testing.assert_array_equal(
        np.asarray(sub.mask), np.asarray(block.mask[s : s + size]) & v[:, None]
    )
    assert np.all(np.isnan(np.asarray(sub.values)[~v]))


# ----------------------------------------------------------------------------------
# fold_chunks
# ----------------------------------------------------------------------------------
def _folded_sums(x, size):
    """Per-column sums and per-row visit counts of ``x`` through `fold_chunks`."""
    n = x.shape[0]
    size = min(size, n)  # the kernels' convention: at most n rows a chunk

    def body(start, valid, carry):
        acc, visits = carry
        rows = take_rows(x, start, size)
        acc = acc.add(jnp.sum(jnp.where(valid[:, None], rows, 0.0), axis=0))
        visits = visits.at[start + jnp.arange(size)].add(valid.astype(int))
        return acc, visits

    init = (Accumulator.zeros(jnp.zeros(x.shape[1], x.dtype)), jnp.zeros(n, int))
    acc, visits = fold_chunks(body, n, size, init)
    return acc.total, visits


_fold = jax.jit(_folded_sums, static_argnames="size")


@pytest.mark.parametrize("size", [1, 4, 5, 7, 20, 23, 50])
def test_fold_chunks_sum_equals_a_plain_sum(size):
    # n = 20: sizes 1, 4, 5, 20 divide it, 7 and 23 do not, 50 > n (one call)
    rng = np.random.default_rng(size)
    x = rng.normal(size=(20, 3)) * np.logspace(0, 3, 20)[:, None]
    total, visits = _fold(jnp.asarray(x), size)
    np.testing.assert_array_equal(visits, 1)
    ref = np.array([math.fsum(x[:, j]) for j in range(3)])
    # chunk sums of ≤ size terms, compensated across chunks: error ≲ size·eps·Σ|x|
    tol = (size + 2) * EPS64 * np.abs(x).sum(axis=0)
    np.testing.assert_array_less(np.abs(np.asarray(total) - ref), tol)


def test_fold_chunks_with_one_chunk_calls_the_body_once_on_all_rows():
    calls = []

    def body(start, valid, carry):
        calls.append((int(start), np.asarray(valid).tolist()))
        return carry + 1

    assert int(fold_chunks(body, 5, 5, jnp.asarray(0))) == 1
    assert calls == [(0, [True] * 5)]


# ----------------------------------------------------------------------------------
# Accumulator
# ----------------------------------------------------------------------------------
@jax.jit
def _kahan(xs):
    def step(acc, x):
        return acc.add(x), None

    like = jax.tree.map(lambda a: a[0], xs)
    acc, _ = jax.lax.scan(step, Accumulator.zeros(like), xs)
    return acc.total


@jax.jit
def _naive(xs):
    return jax.lax.scan(lambda s, x: (s + x, None), jnp.zeros_like(xs[0]), xs)[0]


@pytest.mark.parametrize("kind", ["positive", "mixed signs", "wide range"])
def test_accumulator_float32_error_is_bounded_by_2eps(kind):
    rng = np.random.default_rng(
        {"positive": 0, "mixed signs": 1, "wide range": 2}[kind]
    )
    n = 20_000
    if kind == "positive":
        x = rng.uniform(0.0, 1.0, n)
    elif kind == "mixed signs":
        x = rng.normal(size=n) + 0.1
    else:
        x = rng.normal(size=n) * 10.0 ** rng.uniform(-4, 4, n)
    x32 = x.astype(np.float32)
    exact = math.fsum(x32.astype(np.float64))
    kahan = float(_kahan(jnp.asarray(x32)))
    # Kahan summation: |error| ≤ (2u + O(n u²)) Σ|x|, u = eps/2 (Higham, §4.3),
    # plus the final rounding of the total to float32
    u = EPS32 / 2
    bound = (2 * u + n * u**2) * np.abs(x32.astype(np.float64)).sum() + u * abs(exact)
    assert abs(kahan - exact) <= bound, (kahan, exact, bound)
    if kind == "positive":
        # the recursive float32 sum of this many terms is measurably worse
        naive = float(_naive(jnp.asarray(x32)))
        assert abs(naive - exact) > bound


def test_accumulator_on_a_pytree():
    rng = np.random.default_rng(9)
    n = 5000
    xs = {
        "a": jnp.asarray(rng.uniform(size=(n, 3)).astype(np.float32)),
        "b": (jnp.asarray(rng.uniform(size=n).astype(np.float32)),),
    }
    total = _kahan(xs)
    assert total["a"].dtype == jnp.float32 and total["a"].shape == (3,)
    u = EPS32 / 2
    for got, x in [
        (total["a"], np.asarray(xs["a"], np.float64)),
        (total["b"][0], np.asarray(xs["b"][0], np.float64)),
    ]:
        exact = np.array([math.fsum(c) for c in x.reshape(n, -1).T]).reshape(
            np.shape(got)
        )
        bound = (3 * u + n * u**2) * np.abs(x).sum(axis=0)
        np.testing.assert_array_less(np.abs(np.asarray(got, np.float64) - exact), bound)


def test_accumulator_zeros_and_add_eagerly():
    acc = Accumulator.zeros((jnp.ones(2), jnp.ones((), jnp.float32)))
    np.testing.assert_array_equal(acc.total[0], 0.0)
    assert acc.total[1].dtype == jnp.float32
    acc = acc.add((jnp.array([1.0, 2.0]), jnp.float32(3.0))).add(
        (jnp.array([0.5, 0.25]), jnp.float32(1.0))
    )
    np.testing.assert_array_equal(acc.total[0], [1.5, 2.25])
    assert float(acc.total[1]) == 4.0
