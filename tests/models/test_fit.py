"""The closed-form path (`LuxModel.fit`, `infer_latents`, `predict`) against slow,
obvious references: dense Gaussian conditioning, dense multivariate-normal
log-densities, numpyro MAP, and a float32 run in a subprocess.

Problem sizes are tiny and shared between tests, so each compiled kernel is built a
few times only.
"""

from __future__ import annotations

import functools
import io
import logging
import textwrap

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import numpyro  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
import pytest  # noqa: E402
from builders import (  # noqa: E402
    ATOL64,
    CONFIGS,
    D1,
    FULL,
    MAX_ITER,
    RTOL64,
    K,
    N,
    fixed_params_of,
    make_data,
    make_model,
    random_params,
)
from jax.example_libraries import optimizers  # noqa: E402

import pollux as plx  # noqa: E402
from pollux.data import OutputData, PolluxData, ShiftScalePreprocessor  # noqa: E402
from pollux.fit import LatentPosterior  # noqa: E402
from pollux.models.transforms import (  # noqa: E402
    AffineTransform,
    FunctionTransform,
    QuadraticTransform,
)
from pollux.testing import (  # noqa: E402
    affine_rows,
    dense_objective,
    dense_posterior,
    observed,
)


@functools.cache
def _fit(config: str, max_iter: int = MAX_ITER):
    model = make_model(*CONFIGS[config])
    fixed = fixed_params_of(config)
    data = make_data()
    result = model.fit(
        data, fixed_params=fixed, max_iter=max_iter, tol=0.0, progress=False
    )
    return model, fixed, data, result


# ----------------------------------------------------------------------------------
# Parameters for the dense references of pollux.testing
# ----------------------------------------------------------------------------------
# ----------------------------------------------------------------------------------
# 1. Latent posterior
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("flux_s", "label_s", "names"),
    [
        ("none", "none", None),
        ("scalar", "scalar", None),
        ("vector", "scalar", None),
        ("scalar", "vector", ("flux",)),
    ],
)
def test_infer_latents_matches_dense_conditioning(flux_s, label_s, names):
    model = make_model(flux_s, label_s)
    data = make_data()
    params = random_params(flux_s, label_s)
    post = model.infer_latents(data, params, names=names)
    used = tuple(model.outputs) if names is None else names
    mean, cov = dense_posterior(model, data, params, used)

    assert isinstance(post, LatentPosterior)
    assert post.mean.shape == (N, K) and post.cov.shape == (N, K, K)
    assert post.mean.dtype == jnp.float64
    np.testing.assert_allclose(post.mean, mean, rtol=RTOL64, atol=ATOL64)
    np.testing.assert_allclose(post.cov, cov, rtol=RTOL64, atol=ATOL64)
    # The star with nothing observed keeps the prior.
    np.testing.assert_allclose(post.mean[FULL], 0.0, atol=ATOL64)
    np.testing.assert_allclose(post.cov[FULL], np.eye(K), atol=ATOL64)


# ----------------------------------------------------------------------------------
# 2./3. The reported objective and its monotonic decrease
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("config", list(CONFIGS))
def test_final_loss_is_negative_log_posterior(config):
    model, fixed, data, result = _fit(config)
    expected = dense_objective(model, data, result.params, fixed)
    # tol=0 stops early only when an iteration changes nothing at all.
    assert 1 <= result.n_iter <= MAX_ITER
    assert result.losses.shape == (result.n_iter + 1,)
    # Two exact evaluations (Woodbury vs dense) of a sum of ~300 terms, each off by
    # ~cond · eps (cond ≲ 1e5): ~1e-11 of the total.
    np.testing.assert_allclose(float(result.losses[-1]), expected, rtol=1e-10)


@pytest.mark.parametrize("config", list(CONFIGS))
def test_losses_never_increase(config):
    *_, result = _fit(config)
    losses = np.asarray(result.losses)
    assert np.all(np.isfinite(losses))
    slack = 1e-10 * (1.0 + np.abs(losses[:-1]))
    assert np.all(np.diff(losses) <= slack), np.diff(losses).max()
    assert losses[-1] < losses[0]


