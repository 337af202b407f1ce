"""`LuxModel.calibrate`: the extra scatter of predicted outputs from held-out,
flux-only predictions.

The data: labels and flux linear in 3 latents, plus an *intrinsic* label scatter
τ that the flux does not see, so the true error of a flux-only label prediction is
``sqrt(v_model + τ²)``. The model's label ``s`` is deliberately wrong: a tight
``HalfNormal(1e-3)`` prior caps it far below τ. Calibrated predictions of fresh
test stars are then compared with their *true* labels.

Every fit has one of a few shapes (240 training stars, 180 per refit, 60 held
out), so each kernel compiles once for the whole module.
"""

from __future__ import annotations

import dataclasses
import functools

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
import pytest  # noqa: E402

import pollux as plx  # noqa: E402
from pollux.fit import _calibrate  # noqa: E402
from pollux.fit._calibrate import (  # noqa: E402
    max_likelihood_scatter,
    supported_scatter,
)
from pollux.fit.heldout import HeldOutPredictions  # noqa: E402
from pollux.models.transforms import LinearTransform  # noqa: E402

N_TRAIN, N_TEST, K, D_FLUX, D_LABEL = 240, 600, 3, 12, 2
FOLDS = 4  # 180 stars per refit, 60 held out
TAU = np.array([0.3, 0.1])  # intrinsic label scatter, physical units


@functools.cache
def _data():
    obs, truth = plx.datasets.make_simulated_linear_data(
        N_TRAIN + N_TEST, K, D_LABEL, D_FLUX, rng=0
    )
    rng = np.random.default_rng(1)
    true_label = truth["label"] + rng.normal(size=truth["label"].shape) * TAU
    obs_label = rng.normal(true_label, obs["label_err"])
    tr = slice(0, N_TRAIN)
    data = plx.data.PolluxData(
        flux=plx.data.OutputData(
            obs["flux"],
            err=obs["flux_err"],
            preprocessor=plx.data.ShiftScalePreprocessor.from_data(obs["flux"][tr]),
        ),
        label=plx.data.OutputData(
            obs_label,
            err=obs["label_err"],
            preprocessor=plx.data.ShiftScalePreprocessor.from_data(obs_label[tr]),
        ),
    )
    pre = data.preprocess()
    pp = pre["label"].preprocessor
    true_pre = np.asarray(pp.transform(true_label[N_TRAIN:]))
    tau_pre = TAU / np.asarray(pp.scale)
    return pre[:N_TRAIN], pre[N_TRAIN:], true_pre, tau_pre


def _model(label_s=None, latent_size=K):
    if label_s is None:
        label_s = dist.HalfNormal(1e-3).expand((D_LABEL,))  # caps s far below τ
    model = plx.LuxModel(latent_size=latent_size)
    model.register_output("flux", LinearTransform(output_size=D_FLUX))
    priors = {} if label_s is False else {"s": label_s}
    model.register_output("label", LinearTransform(D_LABEL, param_priors=priors))
    return model


@functools.cache
def _fitted():
    train, *_ = _data()
    model = _model()
    result = model.fit(train, progress=False)
    cal = model.calibrate(train, result, folds=FOLDS, seed=0, progress=False)
    return model, result, cal


def _z_against_truth(model, res):
    _, test, true_pre, _ = _data()
    post = model.infer_latents(test, res.params, names=["flux"])
    pred = model.predict(post, res.params, names=["label"], param_cov=res.param_cov)
    return (np.asarray(pred["label"].data) - true_pre) / np.asarray(pred["label"].err)


