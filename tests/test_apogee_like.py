"""pollux.datasets.apogee_like and the APOGEE files shipped with pollux."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest

from pollux.datasets import (
    APOGEE_DATA_DIR,
    APOGEE_FILES,
    APOGEE_LABEL_NAMES,
    _emulate,
    _emulator_jacobian,
    _load_apogee,
    apogee_like,
    apogee_like_bound,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "apogee"
SHARED_EMULATOR = (
    SHARED / "emulators" / "binspec_plus_2019" / "NN_normalized_spectra.npz"
)
N_PIX = 7214
N_STARS = 300
SEED = 3


@pytest.fixture(scope="module")
def sample():
    return apogee_like(N_STARS, seed=SEED)


@pytest.fixture(scope="module")
def emulator():
    return _load_apogee()


def test_shapes_and_dtypes(sample):
    obs, truth = sample
    assert set(obs) == {"flux", "flux_err", "label", "label_err"}
    for key in ("flux", "flux_err"):
        assert obs[key].shape == (N_STARS, N_PIX)
        assert obs[key].dtype == np.float64
    for key in ("label", "label_err"):
        assert obs[key].shape == (N_STARS, 4)
        assert obs[key].dtype == np.float64
    assert truth["flux"].shape == (N_STARS, N_PIX)
    assert truth["label"].shape == (N_STARS, 4)
    assert (
        truth["label_names"] == APOGEE_LABEL_NAMES == ("teff", "logg", "fe_h", "mg_fe")
    )
    assert truth["wavelength"].shape == (N_PIX,)
    assert 15160 < truth["wavelength"][0] < truth["wavelength"][-1] < 16940
    for key in ("snr", "vmacro", "table_index"):
        assert truth[key].shape == (N_STARS,)
    assert truth["bad_pixels"].shape == (N_STARS, N_PIX)
    assert truth["bad_pixels"].dtype == bool
    assert truth["unreported_pixels"].shape == (150,)
    assert truth["unreported_sigma"].shape == (150,)
    assert np.all(np.isfinite(truth["flux"]))
    assert 0.2 < truth["flux"].min() and truth["flux"].max() < 2.0
    assert 0.95 < np.median(truth["flux"]) < 1.0  # continuum-normalised


def test_same_seed_same_data_other_seed_other_data():
    obs1, truth1 = apogee_like(8, seed=11)
    obs2, truth2 = apogee_like(8, seed=11)
    obs3, truth3 = apogee_like(8, seed=12)
    for key in obs1:
        np.testing.assert_array_equal(obs1[key], obs2[key])  # NaNs compare equal
    for key in ("flux", "label", "snr", "bad_pixels", "unreported_pixels"):
        np.testing.assert_array_equal(truth1[key], truth2[key])
    assert not np.array_equal(truth1["label"], truth3["label"])
    assert not np.array_equal(obs1["flux"], obs3["flux"], equal_nan=True)
    assert not np.array_equal(truth1["unreported_pixels"], truth3["unreported_pixels"])


def test_labels_are_distinct_real_stars_inside_the_emulator_range(sample, emulator):
    _, truth = sample
    lo, hi = emulator["x_min"], emulator["x_max"]
    assert np.all((truth["label"] >= lo[:4]) & (truth["label"] <= hi[:4]))
    assert np.all((truth["vmacro"] >= 3) & (truth["vmacro"] <= 10))
    assert len(np.unique(truth["table_index"])) == N_STARS
    assert len(np.unique(truth["label"], axis=0)) == N_STARS
    table = emulator["labels"]
    np.testing.assert_array_equal(truth["label"], table[truth["table_index"]])
    # giants: the real DR17 distribution, not a uniform box
    assert np.median(truth["label"][:, 1]) < 3.0
    assert truth["label"][:, 0].max() < 5400


def test_label_errors(sample):
    obs, truth = sample
    lo = np.array([30, 0.03, 0.01, 0.01])
    hi = np.array([80, 0.1, 0.03, 0.04])
    assert np.all((obs["label_err"] >= lo) & (obs["label_err"] <= hi))
    z = (obs["label"] - truth["label"]) / obs["label_err"]
    np.testing.assert_allclose(z.std(axis=0), 1.0, atol=0.15)


def test_bad_pixels_are_one_percent_nan_with_infinite_errors(sample):
    obs, truth = sample
    bad = truth["bad_pixels"]
    np.testing.assert_array_equal(bad.sum(axis=1), 72)  # 1% of 7,214 per star
    assert bad.mean() == pytest.approx(0.01, abs=0.0005)
    np.testing.assert_array_equal(np.isnan(obs["flux"]), bad)
    np.testing.assert_array_equal(np.isinf(obs["flux_err"]), bad)
    assert np.all(obs["flux_err"][bad] > 0)
    assert np.all(np.isfinite(obs["flux"][~bad]))
    # chosen per star: different stars have different bad pixels
    assert len({tuple(np.flatnonzero(row)) for row in bad[:20]}) == 20


def test_snr_and_reported_errors(sample):
    obs, truth = sample
    snr = truth["snr"]
    assert np.all((snr >= 30) & (snr <= 300))
    assert snr.min() < 40 and snr.max() > 250  # spread over the whole range
    assert np.mean(snr < np.sqrt(30 * 300)) == pytest.approx(
        0.5, abs=0.1
    )  # log-uniform
    good = ~truth["bad_pixels"]
    ratio = (obs["flux_err"] * snr[:, None])[good]
    assert ratio.min() >= 0.8 and ratio.max() <= 1.2
    assert ratio.mean() == pytest.approx(1.0, abs=0.01)


def test_unreported_noise_on_150_fixed_pixels(sample):
    obs, truth = sample
    pixels = truth["unreported_pixels"]
    sigma = truth["unreported_sigma"]
    assert len(np.unique(pixels)) == 150 and np.all(np.diff(pixels) > 0)
    assert np.all((sigma >= 0.01) & (sigma <= 0.05))
    # chosen from the seed alone: the same for another number of stars
    _, small = apogee_like(3, seed=SEED)
    np.testing.assert_array_equal(small["unreported_pixels"], pixels)
    np.testing.assert_array_equal(small["unreported_sigma"], sigma)

    high = truth["snr"] > 150
    assert high.sum() > 50
    z = (obs["flux"] - truth["flux"]) / obs["flux_err"]
    z = np.where(truth["bad_pixels"], np.nan, z)[high]
    scatter = np.nanstd(z, axis=0)  # per pixel, over the high-SNR stars
    normal = np.ones(N_PIX, dtype=bool)
    normal[pixels] = False
    assert np.nanstd(z[:, normal]) == pytest.approx(1.0, abs=0.01)
    assert np.all(scatter[pixels] > 1.4)  # ≥ 0.01 extra on errors ≤ 0.008
    assert np.median(scatter[pixels]) > 3.0
    # the same pixels in every star: they stand out as the 150 noisiest
    np.testing.assert_array_equal(np.sort(np.argsort(scatter)[-150:]), pixels)
    # and the extra noise is the reported unreported_sigma
    total = np.sqrt(obs["flux_err"][:, pixels] ** 2 + sigma**2)
    z_total = (obs["flux"][:, pixels] - truth["flux"][:, pixels]) / total
    assert np.nanstd(z_total) == pytest.approx(1.0, abs=0.03)


def test_argument_checks():
    with pytest.raises(TypeError, match=r"apogee_like\(n_stars=...\)"):
        apogee_like(2.0, seed=0)
    with pytest.raises(ValueError, match="positive int"):
        apogee_like(0, seed=0)
    with pytest.raises(ValueError, match="at most 100000 stars"):
        apogee_like(100_001, seed=0)
    for seed in (1.5, None, "0", True):
        with pytest.raises(TypeError, match=r"apogee_like\(seed=...\)"):
            apogee_like(2, seed=seed)
    with pytest.raises(ValueError, match="non-negative"):
        apogee_like(2, seed=-1)
    with pytest.raises(TypeError):
        apogee_like(2)  # seed is required


def test_emulator_known_values(emulator):
    # Teff 4750 K, logg 2.5, [Fe/H] 0, [Mg/Fe] 0.1, v_macro 6 km/s: the README
    # formula evaluated once in float64 from the BinSpec++ weights
    flux = _emulate(emulator, np.array([[4750.0, 2.5, 0.0, 0.1, 6.0]]))[0]
    np.testing.assert_allclose(
        flux[[0, 1000, 2972, 5000, 7213]],
        [
            0.9678415728150567,
            0.9775346835565556,
            0.5267828618441399,
            0.9936099913309551,
            0.9903812370987197,
        ],
        rtol=0,
        atol=2e-6,  # the network runs in float32
    )
    assert np.argmin(flux) == 2972


@pytest.mark.skipif(
    not SHARED_EMULATOR.is_file(),
    reason=f"the original BinSpec++ file is not here ({SHARED_EMULATOR}): "
    "only the shipped copy can be checked",
)
def test_shipped_emulator_matches_the_original(emulator):
    with np.load(SHARED_EMULATOR, allow_pickle=False) as f:
        original = {k: f[k] for k in f.files}
    for key, value in original.items():
        assert emulator[key].dtype == value.dtype
        np.testing.assert_array_equal(emulator[key], value)
    # a direct float64 evaluation of the README formula, star by star
    rng = np.random.default_rng(0)
    x_min, x_max = original["x_min"], original["x_max"]
    labels = x_min + (x_max - x_min) * rng.uniform(0.05, 0.95, size=(3, 5))
    w0 = original["w_array_0"].astype(np.float64)
    for lab, flux in zip(labels, _emulate(emulator, labels), strict=True):
        x = (lab - x_min) / (x_max - x_min) - 0.5
        hidden = 1.0 / (1.0 + np.exp(-(w0 @ x + original["b_array_0"])))
        expected = (original["w_array_1"] * hidden).sum(-1) + original["b_array_1"]
        np.testing.assert_allclose(flux, expected, rtol=0, atol=2e-6)


@pytest.mark.skipif(
    not SHARED.is_dir(), reason=f"the original APOGEE files are not here ({SHARED})"
)
def test_shipped_files_are_what_the_script_makes(tmp_path):
    script = Path(__file__).resolve().parents[1] / "scripts" / "make_apogee_data.py"
    spec = importlib.util.spec_from_file_location("make_apogee_data", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--shared", str(SHARED), "--out", str(tmp_path)])
    for name in APOGEE_FILES:
        with (
            np.load(tmp_path / name, allow_pickle=False) as new,
            np.load(APOGEE_DATA_DIR / name, allow_pickle=False) as shipped,
        ):
            assert sorted(new.files) == sorted(shipped.files)
            for key in new.files:
                np.testing.assert_array_equal(new[key], shipped[key])


def test_shipped_label_table(emulator):
    table = emulator["labels"]
    assert table.shape == (100_000, 4) and table.dtype == np.float32
    assert tuple(emulator["label_names"]) == APOGEE_LABEL_NAMES
    lo, hi = emulator["x_min"][:4], emulator["x_max"][:4]
    assert np.all((table >= lo) & (table <= hi))
    assert len(np.unique(table, axis=0)) == len(table)
    assert (APOGEE_DATA_DIR / "README.md").is_file()


def test_data_dir_override_and_missing_files(tmp_path, monkeypatch):
    for name in APOGEE_FILES:
        shutil.copy(APOGEE_DATA_DIR / name, tmp_path / name)
    obs_default, _ = apogee_like(4, seed=5)
    obs_dir, _ = apogee_like(4, seed=5, data_dir=tmp_path)
    obs_str, _ = apogee_like(4, seed=5, data_dir=str(tmp_path))
    np.testing.assert_array_equal(obs_dir["flux"], obs_default["flux"])
    np.testing.assert_array_equal(obs_str["flux"], obs_default["flux"])

    (tmp_path / "dr17_giant_labels.npz").unlink()
    with pytest.raises(FileNotFoundError) as err:
        apogee_like(4, seed=5, data_dir=tmp_path)
    message = str(err.value)
    assert "'dr17_giant_labels.npz' is missing" in message
    assert str(tmp_path / "dr17_giant_labels.npz") in message
    assert "data_dir" in message and "POLLUX_DATA_DIR" in message

    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("POLLUX_DATA_DIR", str(empty))
    with pytest.raises(FileNotFoundError, match="environment variable POLLUX_DATA_DIR"):
        apogee_like(4, seed=5)
    # data_dir wins over the environment variable
    obs_env, _ = apogee_like(4, seed=5, data_dir=APOGEE_DATA_DIR)
    np.testing.assert_array_equal(obs_env["flux"], obs_default["flux"])


# ----------------------------------------------------------------------------------
# The Cramér–Rao bound: the emulator's Jacobian and the noise recipe
# ----------------------------------------------------------------------------------
def _forward64(emulator, labels):
    """The emulator in float64, written out (the slow, obvious reference)."""
    x = (labels - emulator["x_min"]) / (emulator["x_max"] - emulator["x_min"]) - 0.5
    u = np.einsum("phk,nk->nph", emulator["w_array_0"], x) + emulator["b_array_0"]
    hidden = 1 / (1 + np.exp(-u))
    return (
        np.einsum("nph,ph->np", hidden, emulator["w_array_1"]) + emulator["b_array_1"]
    )


def test_bound_jacobian_against_central_differences(sample, emulator):
    _, truth = sample
    labels = np.column_stack([truth["label"], truth["vmacro"]])[:3]
    jac = _emulator_jacobian(emulator, labels)
    step = 1e-4 * (emulator["x_max"] - emulator["x_min"])
    for k in range(5):
        dx = np.zeros(5)
        dx[k] = step[k]
        fd = (_forward64(emulator, labels + dx) - _forward64(emulator, labels - dx)) / (
            2 * step[k]
        )
        # central differences err by O(step²) times the third derivative: far
        # below 1e-6 of the scale here
        scale = np.abs(fd).max()
        np.testing.assert_allclose(jac[:, :, k], fd, atol=1e-6 * scale)


def _fisher(jac, var):
    good = np.isfinite(var)  # bad pixels carry no information
    J = jac[good]
    return J.T @ np.diag(1 / var[good]) @ J


def test_bound_is_the_inverse_fisher_matrix_of_the_noise_recipe(sample, emulator):
    obs, truth = sample
    rows = slice(0, 4)
    part = {key: truth[key][rows] for key in ("label", "vmacro")}
    part.update({k: truth[k] for k in ("unreported_pixels", "unreported_sigma")})
    bound = apogee_like_bound(part, obs["flux_err"][rows])
    labels = np.column_stack([part["label"], part["vmacro"]])
    jac = _emulator_jacobian(emulator, labels)
    for i in range(4):
        var = obs["flux_err"][i] ** 2
        var[truth["unreported_pixels"]] += truth["unreported_sigma"] ** 2
        fisher = _fisher(jac[i], var)  # dense, v_macro included
        np.testing.assert_allclose(
            bound[i], np.sqrt(np.diag(np.linalg.inv(fisher))[:4]), rtol=1e-8
        )
        # v_macro marginalised: never below the bound with v_macro known
        known = np.sqrt(np.diag(np.linalg.inv(fisher[:4, :4])))
        assert np.all(bound[i] >= known * (1 - 1e-12))
    # the bound falls with SNR: higher-SNR stars are bounded tighter
    all_bound = apogee_like_bound(truth, obs["flux_err"])
    snr = truth["snr"]
    assert np.all(
        np.median(all_bound[snr > 150], axis=0) < np.median(all_bound[snr < 60], axis=0)
    )
    with pytest.raises(ValueError, match=r"apogee_like_bound\(flux_err=...\)"):
        apogee_like_bound(truth, obs["flux_err"][:3])


# observed=True: un-normalised, observed-frame spectra -------------------------------


@pytest.fixture(scope="module")
def observed(sample):
    """The first 60 stars of ``sample``'s seed, both ways."""
    return apogee_like(60, seed=SEED), apogee_like(60, seed=SEED, observed=True)


