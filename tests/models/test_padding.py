"""Small problems run padded with missing stars to a bucket size (`_fit.PAD_BYTES`).

The padded stars have no observed value: they add exactly zero to every sum, so a
padded call gives the unpadded result up to the order of the sums (tolerances as
in test_chunked), and calls on a few more or fewer stars in the same bucket reuse
the compiled programs.
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
)

from pollux.core import em, pca, posterior  # noqa: E402
from pollux.core.blocks import count_observed  # noqa: E402
from pollux.data import OutputData, PolluxData  # noqa: E402
from pollux.fit import _sizes as _fit  # noqa: E402

PROGRAMS = (
    em.em_chunk,
    em.initialize,
    em.final_state,
    pca.pca_latents,
    posterior.posterior_moments,
    posterior.predictive,
)


def _first(n: int) -> PolluxData:
    data = make_data()
    return PolluxData(
        **{
            name: OutputData(data[name].data[:n], err=data[name].err[:n])
            for name in data.names
        }
    )


def _fixed_first(config: str, n: int):
    fixed = fixed_params_of(config)
    if fixed is not None and "latents" in fixed:
        fixed = {**fixed, "latents": fixed["latents"][:n]}
    return fixed


def _run(config: str, n: int, max_iter: int = 20):
    model = make_model(*CONFIGS[config])
    data = _first(n)
    fit = model.fit(
        data,
        fixed_params=_fixed_first(config, n),
        max_iter=max_iter,
        tol=0.0,
        progress=False,
        accelerate=False,
    )
    post = model.infer_latents(data, fit.params, names=["flux"])
    pred = model.predict(post, fit.params, names=["label"], param_cov=fit.param_cov)
    return fit, post, pred


def test_bucket_sizes():
    assert _fit.padded_size(40, 100) == 48
    assert _fit.padded_size(48, 100) == 48
    assert _fit.padded_size(49, 100) == 64
    # too large to copy: not padded
    assert _fit.padded_size(40, _fit.PAD_BYTES // 40) == 40


@pytest.mark.parametrize("config", ["scatter", "fixed_latents"])
def test_padded_calls_equal_unpadded(config, monkeypatch):
    n = N - 3  # padded to 48
    fit, post, pred = _run(config, n)
    monkeypatch.setattr(_fit, "PAD_BYTES", 0)
    fit0, post0, pred0 = _run(config, n)

    assert fit.posterior.mean.shape == fit0.posterior.mean.shape == (n, 2)
    np.testing.assert_allclose(fit.losses, fit0.losses, rtol=RTOL_FIT)
    for name in ("flux", "label"):
        for key, value in fit0.params[name].items():
            np.testing.assert_allclose(
                fit.params[name][key], value, rtol=RTOL_FIT, atol=1e-9
            )
    assert post.mean.shape == (n, 2) and post.cov.shape == (n, 2, 2)
    np.testing.assert_allclose(post.mean, post0.mean, rtol=RTOL_FIT, atol=1e-9)
    assert pred["label"].data.shape == (n, 2)
    np.testing.assert_allclose(
        pred["label"].data, pred0["label"].data, rtol=RTOL_FIT, atol=1e-9
    )
    np.testing.assert_allclose(
        pred["label"].err, pred0["label"].err, rtol=RTOL_FIT, atol=1e-9
    )


def test_a_few_more_stars_reuse_the_compiled_programs():
    _run("scatter", 33, max_iter=2)  # bucket 48
    sizes = [f._cache_size() for f in PROGRAMS]
    _run("scatter", 40, max_iter=2)  # bucket 48: nothing new
    assert [f._cache_size() for f in PROGRAMS] == sizes
    _run("scatter", 30, max_iter=2)  # bucket 32: every program again
    grown = [f._cache_size() for f in PROGRAMS]
    assert all(g > s for g, s in zip(grown, sizes, strict=True))


def test_predict_pads_the_posterior_and_returns_every_star():
    model = make_model(*CONFIGS["plain"])
    fit, _, _ = _run("plain", N, max_iter=2)
    post = model.infer_latents(_first(5), fit.params, names=["flux"])
    assert post.mean.shape == (5, 2)
    pred = model.predict(post, fit.params)
    whole = model.infer_latents(make_data(), fit.params, names=["flux"])
    np.testing.assert_allclose(post.mean, whole.mean[:5], rtol=RTOL_STAR, atol=1e-12)
    assert pred["flux"].data.shape == (5, pred["flux"].data.shape[1])
    assert np.all(np.isfinite(np.asarray(pred["label"].data)))


def test_a_fit_compiles_its_kernels_and_nothing_else():
    """Parameters, priors and data are converted on the host (``jnp.asarray`` of a
    host array compiles a small program per shape, each a few tens of ms of a
    fresh process's first call). 24 stars are a bucket: no padding, whose copies
    are small programs of their own (once per bucket)."""
    model, data = make_model(*CONFIGS["scatter"]), _first(24)
    names = []

    def listen(event: str, duration: float, **kwargs) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            names.append(kwargs.get("fun_name"))

    jax.clear_caches()
    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        fit = model.fit(data, max_iter=2, tol=0.0, progress=False)
        post = model.infer_latents(data, fit.params, names=["flux"])
        model.predict(post, fit.params, names=["label"], param_cov=fit.param_cov)
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    kernels = {f"jit({f.__name__})" for f in (*PROGRAMS, count_observed)}
    assert "jit(em_chunk)" in names
    assert set(names) <= kernels, sorted(set(names) - kernels)
