"""Model files: exact round trips, a committed file that keeps loading, refusals."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

import pollux as plx
from pollux.models.transforms import (
    AffineTransform,
    FunctionTransform,
    LinearTransform,
    QuadraticTransform,
    TransformSequence,
)
from tests.conftest import make_data

COMMITTED = Path(__file__).parents[1] / "data" / "model_v1.pollux"


def _linear_model(n_flux: int, n_labels: int, k: int = 2) -> plx.LuxModel:
    model = plx.LuxModel(latent_size=k)
    model.register_output(
        "flux",
        LinearTransform(
            n_flux, param_priors={"s": dist.HalfNormal(1.0).expand((n_flux,))}
        ),
    )
    model.register_output(
        "label",
        AffineTransform(
            n_labels, param_priors={"s": dist.HalfNormal(jnp.ones(n_labels))}
        ),
    )
    return model


@pytest.fixture(scope="module")
def linear_fit():
    data, _obs, _ = make_data(n_stars=80)
    model = _linear_model(data["flux"].size, data["label"].size)
    pre = data.preprocess()
    result = model.fit(pre[:60], progress=False)
    return model, result, data


def _predict(model, result, pre):
    post = model.infer_latents(pre, result.params, names=["flux"])
    pred = model.predict(
        post, result.params, names=["label"], param_cov=result.param_cov
    )
    return np.asarray(pred["label"].data), np.asarray(pred["label"].err)


def _same_tree(a, b):
    if isinstance(a, dict):
        assert set(a) == set(b)
        for k in a:
            _same_tree(a[k], b[k])
    else:
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert np.asarray(a).dtype == np.asarray(b).dtype


def test_round_trip_linear_is_exact(tmp_path, linear_fit):
    model, result, data = linear_fit
    path = model.save(
        tmp_path / "m.pollux",
        result,
        data=data,
        columns={"label": ["A", "B"]},
        wavelength=np.linspace(15000.0, 17000.0, data["flux"].size),
    )
    trained = plx.load(path)
    assert repr(trained.model) == repr(model)
    _same_tree(trained.result.params, result.params)
    _same_tree(trained.result.param_cov, result.param_cov)
    _same_tree(trained.result.posterior.mean, result.posterior.mean)
    assert trained.result.settings == result.settings
    assert trained.result.n_iter == result.n_iter
    assert trained.columns == {"label": ("A", "B")}
    pre = data.preprocess()[60:]
    for a, b in zip(
        _predict(model, result, pre),
        _predict(trained.model, trained.result, pre),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
    # priors survive: same expanded shapes and log-densities
    for name, t in model.outputs.items():
        t2 = trained.model.outputs[name]
        assert type(t2) is type(t) and t2.output_size == t.output_size
        for p, prior in t.expanded_priors(2).items():
            x = jnp.full(prior.batch_shape + prior.event_shape, 0.3)
            assert float(prior.log_prob(x).sum()) == float(
                t2.expanded_priors(2)[p].log_prob(x).sum()
            )


def test_label_in_physical_units_matches_manual_unprocess(tmp_path, linear_fit):
    model, result, data = linear_fit
    trained = plx.load(model.save(tmp_path / "m.pollux", result, data=data))
    new = data[60:]
    labels = trained.label({"flux": (new["flux"].data, new["flux"].err)})
    mean, err = _predict(model, result, new.preprocess())
    pre = data["label"].preprocessor
    np.testing.assert_array_equal(
        labels.predictions["label"].data, np.asarray(pre.inverse_transform(mean))
    )
    np.testing.assert_array_equal(
        labels.predictions["label"].err, np.asarray(pre.inverse_transform_err(err))
    )
    assert np.all(np.isfinite(labels.reduced_chi2))
    assert np.all(labels.n_observed == data["flux"].size)
    table = labels.table()
    assert list(table)[:2] == ["LABEL_0", "LABEL_0_ERR"]
    assert table["FLAG"].shape == (20,)


def test_all_masked_star_is_flagged_nan_not_a_crash(tmp_path, linear_fit):
    model, result, data = linear_fit
    trained = plx.load(model.save(tmp_path / "m.pollux", result, data=data))
    flux = np.array(data["flux"].data[60:64])
    err = np.array(data["flux"].err[60:64])
    flux[1] = np.nan
    labels = trained.label({"flux": (flux, err)})
    values = labels.predictions["label"].data
    assert np.all(np.isnan(values[1])) and np.all(np.isfinite(np.delete(values, 1, 0)))
    assert labels.flags[1] & plx.models.trained.FLAGS["no_data"]
    assert "no_data" in labels.reasons[1] and labels.reasons[0] == ""


@pytest.mark.parametrize("kind", ["quadratic", "cannon", "sequence"])
def test_round_trip_other_models_is_exact(tmp_path, kind):
    """Quadratic (fit and calibrated), Cannon and TransformSequence models."""
    data, _obs, _ = make_data(n_stars=60, n_flux=5)
    pre = data.preprocess()
    train, test = pre[:44], pre[44:]  # 2 folds of 22: one compile
    if kind == "cannon":
        model = plx.CannonModel(n_labels=2, flux_size=5)
        result = model.fit(train, progress=False, max_iter=5)
        trained = plx.load(model.save(tmp_path / "c.pollux", result, data=data))
        a, b = model.predict(test, result), trained.model.predict(test, trained.result)
        np.testing.assert_array_equal(a["label"].data, b["label"].data)
        np.testing.assert_array_equal(a["label"].err, b["label"].err)
        return
    model = plx.LuxModel(latent_size=2)
    scatter = {"s": dist.HalfNormal(1.0).expand((2,))}
    if kind == "sequence":  # not on the fast path: parameters made up
        model.register_output(
            "flux", TransformSequence(LinearTransform(3), AffineTransform(5))
        )
        model.register_output("label", LinearTransform(2, param_priors=scatter))
        rng = np.random.default_rng(0)
        params = {
            name: {
                p: jnp.asarray(np.abs(rng.normal(size=shape)))
                for p, shape in t.param_shapes(2).items()
            }
            for name, t in model.outputs.items()
        }
        params["latents"] = jnp.asarray(rng.normal(size=(44, 2)))
        result = plx.FitResult(
            params,
            plx.LatentPosterior(params["latents"], jnp.zeros((44, 2, 2))),
            jnp.zeros(1),
            0,
            False,
        )
    else:
        model.register_output("flux", QuadraticTransform(5))
        model.register_output("label", QuadraticTransform(2, param_priors=scatter))
        fit = model.fit(train, progress=False, max_iter=5)
        calibrated = model.calibrate(train, fit, folds=2, progress=False)
        assert calibrated.calibration
        for i, result in enumerate([fit, calibrated]):
            trained = plx.load(model.save(tmp_path / f"{i}.pollux", result, data=data))
            assert trained.result.calibration == result.calibration
            for a, b in zip(
                _predict(model, result, test),
                _predict(trained.model, trained.result, test),
                strict=True,
            ):
                np.testing.assert_array_equal(a, b)
        return
    trained = plx.load(model.save(tmp_path / "m.pollux", result, data=data))
    z = result.params["latents"]  # not on the fast path: compare the outputs
    np.testing.assert_array_equal(
        model.predict_outputs(z, result.params)["flux"],
        trained.model.predict_outputs(z, trained.result.params)["flux"],
    )


def test_committed_file_keeps_loading():
    """A file written by format version 1 (tests/data/make_model_v1.py) loads and
    predicts the numbers stored beside it."""
    trained = plx.load(COMMITTED)
    assert trained.info["format_version"] == 1
    expected = np.load(COMMITTED.with_suffix(".expected.npz"))
    labels = trained.label({"flux": (expected["flux"], expected["flux_err"])})
    np.testing.assert_allclose(
        labels.predictions["label"].data, expected["label"], rtol=1e-10, atol=0
    )
    np.testing.assert_allclose(
        labels.predictions["label"].err, expected["label_err"], rtol=1e-10, atol=0
    )


# Refusals ---------------------------------------------------------------------------
def _rewrite(
    src: Path, dst: Path, edit_manifest=None, edit_array=None, *, crafted=True
) -> Path:
    """Copy a model file, changing its manifest or one array (the array
    checksums untouched). ``crafted``: the payload's checksum rewritten to match,
    as in a file made by hand, so that the checks behind it are reached."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            raw = zin.read(item)
            if item.filename == "manifest.json" and edit_manifest:
                manifest = json.loads(raw)
                edit_manifest(manifest)
                if crafted and "payload_sha256" in manifest:
                    text = json.dumps(
                        manifest["payload"], sort_keys=True, separators=(",", ":")
                    )
                    manifest["payload_sha256"] = hashlib.sha256(
                        text.encode()
                    ).hexdigest()
                raw = json.dumps(manifest).encode()
            elif edit_array and item.filename == edit_array[0]:
                arr = np.load(io.BytesIO(raw))
                buf = io.BytesIO()
                np.save(buf, edit_array[1](arr))
                raw = buf.getvalue()
            zout.writestr(item.filename, raw)
    return dst


