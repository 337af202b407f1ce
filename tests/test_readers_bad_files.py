"""Bad spectrum files and label tables are refused before use, with one line
naming the file, the item in it, what is wrong and what to do.

One cheap regression test per hole found (issue "nothing silently wrong"):
APOGEE FITS files whose HDUs disagree in shape or with NVISITS, header cards
that cannot be parsed or hold text/absurd values, complex/bool/text arrays,
values beyond `MAX_VALUE`, empty files, and label tables with repeated or
clashing columns.
"""

from __future__ import annotations

import gzip
import warnings
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr
from astropy.io import fits

from pollux.io.checks import FileError
from pollux.readers import read_spectra, read_table
from pollux.readers._common import MAX_VALUE, ReaderError

D = 300  # pixels of the synthetic apStar/aspcapStar files
GRID = {"CRVAL1": 4.179, "CDELT1": 6e-6, "CRPIX1": 1, "CTYPE1": "LOG-LINEAR"}


def _apstar(path: Path, nvis=2, header=None, hdus=None) -> Path:
    """A synthetic apStar file: HDU 1/2/3 flux/error/bitmask of ``nvis + 2``
    rows; ``header`` updates the primary header, ``hdus`` replaces HDU data."""
    primary = fits.PrimaryHDU()
    primary.header.update(GRID)
    primary.header.update({"OBJID": "2M1", "NVISITS": nvis, "SNR": 50.0})
    for k in range(1, nvis + 1):
        primary.header[f"SNRVIS{k}"] = 40.0 + k
        primary.header[f"VHELIO{k}"] = float(k)
    primary.header.update(header or {})
    rows = nvis + 2
    data = {
        1: 1 + 0.1 * np.random.default_rng(0).random((rows, D)),
        2: np.full((rows, D), 0.01),
        3: np.zeros((rows, D), dtype=np.int32),
    }
    data.update(hdus or {})
    hdul = [primary] + [fits.ImageHDU(data[i]) for i in sorted(data)]
    fits.HDUList(hdul).writeto(path)
    return path


def _apvisit(path: Path, header=None, hdus=None) -> Path:
    """A synthetic apVisit file: HDU 1-4 flux/error/bitmask/wavelength (3, 100),
    wavelengths decreasing within each chip as in APOGEE files."""
    primary = fits.PrimaryHDU()
    primary.header.update({"VRAD": 10.0, "OBJID": "2M2"})
    primary.header.update(header or {})
    wave = np.geomspace(15200.0, 16900.0, 300).reshape(3, 100)[:, ::-1]
    data = {
        1: np.ones((3, 100)),
        2: np.full((3, 100), 0.01),
        3: np.zeros((3, 100), dtype=np.int16),
        4: wave,
    }
    data.update(hdus or {})
    hdul = [primary] + [fits.ImageHDU(data[i]) for i in sorted(data)]
    fits.HDUList(hdul).writeto(path)
    return path


def _aspcap(path: Path, header=None, hdus=None) -> Path:
    primary = fits.PrimaryHDU()
    primary.header.update(GRID)
    primary.header.update(header or {})
    data = {1: np.ones(D), 2: np.full(D, 0.01)}
    data.update(hdus or {})
    hdul = [primary] + [_image(data[i]) for i in sorted(data)]
    fits.HDUList(hdul).writeto(path)
    return path


def _image(data) -> fits.hdu.base.ExtensionHDU:
    return data if isinstance(data, fits.hdu.base.ExtensionHDU) else fits.ImageHDU(data)


def _raw_card(path: Path, key: str, card: str) -> Path:
    """Replace header card ``key`` by the raw 80 characters ``card`` (which
    astropy may be unable to parse)."""
    raw = bytearray(path.read_bytes())
    for i in range(0, len(raw), 80):
        if raw[i : i + 8] == key.encode().ljust(8):
            raw[i : i + 80] = card.encode().ljust(80)
            path.write_bytes(bytes(raw))
            return path
    raise KeyError(key)