# ----------------------------------------------------------------------------------
# Calibration works
# ----------------------------------------------------------------------------------
def test_calibrated_z_scores_against_true_labels_of_fresh_stars():
    model, result, cal = _fitted()
    z_before = _z_against_truth(model, result).std(axis=0)
    z_after = _z_against_truth(model, cal).std(axis=0)
    # The capped s is far too small: flux-only z-scores are several times too wide.
    assert np.all(z_before > 2.0), z_before
    # Band: the sample std of M unit-Normal values errs by 1/sqrt(2M); an error
    # δt in s_cal² changes the std by about δt / (2 (v + s²)), with δt the Fisher
    # standard error that calibrate records. Four standard errors of both.
    rec = cal.calibration["label"]
    s2 = np.square(rec["s"])
    se_t = np.asarray(rec["s2_se"])
    post = model.infer_latents(_data()[1], cal.params, names=["flux"])
    pred = model.predict(post, cal.params, names=["label"], param_cov=cal.param_cov)
    total_var = np.mean(np.asarray(pred["label"].err) ** 2, axis=0)
    assert np.all(total_var > s2)
    band = 4 * np.sqrt(1 / (2 * N_TEST) + (se_t / (2 * total_var)) ** 2)
    assert np.all(np.abs(z_after - 1) < band), (z_after, band)


def test_calibrated_scatter_recovers_the_intrinsic_label_scatter():
    _, result, cal = _fitted()
    tau2 = _data()[3] ** 2
    rec = cal.calibration["label"]
    s2 = np.square(rec["s"])
    # s_cal² estimates τ² plus the refits' extra error, which is small here (the
    # model has the right latent size): within 5 Fisher standard errors + 10%.
    assert np.all(np.abs(s2 - tau2) < 5 * np.asarray(rec["s2_se"]) + 0.1 * tau2), (
        s2,
        tau2,
    )
    assert np.all(np.asarray(result.params["label"]["s"]) < 0.5 * np.sqrt(tau2))
    # The held-out z spread (against observed labels) records the fix.
    assert np.all(np.asarray(rec["z_std_before"]) > 2.0)
    assert np.all(np.abs(np.asarray(rec["z_std_after"]) - 1) < 0.1)


def test_calibration_record():
    _, result, cal = _fitted()
    rec = cal.calibration["label"]
    assert set(cal.calibration) == {"label"}
    assert rec["given"] == ("flux",)
    assert rec["folds"] == FOLDS and rec["seed"] == 0
    assert rec["n_stars"] == N_TRAIN
    np.testing.assert_allclose(rec["s_fit"], np.asarray(result.params["label"]["s"]))
    np.testing.assert_allclose(rec["s"], np.asarray(cal.params["label"]["s"]))
    keys = ("s", "s_fit", "s_ml", "s_lo", "s_hi", "s2_se", "z_std_before")
    for key in (*keys, "z_std_after"):
        assert isinstance(rec[key], tuple) and len(rec[key]) == D_LABEL, key
    assert rec["support"] == 0.0
    lo, s, hi = (np.asarray(rec[k]) for k in ("s_lo", "s", "s_hi"))
    assert np.all((lo <= s) & (s <= hi)) and np.all(lo <= np.asarray(rec["s_ml"]))


# ----------------------------------------------------------------------------------
# Immutability: result unchanged, only s of the targets changed
# ----------------------------------------------------------------------------------
def _snapshot(res):
    return jax.tree.map(lambda x: np.array(x, copy=True), res)


def test_result_unchanged_and_only_target_scatter_changes():
    model, result, _ = _fitted()
    train = _data()[0]
    before = _snapshot(result)
    cal = model.calibrate(train, result, folds=FOLDS, progress=False)
    # result itself is untouched (its dicts were copied, not modified)
    assert result.calibration == {}
    jax.tree.map(np.testing.assert_array_equal, _snapshot(result), before)
    assert cal is not result and cal.params is not result.params
    assert cal.params["label"] is not result.params["label"]
    # everything but params["label"]["s"] and calibration is identical
    assert cal.settings == result.settings
    assert (cal.n_iter, cal.converged) == (result.n_iter, result.converged)
    same = dataclasses.replace(
        cal,
        params={**cal.params, "label": dict(cal.params["label"])},
        calibration={},
    )
    same.params["label"]["s"] = result.params["label"]["s"]
    jax.tree.map(np.testing.assert_array_equal, _snapshot(same), before)
    assert not np.allclose(cal.params["label"]["s"], result.params["label"]["s"])
    assert cal.params["label"]["s"].dtype == result.params["label"]["s"].dtype


