"""`pollux.streaming.label_store`: chunked labelling of zarr/HDF5 stores, resumable."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import zarr

import pollux as plx
from pollux.models.trained import TrainedModel
from pollux.models.transforms import LinearTransform
from pollux.streaming import FORMAT, label_store
from tests.conftest import make_data

N_FLUX = 8
N = 250
CHUNK = 64
COLUMNS = ["TEFF", "TEFF_ERR", "LOGG", "LOGG_ERR"]
COLUMNS += ["REDUCED_CHI2", "N_OBSERVED", "N_CLIPPED", "FLAG", "FLAG_REASON"]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    data, _, _ = make_data(n_stars=120, n_flux=N_FLUX)
    model = plx.LuxModel(latent_size=2)
    model.register_output("flux", LinearTransform(output_size=N_FLUX))
    model.register_output("label", LinearTransform(output_size=2))
    result = model.fit(data.preprocess(), progress=False, max_iter=200)
    path = tmp_path_factory.mktemp("model") / "m.pollux"
    return model.save(path, result, data=data, columns={"label": ["TEFF", "LOGG"]})


@pytest.fixture(scope="module")
def trained(model_file):
    return plx.load(model_file)


@pytest.fixture(scope="module")
def spectra():
    """``(flux, err)`` of N new stars: row 5 all missing, a few missing pixels."""
    obs, _ = plx.datasets.make_simulated_linear_data(
        n_stars=N, n_latents=2, n_labels=2, n_flux=N_FLUX, rng=1
    )
    flux, err = obs["flux"].copy(), obs["flux_err"].copy()
    flux[5] = np.nan
    err[7, 2] = np.nan  # a NaN error marks the pixel missing
    err[9, :3] = np.inf
    return flux, err


def _write_zarr(path, flux, err):
    group = zarr.open_group(str(path), mode="w")
    for key, arr in (("flux", flux), ("err", err)):
        group.create_array(key, shape=arr.shape, chunks=(50, N_FLUX), dtype=arr.dtype)
        group[key][...] = arr
    return path


def _write_hdf5(path, flux, err):
    with h5py.File(path, "w") as f:
        f["flux"] = flux
        f["err"] = err
    return path


def _masked(flux, err):
    """The in-memory arrays with label_store's rule: non-finite means missing."""
    flux, err = np.array(flux, dtype=float), np.array(err, dtype=float)
    missing = ~(np.isfinite(flux) & np.isfinite(err))
    flux[missing], err[missing] = np.nan, np.inf
    return flux, err


def _read(path) -> dict[str, np.ndarray]:
    group = zarr.open_group(str(path), mode="r")
    return {col: group[col][...] for col in group.attrs["columns"]}


def _assert_same(table, expected, rtol):
    assert list(table) == list(expected)
    for col, want in expected.items():
        got = table[col]
        assert got.shape == want.shape, col
        if col == "FLAG_REASON":
            assert got.tolist() == want.tolist()
        elif np.issubdtype(want.dtype, np.integer):
            np.testing.assert_array_equal(got, want, err_msg=col)
        else:
            np.testing.assert_allclose(got, want, rtol=rtol, atol=0, err_msg=col)


@pytest.mark.parametrize(
    ("fmt", "err_dtype"),
    [("zarr", np.float64), ("hdf5", np.float32), ("zarr", np.float16)],
)
def test_matches_labelling_in_memory(tmp_path, trained, spectra, fmt, err_dtype):
    flux, err = spectra
    err = err.astype(err_dtype)
    write = _write_zarr if fmt == "zarr" else _write_hdf5
    source = write(tmp_path / f"src.{fmt}", flux, err)
    out = label_store(
        trained, source, tmp_path / "out.zarr", chunk_size=CHUNK, progress=False
    )
    assert out == tmp_path / "out.zarr"
    # the reference sees the same (float16-rounded) errors, all rows at once
    expected = trained.label({"flux": _masked(flux, err)}, given=["flux"]).table()
    table = _read(out)
    _assert_same(table, expected, rtol=1e3 * np.finfo(np.float64).eps)
    assert table["FLAG"][5] & 1 and np.isnan(table["TEFF"][5])
    assert table["N_OBSERVED"][5] == 0 and table["N_OBSERVED"][7] == N_FLUX - 1
    group = zarr.open_group(str(out), mode="r")
    assert group["done"][...].tolist() == [True] * 4
    assert group["TEFF"].chunks == (CHUNK,)
    attrs = dict(group.attrs)
    assert attrs["format"] == FORMAT
    assert (attrs["n"], attrs["n_pixels"], attrs["chunk_size"]) == (N, N_FLUX, CHUNK)
    assert attrs["columns"] == COLUMNS
    assert attrs["source"] == str(source.resolve())
    assert attrs["model_created"] == trained.info["created"]