def _refused(path: Path, match: str, **kw) -> ValueError:
    """``read_spectra(path)`` refused: a ReaderError (a FileError) on one line
    that names the file and matches ``match``."""
    with pytest.raises(ReaderError, match=match) as info:
        read_spectra(path, **kw)
    text = str(info.value)
    assert isinstance(info.value, FileError) and isinstance(info.value, ValueError)
    assert path.name in text and "\n" not in text
    return info.value


# --------------------------------------------------------------------------- FITS


def test_the_synthetic_files_are_read(tmp_path):
    s = read_spectra(_apstar(tmp_path / "s.fits"), visits="all", normalize=False)
    assert len(s) == 2 and s.meta["snr"].tolist() == [41.0, 42.0]
    assert s.meta["vhelio"].tolist() == [1.0, 2.0]
    assert len(read_spectra(_aspcap(tmp_path / "c.fits"))) == 1
    v = read_spectra(_apvisit(tmp_path / "v.fits"), normalize=False)
    assert v.wavelength.size == 300 and np.all(np.diff(v.wavelength) > 0)


FITS_CASES = {
    # 1. HDUs of other shapes than the flux, NVISITS beyond the rows
    "short error HDU": (
        lambda p: _apstar(p, hdus={2: np.full((2, D), 0.01)}),
        r"error \(HDU 2\) of shape \(2, 300\) but flux \(HDU 1\) of shape \(4, 300\)",
    ),
    "short bitmask HDU": (
        lambda p: _apstar(p, hdus={3: np.zeros((3, D), dtype=np.int32)}),
        r"bitmask \(HDU 3\) of shape \(3, 300\)",
    ),
    "NVISITS beyond the rows": (
        lambda p: _apstar(p, header={"NVISITS": 7}),
        r"4 flux rows for NVISITS=7 \(expected 9\).*'NVISITS'",
    ),
    "aspcapStar error HDU": (
        lambda p: _aspcap(p, hdus={2: np.full(100, 0.01)}),
        r"error \(HDU 2\) of shape \(100,\) but flux \(HDU 1\) of shape \(300,\)",
    ),
    "apVisit wavelength HDU": (
        lambda p: _apvisit(p, hdus={4: np.linspace(15200, 16900, 300)}),
        r"wavelength \(HDU 4\) of shape \(300,\)",
    ),
    "apVisit error HDU": (
        lambda p: _apvisit(p, hdus={2: np.full((2, 100), 0.01)}),
        r"error \(HDU 2\) of shape \(2, 100\)",
    ),
    # 2. cards astropy cannot parse
    "unparseable CRVAL1": (
        lambda p: _raw_card(_apstar(p), "CRVAL1", "CRVAL1  = 4.179x"),
        r"header card 'CRVAL1': cannot be parsed",
    ),
    "unparseable SNR": (
        lambda p: _raw_card(_apstar(p), "SNRVIS1", "SNRVIS1 = 1.2.3"),
        r"header card 'SNRVIS1': cannot be parsed",
    ),
    "unparseable OBJID": (
        lambda p: _raw_card(_apstar(p), "OBJID", "OBJID   = 'abc"),
        r"header card 'OBJID': cannot be parsed",
    ),
    "CRVAL1 without a value": (
        lambda p: _raw_card(_apstar(p), "CRVAL1", "CRVAL1  ="),
        r"header card 'CRVAL1': holds None; expected a finite number",
    ),
    "infinite NVISITS": (  # header_value's int(inf) raised OverflowError
        lambda p: _raw_card(_apstar(p), "NVISITS", "NVISITS = 1e999"),
        r"header card 'NVISITS': holds inf; expected a finite integer",
    ),
    # structural cards that made astropy loop or allocate (found by fuzzing)
    "huge NAXIS": (
        lambda p: _raw_card(_apstar(p), "NAXIS", "NAXIS   = 85561694"),
        r"header card 'NAXIS' of HDU 0: holds 85561694; FITS allows 0 to 999",
    ),
    "negative NAXIS1": (
        lambda p: _raw_card(_aspcap(p), "NAXIS1", "NAXIS1  = -358"),
        r"header card 'NAXIS1' of HDU 1: holds -358; expected a count >= 0",
    ),
    "huge NAXIS1": (
        lambda p: _raw_card(_aspcap(p), "NAXIS1", "NAXIS1  = 99999999999"),
        r"HDU 1: declares 799999999992 bytes of data \(axes \[99999999999\]\)",
    ),
    "huge compressed image": (
        lambda p: _raw_card(
            _aspcap(p, hdus={1: fits.CompImageHDU(np.ones(D)), 2: np.full(D, 0.01)}),
            "ZNAXIS1",
            "ZNAXIS1 = 99999999999",
        ),
        r"HDU 1: declares 799999999992 bytes of a compressed image",
    ),
    # 3. text or absurd values
    "text CRVAL1": (
        lambda p: _apstar(p, header={"CRVAL1": "4.179"}),
        r"header card 'CRVAL1': holds '4.179'; expected a finite number",
    ),
    "bool CRVAL1": (
        lambda p: _apstar(p, header={"CRVAL1": True}),
        r"'CRVAL1': holds True",
    ),
    "linear CRVAL1": (
        lambda p: _apstar(p, header={"CRVAL1": 15100.0}),
        r"CRVAL1/CDELT1/CRPIX1 .*beyond 1e\+30.*log10",
    ),
    "zero CDELT1": (
        lambda p: _apstar(p, header={"CDELT1": 0.0}),
        r"'CDELT1': holds 0.0; expected a positive step",
    ),
    "negative CDELT1": (
        lambda p: _apstar(p, header={"CDELT1": -6e-6}),
        r"'CDELT1': holds -6e-06",
    ),
    "tiny CDELT1": (
        lambda p: _apstar(p, header={"CDELT1": 1e-300}),
        r"CRVAL1/CDELT1/CRPIX1.*not strictly increasing",
    ),
    "text CRPIX1": (
        lambda p: _apstar(p, header={"CRPIX1": "x"}),
        r"'CRPIX1': holds 'x'",
    ),
    "linear CTYPE1": (
        lambda p: _apstar(p, header={"CTYPE1": "LINEAR"}),
        r"'CTYPE1': holds 'LINEAR'.*LOG-LINEAR",
    ),
    "negative NVISITS": (
        lambda p: _apstar(p, header={"NVISITS": -3}),
        r"'NVISITS': holds -3; an apStar file combines at least one visit",
    ),
    "text NVISITS": (
        lambda p: _apstar(p, header={"NVISITS": "two"}),
        r"'NVISITS': holds 'two'; expected a finite integer",
    ),
    "fractional NVISITS": (
        lambda p: _apstar(p, header={"NVISITS": 2.5}),
        r"'NVISITS': holds 2.5",
    ),
    "huge NVISITS": (
        lambda p: _apstar(p, header={"NVISITS": 10**15}),
        r"NVISITS=1000000000000000",
    ),
    "text SNR": (
        lambda p: _apstar(p, header={"SNRVIS2": "high"}),
        r"'SNRVIS2': holds 'high'",
    ),
    "huge SNR": (
        lambda p: _apstar(p, header={"VHELIO1": 1e300}),
        r"'VHELIO1': holds 1e\+300, beyond",
    ),
    "bool OBJID": (
        lambda p: _apstar(p, header={"OBJID": True}),
        r"'OBJID': holds True; expected text",
    ),
    "text VRAD": (
        lambda p: _apvisit(p, header={"VRAD": "fast"}),
        r"'VRAD': holds 'fast'",
    ),
    "faster than light VRAD": (
        lambda p: _apvisit(p, header={"VRAD": -4e5}),
        r"'VRAD': holds -400000.0 km/s, beyond",
    ),
    # 5. values beyond any spectrum
    "flux 1e300": (
        lambda p: _apstar(p, hdus={1: np.full((4, D), 1e300)}),
        r"HDU 1 \(flux\): holds 600 value\(s\) beyond ±1e\+30",
    ),
    "error 1e300": (
        lambda p: _aspcap(p, hdus={2: np.full(D, 1e300)}),
        r"HDU 2 \(error\): holds 300 value\(s\) beyond",
    ),
    "negative error": (
        lambda p: _aspcap(p, hdus={2: np.full(D, -0.1)}),
        r"HDU 2 \(error\): has 300 negative errors",
    ),
    "non-integer bitmask": (
        lambda p: _apstar(p, hdus={3: np.full((4, D), 0.5)}),
        r"HDU 3 \(bitmask\): holds values that are not whole numbers",
    ),
    "NaN apVisit wavelength": (
        lambda p: _apvisit(p, hdus={4: np.full((3, 100), np.nan)}),
        r"HDU 4 \(wavelength\): holds 300 NaN",
    ),
    "repeated apVisit wavelengths": (
        lambda p: _apvisit(p, hdus={4: np.full((3, 100), 15500.0)}),
        r"HDU 4 \(wavelength\): is not strictly increasing \(299 repeated",
    ),
    # 8. nothing to read
    "no spectra": (
        lambda p: _apstar(
            p,
            header={"NVISITS": 1},
            hdus={i: np.zeros((0, D)) for i in (1, 2, 3)},
        ),
        r"(holds no spectra|could not be read)",
    ),
    "one pixel": (
        lambda p: _aspcap(p, hdus={1: np.ones(1), 2: np.full(1, 0.01)}),
        r"holds spectra of 1 pixel\(s\) \(HDU 1 of shape \(1,\)\); expected >= 2",
    ),
    "a table as flux": (
        lambda p: (
            fits.HDUList(
                [
                    fits.PrimaryHDU(header=fits.Header(GRID)),
                    fits.BinTableHDU.from_columns(
                        [fits.Column(name="x", format="D", array=np.ones(3))]
                    ),
                ]
            ).writeto(p)
            or p
        ),
        r"HDU 1 \(flux\): is a table, not an image",
    ),
}


