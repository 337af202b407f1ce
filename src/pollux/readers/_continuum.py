"""Continuum normalisation of APOGEE-like spectra (the Cannon's recipe)."""

from __future__ import annotations

from functools import cache
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
from numpy.polynomial import chebyshev

from ._resample import GAP_FACTOR
from ._spectra import Spectra

__all__ = [
    "apogee_continuum_pixels",
    "apogee_wavelength",
    "locate_continuum_pixels",
    "normalize_continuum",
]

_DATA = Path(__file__).resolve().parents[1] / "_data" / "apogee"

#: Degree of the Chebyshev polynomial fitted per chip (Ness et al. 2015, the Cannon).
CHEBYSHEV_DEGREE = 2

#: A chip needs at least this many good continuum pixels for a fit.
MIN_CONTINUUM_PIXELS = 20


@cache
def _load(name: str, key: str) -> np.ndarray:
    with np.load(_DATA / name, allow_pickle=False) as data:
        arr = data[key]
    arr.flags.writeable = False
    return arr


def apogee_wavelength() -> np.ndarray:
    """The 7,214-pixel APOGEE (aspcapStar, gaps removed) grid, vacuum Angstrom.

    Examples
    --------
    >>> w = apogee_wavelength()
    >>> w.shape, round(float(w[0]))
    ((7214,), 15168)
    """
    return _load("apogee_wavelength.npz", "wavelength")


def apogee_continuum_pixels() -> np.ndarray:
    """``(7214,)`` bool: the Cannon's 529 continuum pixels on `apogee_wavelength`.

    Examples
    --------
    >>> int(apogee_continuum_pixels().sum())
    529
    """
    return _load("cannon_cont_pixels_apogee.npz", "pixels_cannon")


def _gaps(wavelength: np.ndarray) -> np.ndarray:
    """Indices ``i`` where a gap in coverage lies between pixels ``i - 1`` and ``i``."""
    step = np.diff(np.log(wavelength))
    return np.flatnonzero(step > GAP_FACTOR * np.median(step)) + 1


def _chips(wavelength: np.ndarray, apogee: bool) -> list[slice]:
    """Pixel ranges of ``wavelength`` between gaps (and, if ``apogee``, between
    the APOGEE detectors, split at the middle of the gaps of `apogee_wavelength`)."""
    cuts = set(_gaps(wavelength).tolist())
    if apogee:
        ref = apogee_wavelength()
        gaps = _gaps(ref)
        middle = np.sqrt(ref[gaps - 1] * ref[gaps])
        cuts |= set(np.searchsorted(wavelength, middle).tolist())
    edges = sorted(cuts | {0, wavelength.size})
    return [slice(a, b) for a, b in pairwise(edges)]


def locate_continuum_pixels(wavelength: np.ndarray) -> np.ndarray | None:
    """The Cannon continuum pixels located on ``wavelength`` (None if absent)."""
    cont_wave = apogee_wavelength()[apogee_continuum_pixels()]
    idx = np.clip(np.searchsorted(wavelength, cont_wave), 1, wavelength.size - 1)
    near = np.where(
        np.abs(wavelength[idx] - cont_wave) < np.abs(wavelength[idx - 1] - cont_wave),
        idx,
        idx - 1,
    )
    if np.any(np.abs(wavelength[near] - cont_wave) > 1e-6 * cont_wave):
        return None
    mask = np.zeros(wavelength.size, dtype=bool)
    mask[near] = True
    return mask


