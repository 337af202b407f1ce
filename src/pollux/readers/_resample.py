"""Resampling spectra onto another wavelength grid (linear in log wavelength)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._spectra import Spectra, check_wavelength, same_grid

__all__ = ["resample"]

#: A source interval wider than this many times the median log-wavelength step is a
#: gap in coverage (e.g. between detector chips): targets inside it are masked.
GAP_FACTOR = 3.0

#: A target within this fraction of a pixel of a source pixel takes that pixel alone.
SNAP = 1e-6


def resample(spectra: Spectra, wavelength: Any) -> Spectra:
    """Resample ``spectra`` onto ``wavelength`` by linear interpolation in log λ.

    A target pixel at ``x = log λ`` between source pixels ``i`` and ``i + 1`` gets
    ``f = (1 - w) f_i + w f_{i+1}`` with ``w = (x - x_i) / (x_{i+1} - x_i)``, and,
    for independent source errors, ``σ² = (1 - w)² σ_i² + w² σ_{i+1}²``. A target
    within 1e-6 pixel of a source pixel takes that pixel's value and error alone.
    A target is masked when a source pixel with non-zero weight is masked, when it
    lies outside the source grid, or when it falls in a gap of the source grid (a
    step over 3 times the median step, e.g. between chips). When the grids agree to
    1e-6 relative the values are returned unchanged (exactly).

    Parameters
    ----------
    spectra
        The spectra to resample.
    wavelength
        ``(D,)`` target grid, vacuum Angstrom, strictly increasing.

    Returns
    -------
    Spectra
        The spectra on ``wavelength``; ``meta`` and flags are kept.

    Raises
    ------
    ValueError
        If the target grid does not overlap the source grid at all.

    Examples
    --------
    >>> import numpy as np
    >>> s = Spectra(np.array([1.0, 2.0, 4.0]), np.array([[0.0, 1.0, 2.0]]),
    ...             np.full((1, 3), 0.1))
    >>> out = resample(s, np.array([np.sqrt(2.0), 3.0, 5.0]))
    >>> np.round(out.flux, 3).tolist()
    [[0.5, 1.585, nan]]
    """
    if not isinstance(spectra, Spectra):
        msg = f"resample(spectra=...): expected a Spectra, got {type(spectra).__name__}"
        raise TypeError(msg)
    target = check_wavelength(wavelength, "resample(wavelength=...)")
    if same_grid(spectra.wavelength, target):
        return spectra.replace(wavelength=target)
    x_src = np.log(spectra.wavelength)
    x_tgt = np.log(target)
    if x_tgt[-1] < x_src[0] or x_tgt[0] > x_src[-1]:
        msg = (
            f"resample(wavelength=...): the target grid {target[0]:.6g}-{target[-1]:.6g} Å "
            f"does not overlap the spectra's grid "
            f"{spectra.wavelength[0]:.6g}-{spectra.wavelength[-1]:.6g} Å"
        )
        raise ValueError(msg)
    step = np.diff(x_src)
    left = np.clip(np.searchsorted(x_src, x_tgt, side="right") - 1, 0, x_src.size - 2)
    w = (x_tgt - x_src[left]) / step[left]
    outside = (w < -SNAP) | (w > 1 + SNAP)
    w = np.where(np.abs(w) < SNAP, 0.0, np.where(np.abs(w - 1) < SNAP, 1.0, w))
    w = np.clip(w, 0.0, 1.0)
    in_gap = (step[left] > GAP_FACTOR * np.median(step)) & (w > 0) & (w < 1)

    masked = spectra.mask
    f0, f1 = spectra.flux[:, left], spectra.flux[:, left + 1]
    e0, e1 = spectra.err[:, left], spectra.err[:, left + 1]
    bad = (masked[:, left] & (w < 1)) | (masked[:, left + 1] & (w > 0))
    bad |= outside | in_gap
    # Zero weights must not let a masked neighbour's NaN/inf leak in.
    with np.errstate(invalid="ignore"):
        flux = np.where(w > 0, w * f1, 0.0) + np.where(w < 1, (1 - w) * f0, 0.0)
        var = np.where(w > 0, (w * e1) ** 2, 0.0) + np.where(
            w < 1, ((1 - w) * e0) ** 2, 0.0
        )
    flux[bad] = np.nan
    err = np.sqrt(var)
    err[bad] = np.inf
    return spectra.replace(wavelength=target, flux=flux, err=err)
