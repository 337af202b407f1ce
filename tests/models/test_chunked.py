"""Chunked data passes (``chunk_size``) give the unchunked results.

`fit`, `infer_latents` and `predict` read the stars ``chunk_size`` at a time; the
last chunk overlaps the one before unless the size divides N. Every comparison is
against the same call on all the stars at once, in float64.

Tolerances: a chunked sum adds the same terms in another order, so each sum differs
by about ``n · eps`` relatively (n ≤ 40 terms here: ~1e-14). Per-star quantities
(`infer_latents`, `predict`) are the same arithmetic on the same rows: they agree
to a few eps. A fit of 30 EM iterations carries the rounding through the EM map,
whose sensitivity (about the condition number of the normal equations, ≲ 1e5 here)
makes ~1e-9; ``RTOL_FIT = 1e-7`` leaves a margin of 100.
"""

from __future__ import annotations

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from .test_fit import CONFIGS, N, _data, _fixed, _model, _random_params  # noqa: E402

EPS = np.finfo(np.float64).eps
RTOL_FIT = 1e-7
RTOL_STAR = 1e3 * EPS
SIZES = [1, 7, 16, N, 3 * N]  # 7 and 16 do not divide N = 40 (overlapping last chunk)


def _fit(config: str, chunk_size: int | None, accelerate: bool = True):
    model = _model(*CONFIGS[config])
    return model.fit(
        _data(),
        fixed_params=_fixed(config),
        max_iter=30,
        tol=0.0,
        progress=False,
        accelerate=accelerate,
        chunk_size=chunk_size,
    )


def _assert_tree_close(a, b, rtol, atol=0.0):
    leaves_a, tree_a = jax.tree.flatten(a)
    leaves_b, tree_b = jax.tree.flatten(b)
    assert tree_a == tree_b
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("size", [7, 16])
def test_chunked_fit_equals_unchunked_fit(config, size):
    whole = _fit(config, N)
    chunked = _fit(config, size)
    assert chunked.n_iter == whole.n_iter
    np.testing.assert_allclose(chunked.losses, whole.losses, rtol=RTOL_FIT)
    # Parameters and posteriors: relative to their typical size (entries near 0
    # carry the absolute rounding of their neighbours).
    for name in whole.params:
        _assert_tree_close(chunked.params[name], whole.params[name], RTOL_FIT, 1e-9)
    _assert_tree_close(chunked.param_cov, whole.param_cov, RTOL_FIT, 1e-9)
    np.testing.assert_allclose(
        chunked.posterior.cov, whole.posterior.cov, rtol=RTOL_FIT, atol=1e-9
    )


def test_chunked_plain_em_equals_unchunked():
    whole = _fit("scatter", None, accelerate=False)
    chunked = _fit("scatter", 7, accelerate=False)
    np.testing.assert_allclose(chunked.losses, whole.losses, rtol=RTOL_FIT)
    _assert_tree_close(chunked.params["flux"], whole.params["flux"], RTOL_FIT, 1e-9)


@pytest.mark.parametrize("size", SIZES)
def test_chunked_infer_and_predict_equal_unchunked(size):
    model = _model("vector", "scalar")
    params = _random_params("vector", "scalar")
    data = _data()
    whole = model.infer_latents(data, params, chunk_size=N)
    post = model.infer_latents(data, params, chunk_size=size)
    np.testing.assert_allclose(post.mean, whole.mean, rtol=RTOL_STAR, atol=RTOL_STAR)
    np.testing.assert_allclose(post.cov, whole.cov, rtol=RTOL_STAR, atol=RTOL_STAR)
    rng = np.random.default_rng(3)
    row_cov = {"flux": np.stack([np.eye(3) * 0.01] * 6) + 0.001 * rng.random((6, 3, 3))}
    row_cov["flux"] = row_cov["flux"] + np.swapaxes(row_cov["flux"], 1, 2)
    ref = model.predict(whole, params, param_cov=row_cov, chunk_size=N)
    pred = model.predict(whole, params, param_cov=row_cov, chunk_size=size)
    for name in ("flux", "label"):
        np.testing.assert_allclose(pred[name].data, ref[name].data, rtol=RTOL_STAR)
        np.testing.assert_allclose(pred[name].err, ref[name].err, rtol=RTOL_STAR)


def test_default_chunk_size_is_the_memory_budget():
    from pollux.core.chunks import DEFAULT_MEMORY, auto_chunk_size

    size = auto_chunk_size(10**6, 8575, 32, 4)
    per_star = 4 * (8 * 8575 + 4 * 33**2)
    assert size == DEFAULT_MEMORY // per_star
    assert auto_chunk_size(10, 8575, 32, 4) == 10  # never more than the stars
    assert auto_chunk_size(5, 10**9, 32, 8) == 1  # never less than one


@pytest.mark.parametrize(
    ("value", "exc"), [(0, ValueError), (-3, ValueError), (2.5, TypeError)]
)
def test_invalid_chunk_size_is_refused(value, exc):
    model = _model("vector", "scalar")
    params = _random_params("vector", "scalar")
    data = _data()
    with pytest.raises(exc, match=r"fit\(chunk_size=\.\.\.\)"):
        model.fit(data, max_iter=1, progress=False, chunk_size=value)
    with pytest.raises(exc, match=r"infer_latents\(chunk_size=\.\.\.\)"):
        model.infer_latents(data, params, chunk_size=value)
    post = model.infer_latents(data, params)
    with pytest.raises(exc, match=r"predict\(chunk_size=\.\.\.\)"):
        model.predict(post, params, chunk_size=value)