@pytest.fixture(scope="module")
def saved(tmp_path_factory, linear_fit):
    model, result, data = linear_fit
    return model.save(tmp_path_factory.mktemp("m") / "m.pollux", result, data=data)


def _sha(arr):
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


A_KEY = "arrays/result/params/flux/A.npy"


def test_refuses_bad_files(tmp_path, saved):
    raw = saved.read_bytes()
    (tmp_path / "trunc.pollux").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "text.pollux").write_text("hello")
    with pytest.raises(FileNotFoundError, match="no model file"):
        plx.load(tmp_path / "missing.pollux")
    with pytest.raises(ValueError, match="not a readable pollux model file"):
        plx.load(tmp_path / "trunc.pollux")
    with pytest.raises(ValueError, match="not a readable pollux model file"):
        plx.load(tmp_path / "text.pollux")
    with pytest.raises(TypeError, match="path"):
        plx.load(3)
    tampered = _rewrite(
        saved, tmp_path / "t1.pollux", edit_array=(A_KEY, lambda a: a * 1.01)
    )
    with pytest.raises(ValueError, match="checksum"):
        plx.load(tampered)

    def nan_params(manifest):
        manifest["arrays"]["/result/params/flux/A"]["sha256"] = _sha(nan_a)

    a = np.load(io.BytesIO(zipfile.ZipFile(saved).read(A_KEY)))
    nan_a = a.copy()
    nan_a[0, 0] = np.nan
    bad = _rewrite(saved, tmp_path / "t2.pollux", nan_params, (A_KEY, lambda _: nan_a))
    with pytest.raises(ValueError, match="non-finite"):
        plx.load(bad)

    def newer(manifest):
        manifest["format_version"] = 99

    with pytest.raises(ValueError, match="Upgrade pollux"):
        plx.load(_rewrite(saved, tmp_path / "t3.pollux", newer))

    def wrong_k(manifest):
        manifest["payload"]["model"]["latent_size"] = 3

    with pytest.raises(ValueError, match=r"shape|latent"):
        plx.load(_rewrite(saved, tmp_path / "t4.pollux", wrong_k))
    # The same edit without the checksum rewritten: refused as damage.
    with pytest.raises(ValueError, match="payload does not match its checksum"):
        plx.load(_rewrite(saved, tmp_path / "t4b.pollux", wrong_k, crafted=False))

    def code(manifest):
        manifest["payload"]["model"]["outputs"]["flux"]["$transform"]["type"] = (
            "os.system"
        )

    with pytest.raises(ValueError, match="unknown transform"):
        plx.load(_rewrite(saved, tmp_path / "t5.pollux", code))


