"""The ``pollux`` command line on bad input: nothing silently wrong.

Every bad input is exit status 2 with one line naming the file or the setting
at fault (never a traceback); no input is ever overwritten; colliding paths are
refused before any work; a failed command leaves nothing it created behind.

One tiny model (8 flux pixels, 2 labels, 2 latents) is fitted once for the
module and saved under several sets of label column names; ``train`` runs on a
stand-in training set of a few stars × 8 pixels, so no test fits the
APOGEE-like spectra.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table
from cli_runs import assert_usage_error as _usage_error
from cli_runs import run as _run
from cli_runs import run_predict as _predict

import pollux as plx
import pollux._jaxcache
from pollux import cli
from pollux.cli import _report, _train
from pollux.cli._common import UsageError, staged_outputs
from pollux.cli._config import LIMITS, TrainConfig, check_config, parse_config
from pollux.cli._predict import RESERVED_COLUMNS
from pollux.models.transforms import LinearTransform, QuadraticTransform

N_FLUX = 8
WAVE = np.linspace(15100.0, 15200.0, N_FLUX)
BASE = Path("/nonexistent-pollux-config-dir")  # only joined with, never listed


@pytest.fixture(autouse=True)
def _no_persistent_cache(monkeypatch, tmp_path):
    """No command switches on JAX's persistent cache or writes a user folder."""
    monkeypatch.setattr(pollux._jaxcache, "enable_compilation_cache", _no_cache)
    monkeypatch.setenv("POLLUX_CACHE_DIR", str(tmp_path / "jax-cache"))


def _no_cache(*args, **kwargs):
    return None


class Models:
    """The module's fit, saved with good and with colliding label columns."""

    def __init__(self, folder: Path):
        obs, _ = plx.datasets.make_simulated_linear_data(
            n_stars=64, n_latents=2, n_labels=2, n_flux=N_FLUX, rng=0
        )
        pre = plx.data.ShiftScalePreprocessor
        self.data = plx.data.PolluxData(
            flux=plx.data.OutputData(
                obs["flux"],
                err=obs["flux_err"],
                preprocessor=pre.from_data(obs["flux"]),
            ),
            label=plx.data.OutputData(
                obs["label"],
                err=obs["label_err"],
                preprocessor=pre.from_data(obs["label"]),
            ),
        )
        self.model = plx.LuxModel(latent_size=2)
        self.model.register_output("flux", LinearTransform(output_size=N_FLUX))
        self.model.register_output("label", LinearTransform(output_size=2))
        self.result = self.model.fit(
            self.data.preprocess(), max_iter=50, progress=False
        )
        self.folder = folder
        self.path = self.save("model.pollux", ["TEFF", "LOGG"])
        self.flux = np.asarray(obs["flux"], dtype=np.float64)
        self.err = np.asarray(obs["flux_err"], dtype=np.float64)

    def save(self, name: str, columns) -> Path:
        return self.model.save(
            self.folder / name,
            self.result,
            data=self.data,
            columns={"label": list(columns)},
            wavelength=WAVE,
        )


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return Models(tmp_path_factory.mktemp("models"))


def _npz(path, flux, err):
    np.savez(path, flux=flux, err=err, wavelength=WAVE)
    return path


def _listing(folder: Path) -> dict[str, bytes | None]:
    """Every entry under ``folder`` (hidden ones too) with its bytes."""
    return {
        str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(folder.rglob("*"))
    }


@pytest.fixture
def spectra(models, tmp_path):
    return _npz(tmp_path / "s.npz", models.flux[:5], models.err[:5])


def _never_label(*args, **kwargs):
    raise AssertionError("the model labelled spectra before the input was refused")


# ------------------------------------------------------ 1. an input is never replaced


@pytest.mark.parametrize("suffix", [".csv", ".fits"])
def test_predict_refuses_an_output_that_is_an_input(models, tmp_path, capsys, suffix):
    path = tmp_path / f"in{suffix}"  # an npz file under a table's name
    os.replace(_npz(tmp_path / "s.npz", models.flux[:3], models.err[:3]), path)
    before = _listing(tmp_path)
    rc, _, err = _predict(capsys, models.path, [path], path, "--overwrite")
    _usage_error(rc, err, "predict", f"in{suffix}", "INPUT", "never overwritten")
    assert _listing(tmp_path) == before