def test_plain_em_and_squarem_reach_the_same_optimum():
    model, _, data, _ = _fit("scatter")
    plain = model.fit(data, max_iter=3000, tol=1e-12, accelerate=False, progress=False)
    fast = model.fit(data, max_iter=300, tol=1e-12, progress=False)
    assert np.all(np.diff(np.asarray(plain.losses)) <= 1e-9)
    assert fast.n_iter < plain.n_iter
    # Both stop once an iteration changes the objective (~1e2) by < 1e-12 per
    # observed value; plain EM may still creep along flat directions that cost
    # less than 1e-5 in total: 1e-7 relative.
    np.testing.assert_allclose(fast.losses[-1], plain.losses[-1], rtol=1e-7)


def test_losses_entries_are_objective_before_each_iteration():
    """``losses[i]`` of a longer run is the final loss of an ``i``-iteration run."""
    *_, short = _fit("scatter", max_iter=10)
    *_, long = _fit("scatter")
    # The same sweeps on the same inputs (only the compiled chunk lengths differ):
    # equal up to a few roundings of re-fused code.
    np.testing.assert_allclose(long.losses[:10], short.losses[:10], rtol=1e-12)
    np.testing.assert_allclose(long.losses[10], short.losses[-1], rtol=1e-12)


def test_fit_stops_after_max_iter_iterations():
    """Not a multiple of the compiled chunk: the run still stops at max_iter."""
    model, _, data, long = _fit("scatter")
    result = model.fit(data, max_iter=15, tol=0.0, progress=False)
    assert result.n_iter == 15
    np.testing.assert_allclose(result.losses[:15], long.losses[:15], rtol=1e-12)
    # The objective at the returned parameters is the one after 15 iterations.
    np.testing.assert_allclose(result.losses[-1], long.losses[15], rtol=1e-12)


def test_fit_is_reproducible():
    model, _, data, first = _fit("scatter")
    again = model.fit(data, max_iter=MAX_ITER, tol=0.0, progress=False)
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(again), strict=True):
        np.testing.assert_array_equal(a, b)


def test_fixed_params_are_returned_unchanged():
    _, fixed, _, result = _fit("partly_fixed")
    np.testing.assert_array_equal(result.params["flux"]["A"], fixed["flux"]["A"])
    np.testing.assert_array_equal(result.params["label"]["s"], fixed["label"]["s"])
    _, fixed, _, result = _fit("fixed_latents")
    np.testing.assert_array_equal(result.params["latents"], fixed["latents"])
    np.testing.assert_array_equal(result.params["flux"]["b"], fixed["flux"]["b"])


# ----------------------------------------------------------------------------------
# 4. Fixed latents: EM and numpyro MAP solve the same problem
# ----------------------------------------------------------------------------------
def test_fixed_latents_fit_matches_optimize():
    model, fixed, data, _ = _fit("fixed_latents")
    result = model.fit(data, fixed_params=fixed, max_iter=500, tol=0.0, progress=False)
    assert result.converged
    # Adam with a decaying step size: converges tightly on this small problem.
    schedule = optimizers.exponential_decay(0.05, 700, 0.1)
    params, svi = model.optimize(
        data,
        num_steps=2000,
        rng_key=jax.random.PRNGKey(0),
        optimizer=numpyro.optim.Adam(schedule),
        fixed_params=fixed,
        svi_run_kwargs={"progress_bar": False},
    )
    fit_obj = dense_objective(model, data, result.params, fixed)
    opt_obj = dense_objective(model, data, params, fixed)
    # (as in test_final_loss_is_negative_log_posterior)
    np.testing.assert_allclose(float(result.losses[-1]), fit_obj, rtol=1e-10)
    # Both find the same optimum of the same objective ...
    assert abs(opt_obj - fit_obj) < 1e-8
    # ... and report it as the same quantity (−log likelihood − log prior).
    assert abs(float(svi.losses[-1]) - float(result.losses[-1])) < 1e-8
    # Objectives within 1e-8 of a common optimum put each parameter within
    # sqrt(2e-8 / curvature) of it; the curvature is ≳ 1e4 along every parameter
    # here (precise data), hence ~1e-6.
    for name, pname in [
        ("flux", "A"),
        ("flux", "s"),
        ("label", "A"),
        ("label", "s"),
    ]:
        np.testing.assert_allclose(
            params[name][pname],
            result.params[name][pname],
            rtol=1e-6,
            atol=1e-7,
            err_msg=f"{name}:{pname}",
        )
    # Fixed values are passed through by both.
    np.testing.assert_array_equal(params["flux"]["b"], result.params["flux"]["b"])


