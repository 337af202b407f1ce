"""APOGEE FITS spectra: apStar, apVisit and aspcapStar files (SDSS DR17 layouts)."""

from __future__ import annotations

import gzip
import io
import itertools
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.utils.exceptions import AstropyUserWarning

from ..io.checks import MAX_ARRAY_BYTES, header_value, real_array
from ._common import (
    MAX_VALUE,
    ReaderError,
    ReaderSource,
    file_masks,
    number_array,
    one_line,
    require,
    wavelength_array,
)
from ._spectra import Spectra

__all__ = ["APOGEE_PIXMASK", "BAD_PIXMASK", "BAD_PIXMASK_BITS", "read_apogee_fits"]

#: APOGEE_PIXMASK bit numbers (SDSS DR17 data model).
APOGEE_PIXMASK = {
    "BADPIX": 0,
    "CRPIX": 1,
    "SATPIX": 2,
    "UNFIXABLE": 3,
    "BADDARK": 4,
    "BADFLAT": 5,
    "BADERR": 6,
    "NOSKY": 7,
    "LITTROW_GHOST": 8,
    "PERSIST_HIGH": 9,
    "PERSIST_MED": 10,
    "PERSIST_LOW": 11,
    "SIG_SKYLINE": 12,
    "SIG_TELLURIC": 13,
    "NOT_ENOUGH_PSF": 14,
}

#: The bits that mark a pixel as bad: the APOGEE pipeline's own "bad" level
#: (``PixelBitMask.badval()`` in apogee_drp, 16639). Persistence, Littrow ghost,
#: sky-line and telluric bits only warn ("may be affected"); those pixels carry
#: inflated errors already and are kept.
BAD_PIXMASK_BITS = (
    "BADPIX",
    "CRPIX",
    "SATPIX",
    "UNFIXABLE",
    "BADDARK",
    "BADFLAT",
    "BADERR",
    "NOSKY",
    "NOT_ENOUGH_PSF",
)
BAD_PIXMASK = sum(1 << APOGEE_PIXMASK[name] for name in BAD_PIXMASK_BITS)

#: Speed of light in km/s.
C_KMS = 299792.458

#: The largest Doppler shift (km/s) an apVisit header may hold: a tenth of the
#: speed of light, far beyond any star (hypervelocity stars reach ~1,000 km/s).
MAX_VELOCITY_KMS = 0.1 * C_KMS

#: Header keywords of an apVisit's Doppler shift (km/s, observatory frame), in order.
VISIT_VELOCITY_KEYS = ("VRAD", "VREL")

#: The header cards of the log-linear wavelength grid of apStar and aspcapStar.
GRID_CARDS = "header cards CRVAL1/CDELT1/CRPIX1"

_HDU_NAMES = {1: "flux", 2: "error", 3: "bitmask", 4: "wavelength"}


_BLOCK = 2880  # bytes of a FITS block; a header is a whole number of them


def _int_card(card: bytes) -> int | None:
    """The integer value of a raw 80-byte card, None if it holds none."""
    if card[8:10] != b"= ":
        return None
    try:
        return int(card[10:].split(b"/")[0].strip())
    except ValueError:
        return None