def test_predict_refuses_an_output_that_is_the_model_through_a_symlink(
    models, spectra, tmp_path, capsys, monkeypatch
):
    model = tmp_path / "m.pollux"
    model.write_bytes(models.path.read_bytes())
    (tmp_path / "link.fits").symlink_to(model)
    os.link(spectra, tmp_path / "hard.csv")
    before = _listing(tmp_path)
    monkeypatch.setattr(plx.models.trained.TrainedModel, "label", _never_label)
    rc, _, err = _predict(
        capsys, model, [spectra], tmp_path / "link.fits", "--overwrite"
    )
    _usage_error(rc, err, "predict", "link.fits", "model file")
    rc, _, err = _predict(
        capsys, model, [spectra], tmp_path / "hard.csv", "--overwrite"
    )
    _usage_error(rc, err, "predict", "hard.csv", "INPUT")
    assert _listing(tmp_path) == before


def test_predict_refuses_a_store_that_is_its_input(models, tmp_path, capsys):
    import zarr

    store = zarr.open_group(str(tmp_path / "in.zarr"), mode="w")
    store.create_array("flux", data=models.flux[:3])
    store.create_array("err", data=models.err[:3])
    (tmp_path / "alias.zarr").symlink_to(tmp_path / "in.zarr")
    before = _listing(tmp_path)
    for out in (tmp_path / "in.zarr", tmp_path / "alias.zarr"):
        rc, _, err = _predict(capsys, models.path, [tmp_path / "in.zarr"], out)
        _usage_error(rc, err, "predict", "in.zarr", "never overwritten")
    assert _listing(tmp_path) == before


@pytest.mark.parametrize("where", ["model", "input", "dot", "holds input"])
def test_report_refuses_a_folder_that_is_or_holds_an_input(
    models, tmp_path, capsys, monkeypatch, where
):
    model = tmp_path / "m.pollux"
    model.write_bytes(models.path.read_bytes())
    (tmp_path / "sub").mkdir()
    spectra = _npz(tmp_path / "sub" / "s.npz", models.flux[:3], models.err[:3])
    out = {
        "model": model,
        "input": spectra,
        "dot": tmp_path,
        "holds input": tmp_path / "sub",
    }[where]
    monkeypatch.chdir(tmp_path)
    before = _listing(tmp_path)
    rc, _, err = _run(
        capsys, "report", model, spectra, "--out", out, "--overwrite", "--no-cache"
    )
    _usage_error(rc, err, "report", "report folder")
    assert "holds" in err or "never overwritten" in err
    assert _listing(tmp_path) == before


def test_report_never_replaces_a_folder_that_is_not_a_report(models, tmp_path, capsys):
    out = tmp_path / "results"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    rc, _, err = _run(capsys, "report", models.path, "--out", out, "--overwrite")
    _usage_error(rc, err, "report", "results", "notes.txt")
    assert (out / "notes.txt").read_text() == "mine"


# ------------------------------------------------------------ 2. train's own paths

TINY = """\
[data]
apogee_like = 60
[model]
latent_size = 2
flux = "linear"
label = "linear"
flux_scatter = false
label_scatter = false
[fit]
max_iter = 2
[calibrate]
folds = 0
[output]
holdout = 0.2
"""


def _config(folder: Path, text: str = TINY, **output: str) -> Path:
    """``text`` (ending in [output]) with the string keys ``output`` added."""
    lines = "".join(f'{key} = "{value}"\n' for key, value in output.items())
    path = folder / "c.toml"
    path.write_text(text + lines, encoding="utf-8")
    return path


def _no_training(*args, **kwargs):
    raise AssertionError("train read the data before refusing its paths")