def test_resume_after_interruption(tmp_path, trained, spectra, monkeypatch, capsys):
    source = _write_zarr(tmp_path / "src.zarr", *spectra)
    calls = []
    real = TrainedModel.label

    def interrupted(self, data, **kwargs):
        calls.append(data["flux"][0].shape)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, data, **kwargs)

    monkeypatch.setattr(TrainedModel, "label", interrupted)
    out = tmp_path / "out.zarr"
    with pytest.raises(KeyboardInterrupt):
        label_store(trained, source, out, chunk_size=CHUNK, progress=False)
    group = zarr.open_group(str(out), mode="r")
    assert group["done"][...].tolist() == [True, True, False, False]
    assert np.isnan(group["TEFF"][2 * CHUNK :]).all()

    calls.clear()
    label_store(trained, source, out, chunk_size=CHUNK)
    assert calls == [(CHUNK, N_FLUX)] * 2  # only the two chunks left, the last padded
    assert "250/250" in capsys.readouterr().err
    monkeypatch.undo()
    whole = label_store(
        trained, source, tmp_path / "whole.zarr", chunk_size=CHUNK, progress=False
    )
    _assert_same(_read(out), _read(whole), rtol=0)

    with pytest.raises(ValueError, match=r"chunk_size=64.*this run: 32"):
        label_store(trained, source, out, chunk_size=32, progress=False)
    with pytest.raises(ValueError, match="clip"):
        label_store(trained, source, out, chunk_size=CHUNK, clip=3.0, progress=False)
    with pytest.raises(ValueError, match="resume=False"):
        label_store(
            trained, source, out, chunk_size=CHUNK, resume=False, progress=False
        )
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a zarr store"):
        label_store(trained, source, tmp_path / "empty", progress=False)
    zarr.open_group(str(tmp_path / "other.zarr"), mode="w")
    with pytest.raises(ValueError, match="not written by label_store"):
        label_store(trained, source, tmp_path / "other.zarr", progress=False)


def test_model_path_small_source_and_options(tmp_path, model_file, trained, spectra):
    """A model file path as ``trained``; N smaller than chunk_size; extra_err, clip."""
    flux, err = (a[:10] for a in spectra)
    source = _write_hdf5(tmp_path / "src.h5", flux, err)
    out = label_store(
        trained, source, tmp_path / "a.zarr", extra_err=0.01, clip=4.0, progress=False
    )
    expected = trained.label(
        {"flux": _masked(flux, err)},
        given=["flux"],
        extra_err={"flux": 0.01},
        clip=4.0,
    ).table()
    _assert_same(_read(out), expected, rtol=1e3 * np.finfo(np.float64).eps)
    out = label_store(model_file, source, tmp_path / "b.zarr", progress=False)
    attrs = dict(zarr.open_group(str(out), mode="r").attrs)
    assert attrs["model_path"] == str(model_file.resolve())
    assert attrs["n_chunks"] == 1


def test_empty_source(tmp_path, trained):
    source = _write_hdf5(
        tmp_path / "src.h5", np.zeros((0, N_FLUX)), np.zeros((0, N_FLUX))
    )
    out = label_store(trained, source, tmp_path / "out.zarr", progress=False)
    assert all(len(v) == 0 for v in _read(out).values())


def test_bad_inputs(tmp_path, trained, spectra, monkeypatch):
    flux, err = spectra
    good = _write_zarr(tmp_path / "good.zarr", flux, err)
    out = tmp_path / "out.zarr"

    def no_jax(*args, **kwargs):
        raise AssertionError("labelled before checking the inputs")

    monkeypatch.setattr(TrainedModel, "label", no_jax)
    with pytest.raises(FileNotFoundError, match="source"):
        label_store(trained, tmp_path / "missing.zarr", out)
    with pytest.raises(ValueError, match=r"flux_key='spectra'.*no array"):
        label_store(trained, good, out, flux_key="spectra")
    with pytest.raises(ValueError, match=r"err_key='ivar'"):
        label_store(trained, good, out, err_key="ivar")
    mismatch = _write_hdf5(tmp_path / "mismatch.h5", flux, err[:, :-1])
    with pytest.raises(ValueError, match="same shape"):
        label_store(trained, mismatch, out)
    narrow = _write_hdf5(tmp_path / "narrow.h5", flux[:, :-1], err[:, :-1])
    with pytest.raises(ValueError, match=r"7 pixels.*has 8"):
        label_store(trained, narrow, out)
    text = tmp_path / "notes.txt"
    text.write_text("not spectra")
    with pytest.raises(ValueError, match="neither a zarr store"):
        label_store(trained, text, out)
    for bad, kind in ((0, ValueError), (-3, ValueError), (2.5, TypeError)):
        with pytest.raises(kind, match="chunk_size"):
            label_store(trained, good, out, chunk_size=bad)
    with pytest.raises(TypeError, match="chunk_size"):
        label_store(trained, good, out, chunk_size=True)
    with pytest.raises(ValueError, match="clip"):
        label_store(trained, good, out, clip=0)
    with pytest.raises(ValueError, match="extra_err"):
        label_store(trained, good, out, extra_err=-1.0)
    with pytest.raises(TypeError, match="trained"):
        label_store(object(), good, out)
    with pytest.raises(ValueError, match="out"):
        label_store(trained, good, tmp_path / "no" / "such" / "out.zarr")
    assert not out.exists()
    negative = err.copy()
    negative[100, 0] = -1.0
    monkeypatch.undo()
    with pytest.raises(ValueError, match=r"negative errors in rows 64\.\.127"):
        label_store(
            trained,
            _write_zarr(tmp_path / "neg.zarr", flux, negative),
            out,
            chunk_size=CHUNK,
            progress=False,
        )