def test_pickled_array_is_not_loaded(tmp_path, saved):
    def to_object(manifest):
        manifest["arrays"]["/result/params/flux/A"]["sha256"] = "x"

    def pickle_it(_):
        return np.array([{"a": 1}], dtype=object)

    with (
        zipfile.ZipFile(saved) as zin,
        zipfile.ZipFile(tmp_path / "p.pollux", "w") as zout,
    ):
        for item in zin.infolist():
            raw = zin.read(item)
            if item.filename == A_KEY:
                buf = io.BytesIO()
                np.save(buf, pickle_it(None), allow_pickle=True)
                raw = buf.getvalue()
            zout.writestr(item.filename, raw)
    with pytest.raises(ValueError, match="cannot be read"):
        plx.load(tmp_path / "p.pollux")


def test_save_refusals(tmp_path, linear_fit):
    model, result, _data = linear_fit
    path = model.save(tmp_path / "m.pollux", result)
    with pytest.raises(ValueError, match="exists; pass overwrite=True"):
        model.save(path, result)
    model.save(path, result, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["m.pollux"]  # no temporary left
    with pytest.raises(ValueError, match="does not exist"):
        model.save(tmp_path / "nope" / "m.pollux", result)
    with pytest.raises(TypeError, match="FitResult"):
        model.save(tmp_path / "x.pollux", result.params)
    with pytest.raises(ValueError, match="needs 2 non-empty names"):
        model.save(tmp_path / "x.pollux", result, columns={"label": ["A"]})
    with pytest.raises(ValueError, match="finite wavelengths"):
        model.save(tmp_path / "x.pollux", result, wavelength=np.ones(3))
    f = plx.LuxModel(latent_size=2)
    f.register_output(
        "flux",
        FunctionTransform(
            6,
            lambda z, w: jnp.tanh(w @ z),
            param_priors={"w": dist.Normal(0.0, 1.0)},
            param_shapes={"w": ("output_size", "input_size")},
        ),
    )
    params = {"flux": {"w": jnp.zeros((6, 2))}}
    fake = plx.FitResult(params, result.posterior, result.losses, 1, True)
    with pytest.raises(TypeError, match="holds no code"):
        f.save(tmp_path / "f.pollux", fake)
    assert not (tmp_path / "f.pollux").exists()
    o = plx.LuxModel(latent_size=2)
    o.register_output(
        "flux",
        LinearTransform(6, param_priors={"A": dist.TruncatedNormal(0.0, 1.0, low=0.0)}),
    )
    with pytest.raises(TypeError, match="cannot be stored"):
        o.save(
            tmp_path / "o.pollux",
            plx.FitResult(
                {"flux": {"A": jnp.zeros((6, 2))}},
                result.posterior,
                result.losses,
                1,
                True,
            ),
        )


def test_label_refusals(tmp_path, saved):
    trained = plx.load(saved)
    with pytest.raises(ValueError, match="not an output of the model"):
        trained.label({"spectrum": np.ones((2, 6))})
    with pytest.raises(TypeError, match="PolluxData or a dict"):
        trained.label(np.ones((2, 6)))
    with pytest.raises(ValueError, match="every fitted output is given"):
        trained.label({"flux": np.ones((2, 6)), "label": np.ones((2, 2))})
    with pytest.raises(ValueError, match=r"shape"):
        trained.label({"flux": (np.ones((2, 5)), np.ones((2, 5)))})


def test_extra_err_widens_errors_and_lowers_chi2(tmp_path, saved):
    trained = plx.load(saved)
    data, _, _ = make_data(n_stars=80)
    given = {"flux": (data["flux"].data[60:], data["flux"].err[60:])}
    plain = trained.label(given)
    wider = trained.label(given, extra_err={"flux": 0.5})
    assert np.all(wider.reduced_chi2 < plain.reduced_chi2)
    assert np.all(wider.predictions["label"].err > plain.predictions["label"].err)
    with pytest.raises(ValueError, match="not a given output"):
        trained.label(given, extra_err={"label": 0.1})
    with pytest.raises(ValueError, match="finite sigma"):
        trained.label(given, extra_err={"flux": -1.0})
    with pytest.raises(TypeError, match="needs a number"):
        trained.label(given, extra_err={"flux": "0.1"})


def test_more_refusals_name_the_argument(tmp_path, saved, linear_fit):
    trained = plx.load(saved)
    flux = np.ones((2, 6))
    with pytest.raises(ValueError, match="no stars to label"):
        trained.label({"flux": np.ones((0, 6))})
    with pytest.raises(
        ValueError, match=r"given=\.\.\.\): \['label'\] not in the data"
    ):
        trained.label({"flux": flux}, given=["flux", "label"])
    with pytest.raises(TypeError, match="chi2_limit"):
        trained.label({"flux": flux}, chi2_limit="3")
    with pytest.raises(ValueError, match="chi2_limit"):
        trained.label({"flux": flux}, chi2_limit=float("nan"))
    with pytest.raises(ValueError, match=r"expected \(values, err\)"):
        trained.label({"flux": (flux, flux, flux)})
    # an output without errors gets the extra error alone
    labels = trained.label({"flux": flux}, extra_err={"flux": 0.1})
    assert np.all(np.isfinite(labels.reduced_chi2))
    with pytest.raises(TypeError, match="path"):
        plx.models.model_file_info(b"x.pollux")
    model, result, _ = linear_fit
    with pytest.raises(TypeError, match="columns"):
        model.save(tmp_path / "c.pollux", result, columns={"label": 3})
    with pytest.raises(TypeError, match="wavelength"):
        model.save(tmp_path / "w.pollux", result, wavelength="abc")

    def no_result(manifest):
        del manifest["payload"]["result"]

    with pytest.raises(ValueError, match="lacks the model or the result"):
        plx.load(_rewrite(saved, tmp_path / "r.pollux", no_result))

    def bad_preprocessor(manifest):
        manifest["payload"]["preprocessors"]["flux"] = 3

    with pytest.raises(ValueError, match="preprocessors"):
        plx.load(_rewrite(saved, tmp_path / "p.pollux", bad_preprocessor))


def test_sequence_stores_no_unreferenced_arrays(tmp_path):
    model = plx.LuxModel(latent_size=2)
    model.register_output(
        "flux", TransformSequence(LinearTransform(3), AffineTransform(5))
    )
    params = {
        "flux": {
            k: jnp.zeros(v) for k, v in model.outputs["flux"].param_shapes(2).items()
        }
    }
    result = plx.FitResult(
        params,
        plx.LatentPosterior(jnp.zeros((1, 2)), jnp.zeros((1, 2, 2))),
        jnp.zeros(1),
        0,
        False,
    )
    path = model.save(tmp_path / "s.pollux", result)
    with zipfile.ZipFile(path) as zf:
        manifest = json.loads(zf.read("manifest.json"))
    text = json.dumps(manifest["payload"])
    assert all(f'"{key}"' in text for key in manifest["arrays"])


def test_clip_removes_spikes_and_recovers_the_clean_labels(tmp_path, saved):
    trained = plx.load(saved)
    data, _, _ = make_data(n_stars=80)
    flux = np.array(data["flux"].data[60:])
    err = np.array(data["flux"].err[60:])
    spiked = flux.copy()
    spiked[:, 2] += 50 * err[:, 2]  # one wild value per star, e.g. a sky line
    raw = trained.label({"flux": (spiked, err)})
    clipped = trained.label({"flux": (spiked, err)}, clip=5.0)
    assert np.all(clipped.n_clipped >= 1) and np.all(raw.n_clipped == 0)
    assert np.all(clipped.reduced_chi2 < raw.reduced_chi2)
    # with the spike left out the star is inferred from the other 5 pixels
    five = trained.label({"flux": (np.where(np.arange(6) == 2, np.nan, flux), err)})
    np.testing.assert_allclose(
        clipped.predictions["label"].data[clipped.n_clipped == 1],
        five.predictions["label"].data[clipped.n_clipped == 1],
        rtol=1e-12,
    )
    assert np.all(clipped.flags & plx.models.trained.FLAGS["many_outliers"])  # 1/6 > 5%
    assert "N_CLIPPED" in clipped.table()
    with pytest.raises(ValueError, match="clip"):
        trained.label({"flux": (flux, err)}, clip=0)
