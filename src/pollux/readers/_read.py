"""`read_spectra`: users' spectrum files into one `Spectra` on the model's grid."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ._arrays import read_array_spectra
from ._common import as_path, detect_format
from ._continuum import apogee_wavelength, locate_continuum_pixels, normalize_continuum
from ._fits import read_apogee_fits
from ._resample import resample
from ._spectra import Spectra, check_wavelength, same_grid

__all__ = ["read_spectra"]

_CALL = "read_spectra(paths=...)"


def _paths(paths: Any) -> list[Path]:
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    try:
        items = list(paths)
    except TypeError:
        msg = f"{_CALL}: expected a path or a list of paths, got {type(paths).__name__}"
        raise TypeError(msg) from None
    if not items:
        msg = f"{_CALL}: no paths given"
        raise ValueError(msg)
    return [as_path(p, _CALL) for p in items]


def _read_one(path: Path, target, visits, flux_key, err_key, wavelength_key) -> Spectra:
    fmt = detect_format(path, _CALL)
    if fmt == "fits":
        return read_apogee_fits(path, visits=visits, call=_CALL)
    return read_array_spectra(
        path,
        fmt,
        target=target,
        flux_key=flux_key,
        err_key=err_key,
        wavelength_key=wavelength_key,
        call=_CALL,
    )


def _check_overlap(spectra: Spectra, target: np.ndarray, path: Path, what: str) -> None:
    wave = spectra.wavelength
    if target[-1] < wave[0] or target[0] > wave[-1]:
        msg = (
            f"{what}: file '{path}' covers {wave[0]:.6g}-{wave[-1]:.6g} Å, which "
            f"does not overlap the target grid {target[0]:.6g}-{target[-1]:.6g} Å"
        )
        raise ValueError(msg)


def _normalize(spectra: Spectra, path: Path) -> Spectra:
    """Continuum-normalise, first resampling to the APOGEE grid if needed."""
    if locate_continuum_pixels(spectra.wavelength) is None:
        apogee = apogee_wavelength()
        _check_overlap(spectra, apogee, path, "read_spectra(normalize=...)")
        spectra = resample(spectra, apogee)
    return normalize_continuum(spectra)


def _flag_empty(spectra: Spectra) -> Spectra:
    flags = np.asarray(spectra.meta["flag"], dtype=object)
    empty = np.all(spectra.mask, axis=1) & (flags == "")
    flags[empty] = "all pixels masked"
    return spectra.replace(meta={**spectra.meta, "flag": flags.astype(str)})


def read_spectra(
    paths: Any,
    *,
    wavelength: Any = None,
    normalize: bool | str = "auto",
    visits: str = "combined",
    flux_key: str | None = None,
    err_key: str | None = None,
    wavelength_key: str | None = None,
) -> Spectra:
    """Read spectrum files into one `Spectra`, on one wavelength grid.

    Formats, told apart by the name (else the content): APOGEE FITS — apStar,
    apVisit, aspcapStar (see `read_apogee_fits` for the layouts; apVisit spectra
    are shifted to the rest frame with their header's ``VRAD``); and arrays in
    npz, HDF5 (``.h5``/``.hdf5``) or zarr (a directory / ``.zarr``), with keys
    ``flux|spectrum|spectra``, ``err|flux_err|error|spec_err|spec_errs`` (or
    ``ivar``) and ``wavelength|wave|lambda``; array files are taken as rest-frame.
    A 1-D flux array is one spectrum. An array file without wavelengths is assumed
    to be on ``wavelength`` when its length equals ``len(wavelength)``.

    Masking: a pixel is masked (flux NaN, err inf) when an APOGEE bitmask bit in
    `BAD_PIXMASK_BITS` is set, or its flux is zero or not finite, or its error is
    zero or not finite (a NaN error marks missing data). Rows with every pixel
    masked are kept, with the reason in ``meta["flag"]`` (``""`` when fine).

    Parameters
    ----------
    paths
        One path or a list of paths.
    wavelength
        ``(D,)`` target grid (the model's), vacuum Angstrom; every file is
        resampled onto it (`resample`). None: keep the files' own grid, which must
        then agree across files.
    normalize
        ``"auto"``: continuum-normalise (`normalize_continuum`) apStar and apVisit
        spectra, after resampling to the APOGEE grid where theirs does not hold
        the continuum pixels, and take aspcapStar and array files as normalised
        already. True / False: normalise every file / none.
    visits
        For apStar files: ``"combined"`` (row 0 of HDU 1) or ``"all"`` (one row
        per visit; the combined row if there is a single visit).
    flux_key, err_key, wavelength_key
        Array names in npz/HDF5/zarr files, overriding the aliases above.

    Returns
    -------
    Spectra
        All rows of all files, in order, with ``meta`` columns ``source``,
        ``visit`` (1-based visit number, 0 for combined/array spectra), ``snr``,
        ``vhelio`` (NaN where unknown) and ``flag``.

    Raises
    ------
    FileNotFoundError
        If a path does not exist.
    ValueError, TypeError
        On bad arguments or files (unknown format, missing HDU or key, shape
        mismatches between HDUs or arrays or with ``NVISITS``, header cards that
        cannot be parsed or hold the wrong kind of value, complex, bool or text
        arrays, flux or errors beyond ±1e30, negative errors, wavelengths that
        are not finite, positive and monotonic, files of no spectra or no
        pixels, corrupted files, grids that do not overlap ``wavelength`` or
        differ when ``wavelength`` is None); the message is one line naming the
        file and the item in it (a ``ReaderError``, i.e. a
        `pollux.io.checks.FileError`, for a problem with a file).

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "two.npz")
    >>> np.savez(path, wavelength=[1.0, 2.0, 3.0], flux=[[1.0, 0.9, 1.0]] * 2,
    ...          err=[[0.1, 0.1, np.nan]] * 2)
    >>> s = read_spectra(path)
    >>> s.ids, s.n_bad.tolist()
    (('two.npz[0]', 'two.npz[1]'), [1, 1])
    """
    files = _paths(paths)
    target = (
        None
        if wavelength is None
        else check_wavelength(wavelength, "read_spectra(wavelength=...)")
    )
    if normalize not in ("auto", True, False):
        msg = f"read_spectra(normalize=...): expected 'auto', True or False, got {normalize!r}"
        raise ValueError(msg)
    if visits not in ("combined", "all"):
        msg = f"read_spectra(visits=...): expected 'combined' or 'all', got {visits!r}"
        raise ValueError(msg)
    parts = []
    for path in files:
        spectra = _read_one(path, target, visits, flux_key, err_key, wavelength_key)
        if normalize is True or (normalize == "auto" and not spectra.normalized):
            spectra = _normalize(spectra, path)
        if target is not None:
            _check_overlap(spectra, target, path, "read_spectra(wavelength=...)")
            spectra = resample(spectra, target)
        parts.append(spectra)
    for path, part in zip(files[1:], parts[1:], strict=True):
        if not same_grid(part.wavelength, parts[0].wavelength):
            msg = (
                f"{_CALL}: file '{path}' is on another wavelength grid "
                f"({part.wavelength.size} pixels) than '{files[0]}' "
                f"({parts[0].wavelength.size}); pass wavelength= to resample all "
                "files onto one grid"
            )
            raise ValueError(msg)
        if part.normalized != parts[0].normalized:
            msg = (
                f"{_CALL}: file '{path}' is {'' if part.normalized else 'not '}"
                f"continuum-normalised but '{files[0]}' is "
                f"{'' if parts[0].normalized else 'not '}continuum-normalised; "
                "use normalize='auto' or True"
            )
            raise ValueError(msg)
    return _flag_empty(Spectra.concatenate(parts))