@pytest.mark.parametrize(
    ("output", "fragment"),
    [
        ({"model": "x", "report": "x"}, "same path"),
        ({"model": "c.toml", "report": ""}, "configuration file"),
        ({"model": "r/m.pollux", "report": "r"}, "inside"),
        ({"report": "."}, "configuration file"),
        ({"model": "s.npz", "report": ""}, "[data] spectra file"),
        ({"model": "labels.csv", "report": ""}, "[data] labels table"),
        ({"report": "spectra"}, "[data] spectra file"),
    ],
)
def test_train_refuses_colliding_paths_before_any_work(
    tmp_path, capsys, monkeypatch, output, fragment
):
    (tmp_path / "spectra").mkdir()
    _npz(tmp_path / "s.npz", np.ones((2, N_FLUX)), np.ones((2, N_FLUX)))
    _npz(tmp_path / "spectra" / "t.npz", np.ones((2, N_FLUX)), np.ones((2, N_FLUX)))
    (tmp_path / "labels.csv").write_text("TEFF\n1\n")
    (tmp_path / "r").mkdir()
    data = (
        '[data]\nspectra = ["s.npz", "spectra/*.npz"]\nlabels = "labels.csv"\n'
        'label_columns = ["TEFF"]\n'
    )
    text = data + "[model]" + TINY.split("[model]", 1)[1]
    config = _config(tmp_path, text, **output)
    monkeypatch.setattr(_train, "load_training_set", _no_training)
    before = _listing(tmp_path)
    for extra in ([], ["--overwrite"]):
        rc, out, err = _run(capsys, "train", config, *extra)
        _usage_error(rc, err, "train", fragment)
        assert out == ""
    assert _listing(tmp_path) == before


# ------------------------------------------- 3. a failed command leaves nothing behind


def _tiny_set(n_stars: int) -> _train.TrainingSet:
    obs, _ = plx.datasets.make_simulated_linear_data(
        n_stars=n_stars, n_latents=2, n_labels=2, n_flux=N_FLUX, rng=1
    )
    return _train.TrainingSet(
        np.asarray(obs["flux"]),
        np.asarray(obs["flux_err"]),
        np.asarray(obs["label"]),
        np.asarray(obs["label_err"]),
        WAVE,
        ("TEFF", "LOGG"),
    )


@pytest.fixture
def tiny_training(monkeypatch, models):
    """`pollux train` on 80 stars × 8 pixels instead of the APOGEE-like set: 64
    to train on, the shapes and model of the module's fit (compiled once)."""
    monkeypatch.setattr(_train, "load_training_set", lambda cfg: _tiny_set(80))


def _quick_figures(trained, flux, flux_err, reference, out, max_stars):
    (out / "summary.json").write_text("{}\n")
    return [out / "summary.json"]


def _failing_figures(trained, flux, flux_err, reference, out, max_stars):
    (out / "loss_curve.png").write_bytes(b"half a figure")
    raise ValueError("figure failed")


def test_train_failing_in_the_report_leaves_no_model(
    tmp_path, capsys, monkeypatch, tiny_training
):
    config = _config(tmp_path)
    monkeypatch.setattr(_report, "_write_figures", _failing_figures)
    rc, _, err = _run(capsys, "train", config, "--no-cache", "--no-progress")
    _usage_error(rc, err, "train", "figure failed")
    assert sorted(_listing(tmp_path)) == ["c.toml"]


def test_train_overwrite_replaces_old_outputs_only_on_success(
    tmp_path, capsys, monkeypatch, tiny_training
):
    config = _config(tmp_path)
    (tmp_path / "model.pollux").write_bytes(b"old model")
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "old.png").write_bytes(b"old figure")
    before = _listing(tmp_path)
    monkeypatch.setattr(_report, "_write_figures", _failing_figures)
    rc, _, err = _run(
        capsys, "train", config, "--overwrite", "--no-cache", "--no-progress"
    )
    _usage_error(rc, err, "train", "figure failed")
    assert _listing(tmp_path) == before  # the old outputs, no temporary

    monkeypatch.setattr(_report, "_write_figures", _quick_figures)
    rc, out, err = _run(
        capsys, "train", config, "--overwrite", "--no-cache", "--no-progress"
    )
    assert rc == 0, err
    assert "Model written to" in out and "Report (1 files)" in out
    assert sorted(_listing(tmp_path)) == [
        "c.toml",
        "model.pollux",
        "report",
        "report/summary.json",
    ]
    assert plx.load(tmp_path / "model.pollux").columns["label"] == ("TEFF", "LOGG")


