"""LuxModel: output registry, predict_outputs and the numpyro MAP fit (optimize)."""

from __future__ import annotations

import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import pollux as plx
from pollux.data import OutputData, PolluxData
from pollux.models.transforms import (
    AffineTransform,
    FunctionTransform,
    LinearTransform,
    OffsetTransform,
    TransformSequence,
)

QUIET = {"progress_bar": False}

# Sizes of the shared simulated data (tests/conftest.py: make_data defaults).
N_STARS, N_LATENTS, N_LABELS, N_FLUX = 48, 2, 2, 6


def adam(lr=1e-2):
    return numpyro.optim.Adam(lr)


def make_model(flux_priors=None, label_priors=None, k=N_LATENTS):
    model = plx.LuxModel(latent_size=k)
    model.register_output("flux", LinearTransform(N_FLUX, param_priors=flux_priors))
    model.register_output("label", LinearTransform(N_LABELS, param_priors=label_priors))
    return model


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def fitted(pre_data):
    """One short fit of the default two-output model, shared by several tests."""
    model = make_model()
    params, result = model.optimize(
        pre_data,
        num_steps=300,
        rng_key=jax.random.PRNGKey(0),
        optimizer=adam(),
        svi_run_kwargs=QUIET,
    )
    return model, params, result


# Registry -----------------------------------------------------------------------


def test_register_output():
    model = plx.LuxModel(latent_size=3)
    lin = LinearTransform(5)
    model.register_output("flux", lin)
    model.register_output("label", AffineTransform(2))
    assert list(model.outputs) == ["flux", "label"]
    assert model.outputs["flux"] is lin
    assert model.latent_size == 3
    assert "flux: LinearTransform" in repr(model)
    # the outputs view is read-only: changing it does not change the model
    view = model.outputs
    view["other"] = lin
    assert "other" not in model.outputs


@pytest.mark.parametrize("name", ["", "a:b", "latents", 3])
def test_register_output_bad_name(name):
    model = plx.LuxModel(latent_size=2)
    with pytest.raises(ValueError, match="name"):
        model.register_output(name, LinearTransform(2))


def test_register_output_bad_transform():
    model = plx.LuxModel(latent_size=2)
    with pytest.raises(TypeError, match="transform"):
        model.register_output("flux", np.eye(2))


def test_register_output_checks_input_size():
    model = plx.LuxModel(latent_size=3)
    with pytest.raises(ValueError, match="input size 3"):
        model.register_output("mag", OffsetTransform(4))
    model.register_output("mag", OffsetTransform(3))  # matching size is fine


# predict_outputs ----------------------------------------------------------------


def test_predict_outputs_by_hand(rng):
    model = make_model(flux_priors={"s": dist.HalfNormal()})
    z = rng.normal(size=(9, N_LATENTS))
    A_f = rng.normal(size=(N_FLUX, N_LATENTS))
    A_l = rng.normal(size=(N_LABELS, N_LATENTS))
    params = {"flux": {"A": A_f, "s": 0.3}, "label": {"A": A_l}}
    out = model.predict_outputs(z, params)
    assert set(out) == {"flux", "label"}
    np.testing.assert_allclose(out["flux"], z @ A_f.T, rtol=1e-12)
    np.testing.assert_allclose(out["label"], z @ A_l.T, rtol=1e-12)
    only = model.predict_outputs(z, params, names=["label"])
    assert set(only) == {"label"}
    assert set(model.predict_outputs(z, params, names="flux")) == {"flux"}
    # names=None: the outputs that have parameters
    assert set(model.predict_outputs(z, {"label": {"A": A_l}})) == {"label"}


def test_predict_outputs_missing_parameter(rng):
    model = make_model()
    z = rng.normal(size=(4, N_LATENTS))
    with pytest.raises(ValueError, match=r"'label'.*missing parameters \['A'\]"):
        model.predict_outputs(z, {"label": {}}, names=["label"])


def test_predict_outputs_sequence_with_per_star_params(rng):
    model = plx.LuxModel(latent_size=2)
    model.register_output(
        "mag", TransformSequence(LinearTransform(3), OffsetTransform(3))
    )
    z = rng.normal(size=(5, 2))
    A = rng.normal(size=(3, 2))
    c = rng.normal(size=5)
    out = model.predict_outputs(z, {"mag": {"0:A": A, "1:offset": c}})
    np.testing.assert_allclose(out["mag"], z @ A.T + c[:, None], rtol=1e-12)
    with pytest.raises(ValueError, match="1:offset"):
        model.predict_outputs(z, {"mag": {"0:A": A, "1:offset": c[:4]}})


