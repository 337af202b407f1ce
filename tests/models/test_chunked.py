"""Chunked data passes (``chunk_size``) give the unchunked results.

`fit`, `infer_latents` and `predict` read the stars ``chunk_size`` at a time; the
last chunk overlaps the one before unless the size divides N. Every comparison is
against the same call on all the stars at once, in float64.

Tolerances: a chunked sum adds the same terms in another order, so each sum differs
by about ``n · eps`` relatively (n ≤ 40 terms here: ~1e-14). Per-star quantities
(`infer_latents`, `predict`) are the same arithmetic on the same rows: they agree
to a few eps. Plain EM sweeps carry the rounding through the EM map, whose
sensitivity (about the condition number of the normal equations, ≲ 1e5 here) makes
~1e-9 after 20 sweeps; ``RTOL_FIT = 1e-7`` leaves a margin of 100. SQUAREM picks the
extrapolated point or not by comparing two objectives, a choice that rounding can
flip, so for it only what the converged fit determines is compared: the objective
and the predictions (not the parameters, which a latent rotation leaves free).
"""

from __future__ import annotations

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from builders import (  # noqa: E402
    CONFIGS,
    RTOL_FIT,
    RTOL_STAR,
    N,
    fixed_params_of,
    make_data,
    make_model,
    make_quadratic_model,
    random_params,
)

import pollux as plx  # noqa: E402
from pollux.fit import _sizes as fit_driver  # noqa: E402

EPS = np.finfo(np.float64).eps
SIZES = [1, 7, 16, N, 3 * N]  # 7 and 16 do not divide N = 40 (overlapping last chunk)


@pytest.fixture(autouse=True)
def _no_padding(monkeypatch):
    """Run on exactly N stars (no padding to a bucket): the chunk layouts above."""
    monkeypatch.setattr(fit_driver, "PAD_BYTES", 0)


def _fit(config, chunk_size, accelerate: bool, max_iter: int, tol: float = 0.0):
    model = make_model(*CONFIGS[config])
    result = model.fit(
        make_data(),
        fixed_params=fixed_params_of(config),
        max_iter=max_iter,
        tol=tol,
        progress=False,
        accelerate=accelerate,
        chunk_size=chunk_size,
    )
    return model, result


def _twenty_sweeps(model, chunk_size, fixed_params=None):
    """20 plain EM sweeps of ``model`` on the builders' data."""
    return model.fit(
        make_data(),
        fixed_params=fixed_params,
        max_iter=20,
        tol=0.0,
        progress=False,
        accelerate=False,
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
def test_chunked_em_sweeps_equal_unchunked(config, size):
    _, whole = _fit(config, N, accelerate=False, max_iter=20)
    _, chunked = _fit(config, size, accelerate=False, max_iter=20)
    assert chunked.n_iter == whole.n_iter == 20
    np.testing.assert_allclose(chunked.losses, whole.losses, rtol=RTOL_FIT)
    # Parameters and posteriors: entries near zero carry the absolute rounding of
    # their neighbours (values are of order one).
    for name in whole.params:
        _assert_tree_close(chunked.params[name], whole.params[name], RTOL_FIT, 1e-9)
    _assert_tree_close(chunked.param_cov, whole.param_cov, RTOL_FIT, 1e-9)
    np.testing.assert_allclose(
        chunked.posterior.cov, whole.posterior.cov, rtol=RTOL_FIT, atol=1e-9
    )


def test_chunked_checked_newton_s_step_equals_unchunked():
    """A Gamma prior on s takes the s-step with a second data pass (pass C)."""
    import numpyro.distributions as dist

    from pollux.models.transforms import AffineTransform, LinearTransform

    def fit(chunk_size):
        model = plx.LuxModel(latent_size=2)
        prior = {"s": dist.Gamma(2.0, 10.0).expand((6,))}
        model.register_output("flux", AffineTransform(6, param_priors=prior))
        model.register_output("label", LinearTransform(2))
        return _twenty_sweeps(model, chunk_size)

    whole, chunked = fit(N), fit(7)
    assert np.all(np.diff(whole.losses) <= 1e-9 * np.abs(whole.losses[1:]))
    np.testing.assert_allclose(chunked.losses, whole.losses, rtol=RTOL_FIT)
    _assert_tree_close(chunked.params["flux"], whole.params["flux"], RTOL_FIT, 1e-9)


@pytest.mark.parametrize("config", ["scatter", "fixed_latents"])
def test_chunked_squarem_fit_reaches_the_unchunked_optimum(config):
    model, whole = _fit(config, None, accelerate=True, max_iter=500, tol=1e-9)
    _, chunked = _fit(config, 7, accelerate=True, max_iter=500, tol=1e-9)
    assert whole.converged and chunked.converged
    # Both stop once a cycle changes the objective by <= 1e-9 per value.
    np.testing.assert_allclose(chunked.losses[-1], whole.losses[-1], rtol=1e-8)
    ref = model.predict(whole.posterior, whole.params, chunk_size=N)
    pred = model.predict(chunked.posterior, chunked.params, chunk_size=7)
    for name in ("flux", "label"):
        np.testing.assert_allclose(pred[name].data, ref[name].data, atol=1e-5)
        np.testing.assert_allclose(pred[name].err, ref[name].err, atol=1e-5)


@pytest.mark.parametrize("fixed_latents", [False, True])
def test_chunked_quadratic_sweeps_equal_unchunked(fixed_latents):
    """The variational EM's passes over chunks (7 stars: an overlapping last
    chunk) take the unchunked sweeps: its affine start, 20 sweeps, final E-step."""
    fixed = None
    if fixed_latents:  # the ridge regression of every sweep, a Gamma prior on s
        fixed = {"latents": fixed_params_of("fixed_latents")["latents"]}

    def fit(chunk_size):
        return _twenty_sweeps(make_quadratic_model(fixed_latents), chunk_size, fixed)

    whole, chunked = fit(None), fit(7)
    assert chunked.n_iter == whole.n_iter == 20
    np.testing.assert_allclose(chunked.losses, whole.losses, rtol=RTOL_FIT)
    # Seen: objective 3e-10, weights 5e-8, posterior and row covariances 4e-7
    # (relative, over 1e-9 absolute). Twenty sweeps of a fit that is still
    # descending along its slow direction (a quadratic term traded against the
    # offsets and the latents' spread) amplify the rounding of the sums more than
    # the affine EM does; 1e-5 leaves a margin of 25.
    rtol = 1e-5
    for name in ("flux", "label"):
        _assert_tree_close(chunked.params[name], whole.params[name], rtol, 1e-9)
    _assert_tree_close(chunked.param_cov, whole.param_cov, rtol, 1e-9)
    np.testing.assert_allclose(
        chunked.posterior.cov, whole.posterior.cov, rtol=rtol, atol=1e-9
    )


@pytest.mark.parametrize("size", SIZES)
def test_chunked_infer_and_predict_equal_unchunked(size):
    model = make_model("vector", "scalar")
    params = random_params("vector", "scalar")
    data = make_data()
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
    model = make_model("vector", "scalar")
    params = random_params("vector", "scalar")
    data = make_data()
    with pytest.raises(exc, match=r"fit\(chunk_size=\.\.\.\)"):
        model.fit(data, max_iter=1, progress=False, chunk_size=value)
    with pytest.raises(exc, match=r"infer_latents\(chunk_size=\.\.\.\)"):
        model.infer_latents(data, params, chunk_size=value)
    post = model.infer_latents(data, params)
    with pytest.raises(exc, match=r"predict\(chunk_size=\.\.\.\)"):
        model.predict(post, params, chunk_size=value)