def test_an_interrupted_train_leaves_nothing(
    tmp_path, capsys, monkeypatch, tiny_training
):
    config = _config(tmp_path)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(_report, "_write_figures", interrupted)
    rc, _, err = _run(capsys, "train", config, "--no-cache", "--no-progress")
    assert rc == 130, err
    assert sorted(_listing(tmp_path)) == ["c.toml"]


def test_a_failed_report_leaves_the_old_folder(models, tmp_path, capsys, monkeypatch):
    out = tmp_path / "report"
    out.mkdir()
    (out / "old.png").write_bytes(b"old")
    before = _listing(tmp_path)
    monkeypatch.setattr(_report, "_write_figures", _failing_figures)
    rc, _, err = _run(capsys, "report", models.path, "--out", out, "--overwrite")
    _usage_error(rc, err, "report", "figure failed")
    assert _listing(tmp_path) == before


def test_a_table_that_cannot_be_written_names_it_and_leaves_nothing(
    models, spectra, tmp_path, capsys, monkeypatch
):
    def full_disk(self, target, *args, **kwargs):
        Path(target).write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Table, "write", full_disk)
    rc, _, err = _predict(capsys, models.path, [spectra], tmp_path / "o.csv")
    _usage_error(rc, err, "predict", "o.csv", "No space left")
    assert sorted(_listing(tmp_path)) == ["s.npz"]


def test_a_store_failing_before_any_chunk_is_removed(
    models, tmp_path, capsys, monkeypatch
):
    import zarr

    store = zarr.open_group(str(tmp_path / "in.zarr"), mode="w")
    store.create_array("flux", data=models.flux[:3])
    store.create_array("err", data=models.err[:3])

    def failing(*args, **kwargs):
        raise ValueError("labelling failed")

    monkeypatch.setattr(plx.models.trained.TrainedModel, "label", failing)
    rc, _, err = _predict(
        capsys, models.path, [tmp_path / "in.zarr"], tmp_path / "o.zarr"
    )
    _usage_error(rc, err, "predict", "labelling failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.zarr"]


def test_staged_outputs_put_the_old_ones_back_when_a_move_fails(tmp_path):
    (tmp_path / "a.txt").write_text("old")
    sub = tmp_path / "sub"
    sub.mkdir()
    with pytest.raises(OSError), staged_outputs() as staged:
        staged.file(tmp_path / "a.txt").write_text("new")
        (staged.folder(sub / "r") / "f.png").write_bytes(b"x")
        shutil.rmtree(sub)  # the second move fails, after the first succeeded
    assert _listing(tmp_path) == {"a.txt": b"old"}


# ---------------------------------------------------- 4. sizes, bounds, finiteness


def _parse(**sections):
    raw = {"data": {"apogee_like": 100}}
    for name, table in sections.items():
        raw.setdefault(name, {}).update(table)
    return check_config(parse_config(raw, BASE))


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("data", "apogee_like", 10**12),
        ("data", "apogee_like", 100_001),
        ("data", "apogee_like_seed", 2**64),
        ("data", "apogee_like_seed", 2**32),
        ("data", "apogee_like_dwarfs", float("nan")),
        ("data", "apogee_like_dwarfs", 10**400),
        ("model", "latent_size", 10**9),
        ("model", "latent_size", 65),
        ("fit", "max_iter", 10**18),
        ("fit", "tol", float("inf")),
        ("fit", "tol", float("nan")),
        ("fit", "tol", 10**400),
        ("calibrate", "folds", 101),
        ("calibrate", "seed", 2**32),
        ("output", "seed", -(2**70)),
        ("output", "holdout", 10**400),
    ],
    ids=lambda v: repr(v)[:16],
)
def test_a_setting_beyond_its_bound_names_it(section, key, value):
    with pytest.raises(UsageError) as err:
        _parse(**{section: {key: value}})
    text = str(err.value)
    assert f"[{section}] {key}" in text
    assert "\n" not in text and len(text) < 300