# optimize: structure and behaviour ----------------------------------------------


def test_optimize_result_layout(fitted):
    _, params, result = fitted
    assert set(params) == {"flux", "label", "latents"}
    assert set(params["flux"]) == {"A"}
    assert set(params["label"]) == {"A"}
    assert params["flux"]["A"].shape == (N_FLUX, N_LATENTS)
    assert params["label"]["A"].shape == (N_LABELS, N_LATENTS)
    assert params["latents"].shape == (N_STARS, N_LATENTS)
    assert params["latents"].dtype == jnp.float64
    assert result.losses.shape == (300,)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))


def test_optimize_loss_decreases(fitted):
    _, _, result = fitted
    losses = np.asarray(result.losses)
    assert np.isfinite(losses).all()
    assert losses[-10:].mean() < losses[:10].mean()
    assert losses[-1] < losses[0]


def test_optimize_fits_the_data(fitted, pre_data):
    model, params, _ = fitted
    pred = model.predict_outputs(params["latents"], params)
    for name in ("flux", "label"):
        resid = np.asarray(pred[name] - pre_data[name].data)
        chi2 = np.mean((resid / np.asarray(pre_data[name].err)) ** 2)
        # the data are K=2 linear: the fit reaches the noise level (chi2 ~ 1)...
        assert 0.3 < chi2 < 2.0, (name, chi2)
    # ...which is far below the spread of the data (unit variance in model units)
    assert np.sqrt(np.mean(np.asarray(pred["flux"] - pre_data["flux"].data) ** 2)) < 0.2


def test_optimize_reproducible(pre_data):
    kw = dict(num_steps=50, optimizer=adam(), svi_run_kwargs=QUIET)
    p1, r1 = make_model().optimize(pre_data, rng_key=jax.random.PRNGKey(7), **kw)
    # a fresh model, and an int seed instead of a key: the same result
    p2, r2 = make_model().optimize(pre_data, rng_key=7, **kw)
    assert_trees_equal(p1, p2)
    np.testing.assert_array_equal(np.asarray(r1.losses), np.asarray(r2.losses))


def test_fixed_params_respected_exactly(pre_data, rng):
    model = make_model()
    A_fixed = rng.normal(size=(N_FLUX, N_LATENTS))
    z_fixed = rng.normal(size=(N_STARS, N_LATENTS))
    params, result = model.optimize(
        pre_data,
        num_steps=100,
        rng_key=jax.random.PRNGKey(0),
        optimizer=adam(),
        fixed_params={"flux": {"A": A_fixed}, "latents": z_fixed},
        svi_run_kwargs=QUIET,
    )
    np.testing.assert_array_equal(np.asarray(params["flux"]["A"]), A_fixed)
    np.testing.assert_array_equal(np.asarray(params["latents"]), z_fixed)
    # the free parameter was fitted: with the latents known the label matrix
    # is a weighted least-squares problem
    losses = np.asarray(result.losses)
    assert losses[-1] < losses[0]
    assert set(params) == {"flux", "label", "latents"}


def test_fixed_transforms_fit_latents_only(pre_data, fitted):
    """Train and apply: freeze the trained matrices, fit new stars' latents."""
    model, trained, _ = fitted
    # the same stars as in training, but their labels are not used now (and
    # equal array shapes keep the compiled kernels cached across tests)
    test = pre_data
    fixed = {"flux": {"A": trained["flux"]["A"]}, "label": {"A": trained["label"]["A"]}}
    params, _ = model.optimize(
        test,
        num_steps=200,
        rng_key=jax.random.PRNGKey(1),
        optimizer=adam(),
        fixed_params=fixed,
        names=["flux"],
        svi_run_kwargs=QUIET,
    )
    assert params["latents"].shape == (len(test), N_LATENTS)
    assert set(params) == {"flux", "label", "latents"}  # fixed ones are returned
    np.testing.assert_array_equal(
        np.asarray(params["label"]["A"]), np.asarray(trained["label"]["A"])
    )
    pred = model.predict_outputs(params["latents"], params, names=["label"])["label"]
    resid = np.asarray(pred - test["label"].data)
    # labels predicted from flux alone reach roughly the labels' noise level
    assert np.mean((resid / np.asarray(test["label"].err)) ** 2) < 3.0


