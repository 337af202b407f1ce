"""Shared helpers of the readers: error messages, paths, format detection, masking,
and the checks of what a file holds (on top of `pollux.io.checks`)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..io.checks import MAX_ARRAY_BYTES, FileError, Source, real_array

__all__ = [
    "MAX_VALUE",
    "MIN_ERROR",
    "ReaderError",
    "ReaderSource",
    "as_path",
    "declared_size",
    "detect_format",
    "error_array",
    "file_masks",
    "number_array",
    "one_line",
    "require",
    "wavelength_array",
]

#: The largest magnitude a flux, an error, a wavelength or a label (or label
#: error) of a file may have: beyond any spectrum or label in the units they are
#: stored in (photon counts, erg/s/cm²/Å, Jy, K, dex); a value of 1e300 is
#: damage or a sentinel, and overflows float32 (and, squared, float64).
MAX_VALUE = 1e30
#: The smallest positive error (and so ``1/MIN_ERROR²`` the largest inverse
#: variance): ``((flux - model) / err)²`` stays finite in float64 for fluxes up
#: to `MAX_VALUE`. A zero error marks a missing pixel.
MIN_ERROR = 1e-60

_SUFFIXES = {
    ".fits": "fits",
    ".fit": "fits",
    ".fts": "fits",
    ".npz": "npz",
    ".h5": "hdf5",
    ".hdf5": "hdf5",
    ".hdf": "hdf5",
    ".zarr": "zarr",
}

_MAGIC = {
    b"\x89HDF\r\n\x1a\n": "hdf5",
    b"PK\x03\x04": "npz",
    b"SIMPLE  ": "fits",
    b"\x1f\x8b": "fits",  # gzipped FITS
}


class ReaderError(FileError):
    """A problem with a user's file found by the readers themselves (not wrapped);
    a `pollux.io.checks.FileError`, so a ValueError."""


@dataclasses.dataclass(frozen=True)
class ReaderSource(Source):
    """A `Source` whose errors are `ReaderError`\\ s.

    >>> ReaderSource("f", "a.npz").error("array 'x'", "is empty", "fill it")
    ReaderError("f: file 'a.npz', array 'x': is empty; fill it")
    """

    def error(
        self, item: str | None, problem: str, fix: str | None = None
    ) -> ReaderError:
        return ReaderError(super().error(item, problem, fix).args[0])


def one_line(err: BaseException, limit: int = 400) -> str:
    """``err``'s message on one line, at most ``limit`` characters."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def require(condition: Any, call: str, path: Path | str, problem: str) -> None:
    """Raise `ReaderError` ``"{call}: file '{path}' {problem}"`` unless ``condition``."""
    if not condition:
        raise ReaderError(f"{call}: file '{path}' {problem}")


def as_path(path: Any, call: str) -> Path:
    """``path`` as an existing `Path` (FileNotFoundError / TypeError otherwise)."""
    if not isinstance(path, (str, os.PathLike)):
        msg = f"{call}: expected a file path (str or os.PathLike), got {type(path).__name__}"
        raise TypeError(msg)
    p = Path(path)
    if not p.exists():
        msg = f"{call}: no such file or directory '{p}'"
        raise FileNotFoundError(msg)
    return p