def test_every_integer_setting_has_a_bound_and_its_bound_is_accepted():
    linear = {"flux": "linear", "label": "linear"}  # any latent size up to 64
    for (section, key), (low, high) in LIMITS.items():
        assert 0 <= low < high < 2**63, (section, key)
        for value in (low, high):
            tables = {"model": dict(linear), section: {key: value}}
            if section == "model":
                tables["model"].update(linear)
            cfg = _parse(**tables)
            assert isinstance(cfg, TrainConfig)
            for below_or_above in (low - 1, high + 1):
                if (section, key, below_or_above) == ("calibrate", "folds", -1):
                    continue
                tables[section] = {**tables.get(section, {}), key: below_or_above}
                with pytest.raises(UsageError, match=rf"\[{section}\] {key}"):
                    _parse(**tables)


def test_a_quadratic_transform_bounds_the_latent_size():
    limit = QuadraticTransform.max_latent_size
    assert _parse(model={"latent_size": limit}).latent_size == limit
    for key in ("flux", "label"):
        other = "label" if key == "flux" else "flux"
        with pytest.raises(UsageError, match=r"\[model\] latent_size.*" + key):
            _parse(model={"latent_size": limit + 1, key: "quadratic", other: "linear"})
    cfg = _parse(model={"latent_size": 64, "flux": "linear", "label": "affine"})
    assert cfg.latent_size == 64


def test_a_report_needs_held_out_stars():
    with pytest.raises(UsageError, match=r"\[output\] holdout.*report"):
        _parse(output={"holdout": 0})
    assert _parse(output={"holdout": 0, "report": ""}).report is None


@pytest.mark.parametrize(
    "value", ["a\x00b", "\ud800/m.pollux"], ids=["NUL", "surrogate"]
)
def test_a_path_that_no_system_call_takes_is_refused(value):
    with pytest.raises(UsageError, match=r"\[output\] model.*not a usable path"):
        _parse(output={"model": value})


@pytest.mark.parametrize(
    ("latent_size", "folds", "holdout", "fragment"),
    [
        (2, 50, 0.2, "[calibrate] folds = 50"),
        (11, 0, 0.2, "[model] latent_size = 11"),
        (2, 0, 0.01, "[output] holdout = 0.01"),
    ],
)
def test_settings_the_number_of_stars_forbids_are_named_before_fitting(
    tmp_path, capsys, monkeypatch, latent_size, folds, holdout, fragment
):
    """12 stars: 10 to train on (holdout 0.2) or 12 (holdout 0.01: none held out)."""
    monkeypatch.setattr(_train, "load_training_set", lambda cfg: _tiny_set(12))

    def no_fit(*args, **kwargs):
        raise AssertionError("fitted before refusing the settings")

    monkeypatch.setattr(plx.LuxModel, "fit", no_fit)
    text = (
        TINY.replace("latent_size = 2", f"latent_size = {latent_size}")
        .replace("folds = 0", f"folds = {folds}")
        .replace("holdout = 0.2", f"holdout = {holdout}")
        .replace("label_scatter = false", f"label_scatter = {str(folds > 0).lower()}")
    )
    (tmp_path / "c.toml").write_text(text, encoding="utf-8")
    rc, _, err = _run(
        capsys, "train", tmp_path / "c.toml", "--no-cache", "--no-progress"
    )
    _usage_error(rc, err, "train", fragment)
    assert sorted(_listing(tmp_path)) == ["c.toml"]


def test_running_out_of_memory_is_a_usage_error_naming_the_config(
    tmp_path, capsys, monkeypatch
):
    def too_big(cfg):
        raise MemoryError("Unable to allocate 26.2 TiB")

    monkeypatch.setattr(_train, "load_training_set", too_big)
    config = _config(tmp_path)
    rc, _, err = _run(capsys, "train", config, "--no-cache")
    _usage_error(rc, err, "train", "c.toml", "out of memory", "26.2 TiB")
    assert sorted(_listing(tmp_path)) == ["c.toml"]


# ---------------------------------------------- 5. label columns and reserved names


def test_reserved_columns_are_those_of_a_predicted_table(
    models, spectra, tmp_path, capsys
):
    rc, _, err = _predict(capsys, models.path, [spectra], tmp_path / "o.csv")
    assert rc == 0, err
    names = Table.read(tmp_path / "o.csv").colnames
    assert set(RESERVED_COLUMNS) <= set(names)
    assert [n for n in names if n not in RESERVED_COLUMNS] == [
        "TEFF",
        "TEFF_ERR",
        "LOGG",
        "LOGG_ERR",
    ]
    assert len(set(RESERVED_COLUMNS)) == len(RESERVED_COLUMNS)