# ----------------------------------------------------------------------------------
# 5. No recompilation between calls of equal shapes
# ----------------------------------------------------------------------------------
def _jitted():
    from pollux import core

    return {
        "em_chunk": core.em_chunk,
        "final_state": core.final_state,
        "initialize": core.initialize,
        "pca": core.pca_latents,
        "posterior_moments": core.posterior_moments,
        "predictive": core.predictive,
    }


def _fit_infer_predict(model, data):
    result = model.fit(data, max_iter=MAX_ITER, tol=0.0, progress=False)
    post = model.infer_latents(data, result.params, names=["flux"])
    pred = model.predict(post, result.params)
    jax.block_until_ready(pred["label"].err)
    return result


def test_second_fit_with_equal_shapes_does_not_recompile():
    model = make_model("vector", "scalar")
    _fit_infer_predict(model, make_data())  # warm-up (may compile)
    before = {k: f._cache_size() for k, f in _jitted().items()}

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("jax")
    logger.addHandler(handler)
    try:
        with jax.log_compiles():
            # New values (a different seed: other data, errors and masks), same shapes.
            result = _fit_infer_predict(model, make_data(seed=1))
            # A fresh model with the same structure reuses the compiled kernels too.
            _fit_infer_predict(make_model("vector", "scalar"), make_data(seed=2))
    finally:
        logger.removeHandler(handler)
    after = {k: f._cache_size() for k, f in _jitted().items()}
    assert after == before
    compiled = [line for line in stream.getvalue().splitlines() if "Compiling" in line]
    assert not compiled, "\n".join(compiled)
    assert np.all(np.isfinite(result.losses))


# ----------------------------------------------------------------------------------
# 6. Masked values
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("garbage", [1e3, -7.5, 0.0])
def test_values_under_a_mask_change_nothing(garbage):
    model, _, data, result = _fit("scatter")
    other = make_data(garbage=garbage)  # finite junk with infinite error, not NaN
    assert not np.array_equal(
        np.asarray(other["flux"].data), np.asarray(data["flux"].data), equal_nan=True
    )
    again = model.fit(other, max_iter=MAX_ITER, tol=0.0, progress=False)
    for a, b in zip(jax.tree.leaves(result), jax.tree.leaves(again), strict=True):
        np.testing.assert_array_equal(a, b)
    p1 = model.infer_latents(data, result.params, names=["flux"])
    p2 = model.infer_latents(other, result.params, names=["flux"])
    np.testing.assert_array_equal(p1.mean, p2.mean)
    np.testing.assert_array_equal(p1.cov, p2.cov)