def _declared_bytes(cards: dict[str, int], z: str = "") -> tuple[int, list[int]]:
    """Bytes of data (``z="Z"``: of the tile-compressed image) the structural
    ``cards`` declare, and the axes."""
    naxis = cards.get(f"{z}NAXIS", 0)
    dims = [cards.get(f"{z}NAXIS{i}", 0) for i in range(1, naxis + 1)]
    if not z and cards.get("GROUPS") and len(dims) > 1 and dims[0] == 0:
        dims = dims[1:]  # random groups
    n = math.prod(dims) if dims else 0
    width = max(abs(cards.get(f"{z}BITPIX", 8)) // 8, 1)
    if z:
        return width * n, dims
    return width * cards.get("GCOUNT", 1) * (cards.get("PCOUNT", 0) + n), dims


_STRUCTURAL = ("NAXIS", "BITPIX", "PCOUNT", "GCOUNT", "ZNAXIS", "ZBITPIX")


def _check_structure(raw: bytes, src: ReaderSource) -> None:
    """Walk the HDUs of the raw FITS bytes as the standard lays them out and
    refuse structural cards astropy would choke on before it parses them: more
    than 999 axes (astropy then looks for millions of NAXISn cards), negative
    axes or counts, data (or a tile-compressed image) declared larger than
    `MAX_ARRAY_BYTES`. Cards that hold no integer, and the rest, are left to
    astropy."""
    pos = 0
    for hdu in itertools.count():
        cards: dict[str, int] = {}
        end = None
        for at in range(pos, len(raw) - 79, 80):
            key = raw[at : at + 8].decode("ascii", "replace").strip()
            if key == "END":
                end = at
                break
            if key == "GROUPS":
                cards.setdefault("GROUPS", int(raw[at + 10 : at + 30].strip() == b"T"))
            axis = key.lstrip("Z").startswith("NAXIS") and key.lstrip("Z")[5:].isdigit()
            value = _int_card(raw[at : at + 80])
            if value is None or (key not in _STRUCTURAL and not axis):
                continue
            item = f"header card {key!r} of HDU {hdu}"
            if key in ("NAXIS", "ZNAXIS") and not 0 <= value <= 999:
                raise src.error(item, f"holds {value}; FITS allows 0 to 999 axes")
            if "BITPIX" not in key and value < 0:
                raise src.error(item, f"holds {value}; expected a count >= 0")
            cards.setdefault(key, value)
        if end is None:
            return  # no END card: astropy refuses the rest
        size, dims = _declared_bytes(cards)
        image, zdims = _declared_bytes(cards, "Z")
        for what, n, axes in (
            ("data", size, dims),
            ("a compressed image", image, zdims),
        ):
            if n > MAX_ARRAY_BYTES:
                raise src.error(
                    f"HDU {hdu}",
                    f"declares {n} bytes of {what} (axes {axes}), more than "
                    f"{MAX_ARRAY_BYTES}",
                    "the file is damaged",
                )
        pos = (end // _BLOCK + 1) * _BLOCK + -(-size // _BLOCK) * _BLOCK
        if pos >= len(raw):
            return


def _load(path: Path, call: str) -> tuple[list[fits.Header], list[Any]]:
    """The headers of HDUs 0..4 and the data of HDUs 1..4 (fewer if the file
    has fewer; the primary HDU's data is not read).

    A gzipped file is decompressed whole first (astropy silently drops the HDUs
    of a truncated gzip stream), and astropy's warnings (truncation, invalid
    headers) are errors.
    """
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except TimeoutError:  # a watchdog's, not damage of the file
        raise
    except Exception as err:
        msg = (
            f"{call}: file '{path}' could not be read as gzipped FITS: {one_line(err)}"
        )
        raise ReaderError(msg) from err
    _check_structure(raw, ReaderSource(call, path))
    try:
        source = io.BytesIO(raw)
        with warnings.catch_warnings():
            warnings.simplefilter("error", AstropyUserWarning)
            hdul = fits.open(source, memmap=False, lazy_load_hdus=False)
            with hdul:
                n = min(len(hdul), 5)
                headers = [hdul[i].header.copy() for i in range(n)]
                data = [None] + [
                    None if hdul[i].data is None else np.array(hdul[i].data)
                    for i in range(1, n)
                ]
    except TimeoutError:  # a watchdog's, not damage of the file
        raise
    except Exception as err:
        msg = (
            f"{call}: file '{path}' could not be read as FITS (corrupted or "
            f"truncated?): {one_line(err)}"
        )
        raise ReaderError(msg) from err
    return headers, data


def _hdu(data: list, index: int, call: str, path: Path) -> np.ndarray:
    """HDU ``index``'s data: an image of real numbers (not a table)."""
    require(
        index < len(data) and data[index] is not None,
        call,
        path,
        f"has no HDU {index} ({_HDU_NAMES[index]}); is it an APOGEE apStar, apVisit "
        "or aspcapStar file?",
    )
    arr = data[index]
    src = ReaderSource(call, path)
    item = f"HDU {index} ({_HDU_NAMES[index]})"
    if arr.dtype.names is not None:
        raise src.error(
            item,
            "is a table, not an image",
            "pass an APOGEE apStar, apVisit or aspcapStar file",
        )
    if arr.dtype.kind not in "biuf":
        raise src.error(
            item,
            f"holds values of dtype {arr.dtype}, not real numbers",
            "the file is damaged",
        )
    return arr


def _same_shape(
    arr: np.ndarray, flux: np.ndarray, index: int, call: str, path: Path
) -> None:
    require(
        arr.shape == flux.shape,
        call,
        path,
        f"has {_HDU_NAMES[index]} (HDU {index}) of shape {arr.shape} but flux "
        f"(HDU 1) of shape {flux.shape}; the file is damaged or not an APOGEE file",
    )


def _has(headers: list[fits.Header], key: str) -> bool:
    return any(key in header for header in headers[:2])


def _card(
    headers: list[fits.Header],
    key: str,
    src: ReaderSource,
    kind: type,
    default: Any = None,
    *,
    limit: float | None = MAX_VALUE,
) -> Any:
    """Card ``key`` of the primary header, else of HDU 1's, else ``default``,
    parsed safely (`pollux.io.checks.header_value`) as ``kind``; a number beyond
    ``±limit`` is refused."""
    for header in headers[:2]:
        value = header_value(header, key, src, kind)
        if value is None:
            continue
        if kind is str:
            raw = header[key]  # parsed by header_value: safe now
            if raw is None or (isinstance(raw, str) and not raw.strip()):
                continue  # a card without a value
            if not isinstance(raw, (str, int)) or isinstance(raw, bool):
                raise src.error(
                    f"header card {key!r}",
                    f"holds {raw!r}; expected text",
                    "fix the FITS header",
                )
            return value
        if limit is not None and abs(value) > limit:
            raise src.error(
                f"header card {key!r}",
                f"holds {value!r}, beyond ±{limit:g}",
                "fix the FITS header",
            )
        return value
    return default


def _log_wavelength(
    headers: list[fits.Header], n: int, src: ReaderSource
) -> np.ndarray:
    """The log-linear grid ``10**(CRVAL1 + CDELT1 * (pixel - CRPIX1))``, checked."""
    ctype = _card(headers, "CTYPE1", src, str)
    if ctype is not None and ctype.upper() != "LOG-LINEAR":
        raise src.error(
            "header card 'CTYPE1'",
            f"holds {ctype!r}; APOGEE apStar and aspcapStar grids are 'LOG-LINEAR'",
            "pass an APOGEE file (or the spectra as arrays with their wavelengths)",
        )
    crval = _card(headers, "CRVAL1", src, float)
    cdelt = _card(headers, "CDELT1", src, float)
    crpix = _card(headers, "CRPIX1", src, float, 1.0)
    if cdelt <= 0:
        raise src.error(
            "header card 'CDELT1'",
            f"holds {cdelt!r}; expected a positive step in log10(wavelength/Å)",
            "fix the FITS header",
        )
    with np.errstate(over="ignore", invalid="ignore"):
        wave = 10.0 ** (crval + cdelt * (np.arange(n) + 1 - crpix))
    grid = f"{GRID_CARDS} ({crval!r}, {cdelt!r}, {crpix!r})"
    if not np.all(np.isfinite(wave)) or np.any(wave > MAX_VALUE):
        raise src.error(
            grid,
            f"give wavelengths beyond {MAX_VALUE:g} Å for {n} pixels",
            "CRVAL1 and CDELT1 must be the log10 of the wavelength (Å) and its step",
        )
    if np.any(wave <= 0) or np.any(np.diff(wave) <= 0):
        raise src.error(
            grid,
            f"give wavelengths that are zero or not strictly increasing over {n} "
            "pixels",
            "CRVAL1 and CDELT1 must be the log10 of the wavelength (Å) and its step",
        )
    return wave


def _masked(flux, err, bitmask, call, path) -> tuple[np.ndarray, np.ndarray]:
    flux, err = file_masks(
        flux, err, call, path, items=("HDU 1 (flux)", "HDU 2 (error)")
    )
    if bitmask is not None:
        bits = real_array(
            bitmask, ReaderSource(call, path), "HDU 3 (bitmask)", integer=True
        )
        flux[(bits & BAD_PIXMASK) != 0] = np.nan  # see Spectra
    return flux, err


def _meta(path: Path, n: int, visit, snr, vhelio) -> dict[str, np.ndarray]:
    return {
        "source": np.full(n, str(path)),
        "visit": np.asarray(visit, dtype=np.int64).reshape(n),
        "snr": np.asarray(snr, dtype=np.float64).reshape(n),
        "vhelio": np.asarray(vhelio, dtype=np.float64).reshape(n),
        "flag": np.full(n, ""),
    }


def _objid(headers, src, *keys: str, default: str) -> str:
    for key in keys:
        value = _card(headers, key, src, str)
        if value:
            return value
    return default


def _rows(flux: np.ndarray, call: str, path: Path) -> None:
    if flux.ndim == 2:
        require(flux.shape[0] > 0, call, path, "holds no spectra (HDU 1 has 0 rows)")
    require(
        flux.shape[-1] >= 2,
        call,
        path,
        f"holds spectra of {flux.shape[-1]} pixel(s) (HDU 1 of shape {flux.shape}); "
        "expected >= 2",
    )


def _spectra(call: str, path: Path, *args: Any, **kw: Any) -> Spectra:
    """`Spectra` of what was read; a refusal of its checks names the file."""
    try:
        return Spectra(*args, **kw)
    except (ValueError, TypeError) as err:
        raise ReaderError(f"{call}: file '{path}': {one_line(err)}") from err


def _ap_star(headers, data, path, call, visits) -> Spectra:
    src = ReaderSource(call, path)
    flux, err, bitmask = (_hdu(data, i, call, path) for i in (1, 2, 3))
    _rows(flux, call, path)
    _same_shape(err, flux, 2, call, path)
    _same_shape(bitmask, flux, 3, call, path)
    n_rows = flux.shape[0]
    nvis = _card(headers, "NVISITS", src, int, max(n_rows - 2, 1))
    if nvis < 1:
        raise src.error(
            "header card 'NVISITS'",
            f"holds {nvis}; an apStar file combines at least one visit",
            "fix the FITS header",
        )
    # Two combined rows then one row per visit; a single visit may also be
    # stored as its combined row alone (older files) or twice (DR17).
    fits_rows = n_rows == nvis + 2 or (nvis == 1 and n_rows in (1, 2))
    require(
        fits_rows,
        call,
        path,
        f"has {n_rows} flux rows for NVISITS={nvis} (expected {nvis + 2}"
        + (", 1 or 2" if nvis == 1 else "")
        + "); the file is damaged or its header card 'NVISITS' is wrong",
    )
    if visits == "combined" or nvis == 1:
        rows = [0]
        visit = [0] if visits == "combined" else [1]
        one_snr, one_vhelio = _snr_vhelio(headers, src)
        snr, vhelio = [one_snr], [one_vhelio]
    else:
        rows = list(range(2, nvis + 2))
        visit = list(range(1, nvis + 1))
        snr = [_card(headers, f"SNRVIS{k}", src, float, np.nan) for k in visit]
        vhelio = [_card(headers, f"VHELIO{k}", src, float, np.nan) for k in visit]
    wave = _log_wavelength(headers, flux.shape[1], src)
    f, e = _masked(flux[rows], err[rows], bitmask[rows], call, path)
    objid = _objid(headers, src, "OBJID", default=path.name)
    return _spectra(
        call,
        path,
        wave,
        f,
        e,
        ids=(objid,) * len(rows),
        meta=_meta(path, len(rows), visit, snr, vhelio),
        normalized=False,
        rest_frame=True,
    )


def _snr_vhelio(headers, src: ReaderSource) -> tuple[float, float]:
    """The ``SNR`` and ``VHELIO`` cards (NaN where absent)."""
    return (
        _card(headers, "SNR", src, float, np.nan),
        _card(headers, "VHELIO", src, float, np.nan),
    )


def _aspcap_star(headers, data, path, call) -> Spectra:
    src = ReaderSource(call, path)
    flux, err = (_hdu(data, i, call, path) for i in (1, 2))
    _rows(flux, call, path)
    _same_shape(err, flux, 2, call, path)
    wave = _log_wavelength(headers, flux.size, src)
    f, e = _masked(flux[None], err[None], None, call, path)
    objid = _objid(headers, src, "OBJID", "APOGEE_ID", default=path.name)
    snr, vhelio = _snr_vhelio(headers, src)
    return _spectra(
        call,
        path,
        wave,
        f,
        e,
        ids=(objid,),
        meta=_meta(path, 1, 0, snr, vhelio),
        normalized=True,
        rest_frame=True,
    )


def _ap_visit(headers, data, path, call) -> Spectra:
    src = ReaderSource(call, path)
    flux, err, bitmask, wave = (_hdu(data, i, call, path) for i in (1, 2, 3, 4))
    _rows(flux, call, path)
    for i, arr in ((2, err), (3, bitmask), (4, wave)):
        _same_shape(arr, flux, i, call, path)
    key = next((k for k in VISIT_VELOCITY_KEYS if k in headers[0]), None)
    require(
        key is not None,
        call,
        path,
        f"(apVisit) has no radial velocity ({' or '.join(VISIT_VELOCITY_KEYS)}) in its "
        "header, so it cannot be shifted to the rest frame; pass rest-frame spectra "
        "(an apStar file, or arrays with a rest-frame wavelength)",
    )
    v = header_value(headers[0], key, src, float)
    if abs(v) >= MAX_VELOCITY_KMS:
        raise src.error(
            f"header card {key!r}",
            f"holds {v!r} km/s, beyond ±{MAX_VELOCITY_KMS:g} km/s (a tenth of the "
            "speed of light)",
            "fix the FITS header",
        )
    item = "HDU 4 (wavelength)"
    obs = number_array(wave, src, item, finite=True).ravel()
    require(
        np.all(obs > 0),
        call,
        path,
        f"has {int(np.sum(obs <= 0))} wavelength(s) <= 0 in its {item}",
    )
    order = np.argsort(obs, kind="stable")
    rest = wavelength_array(obs[order] / (1 + v / C_KMS), src, item)
    f, e = _masked(
        flux.ravel()[order][None],
        err.ravel()[order][None],
        bitmask.ravel()[order][None],
        call,
        path,
    )
    snr, vhelio = _snr_vhelio(headers, src)
    return _spectra(
        call,
        path,
        rest,
        f,
        e,
        ids=(_objid(headers, src, "OBJID", default=path.name),),
        meta=_meta(path, 1, 1, snr, vhelio),
        normalized=False,
        rest_frame=True,
    )


def read_apogee_fits(path: Path, *, visits: str, call: str) -> Spectra:
    """Read an apStar, apVisit or aspcapStar file (told apart by their layout).

    apStar: HDU 1/2/3 flux/error/bitmask ``(nvisits + 2, 8575)`` (or one row),
    log-linear wavelengths from CRVAL1/CDELT1, rest frame. apVisit: HDU 1/2/3/4
    flux/error/bitmask/wavelength ``(3, 4096)``, observatory frame: shifted to the
    rest frame with the header's ``VRAD`` (the Doppler shift the pipeline measured
    on these very wavelengths; ``VHELIO`` also holds the barycentric correction,
    which apVisit wavelengths do not include), ``λ_rest = λ_obs / (1 + v/c)``.
    aspcapStar: HDU 1/2 normalised flux/error ``(8575,)``.

    Every HDU is checked against the flux HDU's shape (and an apStar's rows
    against its ``NVISITS``) before use, and every header card is read through
    `pollux.io.checks.header_value`: a damaged file is a `ReaderError` naming
    the HDU or card.
    """
    headers, data = _load(path, call)
    flux = _hdu(data, 1, call, path)
    log_linear = _has(headers, "CRVAL1") and _has(headers, "CDELT1")
    if log_linear and flux.ndim == 2:
        return _ap_star(headers, data, path, call, visits)
    if log_linear and flux.ndim == 1:
        return _aspcap_star(headers, data, path, call)
    if flux.ndim == 2 and len(data) > 4 and data[4] is not None:
        return _ap_visit(headers, data, path, call)
    msg = (
        f"{call}: file '{path}' is a FITS file of unknown layout (HDU 1 of shape "
        f"{flux.shape}, no CRVAL1/CDELT1 wavelength keywords and no wavelength HDU 4); "
        "expected an APOGEE apStar, apVisit or aspcapStar file"
    )
    raise ReaderError(msg)