@pytest.mark.parametrize(
    ("columns", "fragment"),
    [
        (["ID", "LOGG"], "'ID'"),
        (["TEFF", "snr"], "'snr'"),
        (["FLAG", "LOGG"], "'FLAG'"),
        (["TEFF", "TEFF_ERR"], "'TEFF_ERR'"),
        (["N_OBSERVED", "LOGG"], "'N_OBSERVED'"),
    ],
)
def test_predict_refuses_label_columns_that_collide_before_labelling(
    models, spectra, tmp_path, capsys, monkeypatch, columns, fragment
):
    model = models.save(f"{'-'.join(columns)}.pollux", columns)
    monkeypatch.setattr(plx.models.trained.TrainedModel, "label", _never_label)
    outs = [tmp_path / "o.csv"]
    if fragment not in ("'ID'", "'snr'"):  # a store has no ID, SOURCE, SNR column
        outs.append(tmp_path / "o.zarr")
    for out in outs:
        rc, _, err = _predict(capsys, model, [spectra], out)
        _usage_error(rc, err, "predict", model.name, fragment, "label_columns")
    assert not (tmp_path / "o.csv").exists() and not (tmp_path / "o.zarr").exists()


def test_a_fits_table_refuses_a_column_name_fits_cannot_hold(
    models, spectra, tmp_path, capsys, monkeypatch
):
    model = models.save("long.pollux", ["T" * 70, "LOGG"])
    rc, _, err = _predict(capsys, model, [spectra], tmp_path / "o.fits")
    _usage_error(rc, err, "predict", "o.fits", "FITS column")
    rc, _, err = _predict(capsys, model, [spectra], tmp_path / "o.csv")
    assert rc == 0, err


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"label_columns": ["ID", "B"]}, "[data] label_columns"),
        ({"label_columns": ["A", "flag_reason"]}, "[data] label_columns"),
        ({"label_columns": ["A", "a"]}, "[data] label_columns"),
        ({"label_columns": ["A", "A_ERR"]}, "[data] label_columns"),
        (
            {"label_columns": ["A", "B"], "label_err_columns": ["B", "A_E"]},
            "label_err_columns",
        ),
        (
            {"label_columns": ["A", "B"], "label_err_columns": ["E", "e"]},
            "[data] label_err_columns",
        ),
        ({"label_columns": ["A", "B"], "id_column": "b"}, "id_column"),
        (
            {"label_columns": ["A"], "label_err_columns": ["E"], "id_column": "E"},
            "[data] id_column",
        ),
    ],
    ids=str,
)
def test_a_train_config_refuses_label_columns_that_collide(tmp_path, data, key):
    (tmp_path / "s.npz").write_bytes(b"")
    raw = {"data": {"spectra": "s.npz", "labels": "t.csv", **data}}
    with pytest.raises(UsageError) as err:
        parse_config(raw, tmp_path)
    assert key in str(err.value) and "\n" not in str(err.value)


# ------------------------------------------------------ 6. spectra with no data


def _masked_label_calls(monkeypatch) -> list[int]:
    """Wrap `TrainedModel.label`: fail on a batch with no observed value, record
    the number of rows of each call."""
    calls: list[int] = []
    real = plx.models.trained.TrainedModel.label

    def label(self, data, **kwargs):
        flux, err = data["flux"]
        observed = np.isfinite(flux) & np.isfinite(err)
        assert observed.any(), "the model was given a batch without data"
        calls.append(len(flux))
        return real(self, data, **kwargs)

    monkeypatch.setattr(plx.models.trained.TrainedModel, "label", label)
    return calls