def test_names_restricts_likelihood(pre_data, rng):
    model = make_model()
    kw = dict(
        num_steps=100,
        rng_key=jax.random.PRNGKey(0),
        optimizer=adam(),
        svi_run_kwargs=QUIET,
    )
    # labels that would pull the fit far away, were they used
    garbage = PolluxData(
        flux=pre_data["flux"],
        label=OutputData(
            rng.normal(50.0, 10.0, size=(N_STARS, N_LABELS)),
            err=np.full((N_STARS, N_LABELS), 1e-3),
        ),
    )
    p_names, r_names = model.optimize(garbage, names=["flux"], **kw)
    assert set(p_names) == {"flux", "latents"}
    # the same as data that only has the flux (names=None: what the data holds)
    p_flux, r_flux = model.optimize(PolluxData(flux=pre_data["flux"]), **kw)
    assert_trees_equal(p_names, p_flux)
    np.testing.assert_array_equal(np.asarray(r_names.losses), np.asarray(r_flux.losses))


@pytest.fixture(scope="module")
def latent_problem():
    """Flux with large errors and known matrix: the latent prior matters."""
    rng = np.random.default_rng(11)
    n, k, d = N_STARS, N_LATENTS, N_FLUX
    A = rng.normal(size=(d, k))
    err = np.full((n, d), 0.8)
    y = rng.normal(size=(n, k)) @ A.T + err * rng.normal(size=(n, d))
    model = plx.LuxModel(latent_size=k)
    model.register_output("flux", LinearTransform(d))
    data = PolluxData(flux=OutputData(y, err=err))

    def map_latents(prior_precision):
        lam = 1.0 / err[0] ** 2
        P = prior_precision * np.eye(k) + A.T @ (lam[:, None] * A)
        return np.linalg.solve(P, (A.T * lam) @ y.T).T

    return model, data, A, map_latents


@pytest.mark.parametrize(
    "latent_prior, precision",
    [(None, 1.0), (False, 0.0), (dist.Normal(0.0, 0.5), 4.0)],
    ids=["default", "flat", "narrow-normal"],
)
def test_latent_prior(latent_problem, latent_prior, precision):
    model, data, A, map_latents = latent_problem
    params, _ = model.optimize(
        data,
        num_steps=600,
        rng_key=jax.random.PRNGKey(0),
        optimizer=adam(0.01),
        fixed_params={"flux": {"A": A}},
        latent_prior=latent_prior,
        svi_run_kwargs=QUIET,
    )
    expected = map_latents(precision)
    # (Adam jitters around the optimum by about its step size)
    np.testing.assert_allclose(np.asarray(params["latents"]), expected, atol=5e-3)
    # the three priors give clearly different answers
    for other in (0.0, 1.0, 4.0):
        if other != precision:
            assert np.abs(map_latents(other) - expected).max() > 0.1


def test_latent_prior_normal_unit_equals_default(latent_problem):
    model, data, _, _ = latent_problem
    # (also: optimizer=None is numpyro's Adam(1e-3))
    kw = dict(num_steps=20, rng_key=jax.random.PRNGKey(0), svi_run_kwargs=QUIET)
    p1, r1 = model.optimize(data, latent_prior=None, **kw)
    p2, r2 = model.optimize(data, latent_prior=dist.Normal(0.0, 1.0), **kw)
    np.testing.assert_allclose(np.asarray(r1.losses), np.asarray(r2.losses), rtol=1e-10)
    np.testing.assert_allclose(
        np.asarray(p1["latents"]), np.asarray(p2["latents"]), rtol=1e-8, atol=1e-10
    )
    assert r1.losses.shape == (20,)
    assert np.asarray(r1.losses)[-1] < np.asarray(r1.losses)[0]


def test_scatter_parameters(pre_data):
    model = make_model(
        flux_priors={"s": dist.HalfNormal(1.0).expand((N_FLUX,))},
        label_priors={"s": dist.HalfNormal(1.0)},
    )
    params, result = model.optimize(
        pre_data,
        num_steps=100,
        rng_key=jax.random.PRNGKey(0),
        optimizer=adam(),
        svi_run_kwargs=QUIET,
    )
    assert params["flux"]["s"].shape == (N_FLUX,)
    assert params["label"]["s"].shape == ()
    assert (np.asarray(params["flux"]["s"]) >= 0).all()
    assert float(params["label"]["s"]) >= 0
    assert np.isfinite(np.asarray(result.losses)).all()


