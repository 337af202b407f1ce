"""APOGEE FITS spectra: apStar, apVisit and aspcapStar files (SDSS DR17 layouts)."""

from __future__ import annotations

import gzip
import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.utils.exceptions import AstropyUserWarning

from ._common import ReaderError, file_masks, require
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

#: Header keywords of an apVisit's Doppler shift (km/s, observatory frame), in order.
VISIT_VELOCITY_KEYS = ("VRAD", "VREL")

_HDU_NAMES = {1: "flux", 2: "error", 3: "bitmask", 4: "wavelength"}


def _load(path: Path, call: str) -> tuple[list[fits.Header], list[Any]]:
    """The headers and data of HDUs 0..4 (fewer if the file has fewer).

    A gzipped file is decompressed whole first (astropy silently drops the HDUs
    of a truncated gzip stream), and astropy's warnings (truncation, invalid
    headers) are errors.
    """
    try:
        raw = path.read_bytes()
        source = io.BytesIO(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)
        with warnings.catch_warnings():
            warnings.simplefilter("error", AstropyUserWarning)
            hdul = fits.open(source, memmap=False, lazy_load_hdus=False)
        with hdul:
            n = min(len(hdul), 5)
            headers = [hdul[i].header.copy() for i in range(n)]
            data = [
                None if hdul[i].data is None else np.array(hdul[i].data)
                for i in range(n)
            ]
    except Exception as err:
        msg = f"{call}: file '{path}' could not be read as FITS (corrupted or truncated?): {err}"
        raise ValueError(msg) from err
    return headers, data


def _hdu(data: list, index: int, call: str, path: Path) -> np.ndarray:
    require(
        index < len(data) and data[index] is not None,
        call,
        path,
        f"has no HDU {index} ({_HDU_NAMES[index]}); is it an APOGEE apStar, apVisit "
        "or aspcapStar file?",
    )
    return data[index]


def _get(headers: list[fits.Header], key: str, default: Any = None) -> Any:
    """``key`` from the primary header, else from HDU 1's, else ``default``."""
    for header in headers[:2]:
        if key in header:
            return header[key]
    return default


def _log_wavelength(headers: list[fits.Header], n: int) -> np.ndarray:
    crval, cdelt = _get(headers, "CRVAL1"), _get(headers, "CDELT1")
    crpix = _get(headers, "CRPIX1", 1)
    return 10.0 ** (crval + cdelt * (np.arange(n) + 1 - crpix))


def _masked(flux, err, bitmask, call, path) -> tuple[np.ndarray, np.ndarray]:
    flux, err = file_masks(flux, err, call, path)
    if bitmask is not None:
        require(
            bitmask.shape == flux.shape,
            call,
            path,
            "has a bitmask of another shape than its flux",
        )
        flux[(bitmask.astype(np.int64) & BAD_PIXMASK) != 0] = np.nan  # see Spectra
    return flux, err


def _meta(path: Path, n: int, visit, snr, vhelio) -> dict[str, np.ndarray]:
    return {
        "source": np.full(n, str(path)),
        "visit": np.asarray(visit, dtype=np.int64).reshape(n),
        "snr": np.asarray(snr, dtype=np.float64).reshape(n),
        "vhelio": np.asarray(vhelio, dtype=np.float64).reshape(n),
        "flag": np.full(n, ""),
    }


def _ap_star(headers, data, path, call, visits) -> Spectra:
    flux, err, bitmask = (_hdu(data, i, call, path) for i in (1, 2, 3))
    nvis = int(_get(headers, "NVISITS", max(flux.shape[0] - 2, 1)))
    if visits == "combined" or flux.shape[0] == 1 or nvis == 1:
        rows = [0]
        visit = [0] if visits == "combined" else [1]
        snr = [_get(headers, "SNR", np.nan)]
        vhelio = [_get(headers, "VHELIO", np.nan)]
    else:
        require(
            flux.shape[0] >= nvis + 2,
            call,
            path,
            f"has {flux.shape[0]} flux rows for NVISITS={nvis} (expected {nvis + 2})",
        )
        rows = list(range(2, nvis + 2))
        visit = list(range(1, nvis + 1))
        snr = [_get(headers, f"SNRVIS{k}", np.nan) for k in visit]
        vhelio = [_get(headers, f"VHELIO{k}", np.nan) for k in visit]
    f, e = _masked(flux[rows], err[rows], bitmask[rows], call, path)
    objid = str(_get(headers, "OBJID", path.name))
    return Spectra(
        _log_wavelength(headers, flux.shape[1]),
        f,
        e,
        ids=(objid,) * len(rows),
        meta=_meta(path, len(rows), visit, snr, vhelio),
        normalized=False,
        rest_frame=True,
    )


def _aspcap_star(headers, data, path, call) -> Spectra:
    flux, err = (_hdu(data, i, call, path) for i in (1, 2))
    f, e = _masked(flux[None], err[None], None, call, path)
    objid = str(_get(headers, "OBJID", _get(headers, "APOGEE_ID", path.name)))
    return Spectra(
        _log_wavelength(headers, flux.size),
        f,
        e,
        ids=(objid,),
        meta=_meta(
            path, 1, 0, _get(headers, "SNR", np.nan), _get(headers, "VHELIO", np.nan)
        ),
        normalized=True,
        rest_frame=True,
    )


def _ap_visit(headers, data, path, call) -> Spectra:
    flux, err, bitmask, wave = (_hdu(data, i, call, path) for i in (1, 2, 3, 4))
    require(
        wave.shape == flux.shape,
        call,
        path,
        "has a wavelength HDU 4 of another shape than its flux",
    )
    key = next((k for k in VISIT_VELOCITY_KEYS if k in headers[0]), None)
    require(
        key is not None,
        call,
        path,
        f"(apVisit) has no radial velocity ({' or '.join(VISIT_VELOCITY_KEYS)}) in its "
        "header, so it cannot be shifted to the rest frame; pass rest-frame spectra "
        "(an apStar file, or arrays with a rest-frame wavelength)",
    )
    v = float(headers[0][key])
    order = np.argsort(wave.ravel())
    rest = wave.ravel()[order] / (1 + v / C_KMS)
    f, e = _masked(
        flux.ravel()[order][None],
        err.ravel()[order][None],
        bitmask.ravel()[order][None],
        call,
        path,
    )
    return Spectra(
        rest,
        f,
        e,
        ids=(str(_get(headers, "OBJID", path.name)),),
        meta=_meta(
            path, 1, 1, _get(headers, "SNR", np.nan), _get(headers, "VHELIO", np.nan)
        ),
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
    """
    headers, data = _load(path, call)
    flux = _hdu(data, 1, call, path)
    log_linear = (
        _get(headers, "CRVAL1") is not None and _get(headers, "CDELT1") is not None
    )
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
