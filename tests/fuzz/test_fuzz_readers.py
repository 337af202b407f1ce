"""Fuzzing of the readers: damaged spectrum files and label tables are read
sanely or refused.

Targets (each a hypothesis test):

- APOGEE FITS (apStar, aspcapStar, apVisit), built small and valid, then
  damaged: header cards rewritten as raw 80-byte cards (text, garbage, huge
  integers, NaN, booleans, no value; structural cards too) or blanked out;
  HDU data replaced by random arrays (any shape and dtype, empty, special
  values) or removed, tables put in their place; raw bytes flipped, inserted
  or cut, gzipped or not;
- npz, HDF5 and zarr stores of random arrays under the readers' aliases
  (flux, err, ivar, wavelength, ids, snr, vhelio) of random shapes, dtypes
  (float, int, complex, bool, text, bytes) and special values (NaN, inf, 0,
  -1, 1e300), arrays removed, repeated under a second alias or replaced by a
  group;
- CSV label tables with random header rows (repeats, empty names, case
  variants) and cells (numbers, text, empty, -9999, 1e300, inf, stray quotes
  and commas), rows one field short or long.

Invariant (`fuzzing.refused_or_result`, and each read under `SLOW_S` seconds):
a `ValueError`/`TypeError` on one line naming the file, the file left
unchanged, or a result that holds nothing unflagged: `Spectra` whose unmasked
pixels have finite flux and finite positive errors (masked ones NaN/inf, rows
with every pixel masked flagged), tables of finite-or-NaN labels within
`MAX_VALUE`, non-negative errors and non-empty identifiers.

CI runs each target with a fixed seed (``fuzz_settings``), the whole module in
about 20 s on two cores; ``benchmarks/fuzz.py`` runs them long and random.
"""

from __future__ import annotations

import gzip
import io
import tempfile
import time
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr
from astropy.io import fits
from fuzzing import fuzz_settings, refused_or_result
from hypothesis import given
from hypothesis import strategies as st

from pollux.readers import LabelTable, Spectra, read_spectra, read_table
from pollux.readers._common import MAX_VALUE

D = 300  # pixels of the synthetic apStar / aspcapStar files
GRID = {"CRVAL1": 4.181, "CDELT1": 6e-6, "CRPIX1": 1, "CTYPE1": "LOG-LINEAR"}


# --------------------------------------------------------------------------- files


def _hdul(kind: str, data: dict[int, object] | None = None) -> fits.HDUList:
    """A small valid apStar (2 visits), aspcapStar or apVisit file; ``data``
    replaces HDUs (None removes one, an HDU object is used as it is)."""
    rng = np.random.default_rng(0)
    primary = fits.PrimaryHDU()
    if kind == "apvisit":
        primary.header.update({"VRAD": 10.0, "OBJID": "2M2", "SNR": 30.0})
        wave = np.geomspace(15200.0, 16900.0, 300).reshape(3, 100)[:, ::-1]
        base = {
            1: 1 + 0.1 * rng.random((3, 100)),
            2: np.full((3, 100), 0.01),
            3: np.zeros((3, 100), dtype=np.int16),
            4: wave,
        }
    elif kind == "apstar":
        primary.header.update(GRID)
        primary.header.update({"OBJID": "2M1", "NVISITS": 2, "SNR": 50.0})
        primary.header.update({"SNRVIS1": 40.0, "SNRVIS2": 41.0, "VHELIO": 3.0})
        primary.header.update({"VHELIO1": 1.0, "VHELIO2": 2.0})
        bits = np.zeros((4, D), dtype=np.int32)
        bits[:, ::50] = 1  # BADPIX
        base = {1: 1 + 0.1 * rng.random((4, D)), 2: np.full((4, D), 0.01), 3: bits}
    else:
        primary.header.update(GRID)
        primary.header.update({"OBJID": "2M3"})
        base = {1: 1 - 0.1 * rng.random(D), 2: np.full(D, 0.01)}
    base.update(data or {})
    hdus = [primary]
    for i in sorted(base):
        if base[i] is None:
            continue
        hdus.append(
            base[i]
            if isinstance(base[i], fits.hdu.base.ExtensionHDU)
            else fits.ImageHDU(base[i])
        )
    return fits.HDUList(hdus)


def _raw(hdul: fits.HDUList) -> bytes:
    buf = io.BytesIO()
    hdul.writeto(buf)
    return buf.getvalue()


