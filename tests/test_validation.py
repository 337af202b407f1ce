"""`pollux.validation`: held-out predictions, their score, and choosing a model.

Simulated data with 3 true latents; candidates with 1 and 3 latents. Shapes are
those of the module's doctest (90 stars, 3 folds: 60 per refit, 30 held out), so
the kernels compile once for both.
"""

from __future__ import annotations

import dataclasses
import functools

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import pollux as plx  # noqa: E402
from pollux.models.transforms import LinearTransform  # noqa: E402
from pollux.validation import (  # noqa: E402
    HeldOutPredictions,
    Selection,
    held_out_predictions,
    select_model,
    validation_score,
)

N, K_TRUE, D_LABEL, D_FLUX, FOLDS = 90, 3, 2, 12, 3


@functools.cache
def _data():
    obs, _ = plx.datasets.make_simulated_linear_data(
        n_stars=N, n_latents=K_TRUE, n_labels=D_LABEL, n_flux=D_FLUX, rng=1
    )
    return plx.data.PolluxData(
        flux=plx.data.OutputData(
            obs["flux"],
            err=obs["flux_err"],
            preprocessor=plx.data.ShiftScalePreprocessor.from_data(obs["flux"]),
        ),
        label=plx.data.OutputData(
            obs["label"],
            err=obs["label_err"],
            preprocessor=plx.data.ShiftScalePreprocessor.from_data(obs["label"]),
        ),
    ).preprocess()


def _make(k: int) -> plx.LuxModel:
    model = plx.LuxModel(latent_size=k)
    model.register_output("flux", LinearTransform(output_size=D_FLUX))
    model.register_output("label", LinearTransform(output_size=D_LABEL))
    return model


CANDIDATES = {"K=1": lambda: _make(1), "K=3": lambda: _make(3)}


@functools.cache
def _selection() -> Selection:
    return select_model(CANDIDATES, _data(), folds=FOLDS, seed=0, progress=False)


@functools.cache
def _held(k: int = 3, folds: int | float = FOLDS) -> HeldOutPredictions:
    return held_out_predictions(
        lambda: _make(k), _data(), folds=folds, seed=0, progress=False
    )


# ----------------------------------------------------------------------------------
# select_model
# ----------------------------------------------------------------------------------
def test_select_model_picks_the_true_latent_size():
    sel = _selection()
    assert sel.best == "K=3"
    assert list(sel.scores) == ["K=1", "K=3"]
    # One latent cannot carry two independent labels: far worse, not marginally.
    assert sel.scores["K=3"] < 0.3 * sel.scores["K=1"]
    assert sel.given == ("flux",) and sel.targets == ("label",)
    assert sel.folds == FOLDS and sel.seed == 0 and sel.n_stars == N
    for name in CANDIDATES:
        assert len(sel.rmse[name]["label"]) == D_LABEL
        assert len(sel.z_std[name]["label"]) == D_LABEL
    # The right model's held-out z-scores are about unit (30 stars per fold,
    # 90 values per dimension: sample-std error ~0.075), the wrong one's not.
    assert all(abs(z - 1) < 0.35 for z in sel.z_std["K=3"]["label"])
    assert all(z > 2 for z in sel.z_std["K=1"]["label"])


def test_selection_table_and_immutability():
    sel = _selection()
    text = sel.table()
    assert str(sel) == text
    lines = text.splitlines()
    assert len(lines) == 2 + len(CANDIDATES)
    assert "3-fold" in lines[0] and "label" in lines[0] and "flux" in lines[0]
    assert "rmse label[0]" in lines[1] and "z_std label[1]" in lines[1]
    best = [ln for ln in lines[2:] if ln.startswith("*")]
    assert len(best) == 1 and "K=3" in best[0]
    assert f"{sel.scores['K=1']:.4g}" in next(ln for ln in lines if "K=1" in ln)
    with pytest.raises(dataclasses.FrozenInstanceError):
        sel.best = "K=1"


def test_score_is_the_geometric_mean_of_held_out_rmse():
    held = _held()
    rmse = np.sqrt(np.nanmean((held.mean["label"] - held.observed["label"]) ** 2, 0))
    np.testing.assert_allclose(held.rmse("label"), rmse)
    expect = float(np.prod(rmse) ** (1 / D_LABEL))
    np.testing.assert_allclose(validation_score(held), expect, rtol=1e-12)
    # select_model scores the same folds with the same machinery
    assert _selection().scores["K=3"] == validation_score(held)
    np.testing.assert_allclose(_selection().rmse["K=3"]["label"], rmse)