@pytest.mark.parametrize("case", list(FITS_CASES))
def test_bad_fits_files_are_refused(tmp_path, case):
    build, match = FITS_CASES[case]
    path = build(tmp_path / "bad.fits")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # astropy on odd cards it writes
        _refused(path, match, visits="all", normalize=False)


def test_nvisits_is_checked_for_the_combined_spectrum_too(tmp_path):
    path = _apstar(tmp_path / "n.fits", header={"NVISITS": 5})
    _refused(path, r"4 flux rows for NVISITS=5")
    one = _apstar(tmp_path / "one.fits", nvis=1)  # DR17: one visit, 3 rows
    assert read_spectra(one, visits="all", normalize=False).meta["visit"].tolist() == [
        1
    ]


def test_a_card_without_value_falls_back(tmp_path):
    path = _raw_card(_apstar(tmp_path / "o.fits"), "OBJID", "OBJID   =")
    assert read_spectra(path, normalize=False).ids == ("o.fits",)


# --------------------------------------------------------------------------- arrays

W = np.geomspace(15200.0, 16900.0, 10)


def _store(path: Path, **arrays) -> Path:
    """An npz/HDF5/zarr file (by suffix) of wavelength/flux/err plus ``arrays``
    (None removes one)."""
    base = {"wavelength": W, "flux": np.ones((2, 10)), "err": np.full((2, 10), 0.1)}
    base.update(arrays)
    base = {k: np.asarray(v) for k, v in base.items() if v is not None}
    if path.suffix == ".npz":
        np.savez(path, **base)
    elif path.suffix == ".h5":
        with h5py.File(path, "w") as f:
            for k, v in base.items():
                f[k] = v.astype(np.bytes_) if v.dtype.kind == "U" else v
    else:
        group = zarr.open_group(str(path), mode="w")
        for k, v in base.items():
            group.create_array(k, data=v)
    return path