def test_output_without_err_needs_scatter(pre_data):
    model = plx.LuxModel(latent_size=N_LATENTS)
    model.register_output(
        "flux", LinearTransform(N_FLUX, param_priors={"s": dist.HalfNormal(1.0)})
    )
    data = PolluxData(flux=OutputData(pre_data["flux"].data))  # no err
    params, result = model.optimize(
        data,
        num_steps=200,
        rng_key=jax.random.PRNGKey(0),
        optimizer=adam(),
        svi_run_kwargs=QUIET,
    )
    assert np.isfinite(np.asarray(result.losses)).all()
    assert 0.0 < float(params["flux"]["s"]) < 0.5


# Missing values ------------------------------------------------------------------


def _with_missing(pre_data, nan_err, hidden_value):
    """Model-unit data with NaN flux (error ``nan_err`` below it) and label
    values hidden by an infinite error (value ``hidden_value`` below it)."""
    flux = np.array(pre_data["flux"].data)
    flux_err = np.array(pre_data["flux"].err)
    label = np.array(pre_data["label"].data)
    label_err = np.array(pre_data["label"].err)
    flux[::5, 1] = np.nan
    flux[3, :] = np.nan  # a star without any flux
    flux_err[::5, 1] = nan_err
    flux_err[3, :] = nan_err
    label[::4, 0] = hidden_value
    label[7, :] = hidden_value  # a star without labels
    label_err[::4, 0] = np.inf
    label_err[7, :] = np.inf
    return PolluxData(
        flux=OutputData(flux, err=flux_err), label=OutputData(label, err=label_err)
    )


def test_missing_values_drop_out(pre_data):
    model = make_model()
    kw = dict(
        num_steps=100,
        rng_key=jax.random.PRNGKey(0),
        optimizer=adam(),
        svi_run_kwargs=QUIET,
    )
    p1, r1 = model.optimize(_with_missing(pre_data, 0.1, 0.0), **kw)
    assert np.isfinite(np.asarray(r1.losses)).all()
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(p1))
    # whatever is under the mask does not matter
    p2, r2 = model.optimize(_with_missing(pre_data, 37.0, -1e6), **kw)
    assert_trees_equal(p1, p2)
    np.testing.assert_array_equal(np.asarray(r1.losses), np.asarray(r2.losses))
    # while changing an observed value does
    data3 = _with_missing(pre_data, 0.1, 0.0)
    label = np.array(data3["label"].data)
    label[1, 1] += 5.0
    data3 = PolluxData(
        flux=data3["flux"], label=OutputData(label, err=data3["label"].err)
    )
    p3, _ = model.optimize(data3, **kw)
    assert not np.allclose(np.asarray(p3["latents"]), np.asarray(p1["latents"]))


# Non-linear transforms inside optimize -------------------------------------------


def test_function_transform_in_optimize():
    """A non-linear output: learn it from stars with known latents, then infer
    new stars' latents from that output alone."""
    rng = np.random.default_rng(5)
    n, k, d = N_STARS, N_LATENTS, N_FLUX
    W = rng.normal(size=(d, k))
    err = np.full((n, d), 0.05)

    def simulate(z):
        y_true = np.tanh(z @ W.T) + 0.5
        return y_true, y_true + err * rng.normal(size=(n, d))

    z_train = rng.normal(size=(n, k))
    y_true, y = simulate(z_train)
    model = plx.LuxModel(latent_size=k)
    model.register_output(
        "flux",
        FunctionTransform(
            d,
            func=lambda zi, w, c: jnp.tanh(w @ zi) + c,
            param_priors={"w": dist.Normal(0.0, 1.0), "c": dist.Normal(0.0, 1.0)},
            param_shapes={"w": ("output_size", "input_size"), "c": ("output_size",)},
        ),
    )
    kw = dict(
        num_steps=500,
        rng_key=jax.random.PRNGKey(0),
        optimizer=adam(0.03),
        svi_run_kwargs=QUIET,
    )
    params, result = model.optimize(
        PolluxData(flux=OutputData(y, err=err)), fixed_params={"latents": z_train}, **kw
    )
    assert params["flux"]["w"].shape == (d, k)
    assert params["flux"]["c"].shape == (d,)
    losses = np.asarray(result.losses)
    assert losses[-1] < 0.1 * abs(losses[0])
    pred = np.asarray(model.predict_outputs(z_train, params)["flux"])
    # the spread of the data is ~0.7; the fit gets close to the noise-free truth
    assert np.sqrt(np.mean((pred - y_true) ** 2)) < 0.1
    np.testing.assert_allclose(np.asarray(params["flux"]["c"]), 0.5, atol=0.05)
    np.testing.assert_allclose(np.asarray(params["flux"]["w"]), W, atol=0.3)

    z_new = rng.normal(size=(n, k))
    _, y_new = simulate(z_new)
    applied, _ = model.optimize(
        PolluxData(flux=OutputData(y_new, err=err)),
        fixed_params={"flux": params["flux"]},
        **kw,
    )
    found = np.asarray(applied["latents"])
    for i in range(k):
        assert np.corrcoef(found[:, i], z_new[:, i])[0, 1] > 0.95