# ----------------------------------------------------------------------------------
# held_out_predictions
# ----------------------------------------------------------------------------------
def test_k_fold_held_out_predictions():
    held = _held()
    assert len(held) == N
    np.testing.assert_array_equal(held.index, np.arange(N))
    assert np.bincount(held.fold).tolist() == [N // FOLDS] * FOLDS
    assert held.n_train == (N - N // FOLDS,) * FOLDS
    assert held.given == ("flux",) and held.targets == ("label",)
    for arr in (held.mean, held.var_model, held.s_fit, held.observed):
        assert arr["label"].shape == (N, D_LABEL)
    assert np.all(held.var_model["label"] > 0)
    assert np.all(held.s_fit["label"] == 0)  # this model has no label scatter
    np.testing.assert_allclose(
        held.observed["label"], np.asarray(_data()["label"].data)
    )
    z = held.z_scores("label")
    var = held.var_model["label"] + held.observed_err["label"] ** 2
    np.testing.assert_allclose(z, held.residuals("label") / np.sqrt(var))
    np.testing.assert_allclose(held.z_std("label"), z.std(axis=0))


def test_single_split():
    held = _held(folds=1 / 3)
    assert len(held) == N // 3 and held.n_train == (N - N // 3,)
    assert np.all(held.fold == 0) and np.all(np.diff(held.index) > 0)
    assert np.isfinite(validation_score(held))


def test_deterministic():
    again = held_out_predictions(
        lambda: _make(3), _data(), folds=FOLDS, seed=0, progress=False
    )
    np.testing.assert_array_equal(again.mean["label"], _held().mean["label"])
    other = held_out_predictions(
        lambda: _make(3), _data(), folds=FOLDS, seed=1, progress=False
    )
    assert not np.array_equal(other.fold, _held().fold)


def test_missing_targets_are_left_out():
    data = _data()
    y = np.array(data["label"].data)
    err = np.array(data["label"].err)
    y[::4, 0] = np.nan
    err[1::4, 1] = np.inf
    holey = plx.data.PolluxData(
        flux=data["flux"],
        label=plx.data.OutputData(y, err=err, preprocessed=True),
    )
    held = held_out_predictions(
        lambda: _make(3), holey, folds=FOLDS, seed=0, progress=False
    )
    missing = np.isnan(held.observed["label"])
    assert missing[::4, 0].all() and missing[1::4, 1].all()
    assert missing.sum() == len(y[::4]) + len(y[1::4])
    assert np.all(np.isfinite(held.mean["label"]))
    assert np.all(np.isfinite(held.rmse("label")))
    assert np.isfinite(validation_score(held))


# ----------------------------------------------------------------------------------
# Bad input, refused before any fit
# ----------------------------------------------------------------------------------
@pytest.fixture
def no_fit(monkeypatch):
    @functools.wraps(plx.LuxModel.fit)  # keeps the signature the checks read
    def refuse(*args, **kwargs):
        raise AssertionError("fit must not be called for a bad argument")

    monkeypatch.setattr(plx.LuxModel, "fit", refuse)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"candidates": [lambda: _make(1)]}, TypeError, r"candidates=...\): expected"),
        ({"candidates": {}}, ValueError, r"at least one candidate"),
        ({"candidates": {"a": lambda: 3}}, TypeError, r"not a LuxModel"),
        ({"candidates": {"a": 3}}, TypeError, r"candidates\['a'\]"),
        ({"data": {"flux": 1}}, TypeError, r"data=...\): expected a PolluxData"),
        ({"folds": 1}, ValueError, r"folds=...\): expected 2 <= folds"),
        ({"folds": N + 1}, ValueError, r"folds"),
        ({"folds": 1.5}, ValueError, r"0 < folds < 1"),
        ({"folds": 0.001}, ValueError, r"held-out"),
        ({"folds": "3"}, TypeError, r"folds=...\): expected an int >= 2 or a float"),
        ({"seed": -2}, ValueError, r"seed"),
        ({"given": ("spectra",)}, ValueError, r"'spectra' is not a registered"),
        ({"given": ("flux", "label")}, ValueError, r"nothing is left to predict"),
        ({"fit_kwargs": {"fixed_params": {}}}, ValueError, r"'fixed_params' is not"),
        ({"fit_kwargs": {"max_iterations": 3}}, ValueError, r"'max_iterations' is not"),
        ({"fit_kwargs": {"progress": True}}, ValueError, r"'progress' is not"),
        ({"fit_kwargs": [("tol", 1)]}, TypeError, r"fit_kwargs=...\): expected a dict"),
    ],
)
def test_select_model_bad_arguments(no_fit, kwargs, error, match):
    args = {"candidates": CANDIDATES, "data": _data(), **kwargs}
    with pytest.raises(error, match=r"select_model\(.*" + match):
        select_model(args.pop("candidates"), args.pop("data"), progress=False, **args)


def test_candidates_must_predict_the_same_outputs(no_fit):
    def other():
        model = plx.LuxModel(latent_size=2)
        model.register_output("flux", LinearTransform(output_size=D_FLUX))
        model.register_output("teff", LinearTransform(output_size=1))
        return model

    label = _data()["label"]
    teff = plx.data.OutputData(
        np.asarray(label.data[:, :1]),
        err=np.asarray(label.err[:, :1]),
        preprocessed=True,
    )
    data = plx.data.PolluxData(flux=_data()["flux"], label=label, teff=teff)
    with pytest.raises(ValueError, match=r"candidates must fit the same outputs"):
        select_model({"a": lambda: _make(1), "b": other}, data, progress=False)


def test_held_out_predictions_and_score_bad_arguments(no_fit):
    with pytest.raises(TypeError, match=r"held_out_predictions\(make_model=...\)"):
        held_out_predictions(3, _data())
    with pytest.raises(
        ValueError, match=r"held_out_predictions\(fit_kwargs\['names'\]"
    ):
        held_out_predictions(_make(1), _data(), fit_kwargs={"names": ["teff"]})
    with pytest.raises(ValueError, match=r"given=...\): 'label' is not among"):
        held_out_predictions(
            _make(1), _data(), given=("label",), fit_kwargs={"names": ["flux"]}
        )
    with pytest.raises(TypeError, match=r"validation_score\(held=...\)"):
        validation_score({"label": 1.0})