ARRAY_CASES = {
    # 4. complex, bool, text
    "complex flux": (
        {"flux": np.ones((2, 10)) + 1j},
        r"array 'flux': complex values",
    ),
    "complex err": (
        {"err": np.full((2, 10), 0.1) + 0j},
        r"array 'err': complex values",
    ),
    "complex wavelength": ({"wavelength": W + 0j}, r"array 'wavelength': complex"),
    "complex ivar": (
        {"err": None, "ivar": np.ones((2, 10)) + 0j},
        r"array 'ivar': complex",
    ),
    "bool flux": (
        {"flux": np.ones((2, 10), dtype=bool)},
        r"array 'flux': holds true/false values",
    ),
    "text wavelength": (
        {"wavelength": np.array(["1"] * 10)},
        r"array 'wavelength': holds non-numeric wavelengths",
    ),
    "bytes ivar": (
        {"err": None, "ivar": np.array([[b"1"] * 10] * 2)},
        r"array 'ivar': holds non-numeric inverse variances",
    ),
    "structured flux": (
        {"flux": np.zeros((2, 10), dtype=[("a", float)])},
        r"array 'flux': holds non-numeric flux",
    ),
    # 5. values beyond any spectrum; wavelengths finite and positive
    "flux 1e300": ({"flux": np.full((2, 10), 1e300)}, r"'flux': holds 20 value"),
    "err 1e300": ({"err": np.full((2, 10), 1e300)}, r"'err': holds 20 value"),
    "tiny err": ({"err": np.full((2, 10), 1e-200)}, r"'err': holds 20 positive"),
    "ivar 1e300": (
        {"err": None, "ivar": np.full((2, 10), 1e300)},
        r"'ivar': holds 20 value",
    ),
    "tiny ivar": (
        {"err": None, "ivar": np.full((2, 10), 1e-300)},
        r"'ivar': holds 20 positive value\(s\) below .*errors beyond",
    ),
    "NaN wavelength": (
        {"wavelength": np.r_[W[:9], np.nan]},
        r"array 'wavelength': holds 1 NaN",
    ),
    "negative wavelength": (
        {"wavelength": -W[::-1]},
        r"array 'wavelength': holds 10 wavelength\(s\) <= 0",
    ),
    "wavelength 1e300": (
        {"wavelength": np.r_[W[:9], 1e300]},
        r"array 'wavelength': holds wavelength\(s\) beyond",
    ),
    "unsorted wavelength": (
        {"wavelength": np.r_[W[5:], W[:5]]},
        r"array 'wavelength': is not strictly increasing or strictly decreasing",
    ),
    # 7. ids, snr, vhelio, shapes
    "complex ids": ({"ids": np.array([1j, 2j])}, r"array 'ids': holds values of"),
    "float ids": ({"ids": np.array([1.5, 2.5])}, r"array 'ids': holds values of"),
    "complex snr": ({"snr": np.array([1j, 2j])}, r"array 'snr': complex"),
    "text vhelio": ({"vhelio": np.array(["a", "b"])}, r"array 'vhelio': not numbers"),
    "infinite snr": ({"snr": np.array([np.inf, 1])}, r"'snr': holds 1 infinite"),
    "3-D flux": (
        {"flux": np.ones((2, 10, 1)), "err": np.ones((2, 10, 1))},
        r"array 'flux': has shape \(2, 10, 1\)",
    ),
    "scalar flux": ({"flux": 1.0, "err": 1.0}, r"array 'flux': has shape \(\)"),
    "0 pixels": (
        {"flux": np.ones((2, 0)), "err": np.ones((2, 0)), "wavelength": None},
        r"holds no pixels",
    ),
    # 8. zero spectra
    "0 spectra": (
        {"flux": np.ones((0, 10)), "err": np.ones((0, 10))},
        r"holds no spectra \('flux' has shape \(0, 10\)\)",
    ),
    "two flux arrays": (
        {"spectra": np.ones((2, 10))},
        r"has several arrays \['flux', 'spectra'\].*flux_key=",
    ),
}


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
@pytest.mark.parametrize("case", list(ARRAY_CASES))
def test_bad_array_files_are_refused(tmp_path, case, suffix):
    arrays, match = ARRAY_CASES[case]
    _refused(_store(tmp_path / f"bad{suffix}", **arrays), match)


