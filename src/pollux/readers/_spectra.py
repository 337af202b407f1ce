"""`Spectra`: an immutable set of spectra on one wavelength grid, with masking."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["Spectra"]


def _frozen(arr: np.ndarray) -> np.ndarray:
    arr = np.array(arr, copy=True)
    arr.flags.writeable = False
    return arr


def _float_array(x: Any, what: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype == object or not (
        np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
    ):
        msg = f"Spectra({what}=...): expected a numeric array, got dtype {arr.dtype}"
        raise TypeError(msg)
    return arr.astype(np.float64)


def check_wavelength(wavelength: Any, call: str) -> np.ndarray:
    """``wavelength`` as a 1-D float64 array, finite, positive, strictly increasing."""
    wave = np.asarray(wavelength)
    if wave.dtype == object or not np.issubdtype(wave.dtype, np.number):
        msg = f"{call}: wavelength must be a numeric array, got dtype {wave.dtype}"
        raise TypeError(msg)
    wave = wave.astype(np.float64)
    if wave.ndim != 1 or wave.size < 2:
        msg = f"{call}: wavelength must be 1-D with >= 2 pixels, got shape {wave.shape}"
        raise ValueError(msg)
    if not np.all(np.isfinite(wave)) or np.any(wave <= 0):
        msg = f"{call}: wavelength must be finite and positive (Angstrom)"
        raise ValueError(msg)
    if np.any(np.diff(wave) <= 0):
        msg = f"{call}: wavelength must be strictly increasing"
        raise ValueError(msg)
    return wave


@dataclasses.dataclass(frozen=True, eq=False)
class Spectra:
    """Spectra of ``N`` stars (or visits) on one wavelength grid of ``D`` pixels.

    A masked pixel has ``flux = NaN`` and ``err = inf``. On construction a pixel is
    masked when its flux is not finite, or its error is not finite or zero; a
    negative error is refused. Arrays are copied to float64 and made read-only.

    Parameters
    ----------
    wavelength
        ``(D,)`` vacuum wavelengths in Angstrom, strictly increasing.
    flux
        ``(N, D)`` fluxes (a ``(D,)`` array is one spectrum).
    err
        One-sigma errors, same shape as ``flux``, ``>= 0``.
    ids
        One identifier per row; default ``"0"``, ``"1"``, ...
    meta
        Per-row columns (each of length ``N``), e.g. ``"snr"``, ``"source"``,
        ``"flag"`` (why a row is unusable; ``""`` when fine).
    normalized
        Whether the spectra are continuum-normalised.
    rest_frame
        Whether the wavelengths are in the stars' rest frames.

    Examples
    --------
    >>> import numpy as np
    >>> s = Spectra(np.array([1.0, 2.0, 3.0]), np.array([[1.0, np.nan, 1.0]]),
    ...             np.full((1, 3), 0.1))
    >>> len(s), s.n_bad.tolist(), bool(np.isinf(s.err[0, 1]))
    (1, [1], True)
    """

    wavelength: np.ndarray
    flux: np.ndarray
    err: np.ndarray
    ids: tuple[str, ...] = ()
    meta: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
    normalized: bool = False
    rest_frame: bool = True

    def __post_init__(self) -> None:
        wave = check_wavelength(self.wavelength, "Spectra(wavelength=...)")
        flux = _float_array(self.flux, "flux")
        err = _float_array(self.err, "err")
        if flux.ndim == 1:
            flux = flux[None, :]
        if err.ndim == 1:
            err = err[None, :]
        if flux.ndim != 2 or flux.shape[1] != wave.size:
            msg = (
                f"Spectra(flux=...): expected shape (N, {wave.size}) to match the "
                f"wavelength grid, got {np.shape(self.flux)}"
            )
            raise ValueError(msg)
        if err.shape != flux.shape:
            msg = (
                f"Spectra(err=...): expected the shape of flux {flux.shape}, "
                f"got {np.shape(self.err)}"
            )
            raise ValueError(msg)
        if np.any(err < 0):
            msg = f"Spectra(err=...): {int(np.sum(err < 0))} negative errors"
            raise ValueError(msg)
        masked = ~np.isfinite(flux) | ~np.isfinite(err) | (err == 0)
        flux[masked] = np.nan
        err[masked] = np.inf
        n = flux.shape[0]
        ids = tuple(str(i) for i in range(n)) if not self.ids else self.ids
        if isinstance(ids, str) or len(ids) != n:
            msg = f"Spectra(ids=...): expected {n} identifiers, got {ids!r:.80}"
            raise ValueError(msg)
        meta = {}
        for key, col in self.meta.items():
            arr = np.asarray(col)
            if arr.shape[:1] != (n,):
                msg = f"Spectra(meta=...): column {key!r} has shape {arr.shape}, expected ({n}, ...)"
                raise ValueError(msg)
            meta[str(key)] = _frozen(arr)
        object.__setattr__(self, "wavelength", _frozen(wave))
        object.__setattr__(self, "flux", _frozen(flux))
        object.__setattr__(self, "err", _frozen(err))
        object.__setattr__(self, "ids", tuple(str(i) for i in ids))
        object.__setattr__(self, "meta", meta)
        object.__setattr__(self, "normalized", bool(self.normalized))
        object.__setattr__(self, "rest_frame", bool(self.rest_frame))

    def __len__(self) -> int:
        return self.flux.shape[0]

    def __repr__(self) -> str:
        return (
            f"Spectra(n={len(self)}, n_pixels={self.wavelength.size}, "
            f"normalized={self.normalized}, rest_frame={self.rest_frame}, "
            f"meta={sorted(self.meta)})"
        )

    @property
    def mask(self) -> np.ndarray:
        """``(N, D)`` bool: True where a pixel is masked."""
        return np.isinf(self.err)

    @property
    def n_bad(self) -> np.ndarray:
        """``(N,)`` number of masked pixels in each row."""
        return self.mask.sum(axis=1)

    def __getitem__(self, index: Any) -> Spectra:
        """Rows ``index`` (an int, a slice, a bool mask or integer indices)."""
        if isinstance(index, (int, np.integer)):
            if not -len(self) <= index < len(self):
                msg = f"Spectra[{index}]: index out of range for {len(self)} rows"
                raise IndexError(msg)
            rows = np.array([index % len(self)])
        else:
            rows = np.arange(len(self))[index]
            if rows.ndim != 1:
                msg = (
                    f"Spectra[...]: expected a 1-D selection of rows, got {index!r:.80}"
                )
                raise IndexError(msg)
        return self.replace(
            flux=self.flux[rows],
            err=self.err[rows],
            ids=tuple(self.ids[i] for i in rows),
            meta={k: v[rows] for k, v in self.meta.items()},
        )

    def replace(self, **changes: Any) -> Spectra:
        """A copy with some fields replaced (as `dataclasses.replace`)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def concatenate(cls, items: Sequence[Spectra]) -> Spectra:
        """Stack the rows of several `Spectra` on the same grid into one.

        The grids must agree to 1e-6 relative, the ``normalized`` and ``rest_frame``
        flags must agree, and every item must have the same ``meta`` columns.

        Examples
        --------
        >>> import numpy as np
        >>> s = Spectra(np.array([1.0, 2.0]), np.ones((2, 2)), np.ones((2, 2)))
        >>> len(Spectra.concatenate([s, s[0]]))
        3
        """
        items = list(items)
        if not items or not all(isinstance(s, Spectra) for s in items):
            msg = "Spectra.concatenate(items=...): expected a non-empty list of Spectra"
            raise TypeError(msg)
        first = items[0]
        for i, s in enumerate(items[1:], start=1):
            if not same_grid(s.wavelength, first.wavelength):
                msg = f"Spectra.concatenate(items=...): item {i} is on another wavelength grid than item 0; resample first"
                raise ValueError(msg)
            for flag in ("normalized", "rest_frame"):
                if getattr(s, flag) != getattr(first, flag):
                    msg = f"Spectra.concatenate(items=...): item {i} has {flag}={getattr(s, flag)}, item 0 {getattr(first, flag)}"
                    raise ValueError(msg)
            if set(s.meta) != set(first.meta):
                msg = f"Spectra.concatenate(items=...): item {i} has meta columns {sorted(s.meta)}, item 0 {sorted(first.meta)}"
                raise ValueError(msg)
        return first.replace(
            flux=np.concatenate([s.flux for s in items]),
            err=np.concatenate([s.err for s in items]),
            ids=tuple(i for s in items for i in s.ids),
            meta={k: np.concatenate([s.meta[k] for s in items]) for k in first.meta},
        )


def same_grid(a: np.ndarray, b: np.ndarray, rtol: float = 1e-6) -> bool:
    """Whether two wavelength grids have the same length and agree to ``rtol``."""
    return a.shape == b.shape and bool(np.all(np.abs(a - b) <= rtol * np.abs(b)))