def test_deterministic_and_seeded():
    model, result, cal = _fitted()
    train = _data()[0]
    again = model.calibrate(train, result, folds=FOLDS, seed=0, progress=False)
    np.testing.assert_array_equal(again.params["label"]["s"], cal.params["label"]["s"])
    other = model.calibrate(train, result, folds=FOLDS, seed=1, progress=False)
    s0, s1 = (
        np.asarray(cal.params["label"]["s"]),
        np.asarray(other.params["label"]["s"]),
    )
    assert not np.array_equal(s0, s1)  # another split...
    np.testing.assert_allclose(s1, s0, rtol=0.2)  # ...about the same answer


def test_calibrated_result_calibrates_again():
    model, _, cal = _fitted()
    twice = model.calibrate(_data()[0], cal, folds=FOLDS, progress=False)
    rec = twice.calibration["label"]
    np.testing.assert_allclose(rec["s_fit"], cal.calibration["label"]["s"])
    # the refits do not use s of the result, so the answer is the same
    np.testing.assert_allclose(rec["s"], cal.calibration["label"]["s"], rtol=1e-6)


# ----------------------------------------------------------------------------------
# No leakage: every refit sees only the other folds, from scratch
# ----------------------------------------------------------------------------------
def test_refits_see_only_the_other_folds(monkeypatch):
    model, result, _ = _fitted()
    train = _data()[0]
    flux0 = np.asarray(train["flux"].data[:, 0])
    star = {float(v): i for i, v in enumerate(flux0)}
    assert len(star) == N_TRAIN  # the first flux value identifies a star

    def ids(data):
        return {star[float(v)] for v in np.asarray(data["flux"].data[:, 0])}

    fits, inferred = [], []
    fit, infer = plx.LuxModel.fit, plx.LuxModel.infer_latents

    def recording_fit(self, data, **kwargs):
        fits.append((ids(data), len(data), kwargs))
        return fit(self, data, **kwargs)

    def recording_infer(self, data, params, names=None):
        inferred.append((ids(data), tuple(names), "latents" in params))
        return infer(self, data, params, names)

    monkeypatch.setattr(plx.LuxModel, "fit", recording_fit)
    monkeypatch.setattr(plx.LuxModel, "infer_latents", recording_infer)
    model.calibrate(train, result, folds=FOLDS, progress=False)

    assert len(fits) == len(inferred) == FOLDS
    everyone = set(range(N_TRAIN))
    held_sets = []
    for (seen, n_seen, kwargs), (held, names, _) in zip(fits, inferred, strict=True):
        assert n_seen == len(seen) == N_TRAIN * (FOLDS - 1) // FOLDS
        assert seen.isdisjoint(held) and seen | held == everyone
        assert names == ("flux",)
        # from scratch, with the result's settings
        assert "fixed_params" not in kwargs
        assert kwargs["progress"] is False
        for key in ("names", "max_iter", "tol", "accelerate"):
            assert kwargs[key] == result.settings[key]
        held_sets.append(held)
    assert set().union(*held_sets) == everyone
    assert sum(len(h) for h in held_sets) == N_TRAIN