def test_complex_zarr_and_undecodable_ids_are_refused(tmp_path):
    _refused(
        _store(tmp_path / "c.zarr", flux=np.ones((2, 10)) + 1j),
        r"array 'flux': complex",
    )
    _refused(
        _store(tmp_path / "ids.h5", ids=np.array([b"\xff", b"a"])),
        r"array 'ids': holds b'\\xff', which is not UTF-8",
    )
    ok = read_spectra(_store(tmp_path / "ok.h5", ids=np.array([b"a", b"b"])))
    assert ok.ids == ("a", "b")


def test_members_under_an_alias_that_are_not_arrays_are_refused(tmp_path):
    """A group or a dangling link named 'snr' was passed over (snr NaN)."""
    for name, make in (
        ("group.h5", lambda f: f.create_group("snr")),
        ("link.h5", lambda f: f.__setitem__("vhelio", h5py.SoftLink("/nothing"))),
    ):
        path = _store(tmp_path / name)
        with h5py.File(path, "a") as f:
            make(f)
        _refused(path, r"key '(snr|vhelio)': is (a group|a link to nothing), not an")
    path = _store(tmp_path / "ok.h5", x=np.array([1.0, 2.0]))
    with h5py.File(path, "a") as f:
        f["snr"] = h5py.SoftLink("/x")  # a link to an array is one
    assert read_spectra(path).meta["snr"].tolist() == [1.0, 2.0]
    group = _store(tmp_path / "g.zarr")
    zarr.open_group(str(group), mode="a").create_group("ids")
    _refused(group, r"key 'ids': is a group, not an array")


