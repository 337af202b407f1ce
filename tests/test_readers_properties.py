"""Property tests of `pollux.readers`: round trips, resampling, Spectra algebra."""

from __future__ import annotations

import tempfile
from pathlib import Path

import h5py
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pollux.readers import Spectra, read_spectra, resample

SETTINGS = settings(max_examples=25, deadline=None)


@st.composite
def stored_arrays(draw):
    """Random flux/err arrays with NaN/inf/zero entries sprinkled in."""
    n = draw(st.integers(1, 4))
    d = draw(st.integers(3, 20))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    flux = rng.normal(1.0, 0.2, (n, d))
    err = rng.uniform(0.01, 0.1, (n, d))
    specials = [np.nan, np.inf, -np.inf, 0.0]
    for arr, bad in ((flux, specials), (err, [np.nan, np.inf, 0.0])):
        hits = rng.random((n, d)) < draw(st.floats(0, 0.3))
        arr[hits] = rng.choice(bad, hits.sum())
    return np.geomspace(15000, 17000, d), flux, err


@SETTINGS
@given(arrays=stored_arrays(), fmt=st.sampled_from(["npz", "h5"]))
def test_round_trip_applies_the_masking_rule(arrays, fmt):
    wave, flux, err = arrays
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"s.{fmt}"
        if fmt == "npz":
            np.savez(path, wavelength=wave, flux=flux, err=err)
        else:
            with h5py.File(path, "w") as f:
                f["wavelength"], f["flux"], f["err"] = wave, flux, err
        s = read_spectra(path)
    masked = (flux == 0) | ~np.isfinite(flux) | (err == 0) | ~np.isfinite(err)
    assert np.array_equal(s.mask, masked)
    assert np.all(np.isnan(s.flux[masked])) and np.all(np.isinf(s.err[masked]))
    assert np.array_equal(s.flux[~masked], flux[~masked])
    assert np.array_equal(s.err[~masked], err[~masked])
    empty = masked.all(axis=1)
    assert np.array_equal(s.meta["flag"] == "all pixels masked", empty)


@st.composite
def grids(draw, min_size=2, max_size=40):
    """Increasing grids with log steps within a factor 2 of each other (no gaps)."""
    d = draw(st.integers(min_size, max_size))
    steps = draw(st.lists(st.floats(1.0, 2.0), min_size=d - 1, max_size=d - 1))
    start = draw(st.floats(np.log(1e3), np.log(2e4)))
    return np.exp(start + 1e-4 * np.concatenate([[0.0], np.cumsum(steps)]))


@SETTINGS
@given(wave=grids(), seed=st.integers(0, 2**32 - 1))
def test_resample_identity(wave, seed):
    rng = np.random.default_rng(seed)
    flux = rng.normal(size=(2, wave.size))
    flux[rng.random(flux.shape) < 0.2] = np.nan
    s = Spectra(wave, flux, rng.uniform(0.1, 1, flux.shape))
    out = resample(s, wave)
    assert np.array_equal(out.flux, s.flux, equal_nan=True)
    assert np.array_equal(out.err, s.err)


@SETTINGS
@given(
    wave=grids(min_size=3),
    fractions=st.lists(st.floats(0, 1), min_size=1, max_size=30),
    a=st.floats(-10, 10),
    b=st.floats(-10, 10),
)
def test_resample_reproduces_linear_functions_of_log_wavelength(wave, fractions, a, b):
    x = np.log(wave)
    target = np.unique(np.exp(x[0] + (x[-1] - x[0]) * np.r_[0.0, fractions, 1.0]))
    target = np.clip(target, wave[0], wave[-1])
    s = Spectra(wave, a + b * x, np.full(wave.size, 0.1))
    out = resample(s, target)
    assert not out.mask.any()
    assert np.allclose(out.flux[0], a + b * np.log(target), rtol=1e-9, atol=1e-9)
    # sqrt((1 - w)^2 + w^2) * 0.1 lies between 0.1 / sqrt(2) and 0.1
    assert np.all((out.err >= 0.1 / np.sqrt(2) - 1e-12) & (out.err <= 0.1 + 1e-12))


@SETTINGS
@given(
    n=st.integers(1, 6),
    cut=st.integers(0, 6),
    rows=st.lists(st.booleans(), min_size=6, max_size=6),
)
def test_spectra_indexing_and_concatenation_agree(n, cut, rows):
    rng = np.random.default_rng(n)
    flux = rng.normal(size=(n, 5))
    flux[0, 1] = np.nan
    s = Spectra(
        np.arange(1.0, 6.0),
        flux,
        np.ones((n, 5)),
        ids=[f"s{i}" for i in range(n)],
        meta={"snr": np.arange(n, dtype=float), "flag": np.full(n, "")},
    )
    cut = min(cut, n)
    parts = [p for p in (s[:cut], s[cut:]) if len(p)]
    joined = Spectra.concatenate(parts)
    assert joined.ids == s.ids and np.array_equal(joined.flux, s.flux, equal_nan=True)
    assert np.array_equal(joined.meta["snr"], s.meta["snr"])
    mask = np.array(rows[:n])
    picked = s[mask]
    assert (
        picked.ids == tuple(np.array(s.ids)[mask]) if mask.any() else picked.ids == ()
    )
    assert np.array_equal(picked.err, s.err[mask])
    singles = Spectra.concatenate([s[i] for i in range(n)])
    assert np.array_equal(singles.n_bad, s.n_bad)