def test_all_masked_spectra_are_not_given_to_the_model(
    models, tmp_path, capsys, monkeypatch
):
    flux = np.full((3, N_FLUX), np.nan)
    masked = _npz(tmp_path / "masked.npz", flux, models.err[:3])
    good = _npz(tmp_path / "good.npz", models.flux[:4], models.err[:4])
    normal = tmp_path / "normal.fits"
    assert _predict(capsys, models.path, [good], normal)[0] == 0
    calls = _masked_label_calls(monkeypatch)
    only = tmp_path / "only.fits"
    rc, out, err = _predict(capsys, models.path, [masked], only)
    assert rc == 0, err
    assert calls == [] and "3 flagged" in out
    masked2 = _npz(tmp_path / "masked2.npz", flux, models.err[3:6])
    mixed = tmp_path / "mixed.fits"
    rc, _, err = _predict(
        capsys, models.path, [masked, good, masked2], mixed, "--batch-size", "2"
    )
    assert rc == 0, err
    assert sum(calls) == 4  # the good rows only, in batches of 2
    a, b, c = (Table.read(p) for p in (normal, only, mixed))
    assert a.colnames == b.colnames == c.colnames
    for name in a.colnames:
        assert b[name].dtype.kind == a[name].dtype.kind, name
    for table, rows in ((b, range(3)), (c, [0, 1, 2, 7, 8, 9])):
        for row in rows:
            assert np.isnan(_floats(table, "TEFF")[row])
            assert np.isinf(_floats(table, "LOGG_ERR")[row])
            assert table["FLAG"][row] & plx.models.trained.FLAGS["no_data"]
            assert table["N_OBSERVED"][row] == 0 and table["N_CLIPPED"][row] == 0
            assert "all pixels masked" in table["FLAG_REASON"][row]
            assert "no_data" in table["FLAG_REASON"][row]
    for name in ("TEFF", "TEFF_ERR", "LOGG", "REDUCED_CHI2", "FLAG"):
        np.testing.assert_allclose(_floats(c, name)[3:7], _floats(a, name))


def _floats(table: Table, name: str) -> np.ndarray:
    """A column's values, NaN where astropy masked them (FITS NaN)."""
    column = table[name]
    if getattr(column, "mask", None) is not None:
        column = column.filled(np.nan)
    return np.asarray(column, dtype=float)


def test_a_report_on_spectra_without_data_is_refused(models, tmp_path, capsys):
    masked = _npz(tmp_path / "m.npz", np.full((2, N_FLUX), np.nan), models.err[:2])
    rc, _, err = _run(capsys, "report", models.path, masked, "--out", tmp_path / "r")
    _usage_error(rc, err, "report", "m.npz", "no observed")
    assert not (tmp_path / "r").exists()


# ------------------------------------------ 7. files, folders, permissions, messages


def test_a_folder_where_a_file_is_expected(models, spectra, tmp_path, capsys):
    (tmp_path / "dir").mkdir()
    rc, _, err = _run(
        capsys,
        "report",
        models.path,
        spectra,
        "--labels",
        tmp_path / "dir",
        "--out",
        tmp_path / "r",
    )
    _usage_error(rc, err, "report", "'", "dir", "is a folder")
    (tmp_path / "m.pollux").mkdir()
    rc, _, err = _predict(capsys, tmp_path / "m.pollux", [spectra], tmp_path / "o.csv")
    _usage_error(rc, err, "predict", "m.pollux")
    config = tmp_path / "c.toml"
    config.write_text(
        '[data]\nspectra = "s.npz"\nlabels = "dir"\nlabel_columns = ["A"]\n'
        '[output]\nreport = ""\n',
        encoding="utf-8",
    )
    rc, _, err = _run(capsys, "train", config)
    _usage_error(rc, err, "train", "[data] labels", "is a folder")
    (tmp_path / "model.pollux").mkdir()
    rc, _, err = _run(capsys, "train", _config(tmp_path))
    _usage_error(rc, err, "train", "[output] model", "is a folder")
    assert "--overwrite" not in err  # overwriting would not help
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "c.toml",
        "dir",
        "m.pollux",
        "model.pollux",
        "s.npz",
    ]