def test_fully_masked_star_changes_no_other_star():
    model, fixed, data, result = _fit("fixed_latents")
    keep = np.arange(N) != FULL
    # Posterior of the other stars at fixed parameters.
    post = model.infer_latents(data, result.params)
    post_less = model.infer_latents(data[keep], result.params)
    # Per-star computations: only the batch size differs (a few roundings at most).
    np.testing.assert_allclose(post_less.mean, post.mean[keep], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(post_less.cov, post.cov[keep], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(post.mean[FULL], 0.0, atol=1e-14)
    np.testing.assert_allclose(post.cov[FULL], np.eye(K), atol=1e-14)
    # The fit given fixed latents: the star contributes no term at all.
    fixed_less = {**fixed, "latents": fixed["latents"][keep]}
    less = model.fit(
        data[keep], fixed_params=fixed_less, max_iter=MAX_ITER, tol=0.0, progress=False
    )
    # At the same (start) parameters the objectives agree to rounding: the star's
    # terms are exact zeros, only the summation order over stars differs (relative
    # error ~ eps * log2(N) per sum, ~1e-14 here).
    np.testing.assert_allclose(less.losses[0], result.losses[0], rtol=1e-12)
    # The iterates then differ by that rounding amplified by the conditioning of
    # the M-step's normal matrices (1e-10 in A after one sweep, seen); both runs
    # converge to the same fixed point, where the objective is flat: its value
    # agrees to ~cond * eps², far below this tolerance.
    np.testing.assert_allclose(less.losses[-1], result.losses[-1], rtol=1e-10)
    # Both runs end at the same fixed point; ``s`` is only resolved to about
    # sqrt(eps) there (its step is accepted when the objective improves).
    for name in ("flux", "label"):
        for pname, value in result.params[name].items():
            np.testing.assert_allclose(
                less.params[name][pname], value, rtol=1e-7, atol=1e-10
            )


def test_masked_values_never_produce_nan():
    *_, result = _fit("scatter")
    for leaf in jax.tree.leaves(result):
        assert np.all(np.isfinite(leaf))


# ----------------------------------------------------------------------------------
# 7. predict
# ----------------------------------------------------------------------------------
def test_predict_matches_dense_propagation():
    model, _, data, result = _fit("scatter")
    post = model.infer_latents(data, result.params, names=["flux"])
    pred = model.predict(post, result.params)
    assert isinstance(pred, PolluxData)
    assert set(pred.names) == {"flux", "label"}
    mean, cov = np.asarray(post.mean), np.asarray(post.cov)
    for name in ("flux", "label"):
        W, b, s2 = affine_rows(result.params, name)
        exp_mean = mean @ W.T + b
        exp_var = np.array([np.diag(W @ c @ W.T) for c in cov]) + s2
        assert pred[name].preprocessed
        np.testing.assert_allclose(pred[name].data, exp_mean, rtol=RTOL64, atol=ATOL64)
        np.testing.assert_allclose(
            pred[name].err, np.sqrt(exp_var), rtol=RTOL64, atol=ATOL64
        )
    only = model.predict(post, result.params, names=["label"])
    assert only.names == ("label",)
    np.testing.assert_array_equal(only["label"].err, pred["label"].err)


def test_param_cov_is_the_row_regression_covariance():
    """With the latents fixed, each trained row is a Bayesian linear regression:
    its covariance is (Σ_n λ_nd z̃_n z̃_nᵀ + diag(1/τ²))⁻¹, zero where fixed."""
    _, fixed, data, result = _fit("fixed_latents")
    z = np.asarray(fixed["latents"])
    tau2 = {"flux": 2.0**2, "label": 1.0}  # Normal(0.1, 2) and default Normal(0, 1)
    for name in ("flux", "label"):
        y, var, mask = observed(data, name)
        _, _, s2 = affine_rows(result.params, name)
        lam = np.where(mask, 1.0 / (var + s2), 0.0)
        C = np.asarray(result.param_cov[name])
        for d in range(y.shape[1]):
            G = (lam[:, d, None] * z).T @ z + np.eye(K) / tau2[name]
            # Two inverses of a K×K matrix with cond ≲ 1e6: each off by cond · eps.
            np.testing.assert_allclose(C[d, :K, :K], np.linalg.inv(G), rtol=1e-8)
        if name == "flux":  # b is fixed: no uncertainty, shape keeps its slot
            assert C.shape == (D1, K + 1, K + 1)
            np.testing.assert_array_equal(C[:, K, :], 0.0)
            np.testing.assert_array_equal(C[:, :, K], 0.0)


def test_predict_with_param_cov_matches_dense_propagation():
    model, _, data, result = _fit("scatter")
    post = model.infer_latents(data, result.params, names=["flux"])
    pred = model.predict(post, result.params, param_cov=result.param_cov)
    mean, cov = np.asarray(post.mean), np.asarray(post.cov)
    for name in ("flux", "label"):
        W, _, s2 = affine_rows(result.params, name)
        C = np.asarray(result.param_cov[name])
        kt = C.shape[-1]
        exp_var = np.empty((N, W.shape[0]))
        for n in range(N):
            mt = np.append(mean[n], np.ones(kt - K))
            St = np.zeros((kt, kt))
            St[:K, :K] = cov[n]
            for d in range(W.shape[0]):
                s2_d = s2 if np.ndim(s2) == 0 else s2[d]
                latent = W[d] @ cov[n] @ W[d] + s2_d
                exp_var[n, d] = latent + mt @ C[d] @ mt + np.trace(C[d] @ St)
        # Sums of a few K×K products of quantities exact to ~1e-10 (see above).
        np.testing.assert_allclose(pred[name].err, np.sqrt(exp_var), rtol=1e-9)


def test_param_cov_of_wrong_shape_is_refused():
    model, _, data, result = _fit("scatter")
    post = model.infer_latents(data, result.params, names=["flux"])
    with pytest.raises(ValueError, match=r"param_cov\['label'\]"):
        model.predict(
            post, result.params, names=["label"], param_cov={"label": np.zeros((2, 3))}
        )


def test_infer_latents_accepts_fit_params_for_other_stars():
    """Train and apply: the params returned by fit serve to infer new stars."""
    model, _, data, result = _fit("scatter")
    transforms = {name: result.params[name] for name in model.outputs}
    expected = model.infer_latents(data, transforms, names=["flux"])
    post = model.infer_latents(data[:10], result.params, names=["flux"])
    # Each star's posterior is computed on its own: only the batch size differs.
    np.testing.assert_allclose(post.mean, expected.mean[:10], rtol=1e-12)
    np.testing.assert_allclose(post.cov, expected.cov[:10], rtol=1e-12)


# ----------------------------------------------------------------------------------
# 8. Train / apply on simulated data, physical units, calibration
# ----------------------------------------------------------------------------------
@functools.cache
def _simulated():
    # The predictive errors leave out the uncertainty of the fitted parameters:
    # the training set is large next to K x n_flux so that it is negligible here.
    n_train, n_test, n_flux = 1000, 500, 12
    obs, truth = plx.datasets.make_simulated_linear_data(
        n_stars=n_train + n_test, n_latents=3, n_labels=2, n_flux=n_flux, rng=1
    )
    raw = PolluxData(
        flux=OutputData(
            obs["flux"],
            err=obs["flux_err"],
            preprocessor=ShiftScalePreprocessor.from_data(obs["flux"]),
        ),
        label=OutputData(
            obs["label"],
            err=obs["label_err"],
            preprocessor=ShiftScalePreprocessor.from_data(obs["label"]),
        ),
    )
    pre = raw.preprocess()
    train, test = pre[:n_train], pre[n_train:]
    model = plx.LuxModel(latent_size=3)
    model.register_output("flux", AffineTransform(n_flux))
    model.register_output("label", AffineTransform(2))
    result = model.fit(train, max_iter=200, progress=False)
    post = model.infer_latents(test, result.params, names=["flux"])
    pred = model.predict(post, result.params, names=["label"])
    return raw, test, truth["label"][n_train:], result, pred


def test_unprocess_gives_physical_units_with_scaled_errors():
    raw, test, _, _, pred = _simulated()
    phys = test.unprocess(pred)
    pre = raw["label"].preprocessor
    assert not phys["label"].preprocessed
    np.testing.assert_allclose(
        phys["label"].data, np.asarray(pred["label"].data) * pre.scale + pre.loc
    )
    np.testing.assert_allclose(
        phys["label"].err, np.asarray(pred["label"].err) * pre.scale
    )


def test_flux_only_label_uncertainties_are_calibrated():
    _, test, true_label, result, pred = _simulated()
    assert np.all(np.diff(result.losses) <= 1e-10 * (1 + np.abs(result.losses[:-1])))
    phys = test.unprocess(pred)
    zscores = (np.asarray(phys["label"].data) - true_label) / np.asarray(
        phys["label"].err
    )
    assert np.all(np.isfinite(zscores))
    std = zscores.std(axis=0)
    assert np.all((std > 0.85) & (std < 1.15)), std
    assert np.all(np.abs(zscores.mean(axis=0)) < 0.3), zscores.mean(axis=0)


def test_param_cov_calibrates_a_small_training_set():
    """400 training stars, 24 pixels: the trained transforms' own error matters.
    Without it the flux-only label z-scores spread too wide; with it they don't."""
    n_train, n_test, n_flux = 400, 500, 24
    obs, truth = plx.datasets.make_simulated_linear_data(
        n_stars=n_train + n_test, n_latents=3, n_labels=2, n_flux=n_flux, rng=0
    )
    raw = PolluxData(
        **{
            name: OutputData(
                obs[name],
                err=obs[f"{name}_err"],
                preprocessor=ShiftScalePreprocessor.from_data(obs[name]),
            )
            for name in ("flux", "label")
        }
    )
    pre = raw.preprocess()
    train, test = pre[:n_train], pre[n_train:]
    model = plx.LuxModel(latent_size=3)
    model.register_output("flux", AffineTransform(n_flux))
    model.register_output("label", AffineTransform(2))
    result = model.fit(train, progress=False)
    post = model.infer_latents(test, result.params, names=["flux"])
    stds = []
    for param_cov in (None, result.param_cov):
        pred = model.predict(post, result.params, names=["label"], param_cov=param_cov)
        phys = test.unprocess(pred)["label"]
        z = (np.asarray(phys.data) - truth["label"][n_train:]) / np.asarray(phys.err)
        stds.append(z.std(axis=0))
    assert np.all(stds[0] > 1.15), stds[0]
    assert np.all((stds[1] > 0.9) & (stds[1] < 1.1)), stds[1]


# ----------------------------------------------------------------------------------
# 9. Bad input
# ----------------------------------------------------------------------------------
def test_fit_refuses_non_polynomial_transform():
    model = plx.LuxModel(latent_size=K)
    model.register_output(
        "flux",
        FunctionTransform(
            D1,
            lambda z, w: jnp.tanh(w @ z),
            param_priors={"w": dist.Normal(0.0, 1.0)},
            param_shapes={"w": ("output_size", "input_size")},
        ),
    )
    with pytest.raises(ValueError, match=r"FunctionTransform.*polynomial.*optimize"):
        model.fit(make_data(), names=["flux"], progress=False)


def test_fit_refuses_quadratic_with_too_many_latents():
    model = plx.LuxModel(latent_size=11)
    model.register_output("flux", QuadraticTransform(D1))
    with pytest.raises(ValueError, match=r"latent_size=11.*up to latent_size=10"):
        model.fit(make_data(), names=["flux"], progress=False)


def test_fit_refuses_non_normal_prior():
    model = plx.LuxModel(latent_size=K)
    model.register_output(
        "flux", AffineTransform(D1, param_priors={"A": dist.Laplace(0.0, 1.0)})
    )
    with pytest.raises(ValueError, match=r"'A'.*Laplace.*optimize") as info:
        model.fit(make_data(), names=["flux"], progress=False)
    assert "'flux'" in str(info.value)


def test_fit_refuses_fixed_params_of_wrong_shape():
    model = make_model()
    bad = {"flux": {"A": np.zeros((D1, K + 1))}}
    with pytest.raises(ValueError, match=r"fixed_params\['flux'\]\['A'\].*shape"):
        model.fit(make_data(), fixed_params=bad, progress=False)
    with pytest.raises(ValueError, match=r"fixed_params\['latents'\].*latent_size"):
        model.fit(make_data(), fixed_params={"latents": np.zeros((N, K + 1))})


def test_unregistered_names_are_refused():
    model = make_model()
    with pytest.raises(ValueError, match=r"names=.*'nope'.*not a registered"):
        model.fit(make_data(), names=["nope"], progress=False)
    with pytest.raises(ValueError, match=r"fixed_params=.*'nope'.*not a registered"):
        model.fit(make_data(), fixed_params={"nope": {}}, progress=False)
    params = random_params("vector", "scalar")
    with pytest.raises(ValueError, match=r"names=.*'nope'.*not a registered"):
        model.infer_latents(make_data(), params, names=["nope"])


def test_infer_latents_requires_declared_scatter():
    model = make_model("vector", "scalar")
    params = random_params("vector", "scalar")
    del params["flux"]["s"]
    with pytest.raises(ValueError, match=r"params=.*'flux'.*'s'"):
        model.infer_latents(make_data(), params)


def test_predict_requires_a_latent_posterior():
    model = make_model("none", "none")
    params = random_params("none", "none")
    with pytest.raises(TypeError, match=r"posterior=.*LatentPosterior"):
        model.predict((np.zeros((3, K)), np.zeros((3, K, K))), params)
    wide = LatentPosterior(jnp.zeros((3, K + 1)), jnp.zeros((3, K + 1, K + 1)))
    with pytest.raises(ValueError, match=r"posterior.*latent_size"):
        model.predict(wide, params)


@pytest.mark.parametrize(
    "max_iter, exc",
    [
        (0, ValueError),
        (-1, ValueError),
        (2.5, TypeError),
        (True, TypeError),
        ("10", TypeError),
        (None, TypeError),
    ],
)
def test_fit_refuses_invalid_max_iter(max_iter, exc):
    with pytest.raises(exc, match=r"max_iter=\.\.\."):
        make_model().fit(make_data(), max_iter=max_iter, progress=False)


@pytest.mark.parametrize("tol", [-1e-3, "small", None])
def test_fit_refuses_invalid_tol(tol):
    with pytest.raises(ValueError, match="tol"):
        make_model().fit(make_data(), tol=tol, progress=False)


# ----------------------------------------------------------------------------------
# 10. float32 (JAX's default precision, x64 off, in a fresh interpreter)
# ----------------------------------------------------------------------------------
F32_ITER = 300  # long enough for float32 and float64 runs to reach the same optimum

_FLOAT32_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax
    assert not jax.config.jax_enable_x64
    import numpy as np
    import numpyro.distributions as dist
    import pollux as plx
    from pollux.models.transforms import AffineTransform, LinearTransform

    a = np.load(sys.argv[1])
    data = plx.data.PolluxData(
        flux=plx.data.OutputData(a["y1"], err=a["e1"]),
        label=plx.data.OutputData(a["y2"], err=a["e2"]),
    )
    model = plx.LuxModel(latent_size=int(a["k"]))
    d1, d2 = a["y1"].shape[1], a["y2"].shape[1]
    model.register_output("flux", AffineTransform(d1, param_priors={
        "A": dist.Normal(0.1, 2.0), "b": dist.Normal(0.0, 10.0),
        "s": dist.HalfNormal(1.0).expand((d1,))}))
    model.register_output("label", LinearTransform(d2, param_priors={
        "s": dist.HalfNormal(1.0)}))
    result = model.fit(data, max_iter=int(a["max_iter"]), tol=0.0, progress=False)
    post = model.infer_latents(data, result.params, names=["flux"])
    pred = model.predict(post, result.params)
    # The objective at given (float64-fitted) parameters, evaluated in float32.
    given = {
        "flux": {"A": a["flux_A"], "b": a["flux_b"], "s": a["flux_s"]},
        "label": {"A": a["label_A"], "s": a["label_s"]},
    }
    at_given = model.fit(data, fixed_params=given, max_iter=1, progress=False)
    leaves = {
        "losses": result.losses,
        "flux_A": result.params["flux"]["A"],
        "flux_b": result.params["flux"]["b"],
        "flux_s": result.params["flux"]["s"],
        "label_s": result.params["label"]["s"],
        "post_mean": post.mean,
        "post_cov": post.cov,
        "pred_label": pred["label"].data,
        "pred_label_err": pred["label"].err,
        "loss_at_given": at_given.losses,
    }
    out = {k: {"dtype": str(v.dtype), "finite": bool(np.all(np.isfinite(v)))}
           for k, v in leaves.items()}
    values = {
        "final_loss": float(result.losses[-1]),
        "loss_at_given": float(at_given.losses[0]),
        "params": {
            name: {k: np.asarray(v, dtype=float).tolist() for k, v in d.items()}
            for name, d in result.params.items() if name != "latents"
        },
        "pred_label": np.asarray(pred["label"].data, dtype=float).tolist(),
        "pred_label_err": np.asarray(pred["label"].err, dtype=float).tolist(),
    }
    print("RESULT" + json.dumps({"leaves": out, "values": values}))
    """
)


def _float32_scale(model, data: PolluxData, params) -> float:
    """The magnitude of what float32 adds up to evaluate the objective at
    ``params``: per observed value |log 2πv| + 1 (log variance, a residual over
    its variance of order one), and twice the Woodbury sums Σ λ (y - b)² and
    hᵀP⁻¹h ≤ Σ λ (y - b)² whose difference is the data term; plus one
    log-determinant of order one per star and latent."""
    total = 0.0
    for name in data.names:
        y, var, mask = observed(data, name)
        _, b, s2 = affine_rows(params, name)
        v = var + s2
        total += np.sum(np.abs(np.log(2 * np.pi * v[mask])) + 1.0)
        total += 2 * np.sum(((y - b) ** 2 / v)[mask])
    return float(total + len(data) * K)


def test_float32_fit_in_fresh_interpreter(tmp_path, run_fresh):
    model, _, data, result = _fit("scatter", max_iter=F32_ITER)
    p = result.params
    arrays = tmp_path / "arrays.npz"
    f32 = functools.partial(np.asarray, dtype=np.float32)
    np.savez(
        arrays,
        y1=f32(data["flux"].data),
        e1=f32(data["flux"].err),
        y2=f32(data["label"].data),
        e2=f32(data["label"].err),
        k=K,
        max_iter=F32_ITER,
        flux_A=f32(p["flux"]["A"]),
        flux_b=f32(p["flux"]["b"]),
        flux_s=f32(p["flux"]["s"]),
        label_A=f32(p["label"]["A"]),
        label_s=f32(p["label"]["s"]),
    )
    out = run_fresh(_FLOAT32_SCRIPT, str(arrays))
    for key, leaf in out["leaves"].items():
        assert leaf["dtype"] == "float32", (key, leaf)
        assert leaf["finite"], key
    values = out["values"]

    # Compare like with like: float64 references on the float32-rounded data.
    as64 = functools.partial(np.asarray, dtype=np.float64)
    data32 = PolluxData(
        flux=OutputData(as64(f32(data["flux"].data)), err=as64(f32(data["flux"].err))),
        label=OutputData(
            as64(f32(data["label"].data)), err=as64(f32(data["label"].err))
        ),
    )
    given64 = {
        name: {k: as64(f32(v)) for k, v in p[name].items()} for name in model.outputs
    }
    # Each term float32 adds is rounded (inputs and products: a few eps32 of it),
    # and so is each partial sum: the objective is off by at most a few eps32 times
    # the magnitude of what is summed; 4x that holds for any order of summation
    # (seen on x86-64: 1e-4 to 2e-3 here, against atol ≈ 2e-2).
    atol = 4 * np.finfo(np.float32).eps * _float32_scale(model, data32, given64)
    expected = dense_objective(model, data32, given64, given64)
    np.testing.assert_allclose(values["loss_at_given"], expected, rtol=0, atol=atol)

    # The float32 fit stops once its float32 objective stops changing: it reaches
    # the float64 optimum to within that resolution. Both parameter sets are
    # judged by the same float64 objective (not by the last digits of each run's
    # own converged value). (Seen: 4e-6 to 7e-6.)
    fitted32 = {
        name: {k: as64(v) for k, v in d.items()} for name, d in values["params"].items()
    }
    at32 = dense_objective(model, data32, fitted32, {})
    at64 = dense_objective(model, data32, given64, {})
    assert abs(at32 - at64) <= 3 * atol, (at32, at64, atol)

    # Rotation-invariant predictions agree to a small fraction of their own
    # predictive sigma (the scale on which they are used). The star with nothing
    # observed gets the prior predictive, which depends on |W| along weakly
    # determined directions: compared on its own, to 1%.
    post = model.infer_latents(data, p, names=["flux"])
    pred = model.predict(post, p)
    pred32 = np.asarray(values["pred_label"])
    err32 = np.asarray(values["pred_label_err"])
    err64 = np.asarray(pred["label"].err)
    seen = np.arange(N) != FULL
    assert np.all(np.abs(pred32 - pred["label"].data) <= 0.01 * err64)
    np.testing.assert_allclose(err32[seen], err64[seen], rtol=0.01)
    np.testing.assert_allclose(err32[FULL], err64[FULL], rtol=0.01)