def test_observed_keeps_the_stars_and_their_snr(observed):
    (rest_obs, rest), (obs, truth) = observed
    for key in ("label", "snr", "vmacro", "table_index", "unreported_pixels"):
        np.testing.assert_array_equal(truth[key], rest[key])
    np.testing.assert_array_equal(obs["label"], rest_obs["label"])
    np.testing.assert_array_equal(truth["flux"], rest["flux"])  # normalised, at rest
    # the reported errors are the rest-frame draws scaled by the continuum
    both = np.isfinite(obs["flux_err"]) & np.isfinite(rest_obs["flux_err"])
    ratio = obs["flux_err"][both] / truth["continuum"][both]
    np.testing.assert_allclose(ratio, rest_obs["flux_err"][both], rtol=1e-12)
    # the random bad pixels stay bad; more are missing only at the detectors' ends
    assert np.all(truth["bad_pixels"] >= rest["bad_pixels"])
    extra = truth["bad_pixels"] & ~rest["bad_pixels"]
    assert np.array_equal(extra, np.isnan(truth["flux_observed"]) & ~rest["bad_pixels"])


def test_observed_noise_is_the_reported_error_off_the_unreported_pixels(observed):
    _, (obs, truth) = observed
    z = (obs["flux"] - truth["flux_observed"]) / obs["flux_err"]
    z = np.delete(z, truth["unreported_pixels"], axis=1)
    z = z[np.isfinite(z)]
    # ~400,000 draws: the std of a unit Normal's sample std is ~1e-3
    assert abs(np.std(z) - 1.0) < 0.01 and abs(np.mean(z)) < 0.01


