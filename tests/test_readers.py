"""Tests of `pollux.readers`: real APOGEE files, array stores, tables, bad input."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr
from astropy.io import fits
from astropy.table import Table

from pollux.readers import (
    BAD_PIXMASK,
    LabelTable,
    Spectra,
    apogee_continuum_pixels,
    apogee_wavelength,
    normalize_continuum,
    read_arrays,
    read_spectra,
    read_table,
    resample,
)

DATA = Path(__file__).parents[1] / "examples/data/real_spectra"
AP_STAR = DATA / "apStar-dr17-2M17335483-2753043.fits.gz"  # 3 visits
AP_STAR_1 = DATA / "apStar-dr17-2M19485057+5005279.fits.gz"  # 1 visit
AP_VISIT = DATA / "apVisit-r13-9518-57729-104.fits.gz"  # a 4500 K giant
AP_VISIT_HOT = DATA / "apVisit-r13-5095-55844-128.fits.gz"
BINSPEC_1 = DATA / "spectrum_ap_id_2M13012770+5754582_.npz"
BINSPEC_3 = DATA / "visit_spectra_ap_id_2M06133561+2433362_.npz"
C_KMS = 299792.458
W = apogee_wavelength()
CONT = apogee_continuum_pixels()


def _ccf_lag(a: np.ndarray, b: np.ndarray, max_lag: int = 30) -> int:
    """Pixel lag of ``a`` relative to ``b`` maximising the line-depth correlation."""
    a, b = np.nan_to_num(1 - a), np.nan_to_num(1 - b)
    lags = np.arange(-max_lag, max_lag + 1)
    n = a.size
    cc = [
        np.sum(a[max(0, k) : n + min(0, k)] * b[max(0, -k) : n + min(0, -k)])
        for k in lags
    ]
    return int(lags[np.argmax(cc)])


def _copy_fits(src: Path, dst: Path, edit) -> Path:
    with fits.open(src) as hdul:
        edit(hdul)
        hdul.writeto(dst)
    return dst


def _write_aspcap(path: Path, flux: np.ndarray, err: np.ndarray) -> Path:
    """A synthetic aspcapStar file, DR17 layout: HDU 1/2/3 flux/error/model."""
    header = {"CRVAL1": 4.179, "CDELT1": 6e-6, "CRPIX1": 1, "CTYPE1": "LOG-LINEAR"}
    primary = fits.PrimaryHDU()
    primary.header["OBJID"] = "2M00000000+0000000"
    primary.header.update(header)
    hdus = [primary]
    for arr in (flux, err, np.ones_like(flux)):
        hdu = fits.ImageHDU(arr)
        hdu.header.update(header)
        hdus.append(hdu)
    fits.HDUList(hdus).writeto(path)
    return path


# --------------------------------------------------------------------------- apStar


def test_apstar_combined_is_normalised_on_the_model_grid():
    s = read_spectra(AP_STAR, wavelength=W)
    assert s.flux.shape == s.err.shape == (1, W.size)
    assert s.ids == ("2M17335483-2753043",)
    assert s.normalized and s.rest_frame
    assert abs(np.nanmedian(s.flux[0, CONT]) - 1) < 0.02
    assert s.meta["visit"].tolist() == [0]
    assert s.meta["snr"][0] == pytest.approx(154.1551207216066)
    assert s.meta["flag"].tolist() == [""]
    assert s.meta["source"][0] == str(AP_STAR)
    assert np.all(np.isfinite(s.flux) != s.mask)


def test_apstar_all_visits():
    s = read_spectra(AP_STAR, wavelength=W, visits="all")
    assert len(s) == 3 and s.ids == ("2M17335483-2753043",) * 3
    assert s.meta["visit"].tolist() == [1, 2, 3]
    assert s.meta["snr"] == pytest.approx([67.2021, 90.5625, 105.8963], abs=1e-3)
    medians = [np.nanmedian(row[CONT]) for row in s.flux]
    assert np.allclose(medians, 1, atol=0.02)
    one = read_spectra(AP_STAR_1, wavelength=W, visits="all")
    assert len(one) == 1 and one.meta["visit"].tolist() == [1]


def test_apstar_raw_grid_values_and_bitmask():
    s = read_spectra(AP_STAR, normalize=False, visits="all")
    assert not s.normalized
    assert np.allclose(s.wavelength, 10 ** (4.179 + 6e-6 * np.arange(8575)), rtol=1e-12)
    with fits.open(AP_STAR) as hdul:
        flux, err, bits = (hdul[i].data[2:] for i in (1, 2, 3))
    bad = ((bits & BAD_PIXMASK) != 0) | (flux == 0) | ~np.isfinite(flux) | (err <= 0)
    assert np.array_equal(s.mask, bad)
    assert np.array_equal(s.flux[~bad], flux[~bad])
    assert np.array_equal(s.err[~bad], err[~bad])
    # The model grid is a subset of the apStar grid: resampling picks pixels exactly.
    on_w = resample(s, W)
    idx = np.round((np.log10(W) - 4.179) / 6e-6).astype(int)
    assert np.array_equal(on_w.flux, s.flux[:, idx], equal_nan=True)


# --------------------------------------------------------------------------- apVisit


def test_apvisit_is_shifted_to_the_rest_frame_with_vrad():
    s = read_spectra(AP_VISIT, normalize=False)
    with fits.open(AP_VISIT) as hdul:
        vrad = hdul[0].header["VRAD"]
        wave = np.sort(hdul[4].data.ravel())
    assert np.allclose(s.wavelength, wave / (1 + vrad / C_KMS), rtol=1e-14)
    assert s.rest_frame and not s.normalized and s.ids == ("2M00242666+5341178",)


def test_apvisit_lines_sit_at_their_rest_wavelengths(tmp_path):
    """Against a rest-frame apStar star, the lines line up (lag 0) after the shift,
    and sit v/c/Δln λ ≈ -16 pixels off when the header velocity is zeroed."""
    ref = read_spectra(AP_STAR, wavelength=W).flux[0]
    s = read_spectra(AP_VISIT, wavelength=W)
    assert s.normalized and abs(np.nanmedian(s.flux[0, CONT]) - 1) < 0.02
    assert abs(_ccf_lag(s.flux[0], ref)) <= 1

    def zero(hdul):
        hdul[0].header["VRAD"] = 0.0

    unshifted = read_spectra(
        _copy_fits(AP_VISIT, tmp_path / "v0.fits", zero), wavelength=W
    )
    expected = -67.472 / C_KMS / (np.log(10) * 6e-6)
    assert abs(_ccf_lag(unshifted.flux[0], ref) - expected) <= 1.5


def test_apvisit_without_velocity_is_refused(tmp_path):
    def drop(hdul):
        del hdul[0].header["VRAD"]

    path = _copy_fits(AP_VISIT_HOT, tmp_path / "apVisit-novel.fits", drop)
    with pytest.raises(
        ValueError, match=r"apVisit-novel\.fits.*no radial velocity.*rest-frame"
    ):
        read_spectra(path, wavelength=W)


# --------------------------------------------------------------------------- binspec / aspcapStar


def test_binspec_single_spectrum_on_the_model_grid():
    s = read_spectra(BINSPEC_1, wavelength=W)
    raw = np.load(BINSPEC_1)
    assert s.flux.shape == (1, 7214) and s.normalized
    good = ~s.mask[0]
    assert np.array_equal(s.flux[0, good], raw["spectrum"][good].astype(np.float64))
    assert s.ids == (f"{BINSPEC_1.name}[0]",)


def test_binspec_three_visits():
    s = read_spectra(BINSPEC_3, wavelength=W)
    raw = np.load(BINSPEC_3)
    assert len(s) == 3
    assert np.allclose(s.meta["snr"], raw["snrs"]) and np.allclose(
        s.meta["vhelio"], raw["vhelios"]
    )
    assert np.array_equal(s.flux, raw["spectra"], equal_nan=True)


def test_array_file_without_wavelength_needs_a_matching_grid():
    with pytest.raises(
        ValueError, match=r"spectrum_ap_id.*no wavelength array.*wavelength_key"
    ):
        read_spectra(BINSPEC_1)
    with pytest.raises(
        ValueError,
        match=r"7214 pixels differ from the 100 of wavelength=.*wavelength_key",
    ):
        read_spectra(BINSPEC_1, wavelength=np.linspace(15200, 16900, 100))


def test_aspcapstar_synthetic(tmp_path):
    rng = np.random.default_rng(0)
    flux = 1 - 0.3 * rng.random(8575)
    flux[:200] = 0.0  # DR17 aspcapStar: no data is stored as zero flux
    err = np.full(8575, 0.01)
    path = _write_aspcap(
        tmp_path / "aspcapStar-dr17-2M00000000+0000000.fits", flux, err
    )
    s = read_spectra(path, wavelength=W)
    assert s.normalized and s.ids == ("2M00000000+0000000",)
    idx = np.round((np.log10(W) - 4.179) / 6e-6).astype(int)
    assert np.array_equal(s.flux[0], flux[idx])  # taken as normalised: not refitted
    native = read_spectra(path)
    assert native.n_bad.tolist() == [200]


# --------------------------------------------------------------------------- array stores


def _arrays(n=3, d=40, seed=1):
    rng = np.random.default_rng(seed)
    wave = np.geomspace(15200.0, 16900.0, d)
    flux = 1 + 0.1 * rng.standard_normal((n, d))
    err = 0.01 + 0.02 * rng.random((n, d))
    return wave, flux, err


def _write(fmt: str, path: Path, arrays: dict) -> Path:
    if fmt == "npz":
        np.savez(path, **arrays)
    elif fmt == "hdf5":
        with h5py.File(path, "w") as f:
            for k, v in arrays.items():
                f[k] = v
    else:
        group = zarr.open_group(str(path), mode="w")
        for k, v in arrays.items():
            group.create_array(k, data=np.asarray(v))
    return path


@pytest.mark.parametrize(
    ("fmt", "name"), [("npz", "s.npz"), ("hdf5", "s.h5"), ("zarr", "s.zarr")]
)
def test_array_stores_round_trip(tmp_path, fmt, name):
    wave, flux, err = _arrays()
    flux[1, 5] = np.nan
    err[2, 7] = np.inf
    path = _write(fmt, tmp_path / name, {"wave": wave, "flux": flux, "flux_err": err})
    s = read_spectra(path)
    assert np.array_equal(s.wavelength, wave)
    assert s.mask.sum() == 2 and s.mask[1, 5] and s.mask[2, 7]
    good = ~s.mask
    assert np.array_equal(s.flux[good], flux[good]) and np.array_equal(
        s.err[good], err[good]
    )
    assert s.ids == tuple(f"{name}[{i}]" for i in range(3))
    assert read_arrays(path, ["wave"])["wave"].tolist() == wave.tolist()


def test_ivar_explicit_keys_1d_flux_and_decreasing_wavelength(tmp_path):
    wave, flux, err = _arrays(n=1)
    ivar = 1 / err[0] ** 2
    ivar[3] = 0.0
    path = _write(
        "hdf5",
        tmp_path / "x.hdf5",
        {"grp/lam": wave[::-1], "grp/f": flux[0, ::-1], "ivar": ivar[::-1]},
    )
    s = read_spectra(path, flux_key="grp/f", wavelength_key="grp/lam")
    assert s.flux.shape == (1, wave.size)
    assert np.allclose(s.wavelength, wave) and np.allclose(
        s.err[0, ~s.mask[0]], err[0, ~s.mask[0]]
    )
    assert s.mask[0].tolist() == [i == 3 for i in range(wave.size)]


def test_ids_and_all_masked_rows_are_flagged(tmp_path):
    wave, flux, err = _arrays()
    flux[1] = np.nan
    path = _write(
        "npz",
        tmp_path / "m.npz",
        {
            "wavelength": wave,
            "flux": flux,
            "err": err,
            "ids": np.array(["a", "b", "c"]),
        },
    )
    s = read_spectra(path)
    assert s.ids == ("a", "b", "c")
    assert s.meta["flag"].tolist() == ["", "all pixels masked", ""]
    assert s.n_bad.tolist() == [0, wave.size, 0]


def test_several_files_are_concatenated_in_order():
    paths = [AP_STAR, BINSPEC_3, AP_VISIT, BINSPEC_1]
    s = read_spectra(paths, wavelength=W)
    assert len(s) == 6
    assert s.meta["source"].tolist() == [
        str(p) for p in (AP_STAR, *[BINSPEC_3] * 3, AP_VISIT, BINSPEC_1)
    ]
    assert s.normalized and s.meta["flag"].tolist() == [""] * 6


def test_files_on_different_grids_need_a_target_grid(tmp_path):
    with pytest.raises(ValueError, match=r"another wavelength grid.*pass wavelength="):
        read_spectra([AP_VISIT, AP_VISIT_HOT], normalize=False)
    with pytest.raises(ValueError, match=r"is continuum-normalised but .* is not"):
        read_spectra([AP_STAR, BINSPEC_1], wavelength=W, normalize=False)


def test_normalize_true_refits_normalised_files():
    s = read_spectra(BINSPEC_1, wavelength=W, normalize=True)
    assert abs(np.nanmedian(s.flux[0, CONT]) - 1) < 0.01


# --------------------------------------------------------------------------- continuum


def _chip_poly(wave):
    """A different smooth, positive continuum on each APOGEE chip."""
    out = np.empty_like(wave)
    for lo, hi, c in (
        (0, 2920, (800, 0.1)),
        (2920, 5320, (600, -0.05)),
        (5320, 7214, (400, 0.2)),
    ):
        x = wave[lo:hi] - wave[lo:hi].mean()
        out[lo:hi] = c[0] * (1 + c[1] * x / 500 + 0.02 * (x / 500) ** 2)
    return out


def test_normalize_continuum_recovers_a_chebyshev_continuum():
    cont = _chip_poly(W)
    lines = 1 - 0.5 * np.exp(-0.5 * ((W - 16000) / 2) ** 2) * ~CONT
    s = Spectra(W, cont * lines, 0.01 * cont)
    out = normalize_continuum(s)
    assert np.allclose(out.flux[0], lines, atol=1e-9)
    assert np.allclose(out.err[0], 0.01)


def test_normalize_continuum_flags_rows_with_too_few_continuum_pixels():
    cont = _chip_poly(W)
    flux = np.vstack([cont, cont])
    flux[1, 2920:5000] = np.nan  # most of chip 2
    out = normalize_continuum(Spectra(W, flux, 0.01 * flux))
    assert out.meta["flag"][0] == ""
    assert "chip 2" in out.meta["flag"][1] and "continuum" in out.meta["flag"][1]
    assert out.mask[1].all() and not out.mask[0].any()
    empty = normalize_continuum(
        Spectra(W, np.full((1, W.size), np.nan), np.ones((1, W.size)))
    )
    assert empty.meta["flag"].tolist() == ["all pixels masked"]


def test_normalize_continuum_bad_input():
    s = Spectra(np.linspace(1, 2, 10), np.ones((1, 10)), np.ones((1, 10)))
    with pytest.raises(
        ValueError, match=r"normalize_continuum\(spectra=...\).*continuum pixels"
    ):
        normalize_continuum(s)
    with pytest.raises(
        ValueError, match=r"normalize_continuum\(continuum=...\).*shape \(10,\)"
    ):
        normalize_continuum(s, continuum=np.ones(3, dtype=bool))
    with pytest.raises(TypeError, match=r"normalize_continuum\(spectra=...\)"):
        normalize_continuum(np.ones(3))


# --------------------------------------------------------------------------- resample


def _random_spectra(rng, n=4, d=60, masked=0):
    wave = np.geomspace(15000, 17000, d) * (1 + 1e-5 * rng.random(d))
    flux = 1 + 0.1 * rng.standard_normal((n, d))
    flux.flat[rng.choice(n * d, masked, replace=False)] = np.nan
    return Spectra(wave, flux, 0.01 + 0.01 * rng.random((n, d)))


def test_resample_identity_is_exact(rng):
    s = _random_spectra(rng, masked=10)
    for grid in (s.wavelength, s.wavelength * (1 + 5e-7)):
        out = resample(s, grid)
        assert np.array_equal(out.flux, s.flux, equal_nan=True) and np.array_equal(
            out.err, s.err
        )
        assert np.array_equal(out.wavelength, grid)


def test_resample_matches_np_interp(rng):
    s = _random_spectra(rng)
    target = np.geomspace(15100, 16900, 45)
    out = resample(s, target)
    for row in range(len(s)):
        ref = np.interp(np.log(target), np.log(s.wavelength), s.flux[row])
        assert np.allclose(out.flux[row], ref, rtol=1e-13)


def test_resample_error_formula_by_hand():
    s = Spectra(
        np.array([1.0, 2.0, 4.0]),
        np.array([[1.0, 3.0, 5.0]]),
        np.array([[0.3, 0.4, 0.1]]),
    )
    out = resample(s, np.array([np.sqrt(2.0), 2.0, 2**1.75]))
    # w = 0.5: sqrt(0.25 * 0.09 + 0.25 * 0.16); on a pixel: its error; w = 0.75
    assert np.allclose(out.flux[0], [2.0, 3.0, 4.5])
    assert np.allclose(
        out.err[0], [0.25, 0.4, np.sqrt(0.25**2 * 0.16 + 0.75**2 * 0.01)]
    )


def test_resample_masks_neighbours_of_masked_pixels_gaps_and_the_outside():
    wave = np.array([1.0, 2.0, 4.0, 8.0, 16.0, 1024.0, 2048.0])
    flux = np.array([[1.0, 2.0, np.nan, 4.0, 5.0, 6.0, 7.0]])
    s = Spectra(wave, flux, np.full(flux.shape, 0.1))
    target = np.array([0.5, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 100.0, 1500.0, 4096.0])
    out = resample(s, target)
    expected_mask = [True, False, False, True, True, True, False, True, False, True]
    assert out.mask[0].tolist() == expected_mask
    assert out.flux[0, 2] == 2.0 and out.flux[0, 6] == 4.0
    with pytest.raises(
        ValueError, match=r"resample\(wavelength=...\).*does not overlap"
    ):
        resample(s, np.array([3000.0, 4000.0]))


# --------------------------------------------------------------------------- Spectra


def test_spectra_container_rules():
    s = Spectra(
        np.array([1.0, 2.0, 3.0]),
        [[1.0, 1.0, np.inf], [1.0, 2.0, 3.0]],
        [[0.1, 0.0, 0.1], [0.1, 0.1, np.nan]],
    )
    assert s.n_bad.tolist() == [2, 1] and s.ids == ("0", "1")
    assert np.isnan(s.flux[0, 1]) and np.isinf(s.err[1, 2])
    with pytest.raises(ValueError, match="read-only"):
        s.flux[0, 0] = 2.0
    assert s[1].ids == ("1",) and np.array_equal(
        s[np.array([False, True])].flux, s[1:].flux, equal_nan=True
    )
    with pytest.raises(ValueError, match=r"Spectra\(err=...\): 1 negative"):
        Spectra(np.array([1.0, 2.0]), np.ones(2), np.array([0.1, -0.1]))
    with pytest.raises(ValueError, match=r"Spectra\(err=...\).*shape"):
        Spectra(np.array([1.0, 2.0]), np.ones((2, 2)), np.ones((1, 2)))
    with pytest.raises(ValueError, match=r"Spectra\(flux=...\).*\(N, 2\)"):
        Spectra(np.array([1.0, 2.0]), np.ones((2, 3)), np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"strictly increasing"):
        Spectra(np.array([2.0, 1.0]), np.ones(2), np.ones(2))
    with pytest.raises(TypeError, match=r"Spectra\(flux=...\)"):
        Spectra(np.array([1.0, 2.0]), np.array(["a", "b"]), np.ones(2))
    with pytest.raises(IndexError):
        s[5]
    other = Spectra(np.array([1.0, 2.5, 3.0]), np.ones(3), np.ones(3))
    with pytest.raises(ValueError, match="another wavelength grid"):
        Spectra.concatenate([s, other])
    with pytest.raises(ValueError, match="meta columns"):
        Spectra.concatenate([s, s.replace(meta={"snr": np.ones(2)})])
    with pytest.raises(ValueError, match="normalized"):
        Spectra.concatenate([s, s.replace(normalized=True)])


# --------------------------------------------------------------------------- tables


def _allstar(path: Path) -> Path:
    t = Table(
        {
            "APOGEE_ID": np.array([b"2M01", b"2M02", b"2M03"]),
            "TEFF": np.array([4500.0, -9999.0, 5000.0], dtype=np.float32),
            "LOGG": np.ma.array([2.5, 3.0, 1.0], mask=[False, False, True]),
            "FE_H": [0.1, np.nan, -0.3],
            "TEFF_ERR": [50.0, 60.0, 70.0],
            "LOGG_ERR": [0.05, 0.06, -9999.99],
            "FE_H_ERR": [0.01, 0.02, 0.03],
            "TELESCOPE": ["apo25m"] * 3,
        }
    )
    t.write(path)
    return path


def test_read_table_fits_allstar_like(tmp_path):
    path = _allstar(tmp_path / "allStar.fits")
    t = read_table(
        path,
        ["teff", "logg", "fe_h"],
        err_columns=["TEFF_ERR", "LOGG_ERR", "FE_H_ERR"],
        id_column="APOGEE_ID",
    )
    assert isinstance(t, LabelTable) and len(t) == 3
    assert t.ids == ("2M01", "2M02", "2M03") and t.columns == ("TEFF", "LOGG", "FE_H")
    assert np.array_equal(
        t.values,
        [[4500, 2.5, 0.1], [np.nan, 3.0, np.nan], [5000, np.nan, -0.3]],
        equal_nan=True,
    )
    assert t.err is not None and np.isnan(t.err[2, 1]) and t.err[0, 0] == 50
    no_err = read_table(path, "TEFF")
    assert no_err.err is None and no_err.ids == ("0", "1", "2")


@pytest.mark.parametrize("suffix", [".csv", ".ecsv"])
def test_read_table_text(tmp_path, suffix):
    path = tmp_path / f"labels{suffix}"
    Table({"id": ["a", "b"], "teff": [4500.0, 4600.0], "teff_err": [30.0, 40.0]}).write(
        path
    )
    t = read_table(path, ["teff"], err_columns=["teff_err"], id_column="id")
    assert (
        t.ids == ("a", "b")
        and t.values[:, 0].tolist() == [4500, 4600]
        and t.err[:, 0].tolist() == [30, 40]
    )


@pytest.mark.filterwarnings("ignore:Error validating header")
def test_read_table_bad_input(tmp_path):
    path = _allstar(tmp_path / "allStar.fits")
    with pytest.raises(
        ValueError,
        match=r"read_table\(columns=...\).*allStar\.fits.*\['MG_FE'\].*available.*TEFF",
    ):
        read_table(path, ["TEFF", "MG_FE"])
    with pytest.raises(ValueError, match=r"read_table\(err_columns=...\).*expected 2"):
        read_table(path, ["TEFF", "LOGG"], err_columns=["TEFF_ERR"])
    with pytest.raises(ValueError, match=r"'TELESCOPE' is not numeric"):
        read_table(path, ["TELESCOPE"])
    bad = tmp_path / "neg.csv"
    bad.write_text("teff,teff_err\n4500,-3\n")
    with pytest.raises(ValueError, match=r"neg\.csv.*1 negative errors"):
        read_table(bad, ["teff"], err_columns=["teff_err"])
    trunc = tmp_path / "cut.fits"
    trunc.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(
        ValueError, match=r"read_table\(path=...\).*cut\.fits.*could not be read"
    ):
        read_table(trunc, ["TEFF"])
    with pytest.raises(FileNotFoundError, match=r"read_table\(path=...\).*nope\.csv"):
        read_table(tmp_path / "nope.csv", ["teff"])


# --------------------------------------------------------------------------- read_arrays


def test_read_arrays_bad_input(tmp_path):
    path = _write("hdf5", tmp_path / "a.h5", {"x": np.ones(3), "g/y": np.zeros(2)})
    assert read_arrays(path, ["g/y"])["g/y"].tolist() == [0, 0]
    with pytest.raises(
        ValueError,
        match=r"read_arrays\(keys=...\).*a\.h5.*\['z'\].*available: \['g/y', 'x'\]",
    ):
        read_arrays(path, ["x", "z"])
    obj = tmp_path / "obj.npz"
    np.savez(obj, x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match=r"obj\.npz.*could not be read"):
        read_arrays(obj, ["x"])
    with pytest.raises(ValueError, match=r"is FITS"):
        read_arrays(AP_STAR, ["x"])


# --------------------------------------------------------------------------- bad input


def _npz(tmp_path, name="b.npz", **arrays):
    wave, flux, err = _arrays(n=2, d=10)
    base = {"wavelength": wave, "flux": flux, "err": err}
    base.update(arrays)
    return _write(
        "npz", tmp_path / name, {k: v for k, v in base.items() if v is not None}
    )


def test_read_spectra_bad_arguments(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"read_spectra\(paths=...\).*missing\.fits"
    ):
        read_spectra(tmp_path / "missing.fits")
    with pytest.raises(TypeError, match=r"read_spectra\(paths=...\)"):
        read_spectra(3)
    with pytest.raises(ValueError, match=r"read_spectra\(paths=...\): no paths"):
        read_spectra([])
    with pytest.raises(ValueError, match=r"read_spectra\(normalize=...\)"):
        read_spectra(BINSPEC_1, wavelength=W, normalize="yes")
    with pytest.raises(ValueError, match=r"read_spectra\(visits=...\)"):
        read_spectra(AP_STAR, visits="some")
    with pytest.raises(ValueError, match=r"read_spectra\(wavelength=...\).*increasing"):
        read_spectra(BINSPEC_1, wavelength=W[::-1])
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    with pytest.raises(ValueError, match=r"notes\.txt' is in no known format"):
        read_spectra(txt)


def test_read_spectra_bad_array_files(tmp_path):
    wave, _, err = _arrays(n=2, d=10)
    cases = [
        ({"flux": None}, r"no flux array.*flux_key="),
        ({"err": None}, r"no error array.*err_key="),
        ({"err": err[:, :5]}, r"flux of shape \(2, 10\) but errors of shape \(2, 5\)"),
        ({"err": -err}, r"20 negative errors"),
        ({"wavelength": wave[:4]}, r"wavelength of shape \(4,\)"),
        ({"wavelength": np.r_[wave[:5], wave[:5]]}, r"strictly increasing"),
        ({"err": None, "ivar": -np.ones((2, 10))}, r"negative ivar"),
        ({"flux": np.array(["a"] * 10)}, r"non-numeric flux"),
        ({"snr": np.ones(5)}, r"'snr' of shape \(5,\)"),
    ]
    for i, (change, match) in enumerate(cases):
        path = _npz(tmp_path, f"bad{i}.npz", **change)
        with pytest.raises(
            ValueError,
            match=rf"read_spectra\(paths=...\): file '.*bad{i}\.npz'.*{match}",
        ):
            read_spectra(path)
    ok = _npz(tmp_path, "ok.npz")
    with pytest.raises(
        ValueError, match=r"read_spectra\(flux_key='f'\).*ok\.npz.*no key 'f'"
    ):
        read_spectra(ok, flux_key="f")
    with pytest.raises(
        ValueError,
        match=r"ok\.npz' covers 15200-16900 Å, which does not overlap",
    ):
        read_spectra(ok, wavelength=np.linspace(5000, 6000, 10))


def test_nan_errors_are_masked_not_refused(tmp_path):
    _, _, err = _arrays(n=2, d=10)
    err[0, 3] = np.nan
    s = read_spectra(_npz(tmp_path, err=err))
    assert s.mask[0, 3] and s.n_bad.tolist() == [1, 0]


def test_bad_fits_files(tmp_path):
    prim = fits.PrimaryHDU()
    prim.header["CRVAL1"], prim.header["CDELT1"] = 4.179, 6e-6
    fits.HDUList([prim, fits.ImageHDU(np.ones((3, 20)))]).writeto(
        tmp_path / "short.fits"
    )
    with pytest.raises(ValueError, match=r"short\.fits' has no HDU 2 \(error\)"):
        read_spectra(tmp_path / "short.fits")
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.ones((3, 20)))]).writeto(
        tmp_path / "odd.fits"
    )
    with pytest.raises(
        ValueError, match=r"odd\.fits' is a FITS file of unknown layout"
    ):
        read_spectra(tmp_path / "odd.fits")


@pytest.mark.parametrize("kind", ["fits", "fits.gz", "npz", "h5"])
def test_truncated_files_are_value_errors(tmp_path, kind):
    if kind.startswith("fits"):
        with gzip.open(AP_STAR_1) as f:
            full = f.read()
        if kind == "fits.gz":
            full = gzip.compress(full)
    else:
        path = shutil.copy(BINSPEC_3, tmp_path / "full.npz")
        if kind == "h5":
            path = _write("hdf5", tmp_path / "full.h5", dict(np.load(BINSPEC_3)))
        full = Path(path).read_bytes()
    cut = tmp_path / f"cut.{kind}"
    cut.write_bytes(full[: len(full) // 3])
    with pytest.raises(
        ValueError,
        match=rf"read_spectra\(paths=...\): file '.*cut\.{kind}' could not be read",
    ):
        read_spectra(cut, wavelength=W)


def test_normalising_a_grid_far_from_apogee_is_refused(tmp_path):
    wave = np.linspace(5000.0, 6000.0, 10)
    path = _write(
        "npz",
        tmp_path / "optical.npz",
        {"wavelength": wave, "flux": np.ones(10), "err": np.ones(10)},
    )
    with pytest.raises(
        ValueError,
        match=r"read_spectra\(normalize=...\).*optical\.npz' covers 5000-6000",
    ):
        read_spectra(path, normalize=True)
    assert read_spectra(path).normalized  # array files are taken as normalised