KINDS = ("apstar", "aspcap", "apvisit")
ORIGINAL = {kind: _raw(_hdul(kind)) for kind in KINDS}


def _check_spectra(s: Spectra) -> None:
    """Nothing unflagged: unmasked pixels finite with finite positive errors,
    masked ones NaN / inf, rows with every pixel masked flagged."""
    assert isinstance(s, Spectra) and len(s) > 0
    mask = s.mask
    assert np.all(np.isfinite(s.flux[~mask])), "NaN/inf flux that is not masked"
    good = s.err[~mask]
    assert np.all(np.isfinite(good) & (good > 0)), "a bad error that is not masked"
    assert np.all(np.isnan(s.flux[mask])) and np.all(np.isinf(s.err[mask]))
    assert np.all(np.isfinite(s.wavelength)) and np.all(np.diff(s.wavelength) > 0)
    empty = mask.all(axis=1)
    assert np.all(s.meta["flag"][empty] != ""), "an empty row without a flag"
    assert len(s.ids) == len(s) and all(isinstance(i, str) for i in s.ids)


#: Seconds one read may take: a damaged header once made astropy look for
#: millions of NAXISn cards (a hang in all but name).
SLOW_S = 10.0


def _timed(call, path: Path):
    """`refused_or_result`, and the call not slow."""
    t0 = time.perf_counter()
    out = refused_or_result(call, path)
    took = time.perf_counter() - t0
    assert took < SLOW_S, f"{path.name}: {took:.1f} s for a read of a tiny file"
    return out


def _read_checked(path: Path, **kw):
    def call():
        s = read_spectra(path, **kw)
        _check_spectra(s)
        return s

    return _timed(call, path)


def _in_tmp(name: str, raw: bytes, **kw):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(raw)
        return _read_checked(path, **kw)


read_options = st.fixed_dictionaries(
    {
        "visits": st.sampled_from(["combined", "all"]),
        "normalize": st.sampled_from([False, "auto"]),
    }
)


def test_the_undamaged_files_are_read(tmp_path):
    for kind in KINDS:
        path = tmp_path / f"{kind}.fits"
        path.write_bytes(ORIGINAL[kind])
        for visits in ("combined", "all"):
            _check_spectra(read_spectra(path, visits=visits))
    s = read_spectra(tmp_path / "apstar.fits", visits="all", normalize=False)
    assert len(s) == 2 and s.n_bad.tolist() == [6, 6]


# --------------------------------------------------------------------------- FITS cards

CARD_KEYS = (
    "CRVAL1",
    "CDELT1",
    "CRPIX1",
    "CTYPE1",
    "NVISITS",
    "SNR",
    "SNRVIS1",
    "SNRVIS2",
    "VHELIO",
    "VHELIO1",
    "OBJID",
    "VRAD",
    "BITPIX",
    "NAXIS",
    "NAXIS1",
    "NAXIS2",
    "PCOUNT",
    "GCOUNT",
    "XTENSION",
    "EXTEND",
    "END",
)

card_values = st.one_of(
    st.sampled_from(
        [
            "",
            "'4.179'",
            "'abc'",
            "'   '",
            "''",
            "'unterminated",
            "T",
            "F",
            "NaN",
            "inf",
            "-inf",
            "1e999",
            "1e300",
            "-1e300",
            "1e-300",
            "4.179x",
            "1.2.3",
            "(1.0, 2.0)",
            "0",
            "-1",
            "-3",
            "1",
            "2",
            "3",
            "4.181",
            "6E-06",
            "-6E-06",
            "15100.0",
            "99999999999999999999999999999",
            "'LINEAR'",
            "'LOG-LINEAR'",
            "'IMAGE   '",
        ]
    ),
    st.integers(-(10**20), 10**20).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30),
)


def _card_positions(raw: bytes, key: str) -> list[int]:
    tag = key.encode().ljust(8)
    return [i for i in range(0, len(raw), 80) if raw[i : i + 8] == tag]


@fuzz_settings(800)
@given(
    kind=st.sampled_from(KINDS),
    edits=st.lists(
        st.tuples(
            st.sampled_from(CARD_KEYS),
            st.integers(0, 4),
            st.one_of(st.none(), card_values),
        ),
        min_size=1,
        max_size=4,
    ),
    options=read_options,
)
def test_damaged_header_cards(kind, edits, options):
    """Cards rewritten as raw text (None: blanked out), in any HDU's header."""
    raw = bytearray(ORIGINAL[kind])
    for key, which, value in edits:
        where = _card_positions(bytes(raw), key)
        if not where:
            continue
        at = where[which % len(where)]
        card = " " * 80 if value is None else f"{key:<8}= {value}"
        raw[at : at + 80] = card[:80].ljust(80).encode("ascii")
    _in_tmp(f"{kind}-cards.fits", bytes(raw), **options)


