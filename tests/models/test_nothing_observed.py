"""Calls with nothing to work from are refused, never answered with the prior.

A fit on zero stars, or on an output of which no value is observed, used to
"converge" to the prior; a posterior from no data was the prior too. Each entry
point now refuses them with a message naming the call and the output.
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

import pollux as plx
from pollux.data import OutputData, PolluxData
from pollux.transforms import LinearTransform, QuadraticTransform

N, D, L, K = 24, 5, 2, 2


def _model(quadratic: bool = False) -> plx.LuxModel:
    model = plx.LuxModel(latent_size=K)
    model.register_output("flux", LinearTransform(D))
    model.register_output(
        "label", (QuadraticTransform if quadratic else LinearTransform)(L)
    )
    return model


def _data(n: int = N, *, missing: str | None = None, how: str = "nan", lazy=False):
    rng = np.random.default_rng(0)
    out = {}
    for name, width in (("flux", D), ("label", L)):
        values = rng.normal(size=(n, width))
        err = np.full((n, width), 0.1)
        if name == missing:
            if how == "nan":
                values[:] = np.nan
            else:
                err[:] = np.inf
        if lazy:
            values, err = da.from_array(values, chunks=8), da.from_array(err, chunks=8)
        out[name] = OutputData(values, err=err)
    return PolluxData(**out)


@pytest.fixture(scope="module")
def fitted():
    model = _model()
    return model, model.fit(_data(), progress=False, max_iter=5)


@pytest.mark.parametrize("quadratic", [False, True], ids=["linear", "quadratic"])
def test_fit_refuses_zero_stars(quadratic):
    with pytest.raises(
        ValueError, match=r"LuxModel\.fit\(data=\.\.\.\): there are no stars"
    ):
        _model(quadratic).fit(_data(0), progress=False)


@pytest.mark.parametrize("how", ["nan", "inf_err"])
@pytest.mark.parametrize("lazy", [False, True], ids=["memory", "dask"])
def test_fit_refuses_an_output_with_nothing_observed(how, lazy):
    with pytest.raises(ValueError, match="no value of the output 'label' is observed"):
        _model().fit(_data(missing="label", how=how, lazy=lazy), progress=False)


def test_fit_with_the_empty_output_left_out_or_fixed_runs(fitted):
    model, result = fitted
    data = _data(missing="label")
    assert model.fit(data, names=["flux"], progress=False, max_iter=3).n_iter >= 1
    fixed = {"label": dict(result.params["label"])}
    out = model.fit(data, fixed_params=fixed, progress=False, max_iter=3)
    np.testing.assert_array_equal(out.params["label"]["A"], fixed["label"]["A"])


def test_posterior_and_prediction_refuse_no_stars_and_no_data(fitted):
    model, result = fitted
    with pytest.raises(
        ValueError, match=r"infer_latents\(data=\.\.\.\): there are no stars"
    ):
        model.infer_latents(_data(0), result.params)
    with pytest.raises(ValueError, match="nothing to infer the latents from"):
        model.infer_latents(_data(missing="flux"), result.params, names=["flux"])
    # Labels missing for every star are the usual case: the flux suffices.
    post = model.infer_latents(_data(missing="label"), result.params)
    assert np.all(np.isfinite(post.mean))
    empty = plx.LatentPosterior(np.zeros((0, K)), np.zeros((0, K, K)))
    with pytest.raises(
        ValueError, match=r"predict\(posterior=\.\.\.\): there are no stars"
    ):
        model.predict(empty, result.params)


def test_calibrate_and_selection_refuse_nothing_observed():
    import numpyro.distributions as dist

    def make():
        model = plx.LuxModel(latent_size=K)
        model.register_output("flux", LinearTransform(D))
        model.register_output(
            "label",
            LinearTransform(L, param_priors={"s": dist.HalfNormal(1.0).expand((L,))}),
        )
        return model

    model = make()
    result = model.fit(_data(), progress=False, max_iter=3)
    bad = _data(missing="label")
    with pytest.raises(
        ValueError, match=r"calibrate\(data=\.\.\.\): no value of the output 'label'"
    ):
        model.calibrate(bad, result, folds=2, progress=False)
    with pytest.raises(
        ValueError, match=r"select_model\(data=\.\.\.\): no value of the output 'label'"
    ):
        plx.validation.select_model({"a": make}, bad, folds=2, progress=False)
    with pytest.raises(
        ValueError, match=r"select_model\(data=\.\.\.\): there are no stars"
    ):
        plx.validation.select_model({"a": make}, _data(0), folds=2, progress=False)


def test_labelling_spectra_with_nothing_observed_flags_them(fitted, tmp_path):
    """`TrainedModel.label` on spectra without one good pixel: NaN labels,
    each flagged ``no_data`` (no call of `infer_latents` on nothing)."""
    model, result = fitted
    path = model.save(tmp_path / "m.pollux", result, data=_data())
    labels = plx.load(path).label(
        {"flux": (np.full((3, D), np.nan), np.ones((3, D)))}, given="flux"
    )
    assert np.all(np.isnan(labels.predictions["label"].data))
    assert labels.reasons == ("no_data",) * 3