def test_sequence_with_per_star_offsets_in_optimize():
    """Magnitudes = linear(latents) + an unknown per-star offset (distance modulus)."""
    rng = np.random.default_rng(3)
    n, k, d = N_STARS, N_LATENTS, N_FLUX
    z = rng.normal(size=(n, k))
    B = rng.normal(size=(d, k))
    offset = rng.normal(0.0, 2.0, size=n)
    err = np.full((n, d), 0.05)
    mag = z @ B.T + offset[:, None] + err * rng.normal(size=(n, d))
    label = z + 0.05 * rng.normal(size=(n, k))
    data = PolluxData(
        mag=OutputData(mag, err=err), label=OutputData(label, err=np.full((n, k), 0.05))
    )
    model = plx.LuxModel(latent_size=k)
    model.register_output(
        "mag",
        TransformSequence(
            LinearTransform(d),
            OffsetTransform(d, param_priors={"offset": dist.Normal(0.0, 5.0)}),
        ),
    )
    model.register_output("label", LinearTransform(k))
    # A z + c and (A + 1 v^T) z + (c - v.z) predict the same magnitudes, so the
    # offsets are only identifiable with the linear part known: fix it.
    params, result = model.optimize(
        data,
        num_steps=300,
        rng_key=jax.random.PRNGKey(0),
        optimizer=adam(0.1),
        fixed_params={"label": {"A": np.eye(k)}, "mag": {"0:A": B}},
        svi_run_kwargs=QUIET,
    )
    found = np.asarray(params["mag"]["1:offset"])
    assert found.shape == (n,)
    assert np.isfinite(np.asarray(result.losses)).all()
    assert np.corrcoef(found, offset)[0, 1] > 0.99
    assert np.sqrt(np.mean((found - offset) ** 2)) < 0.2
    np.testing.assert_array_equal(np.asarray(params["mag"]["0:A"]), B)


# float32 ---------------------------------------------------------------------------

FLOAT32_SCRIPT = textwrap.dedent(
    """
    import json
    import jax
    import numpy as np
    import numpyro
    import pollux as plx
    from pollux.models.transforms import LinearTransform

    assert not jax.config.jax_enable_x64
    obs, _ = plx.datasets.make_simulated_linear_data(40, 2, 2, 6, rng=0)
    data = plx.data.PolluxData(
        flux=plx.data.OutputData(
            obs["flux"], err=obs["flux_err"],
            preprocessor=plx.data.ShiftScalePreprocessor.from_data(obs["flux"])),
        label=plx.data.OutputData(
            obs["label"], err=obs["label_err"],
            preprocessor=plx.data.ShiftScalePreprocessor.from_data(obs["label"])),
    ).preprocess()
    model = plx.LuxModel(latent_size=2)
    model.register_output("flux", LinearTransform(6))
    model.register_output("label", LinearTransform(2))
    params, res = model.optimize(
        data, num_steps=200, rng_key=jax.random.PRNGKey(0),
        optimizer=numpyro.optim.Adam(1e-2), svi_run_kwargs={"progress_bar": False})
    pred = model.predict_outputs(params["latents"], params)
    leaves = jax.tree.leaves(params)
    print("RESULT" + json.dumps({
        "dtypes": sorted({str(x.dtype) for x in leaves}),
        "data_dtype": str(data["flux"].data.dtype),
        "finite": bool(all(np.isfinite(np.asarray(x)).all() for x in leaves)),
        "loss_first": float(res.losses[0]),
        "loss_last": float(res.losses[-1]),
        "losses_finite": bool(np.isfinite(np.asarray(res.losses)).all()),
        "chi2": float(np.mean(np.asarray(
            (pred["flux"] - data["flux"].data) / data["flux"].err)**2)),
    }))
    """
)