# ----------------------------------------------------------------------------------
# Argument errors, raised before any fit
# ----------------------------------------------------------------------------------
@pytest.fixture
def no_fit(monkeypatch):
    _fitted()  # the shared fit, made before fit is replaced (any test order)

    @functools.wraps(plx.LuxModel.fit)  # keeps the signature the checks read
    def refuse(*args, **kwargs):
        raise AssertionError("fit must not be called for a bad argument")

    monkeypatch.setattr(plx.LuxModel, "fit", refuse)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"folds": 1}, ValueError, r"calibrate\(folds=...\).*2 <= folds"),
        ({"folds": N_TRAIN + 1}, ValueError, r"folds=...\).*240"),
        ({"folds": 2.5}, TypeError, r"folds=...\): expected an int"),
        ({"folds": True}, TypeError, r"folds=..."),
        ({"folds": "3"}, TypeError, r"folds=..."),
        ({"given": ()}, ValueError, r"given=...\): give at least one"),
        ({"given": ("spectra",)}, ValueError, r"'spectra' is not a registered"),
        ({"given": ("flux", "label")}, ValueError, r"nothing is left to predict"),
        ({"given": ("flux", "flux")}, ValueError, r"must not repeat"),
        ({"given": 3}, TypeError, r"given=..."),
        ({"seed": -1}, ValueError, r"seed=..."),
        ({"seed": 0.5}, TypeError, r"seed=..."),
        ({"progress": "yes"}, TypeError, r"progress=..."),
        ({"support": -1.0}, ValueError, r"support=...\).*≥ 0"),
        ({"support": np.inf}, ValueError, r"support=...\).*finite"),
        ({"support": "1"}, TypeError, r"support=...\).*standard errors"),
        ({"support": True}, TypeError, r"support=..."),
    ],
)
def test_bad_arguments(no_fit, kwargs, error, match):
    model, result, _ = _fitted()
    with pytest.raises(error, match=match):
        model.calibrate(_data()[0], result, **kwargs)


def test_bad_data_and_result(no_fit):
    model, result, _ = _fitted()
    train = _data()[0]
    with pytest.raises(TypeError, match=r"calibrate\(data=...\).*PolluxData"):
        model.calibrate({"flux": 1}, result)
    flux_only = plx.data.PolluxData(flux=train["flux"])
    with pytest.raises(ValueError, match=r"data has no output 'label'"):
        model.calibrate(flux_only, result)
    with pytest.raises(TypeError, match=r"result=...\).*FitResult"):
        model.calibrate(train, result.params)
    with pytest.raises(ValueError, match=r"no fit settings"):
        model.calibrate(train, dataclasses.replace(result, settings={}))
    fixed = dataclasses.replace(
        result, settings={**result.settings, "fixed": ("flux",)}
    )
    with pytest.raises(ValueError, match=r"fixed parameters \['flux'\]"):
        model.calibrate(train, fixed)


def test_target_without_scatter_is_refused(no_fit):
    _, result, _ = _fitted()
    bare = _model(label_s=False)
    with pytest.raises(ValueError, match=r"'label' has no extra scatter.*param_priors"):
        bare.calibrate(_data()[0], result)


# ----------------------------------------------------------------------------------
# The scatter kernel: the s-step iterated to the maximum likelihood
# ----------------------------------------------------------------------------------
def _grid_max(r2, var, mask, axis):
    t = np.linspace(0, 1, 20001) ** 2 * 4.0  # fine near 0
    v = var[..., None] + t
    ll = np.where(mask[..., None], -0.5 * (np.log(v) + r2[..., None] / v), 0.0)
    ll = ll.sum(axis=axis)
    return np.sqrt(t[np.argmax(ll, axis=-1)])