# --------------------------------------------------------------------------- FITS data

SPECIALS = [np.nan, np.inf, -np.inf, 0.0, -1.0, 1e300, -1e300, 1e-300, 1e30]
IMAGE_DTYPES = ["float64", "float32", "int16", "int32", "int64", "uint8", "uint16"]


@st.composite
def random_arrays(draw, like: np.ndarray):
    """An array of ``like``'s shape (or another, or empty), of some FITS image
    dtype, with special values sprinkled in."""
    shape = draw(
        st.one_of(
            st.just(like.shape),
            st.just(like.shape[::-1]),
            st.just((max(like.shape[0] - 1, 0), *like.shape[1:])),
            st.lists(st.integers(0, 6), min_size=1, max_size=3).map(tuple),
        )
    )
    dtype = draw(st.sampled_from(IMAGE_DTYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    values = rng.uniform(0.5, 1.5, shape) * (like.flat[0] if like.size else 1.0)
    if np.dtype(dtype).kind == "f" and values.size:
        hits = rng.random(shape) < draw(st.sampled_from([0.0, 0.01, 0.5, 1.0]))
        values[hits] = rng.choice(SPECIALS, int(hits.sum()))
    with np.errstate(invalid="ignore", over="ignore"):
        return values.astype(dtype)


@fuzz_settings(400)
@given(
    kind=st.sampled_from(KINDS),
    data=st.data(),
    options=read_options,
)
def test_damaged_hdu_data(kind, data, options):
    """HDU data replaced by random arrays or a table, or HDUs removed."""
    hdul = _hdul(kind)
    arrays = {i: hdul[i].data for i in range(1, len(hdul))}
    changes: dict[int, object] = {}
    for i in data.draw(st.lists(st.sampled_from(sorted(arrays)), max_size=3)):
        action = data.draw(st.sampled_from(["array", "remove", "table", "specials"]))
        if action == "array":
            changes[i] = data.draw(random_arrays(arrays[i]))
        elif action == "remove":
            changes[i] = None
        elif action == "table":
            col = fits.Column(name="x", format="D", array=np.ones(3))
            changes[i] = fits.BinTableHDU.from_columns([col])
        else:
            values = np.array(arrays[i], dtype=np.float64)
            flat = values.reshape(-1)
            at = data.draw(st.lists(st.integers(0, flat.size - 1), max_size=5))
            for j in at:
                flat[j] = data.draw(st.sampled_from(SPECIALS))
            changes[i] = values
    raw = _raw(_hdul(kind, changes))
    _in_tmp(f"{kind}-data.fits", raw, **options)


# --------------------------------------------------------------------------- FITS bytes


@fuzz_settings(800)
@given(
    kind=st.sampled_from(KINDS),
    gz=st.booleans(),
    damage=st.lists(
        st.tuples(
            st.sampled_from(["flip", "insert", "cut"]),
            st.floats(0, 1, exclude_max=True),
            st.integers(1, 255),
        ),
        min_size=1,
        max_size=3,
    ),
    options=read_options,
)
def test_damaged_bytes(kind, gz, damage, options):
    """Bytes flipped, inserted or cut anywhere (of the FITS file or of its
    gzip stream)."""
    raw = bytearray(gzip.compress(ORIGINAL[kind], mtime=0) if gz else ORIGINAL[kind])
    for what, where, byte in damage:
        at = int(where * len(raw))
        if what == "flip":
            raw[at] ^= byte
        elif what == "insert":
            raw[at:at] = bytes([byte]) * (byte % 7 + 1)
        else:
            del raw[at:]
            if not raw:
                raw = bytearray(b"SIMPLE  ")
    name = f"{kind}-bytes.fits" + (".gz" if gz else "")
    _in_tmp(name, bytes(raw), **options)


# --------------------------------------------------------------------------- npz / HDF5

ROLES = {
    "flux": ["flux", "spectra"],
    "err": ["err", "flux_err"],
    "ivar": ["ivar"],
    "wavelength": ["wavelength", "wave"],
    "ids": ["ids"],
    "snr": ["snr"],
    "vhelio": ["vhelio"],
}
ARRAY_DTYPES = [
    "float64",
    "float32",
    "int64",
    "int8",
    "uint16",
    "complex128",
    "bool",
    "U5",
    "S5",
]
#: Special values that mark a pixel missing (kept) and that are refused.
MASKING = [np.nan, np.inf, -np.inf, 0.0]
REFUSED = [-1.0, 1e300, -1e300, 1e-300, 1e31]


def _damaged(draw, arr: np.ndarray, n: int, d: int, rng) -> np.ndarray:
    """``arr`` with one damage: another shape, another dtype, special values."""
    what = draw(st.sampled_from(["shape", "dtype", "masking", "refused"]))
    if what == "shape":
        shape = draw(st.sampled_from([(d,), (n,), (), (n, d, 1), (d + 1,), (0, d)]))
        return np.resize(arr, shape) if arr.size else np.zeros(shape)
    if what == "dtype":
        dtype = np.dtype(draw(st.sampled_from(ARRAY_DTYPES)))
        if arr.dtype.kind == "U" and dtype.kind not in "US":
            arr = np.arange(arr.size).reshape(arr.shape)  # numeric ids
        with np.errstate(invalid="ignore", over="ignore"):
            return (
                arr.astype(str).astype(dtype)
                if dtype.kind in "US"
                else arr.astype(dtype)
            )
    if arr.dtype.kind != "f" or not arr.size:
        return arr
    arr = np.array(arr)
    hits = rng.random(arr.shape) < draw(st.sampled_from([0.1, 0.5, 1.0]))
    arr[hits] = rng.choice(MASKING if what == "masking" else REFUSED, int(hits.sum()))
    return arr


@st.composite
def stores(draw):
    """A valid store of ``n`` spectra of ``d`` pixels (flux, err or ivar,
    maybe wavelength, ids, snr, vhelio under one of their aliases), then a few
    damages: arrays of other shapes, dtypes or with special values, a second
    alias of one kind, an array removed or replaced by a group (None)."""
    n, d = draw(st.integers(1, 3)), draw(st.integers(2, 8))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    base = {
        "flux": 1 + 0.1 * rng.standard_normal((n, d)),
        "err": rng.uniform(0.01, 0.1, (n, d)),
        "ivar": rng.uniform(100.0, 1e4, (n, d)),
        "wavelength": np.geomspace(15200.0, 16900.0, d)[
            :: draw(st.sampled_from([1, -1]))
        ],
        "ids": np.array([f"s{i}" for i in range(n)]),
        "snr": rng.uniform(10, 100, n),
        "vhelio": rng.uniform(-50, 50, n),
    }
    roles = ["flux", draw(st.sampled_from(["err", "ivar"]))]
    roles += [r for r in ("wavelength", "ids", "snr", "vhelio") if draw(st.booleans())]
    out = {draw(st.sampled_from(ROLES[r])): base[r] for r in roles}
    for _ in range(draw(st.integers(0, 2))):
        key = draw(st.sampled_from(sorted(out)))
        what = draw(
            st.sampled_from(["array", "array", "array", "twice", "remove", "group"])
        )
        role = next(r for r, aliases in ROLES.items() if key in aliases)
        if out[key] is None:
            continue  # a group already
        if what == "array":
            out[key] = _damaged(draw, out[key], n, d, rng)
        elif what == "twice" and len(ROLES[role]) > 1:
            other = next(a for a in ROLES[role] if a != key)
            out[other] = out[key]
        elif what == "remove":
            del out[key]
        elif what == "group":
            out[key] = None  # an HDF5/zarr group under the name (npz: left out)
    return {k: None if v is None else np.asarray(v) for k, v in out.items()}


@fuzz_settings(500)
@given(
    arrays=stores(),
    fmt=st.sampled_from(["npz", "h5", "zarr"]),
    keys=st.fixed_dictionaries(
        {},
        optional={
            "flux_key": st.sampled_from(["flux", "spectra", "nope"]),
            "wavelength_key": st.sampled_from(["wave", "lambda"]),
        },
    ),
    target=st.booleans(),
)
def test_random_array_stores(arrays, fmt, keys, target):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"s.{fmt}"
        if fmt == "npz":
            np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
        elif fmt == "h5":
            with h5py.File(path, "w") as f:
                for k, v in arrays.items():
                    if v is None:
                        f.create_group(k)
                    else:
                        f[k] = v.astype(np.bytes_) if v.dtype.kind == "U" else v
        else:
            group = zarr.open_group(str(path), mode="w")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # zarr on text dtypes
                for k, v in arrays.items():
                    if v is None:
                        group.create_group(k)
                    else:
                        group.create_array(k, data=v)
        wavelength = np.geomspace(15000.0, 17000.0, 5) if target else None
        _read_checked(path, wavelength=wavelength, **keys)


# --------------------------------------------------------------------------- tables

CELLS = st.one_of(
    st.sampled_from(
        [
            "",
            "-9999",
            "-9999.99",
            "1e300",
            "-1e300",
            "1e999",
            "inf",
            "-inf",
            "nan",
            "NaN",
            "abc",
            '"',
            '"1,2"',
            "1,2",
            "True",
            "1+2j",
            " ",
            "0",
            "-1",
        ]
    ),
    st.floats(-1e4, 1e4, allow_nan=False).map(repr),
    st.integers(-100, 10**4).map(str),
)
COLUMNS = ["id", "teff", "logg", "e_teff", "e_logg"]


@st.composite
def label_tables(draw):
    """A valid CSV table (identifiers, two labels and their errors), then a few
    damages: header names repeated, emptied or in another case, cells replaced
    by random ones, rows one field short or long; and arguments of read_table
    (distinct columns, some perhaps missing from the table)."""
    header = draw(st.permutations(COLUMNS))
    n = draw(st.integers(1, 5))
    good = {
        "id": [f"s{i}" for i in range(n)],
        "teff": [repr(4000.0 + 100 * i) for i in range(n)],
        "logg": [repr(2.0 + 0.1 * i) for i in range(n)],
        "e_teff": ["50"] * n,
        "e_logg": ["0.1"] * n,
    }
    rows = [[good[c][i] for c in header] for i in range(n)]
    for _ in range(draw(st.integers(0, 3))):
        what = draw(st.sampled_from(["name", "cell", "cell", "cell", "width"]))
        if what == "name":
            at = draw(st.integers(0, len(header) - 1))
            header[at] = draw(
                st.sampled_from(
                    ["", "teff", "TEFF", "Teff", "teff_1", "a b", header[at].upper()]
                )
            )
        elif what == "cell":
            row = rows[draw(st.integers(0, n - 1))]
            if row:
                row[draw(st.integers(0, len(row) - 1))] = draw(CELLS)
        else:
            row = draw(st.integers(0, n - 1))
            rows[row] = rows[row][:-1] if draw(st.booleans()) else [*rows[row], "1"]
    if draw(st.integers(0, 9)) == 0:
        rows = []  # a header without rows
    text = "\n".join(",".join(row) for row in [header, *rows]) + "\n"
    columns = draw(
        st.sampled_from([["teff"], ["logg"], ["teff", "logg"], ["TEFF"], ["feh"]])
    )
    kw: dict = {}
    if draw(st.booleans()):
        kw["err_columns"] = ["e_" + c.lower() for c in columns]
    if draw(st.booleans()):
        kw["id_column"] = draw(st.sampled_from(["id", "ID"]))
    return text, columns, kw


def _check_table(t: LabelTable, n_columns: int) -> None:
    assert isinstance(t, LabelTable) and t.values.shape == (len(t), n_columns)
    v = t.values
    assert np.all(np.isnan(v) | (np.isfinite(v) & (np.abs(v) <= MAX_VALUE)))
    if t.err is not None:
        assert t.err.shape == v.shape
        assert np.all(np.isnan(t.err) | (t.err >= 0))
    assert len(t.ids) == len(t) and all(isinstance(i, str) and i for i in t.ids)


@pytest.mark.filterwarnings("ignore:OverflowError converting")  # astropy on 1e999
@fuzz_settings(800)
@given(table=label_tables())
def test_random_label_tables(table):
    text, columns, kw = table
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "labels.csv"
        path.write_text(text)

        def call():
            t = read_table(path, columns, **kw)
            _check_table(t, len(columns))
            return t

        _timed(call, path)


@pytest.mark.parametrize("text", ["teff,teff\n1,2\n", "teff,logg\n1\n"])
def test_the_table_fuzzer_reaches_the_refusals(tmp_path, text):
    path = tmp_path / "t.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=r"t\.csv"):
        read_table(path, ["teff"])