def detect_format(path: Path, call: str) -> str:
    """``"fits"``, ``"npz"``, ``"hdf5"`` or ``"zarr"``, from the name, else the content."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    if suffixes and suffixes[-1] in _SUFFIXES:
        return _SUFFIXES[suffixes[-1]]
    if path.is_dir():
        if (path / "zarr.json").exists() or (path / ".zgroup").exists():
            return "zarr"
    else:
        with open(path, "rb") as f:
            head = f.read(8)
        for magic, fmt in _MAGIC.items():
            if head.startswith(magic):
                return fmt
    msg = (
        f"{call}: file '{path}' is in no known format; expected APOGEE FITS "
        "(.fits, .fits.gz), npz, HDF5 (.h5, .hdf5) or a zarr directory (.zarr)"
    )
    raise ReaderError(msg)


def declared_size(shape: Iterable[int], dtype: Any, src: Source, item: str) -> None:
    """Refuse an array declared (in a file's header) larger than
    `pollux.io.checks.MAX_ARRAY_BYTES`, before it is read."""
    try:
        n = 1
        for s in shape:
            n *= int(s)
        size = n * np.dtype(dtype).itemsize
    except Exception as err:
        raise src.error(item, f"declares no usable shape or dtype ({err})") from None
    if size > MAX_ARRAY_BYTES:
        raise src.error(
            item,
            f"declares shape {tuple(shape)} ({size} bytes, more than "
            f"{MAX_ARRAY_BYTES})",
            "the file is damaged, or split it into smaller files",
        )


def number_array(
    value: Any,
    src: Source,
    item: str,
    *,
    ndim: int | Iterable[int] | None = None,
    limit: float | None = MAX_VALUE,
    finite: bool = False,
) -> np.ndarray:
    """``value`` as a float64 array of real numbers: `real_array`, and bool
    arrays (masks, not measurements) refused too."""
    if isinstance(value, np.ndarray) and value.dtype.kind == "b":
        raise src.error(
            item,
            "holds true/false values where numbers are expected",
            "store the measurements as floats",
        )
    return real_array(value, src, item, ndim=ndim, finite=finite, limit=limit)


def error_array(err: np.ndarray, src: Source, item: str) -> np.ndarray:
    """Errors (float64, checked by `number_array`) refused when negative or
    positive below `MIN_ERROR`; zero and non-finite errors mark missing pixels."""
    err = number_array(err, src, item)
    with np.errstate(invalid="ignore"):
        neg = int(np.sum(err < 0))
        tiny = (err > 0) & (err < MIN_ERROR)
    if neg:
        raise src.error(
            item, f"has {neg} negative errors", "errors are one-sigma, >= 0"
        )
    if np.any(tiny):
        raise src.error(
            item,
            f"holds {int(tiny.sum())} positive error(s) below {MIN_ERROR:g} "
            f"(e.g. {float(err[tiny].flat[0]):g})",
            "rescale the flux and errors, or mark missing pixels with a zero error",
        )
    return err


def wavelength_array(
    wave: Any, src: Source, item: str, *, decreasing: bool = False
) -> np.ndarray:
    """A file's wavelengths: 1-D, >= 2 pixels, finite, positive, at most
    `MAX_VALUE`, strictly increasing (or, with ``decreasing``, strictly
    monotonic)."""
    wave = number_array(wave, src, item, ndim=1, finite=True, limit=None)
    big = np.abs(wave) > MAX_VALUE
    if np.any(big):
        raise src.error(
            item,
            f"holds wavelength(s) beyond {MAX_VALUE:g} (e.g. {wave[big][0]:g})",
            "store vacuum wavelengths in Angstrom",
        )
    if wave.size < 2:
        raise src.error(item, f"holds {wave.size} wavelength(s); expected >= 2")
    if np.any(wave <= 0):
        raise src.error(
            item,
            f"holds {int(np.sum(wave <= 0))} wavelength(s) <= 0",
            "store vacuum wavelengths in Angstrom",
        )
    step = np.diff(wave)
    if not np.all(step > 0) and not (decreasing and np.all(step < 0)):
        order = "strictly increasing" + (
            " or strictly decreasing" if decreasing else ""
        )
        raise src.error(
            item,
            f"is not {order} ({int(np.sum(step == 0))} repeated value(s), "
            f"{int(np.sum(step < 0))} step(s) down, {int(np.sum(step > 0))} up)",
            "store one wavelength per pixel, sorted",
        )
    return wave


def file_masks(
    flux: np.ndarray,
    err: np.ndarray,
    call: str,
    path: Path,
    items: tuple[str, str] = ("array 'flux'", "array 'err'"),
) -> tuple[np.ndarray, np.ndarray]:
    """Flux and err of a file as float64 copies, checked with the file's name.

    Refuses what is not real numbers (complex, text, bool), values beyond
    `MAX_VALUE`, mismatched shapes, negative errors and positive errors below
    `MIN_ERROR`, and marks zero flux (a file's "no data") missing; `Spectra`
    then masks every non-finite value and zero or non-finite error (NaN errors
    mean "no data" in many files).
    """
    src = ReaderSource(call, path)
    flux = np.array(number_array(flux, src, items[0]), dtype=np.float64)
    err = np.array(error_array(err, src, items[1]), dtype=np.float64)
    require(
        err.shape == flux.shape,
        call,
        path,
        f"has flux of shape {flux.shape} but errors of shape {err.shape}",
    )
    flux[flux == 0] = np.nan
    return flux, err