@pytest.mark.parametrize("scalar", [False, True])
def test_scatter_kernel_against_a_grid(scalar):
    rng = np.random.default_rng(3)
    n, d = 400, 3
    var = rng.uniform(0.01, 0.2, size=(n, d))
    true_s = np.array([0.5, 0.0, 0.2])  # the middle one: optimum at the boundary
    r = rng.normal(size=(n, d)) * np.sqrt(var + true_s**2)
    mask = rng.uniform(size=(n, d)) > 0.1
    r2 = np.where(mask, r, 1e6) ** 2  # masked values must not count
    s0 = np.float64(0.1) if scalar else np.full(d, 0.1)
    s, se, steps = max_likelihood_scatter(r2, var, mask, s0, scalar)
    expect = _grid_max(r2, var, mask, axis=(0, 1) if scalar else 0)
    # the grid spacing in s near the answer is at most 4e-4
    np.testing.assert_allclose(np.asarray(s), expect, atol=5e-4)
    assert int(steps) < 2000 and np.all(np.isfinite(np.asarray(se)))
    if not scalar:
        t = np.square(np.asarray(s))
        info = np.sum(np.where(mask, 1 / (var + t) ** 2, 0), axis=0)
        np.testing.assert_allclose(np.asarray(se), np.sqrt(2 / info), rtol=1e-10)


def test_scalar_scatter_record():
    """A scalar ``s`` is calibrated as one value over every dimension."""
    rng = np.random.default_rng(4)
    m, d = 500, 2
    var = np.full((m, d), 0.04)
    mean = rng.normal(size=(m, d)) * np.sqrt(0.04 + 0.09)
    obs = np.zeros((m, d))
    obs[:5, 1] = np.nan
    held = HeldOutPredictions(
        given=("flux",),
        targets=("label",),
        index=np.arange(m),
        fold=np.zeros(m, int),
        mean={"label": mean},
        var_model={"label": var},
        s_fit={"label": np.zeros((m, d))},
        observed={"label": obs},
        observed_err={"label": np.zeros((m, d))},
        n_train=(100,),
        converged=(True,),
    )
    s_new, rec = _calibrate._calibrate_output(held, "label", np.float64(0.01))
    assert np.ndim(s_new) == 0 and isinstance(rec["s"], float)
    assert rec["n_stars"] == m
    assert abs(rec["s"] ** 2 - 0.09) < 4 * rec["s2_se"]
    assert rec["z_std_before"][0] > 1.5 and abs(rec["z_std_after"][0] - 1) < 0.1


def test_same_folds_as_held_out_predictions():
    """calibrate and `pollux.validation.held_out_predictions` share one machinery:
    the same split, refits and predictions give the same numbers."""
    from pollux.validation import held_out_predictions

    model, result, cal = _fitted()
    settings = {k: v for k, v in result.settings.items() if k != "fixed"}
    held = held_out_predictions(
        model, _data()[0], folds=FOLDS, seed=0, fit_kwargs=settings
    )
    rec = cal.calibration["label"]
    np.testing.assert_allclose(held.z_std("label", rec["s_fit"]), rec["z_std_before"])
    np.testing.assert_allclose(held.z_std("label", rec["s"]), rec["z_std_after"])
    r = held.residuals("label")
    mask = ~np.isnan(r)
    var = held.var_model["label"] + held.observed_err["label"] ** 2
    s, _, _ = max_likelihood_scatter(
        np.where(mask, r, 0) ** 2, var, mask, np.zeros(D_LABEL), False
    )
    np.testing.assert_allclose(np.asarray(s), rec["s_ml"], rtol=1e-6)


# ----------------------------------------------------------------------------------
# The supported interval: the fitted s moves only as far as the held-out data demand
# ----------------------------------------------------------------------------------
def _replicas(t_true: float, n: int = 300, d: int = 400, seed: int = 5):
    """``d`` independent held-out experiments (the dimensions of a vector ``s``):
    residuals of ``n`` stars with variance ``v + t_true``, where the reported
    variance ``v`` (label errors) is larger than ``t_true`` — ``t`` is poorly
    measured, as for survey labels."""
    rng = np.random.default_rng(seed)
    var = rng.uniform(0.5, 2.0, size=(n, d))
    r = rng.normal(size=(n, d)) * np.sqrt(var + t_true)
    mask = np.ones((n, d), bool)
    return r**2, var, mask