def test_observed_velocities_and_continua(observed):
    _, (_, truth) = observed
    rv, cont = truth["rv"], truth["continuum"]
    assert rv.shape == (60,) and np.all(np.abs(rv) <= 150.0) and np.std(rv) > 20.0
    assert cont.shape == (60, N_PIX) and np.all(cont > 0)
    # smooth within each detector: pixel-to-pixel changes far below the noise
    chips = [slice(0, 2920), slice(2920, 5320), slice(5320, N_PIX)]
    for chip in chips:
        step = np.abs(np.diff(np.log(cont[:, chip]), axis=1))
        assert step.max() < 1e-3
    # stars differ in level (50 to 5,000) and shape
    assert np.ptp(np.log(np.median(cont, axis=1))) > 2.0
    # a shift of δ pixels (24 at 100 km/s) leaves |δ| of each detector's pixels
    # uncovered, give or take the cubic stencil's reach (1 or 2 pixels per end)
    delta = np.log10(1 + rv / 299_792.458) / 6e-6
    lost = np.isnan(truth["flux_observed"]).sum(axis=1)
    assert np.all(np.abs(lost - 3 * np.abs(delta)) <= 3 * 3)


def test_doppler_shift_against_a_smooth_function():
    """Cubic convolution reproduces a shifted smooth spectrum to O(h⁴)."""
    from pollux.datasets import C_KMS, doppler_shift

    log_step, n = 6e-6, 400
    log_lam = 4.2 + log_step * np.arange(n)
    period = 40 * log_step  # lines some 40 pixels apart, well sampled

    def spectrum(x):
        return 1.0 - 0.3 * np.cos(2 * np.pi * x / period) ** 2

    v = np.array([-123.4, 0.0, 17.0, 88.8])
    shifted = doppler_shift(
        np.broadcast_to(spectrum(log_lam), (4, n)), v, log_step, [slice(0, n)]
    )
    expected = spectrum(log_lam[None] - np.log10(1 + v / C_KMS)[:, None])
    ok = np.isfinite(shifted)
    assert ok.sum(axis=1).min() > n - 2 * 24
    # 40 pixels a period: cubic convolution errs by ~(2π/40)³·0.3/8 ≈ 1.5e-4
    assert np.abs(shifted[ok] - expected[ok]).max() < 5e-4
    np.testing.assert_array_equal(shifted[1], spectrum(log_lam))  # v = 0: exact


def test_observed_must_be_a_bool():
    with pytest.raises(TypeError, match=r"apogee_like\(observed=\.\.\.\)"):
        apogee_like(5, seed=0, observed="yes")