def _fit_row(
    x: np.ndarray, flux: np.ndarray, err: np.ndarray, cont: np.ndarray, chips: list
) -> tuple[np.ndarray, str]:
    """The continuum of one spectrum, chip by chip, and a flag ("" when fine)."""
    out = np.full(x.size, np.nan)
    good = cont & np.isfinite(flux)
    for k, chip in enumerate(chips):
        use = good[chip]
        if not np.any(cont[chip]):
            continue
        if use.sum() < MIN_CONTINUUM_PIXELS:
            return out, (
                f"continuum: chip {k + 1} has {int(use.sum())} good continuum pixels "
                f"(< {MIN_CONTINUUM_PIXELS})"
            )
        xc = x[chip]
        lo, hi = xc[0], xc[-1]
        u = (2 * xc - lo - hi) / (hi - lo)
        coef = chebyshev.chebfit(
            u[use], flux[chip][use], CHEBYSHEV_DEGREE, w=1 / err[chip][use]
        )
        out[chip] = chebyshev.chebval(u, coef)
        if np.any(out[chip] <= 0):
            return out, f"continuum: fit not positive on chip {k + 1}"
    return out, ""


def normalize_continuum(spectra: Spectra, *, continuum: Any = None) -> Spectra:
    """Divide each spectrum by a continuum fitted to its continuum pixels.

    For each chip (a run of pixels between gaps in the grid: the three APOGEE
    detectors) a Chebyshev polynomial of degree 2 in wavelength (the Cannon's
    choice, Ness et al. 2015) is fitted by weighted least squares, weights
    ``1/σ²``, to the good continuum pixels; flux and err are divided by it (the
    continuum's own uncertainty is neglected). A chip without continuum pixels is
    left masked. A row whose fit cannot be made — a chip with fewer than 20 good
    continuum pixels, or a continuum that is not positive — comes back with every
    pixel masked and the reason in ``meta["flag"]``.

    Parameters
    ----------
    spectra
        Spectra on a grid that holds the APOGEE continuum pixels (the 7,214-pixel
        `apogee_wavelength` grid or the 8,575-pixel apStar grid), or any grid when
        ``continuum`` is given.
    continuum
        ``(D,)`` bool mask of the continuum pixels on ``spectra.wavelength``;
        default: the Cannon's 529 APOGEE continuum pixels
        (`apogee_continuum_pixels`).

    Returns
    -------
    Spectra
        The normalised spectra (``normalized=True``), with a ``"flag"`` column.

    Examples
    --------
    >>> import numpy as np
    >>> wave = np.linspace(1.0, 2.0, 50)
    >>> s = Spectra(wave, np.full((1, 50), 3.0) + wave, np.full((1, 50), 0.1))
    >>> out = normalize_continuum(s, continuum=np.ones(50, dtype=bool))
    >>> bool(np.allclose(out.flux, 1.0)), out.meta["flag"].tolist()
    (True, [''])
    """
    if not isinstance(spectra, Spectra):
        msg = f"normalize_continuum(spectra=...): expected a Spectra, got {type(spectra).__name__}"
        raise TypeError(msg)
    wave = spectra.wavelength
    if continuum is None:
        cont = locate_continuum_pixels(wave)
        if cont is None:
            msg = (
                "normalize_continuum(spectra=...): the spectra's grid does not hold the "
                "APOGEE continuum pixels; resample them to apogee_wavelength() first, "
                "or pass continuum= (a mask of continuum pixels on their grid)"
            )
            raise ValueError(msg)
    else:
        cont = np.asarray(continuum)
        if cont.dtype != bool or cont.shape != wave.shape:
            msg = (
                f"normalize_continuum(continuum=...): expected a bool mask of shape "
                f"{wave.shape}, got {cont.dtype} {cont.shape}"
            )
            raise ValueError(msg)
    chips = _chips(wave, apogee=continuum is None)
    flags = np.asarray(spectra.meta.get("flag", [""] * len(spectra)), dtype=object)
    flux = np.array(spectra.flux)
    err = np.array(spectra.err)
    for n in range(len(spectra)):
        if np.all(spectra.mask[n]):
            flags[n] = flags[n] or "all pixels masked"
            continue
        fit, why = _fit_row(wave, flux[n], err[n], cont, chips)
        if why:
            flags[n] = flags[n] or why
            fit[:] = np.nan
        flux[n] /= fit
        err[n] /= fit
    meta = {**spectra.meta, "flag": flags.astype(str)}
    return spectra.replace(flux=flux, err=err, meta=meta, normalized=True)