def test_a_file_where_a_folder_is_expected(models, spectra, tmp_path, capsys):
    (tmp_path / "r").write_text("x")
    rc, _, err = _run(capsys, "report", models.path, "--out", tmp_path / "no" / "x")
    _usage_error(rc, err, "report", "does not exist")
    rc, _, err = _run(capsys, "report", models.path, "--out", tmp_path / "r" / "x")
    _usage_error(rc, err, "report", "is not a folder")
    rc, _, err = _predict(capsys, models.path, [spectra], tmp_path / "r" / "o.csv")
    _usage_error(rc, err, "predict", "is not a folder")
    (tmp_path / "r.zarr").write_text("x")
    rc, _, err = _predict(capsys, models.path, [spectra], tmp_path / "r.zarr")
    _usage_error(rc, err, "predict", "r.zarr", "is a file")


def test_no_permission_is_one_line_naming_the_path(
    models, spectra, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(os, "access", lambda *args, **kwargs: False)
    rc, _, err = _predict(capsys, models.path, [spectra], tmp_path / "o.csv")
    _usage_error(rc, err, "predict", "no permission", str(tmp_path))
    rc, _, err = _run(capsys, "report", models.path, "--out", tmp_path / "r")
    _usage_error(rc, err, "report", "no permission")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.npz"]


def test_unreadable_input_is_one_line(models, spectra, tmp_path, capsys, monkeypatch):
    real = os.access
    monkeypatch.setattr(
        os, "access", lambda path, mode, **kw: mode != os.R_OK and real(path, mode)
    )
    rc, _, err = _predict(capsys, models.path, [spectra], tmp_path / "o.csv")
    _usage_error(rc, err, "predict", "s.npz", "no permission to read")


def test_a_message_of_many_lines_is_printed_as_one(models, spectra, tmp_path, capsys):
    (tmp_path / "labels.dat").write_text("no table here\x00\x01\n")
    rc, _, err = _run(
        capsys,
        "report",
        models.path,
        spectra,
        "--labels",
        tmp_path / "labels.dat",
        "--out",
        tmp_path / "r",
    )
    _usage_error(rc, err, "report", "labels.dat")


def test_a_nul_in_a_config_path_is_one_line(tmp_path, capsys):
    config = tmp_path / "c.toml"
    config.write_text('[data]\napogee_like = 60\n[output]\nmodel = "m\\u0000"\n')
    rc, _, err = _run(capsys, "train", config)
    _usage_error(rc, err, "train", "[output] model", "not a usable path")


def test_a_message_with_a_lone_surrogate_is_printed(capsys):
    assert cli.main(["info", "\ud800.pollux"]) == 2
    _usage_error(2, capsys.readouterr().err, "info", "ud800")


def test_id_column_without_labels_is_refused(models, spectra, tmp_path, capsys):
    rc, _, err = _run(
        capsys,
        "report",
        models.path,
        spectra,
        "--id-column",
        "ID",
        "--out",
        tmp_path / "r",
    )
    _usage_error(rc, err, "report", "--id-column")


def test_an_input_given_twice_is_refused(
    models, spectra, tmp_path, capsys, monkeypatch
):
    (tmp_path / "alias.npz").symlink_to(spectra)
    monkeypatch.setattr(plx.models.trained.TrainedModel, "label", _never_label)
    for second in (spectra, tmp_path / "alias.npz"):
        rc, _, err = _predict(
            capsys, models.path, [spectra, second], tmp_path / "o.csv"
        )
        _usage_error(rc, err, "predict", "given twice", second.name)
        rc, _, err = _run(
            capsys, "report", models.path, spectra, second, "--out", tmp_path / "r"
        )
        _usage_error(rc, err, "report", "given twice")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alias.npz", "s.npz"]


def test_spectra_globs_matching_a_file_twice_are_refused(tmp_path, capsys, monkeypatch):
    _npz(tmp_path / "s.npz", np.ones((2, N_FLUX)), np.ones((2, N_FLUX)))
    (tmp_path / "labels.csv").write_text("TEFF\n1\n")
    text = (
        '[data]\nspectra = ["*.npz", "s.npz"]\nlabels = "labels.csv"\n'
        'label_columns = ["TEFF"]\n[output]\nreport = ""\n'
    )
    (tmp_path / "c.toml").write_text(text, encoding="utf-8")
    monkeypatch.setattr(_train, "load_training_set", _no_training)
    rc, _, err = _run(capsys, "train", tmp_path / "c.toml")
    _usage_error(rc, err, "train", "[data] spectra", "s.npz", "twice")