def test_empty_identifiers_are_refused(tmp_path):
    _refused(
        _store(tmp_path / "e.h5", ids=np.array([b"a", b" "])),
        r"array 'ids': holds an empty identifier in row 1",
    )


def test_a_damaged_npz_header_is_refused_before_allocation(tmp_path):
    """An npz member whose .npy header declares more than it holds (CRC
    intact) is refused from its header, before numpy allocates the array."""
    path = _store(tmp_path / "big.npz")
    with zipfile.ZipFile(path) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    members["flux.npy"] = members["flux.npy"].replace(
        b"'shape': (2, 10)", b"'shape': (2, 99)"
    )
    with zipfile.ZipFile(path, "w") as zf:
        for name, raw in members.items():
            zf.writestr(name, raw)
    _refused(
        path, r"array 'flux': declares shape \(2, 99\) \(1584 bytes\) but holds 160"
    )


def test_the_snr_card_of_the_combined_spectrum_is_checked(tmp_path):
    path = _raw_card(_apstar(tmp_path / "s.fits"), "SNR", "SNR     = 1.2.3")
    _refused(path, r"header card 'SNR': cannot be parsed", normalize=False)


def test_explicit_keys_naming_one_array_are_refused(tmp_path):
    path = _store(tmp_path / "k.npz")
    with pytest.raises(ValueError, match=r"err_key='flux'.*same array as flux_key"):
        read_spectra(path, flux_key="flux", err_key="flux")


def test_values_at_the_limit_are_read(tmp_path):
    flux = np.full((2, 10), MAX_VALUE)
    s = read_spectra(_store(tmp_path / "edge.npz", flux=flux))
    assert np.all(s.flux == MAX_VALUE)


# --------------------------------------------------------------------------- tables


def _csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_repeated_csv_column_is_refused(tmp_path):
    path = _csv(tmp_path / "dup.csv", "teff,teff,logg\n1,2,3\n4,5,6\n")
    with pytest.raises(
        ReaderError,
        match=r"dup\.csv', column 'teff': appears twice in the header row",
    ):
        read_table(path, ["teff", "logg"])
    ecsv = tmp_path / "dup.ecsv"
    ecsv.write_text(
        "# %ECSV 1.0\n# ---\n# datatype:\n# - {name: a, datatype: float64}\n"
        "# - {name: a, datatype: float64}\n# schema: astropy-2.0\na a\n1 2\n"
    )
    with pytest.raises(ReaderError, match=r"dup\.ecsv', column 'a': appears twice"):
        read_table(ecsv, ["a"])