def test_optimize_float32_subprocess(run_fresh):
    out = run_fresh(FLOAT32_SCRIPT)
    assert out["data_dtype"] == "float32"
    assert out["dtypes"] == ["float32"]
    assert out["finite"]
    assert out["losses_finite"]
    assert out["loss_last"] < out["loss_first"]
    assert 0.3 < out["chi2"] < 2.0


def test_shared_data_sizes(pre_data):
    # the sizes above must follow the shared fixture
    assert pre_data["flux"].shape == (N_STARS, N_FLUX)
    assert pre_data["label"].shape == (N_STARS, N_LABELS)


# custom_model -------------------------------------------------------------------


def test_custom_model_learns_its_own_site(latent_problem):
    """A site added by ``custom_model`` (the zero point ``c`` of an extra
    measurement ``m = z₀ + c`` of each star) is fitted jointly with the latents:
    the MAP equals the dense solve of the joint linear-Gaussian problem, and it
    recovers the true ``c`` within its posterior error."""
    model, data, A, _ = latent_problem
    n, k = N_STARS, N_LATENTS
    rng = np.random.default_rng(5)
    y = np.asarray(data["flux"].data)
    err = np.asarray(data["flux"].err)
    # the stars' true latents are unknown here; m measures their MAP latents' scale
    c_true, sigma_m = 2.5, 0.3
    z_hint = np.linalg.lstsq(A, y.T, rcond=None)[0].T
    m = z_hint[:, 0] + c_true + sigma_m * rng.normal(size=n)

    def zero_point(latents, params, data_):
        assert data_ is data and set(params) == {"flux"}
        c = numpyro.sample("c", dist.Normal(0.0, 10.0))
        like = dist.Normal(latents[:, 0] + c, sigma_m).log_prob(jnp.asarray(m))
        numpyro.factor("m:loglike", like.sum())

    params, _ = model.optimize(
        data,
        num_steps=4000,
        rng_key=jax.random.PRNGKey(0),
        optimizer=adam(0.02),
        fixed_params={"flux": {"A": A}},
        custom_model=zero_point,
        svi_run_kwargs=QUIET,
    )
    # dense solve of the joint problem in x = (z_1, ..., z_n, c)
    lam = 1.0 / err**2
    P = np.zeros((n * k + 1, n * k + 1))
    rhs = np.zeros(n * k + 1)
    for i in range(n):
        s = slice(i * k, (i + 1) * k)
        P[s, s] = np.eye(k) + A.T @ (lam[i][:, None] * A)
        rhs[s] = A.T @ (lam[i] * y[i])
        P[i * k, i * k] += 1 / sigma_m**2
        P[i * k, -1] = P[-1, i * k] = 1 / sigma_m**2
        rhs[i * k] += m[i] / sigma_m**2
        rhs[-1] += m[i] / sigma_m**2
    P[-1, -1] = n / sigma_m**2 + 1 / 100.0
    x = np.linalg.solve(P, rhs)
    cov_c = np.linalg.inv(P)[-1, -1]
    # float64; Adam has settled on this convex problem (seen: 6e-14, 2e-8)
    np.testing.assert_allclose(float(params["c"]), x[-1], atol=1e-6)
    np.testing.assert_allclose(
        np.asarray(params["latents"]), x[:-1].reshape(n, k), atol=1e-6
    )
    assert abs(float(params["c"]) - c_true) < 4 * np.sqrt(cov_c)
    assert "c" not in params["flux"]


def test_custom_model_must_be_callable(pre_data):
    with pytest.raises(TypeError, match=r"optimize\(custom_model=\.\.\.\)"):
        make_model().optimize(
            pre_data, num_steps=1, rng_key=0, custom_model="not a function"
        )
