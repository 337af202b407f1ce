"""Shared helpers of the readers: error messages, paths, format detection, masking."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ReaderError", "as_path", "detect_format", "file_masks", "require"]

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


class ReaderError(ValueError):
    """A problem with a user's file found by the readers themselves (not wrapped)."""


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


def file_masks(
    flux: np.ndarray, err: np.ndarray, call: str, path: Path
) -> tuple[np.ndarray, np.ndarray]:
    """Flux and err of a file as float64 copies, checked with the file's name.

    Refuses mismatched shapes and negative errors, and marks zero flux (a file's
    "no data") missing; `Spectra` then masks every non-finite value and zero or
    non-finite error (NaN errors mean "no data" in many files).
    """
    flux = np.array(flux, dtype=np.float64)
    err = np.array(err, dtype=np.float64)
    require(
        err.shape == flux.shape,
        call,
        path,
        f"has flux of shape {flux.shape} but errors of shape {err.shape}",
    )
    n_neg = int(np.sum(err < 0))
    require(n_neg == 0, call, path, f"has {n_neg} negative errors")
    flux[flux == 0] = np.nan
    return flux, err