def test_a_repeated_column_of_a_gzipped_csv_is_refused(tmp_path):
    path = tmp_path / "dup.csv.gz"
    path.write_bytes(gzip.compress(b"teff,teff\n1,2\n"))
    with pytest.raises(ReaderError, match=r"dup\.csv\.gz', column 'teff': appears"):
        read_table(path, ["teff"])
    path.write_bytes(gzip.compress(b"teff,logg\n1,2\n")[:20])
    with pytest.raises(ReaderError, match=r"dup\.csv\.gz': is not valid CSV"):
        read_table(path, ["teff"])


def test_repeated_and_clashing_column_arguments_are_refused(tmp_path):
    path = _csv(tmp_path / "ok.csv", "id,teff,teff_err,logg\na,1,2,3\nb,4,5,6\n")
    with pytest.raises(ValueError, match=r"read_table\(columns=...\).*'teff'.*'TEFF'"):
        read_table(path, ["teff", "TEFF"])
    with pytest.raises(ValueError, match=r"read_table\(err_columns=...\).*twice"):
        read_table(path, ["teff", "logg"], err_columns=["teff_err", "teff_err"])
    with pytest.raises(
        ValueError, match=r"read_table\(err_columns=...\): 'teff' is also a label"
    ):
        read_table(path, ["teff", "logg"], err_columns=["teff_err", "teff"])
    with pytest.raises(
        ValueError, match=r"read_table\(id_column=...\): 'TEFF' is also in columns="
    ):
        read_table(path, ["teff"], id_column="TEFF")
    with pytest.raises(ValueError, match=r"'teff_err' is also in err_columns="):
        read_table(path, ["teff"], err_columns=["teff_err"], id_column="teff_err")


TABLE_CASES = {
    "1e300 label": ("teff\n1e300\n4\n", {}, r"column 'teff': holds 1 value"),
    "1e300 error": (
        "teff,e\n1,1e300\n4,1\n",
        {"err_columns": ["e"]},
        r"column 'e': holds 1 value",
    ),
    "infinite label": ("teff\ninf\n4\n", {}, r"column 'teff': holds 1 infinite"),
    "text": ("teff\n1\nhot\n", {}, r"column 'teff' is not numeric"),
    "short row": ("teff,logg\n1\n2,3\n", {}, r"line 2: has 1 field\(s\)"),
    "long row": ("teff,logg\n1,2,3\n", {}, r"line 2: has 3 field\(s\)"),
    "unclosed quote": ('teff,logg\n1,2\n"3,4\n', {}, r"is not valid CSV"),
    "missing id": (
        "id,teff\n,1\nb,2\n",
        {"id_column": "id"},
        r"column 'id': is empty in 1 row",
    ),
    "ambiguous case": (
        "teff,TEFF\n1,2\n",
        {"columns": ["Teff"]},
        r"columns \['teff', 'TEFF'\], which all match 'Teff'",
    ),
}


@pytest.mark.parametrize("case", list(TABLE_CASES))
def test_bad_label_tables_are_refused(tmp_path, case):
    text, kw, match = TABLE_CASES[case]
    path = _csv(tmp_path / "t.csv", text)
    kw = {"columns": ["teff"], **kw}
    with pytest.raises(ReaderError, match=match) as info:
        read_table(path, **kw)
    assert "t.csv" in str(info.value) and "\n" not in str(info.value)


def test_complex_and_bool_table_columns_are_refused(tmp_path):
    from astropy.table import Table

    path = tmp_path / "t.fits"
    Table({"a": np.array([1 + 2j, 3j]), "b": np.array([True, False])}).write(path)
    with pytest.raises(ReaderError, match=r"column 'a': complex values"):
        read_table(path, ["a"])
    with pytest.raises(ReaderError, match=r"column 'b' is not numeric \(dtype bool\)"):
        read_table(path, ["b"])


def test_infinite_errors_and_sentinels_stay_missing(tmp_path):
    path = _csv(tmp_path / "ok.csv", "teff,e\n-9999,inf\n4500,\n")
    t = read_table(path, ["teff"], err_columns=["e"])
    assert np.isnan(t.values[0, 0]) and t.values[1, 0] == 4500
    assert np.isinf(t.err[0, 0]) and np.isnan(t.err[1, 0])