def _supported(r2, var, mask, t_fit, support=1.0):
    d = r2.shape[1]
    s_ml, se, _ = max_likelihood_scatter(r2, var, mask, np.zeros(d), False)
    t_ml = np.square(np.asarray(s_ml))
    t, lo, hi = supported_scatter(
        r2, var, mask, t_ml, np.asarray(se), np.full(d, t_fit), support, False
    )
    return t_ml, np.asarray(se), *(np.asarray(x) for x in (t, lo, hi))


def _loglike(r2, var, t):
    return -0.5 * np.sum(np.log(var + t) + r2 / (var + t), axis=0)


def test_supported_interval_is_where_the_likelihood_drops_by_half():
    r2, var, mask = _replicas(0.3)
    t_ml, _, _, lo, hi = _supported(r2, var, mask, 0.0)
    top = _loglike(r2, var, t_ml)
    for end in (lo, hi):
        drop = top - _loglike(r2, var, end)
        inner = lo > 0 if end is lo else np.ones_like(lo, bool)
        # the ends are found by bisection to below float64 resolution
        np.testing.assert_allclose(drop[inner], 0.5, atol=1e-6)
    # ℓ is nearly quadratic here: the ends are about one Fisher error away
    assert np.all(lo <= t_ml) and np.all(t_ml <= hi)


def test_errors_already_right_are_kept_unless_the_data_reject_them():
    t_true = 0.3
    r2, var, mask = _replicas(t_true)
    t_ml, _, t, lo, hi = _supported(r2, var, mask, t_true)
    kept = t == t_true
    # t_true lies in the ±1 se interval in ~68% of the experiments (binomial
    # band: ±3 standard deviations of a fraction of 400).
    assert abs(kept.mean() - 0.683) < 3 * np.sqrt(0.683 * 0.317 / kept.size)
    # Elsewhere it moves to the nearer end, never past the maximum-likelihood
    # value: the calibrated t is always at least as close to the truth.
    assert np.all(np.abs(t - t_true) <= np.abs(t_ml - t_true) + 1e-12)
    assert np.mean(np.abs(t - t_true)) < 0.5 * np.mean(np.abs(t_ml - t_true))
    assert np.all(np.isclose(t, lo) | np.isclose(t, hi) | kept)


@pytest.mark.parametrize("t_fit", [0.0, 1.2], ids=["too small", "too large"])
def test_wrong_errors_move_to_the_interval_that_covers_the_truth(t_fit):
    t_true = 0.3
    r2, var, mask = _replicas(t_true, n=3000, d=200)
    t_ml, se, t, lo, hi = _supported(r2, var, mask, t_fit)
    # The data reject the wrong t_fit (here by ≳ 5 se): t moves to the end of
    # the interval nearer to it, about one standard error from t_ml.
    assert np.all(np.abs(t_fit - t_ml) > 4 * se)
    np.testing.assert_array_equal(t, lo if t_fit < t_true else hi)
    np.testing.assert_allclose(np.abs(t - t_ml) / se, 1.0, atol=0.1)
    # The interval is the calibration's own uncertainty: it covers the true t
    # in ~68% of the experiments.
    covered = (lo <= t_true) & (t_true <= hi)
    assert abs(covered.mean() - 0.683) < 3 * np.sqrt(0.683 * 0.317 / covered.size)


def test_a_calibrated_fit_is_kept_and_support_zero_is_the_likelihood_maximum():
    model, result, _ = _fitted()
    train = _data()[0]
    ml = model.calibrate(train, result, folds=FOLDS, progress=False, support=0.0)
    rec = ml.calibration["label"]
    np.testing.assert_allclose(rec["s"], rec["s_ml"], rtol=1e-6)
    # Errors already right (s at the held-out maximum): calibrating keeps them.
    again = model.calibrate(train, ml, folds=FOLDS, progress=False, support=1.0)
    np.testing.assert_array_equal(
        again.params["label"]["s"], np.asarray(ml.params["label"]["s"])
    )
    assert again.calibration["label"]["z_std_after"] == rec["z_std_after"]
