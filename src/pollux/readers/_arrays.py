"""Named arrays from npz, HDF5 and zarr files, and spectra stored as such arrays."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._common import ReaderError, as_path, detect_format, file_masks, require
from ._spectra import Spectra

__all__ = ["read_array_spectra", "read_arrays"]

FLUX_KEYS = ("flux", "spectrum", "spectra")
ERR_KEYS = ("err", "flux_err", "error", "spec_err", "spec_errs")
IVAR_KEYS = ("ivar",)
WAVELENGTH_KEYS = ("wavelength", "wave", "lambda")
ID_KEYS = ("ids", "id", "apogee_id")
SNR_KEYS = ("snr", "snrs")
VHELIO_KEYS = ("vhelio", "vhelios")

Select = Callable[[list[str]], list[str]]


def _load_npz(path: Path, select: Select) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as store:
        return {k: np.asarray(store[k]) for k in select(list(store.files))}


def _load_hdf5(path: Path, select: Select) -> dict[str, np.ndarray]:
    import h5py

    with h5py.File(path, "r") as store:
        names: list[str] = []
        store.visititems(
            lambda name, obj: (
                names.append(name) if isinstance(obj, h5py.Dataset) else None
            )
        )
        return {k: np.asarray(store[k][()]) for k in select(names)}


def _load_zarr(path: Path, select: Select) -> dict[str, np.ndarray]:
    import zarr

    store = zarr.open(str(path), mode="r")
    if not isinstance(store, zarr.Group):
        msg = "it is a single zarr array, not a group of named arrays"
        raise TypeError(msg)
    names = [
        name
        for name, obj in store.members(max_depth=None)
        if isinstance(obj, zarr.Array)
    ]
    return {k: np.asarray(store[k][...]) for k in select(names)}


_LOADERS = {"npz": _load_npz, "hdf5": _load_hdf5, "zarr": _load_zarr}


def load_store(
    path: Path, fmt: str, select: Select, call: str
) -> dict[str, np.ndarray]:
    """The arrays ``select(available_keys)`` of an npz/HDF5/zarr file.

    Errors of the underlying libraries (e.g. corrupted or truncated files) become
    ValueErrors naming the file; `ReaderError` raised by ``select`` passes through.
    """
    try:
        return _LOADERS[fmt](path, select)
    except ReaderError:
        raise
    except Exception as err:
        msg = f"{call}: file '{path}' could not be read as {fmt}: {err}"
        raise ValueError(msg) from err


def read_arrays(path: Any, keys: Sequence[str]) -> dict[str, np.ndarray]:
    """Read named arrays from an npz, HDF5 (``.h5``/``.hdf5``) or zarr file.

    npz files are read with ``allow_pickle=False`` and zarr stores read-only, so
    reading never executes code. HDF5 and zarr keys may be paths (``"group/x"``).

    Parameters
    ----------
    path
        The file (a zarr store is a directory).
    keys
        Names of the arrays to read.

    Returns
    -------
    dict
        ``{key: numpy array}`` for each of ``keys``.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If a key is missing (the message lists the available ones), or the file
        is not npz/HDF5/zarr, or is corrupted.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "x.npz")
    >>> np.savez(path, flux=np.ones(3))
    >>> read_arrays(path, ["flux"])["flux"].tolist()
    [1.0, 1.0, 1.0]
    """
    call = "read_arrays(path=...)"
    p = as_path(path, call)
    if isinstance(keys, str):
        keys = [keys]
    fmt = detect_format(p, call)
    if fmt == "fits":
        raise ReaderError(
            f"{call}: file '{p}' is FITS; read_arrays reads npz, HDF5 and zarr"
        )

    def select(available: list[str]) -> list[str]:
        missing = [k for k in keys if k not in available]
        require(
            not missing,
            "read_arrays(keys=...)",
            p,
            f"has no key(s) {missing}; available: {sorted(available)}",
        )
        return list(keys)

    return load_store(p, fmt, select, "read_arrays(keys=...)")


def _pick(
    available: list[str], explicit: str | None, aliases: tuple[str, ...]
) -> str | None:
    if explicit is not None:
        return explicit
    return next((k for k in aliases if k in available), None)


def read_array_spectra(
    path: Path,
    fmt: str,
    *,
    target: np.ndarray | None,
    flux_key: str | None,
    err_key: str | None,
    wavelength_key: str | None,
    call: str,
) -> Spectra:
    """Spectra stored as arrays (taken as rest-frame and continuum-normalised).

    Flux from ``flux_key`` or the first of `FLUX_KEYS`; errors from ``err_key``, the
    first of `ERR_KEYS`, or ``ivar`` (``err = 1/sqrt(ivar)``, ``ivar = 0`` masked);
    wavelengths from ``wavelength_key`` or the first of `WAVELENGTH_KEYS`. Without
    wavelengths the spectra are assumed to be on ``target`` when their length
    matches it. Optional per-row ``ids``, ``snr(s)``, ``vhelio(s)`` are kept.
    """
    keys: dict[str, str | None] = {}

    def select(available: list[str]) -> list[str]:
        keys["flux"] = _pick(available, flux_key, FLUX_KEYS)
        keys["err"] = _pick(available, err_key, ERR_KEYS)
        keys["ivar"] = None if keys["err"] else _pick(available, None, IVAR_KEYS)
        keys["wave"] = _pick(available, wavelength_key, WAVELENGTH_KEYS)
        for name in ("ids", "snr", "vhelio"):
            keys[name] = _pick(
                available,
                None,
                {"ids": ID_KEYS, "snr": SNR_KEYS, "vhelio": VHELIO_KEYS}[name],
            )
        for arg, value in (
            ("flux_key", flux_key),
            ("err_key", err_key),
            ("wavelength_key", wavelength_key),
        ):
            require(
                value is None or value in available,
                f"read_spectra({arg}={value!r})",
                path,
                f"has no key {value!r}; available: {sorted(available)}",
            )
        require(
            keys["flux"],
            call,
            path,
            f"has no flux array (looked for {list(FLUX_KEYS)}); available: "
            f"{sorted(available)}; pass flux_key=",
        )
        require(
            keys["err"] or keys["ivar"],
            call,
            path,
            f"has no error array (looked for {list(ERR_KEYS + IVAR_KEYS)}); "
            f"available: {sorted(available)}; pass err_key=",
        )
        return [k for k in keys.values() if k is not None]

    arrays = load_store(path, fmt, select, call)
    flux = arrays[keys["flux"]]
    if keys["err"]:
        err = arrays[keys["err"]]
    else:
        ivar = np.asarray(arrays[keys["ivar"]], dtype=np.float64)
        require(
            ivar.shape == flux.shape,
            call,
            path,
            f"has flux of shape {flux.shape} but ivar of shape {ivar.shape}",
        )
        require(
            not np.any(ivar < 0),
            call,
            path,
            f"has {int(np.sum(ivar < 0))} negative ivar values",
        )
        with np.errstate(divide="ignore"):
            err = 1 / np.sqrt(ivar)
    for what, arr in (("flux", flux), ("errors", err)):
        require(
            np.issubdtype(np.asarray(arr).dtype, np.number),
            call,
            path,
            f"has non-numeric {what} (dtype {np.asarray(arr).dtype})",
        )
    require(
        flux.ndim in (1, 2),
        call,
        path,
        f"has flux of shape {flux.shape}; expected (N, D) or (D,)",
    )
    flux, err = file_masks(np.atleast_2d(flux), np.atleast_2d(err), call, path)
    n, d = flux.shape

    if keys["wave"] is not None:
        wave = np.asarray(arrays[keys["wave"]], dtype=np.float64)
        require(
            wave.shape == (d,),
            call,
            path,
            f"has wavelength of shape {wave.shape}, expected ({d},) to match its flux",
        )
        if d > 1 and np.all(np.diff(wave) < 0):
            wave, flux, err = wave[::-1], flux[:, ::-1], err[:, ::-1]
    else:
        require(
            target is not None and target.size == d,
            call,
            path,
            f"has no wavelength array (looked for {list(WAVELENGTH_KEYS)}) and its {d} "
            "pixels "
            + (
                "cannot be matched without wavelength="
                if target is None
                else f"differ from the {target.size} of wavelength="
            )
            + "; name the wavelength array (wavelength_key=, or --wavelength-key in the CLI)",
        )
        wave = target

    meta = {"source": np.full(n, str(path)), "visit": np.zeros(n, dtype=np.int64)}
    for name in ("snr", "vhelio"):
        col = (
            np.full(n, np.nan)
            if keys[name] is None
            else np.asarray(arrays[keys[name]], dtype=np.float64)
        )
        require(
            col.shape == (n,),
            call,
            path,
            f"has {keys[name]!r} of shape {col.shape}, expected ({n},)",
        )
        meta[name] = col
    meta["flag"] = np.full(n, "")
    if keys["ids"] is None:
        ids = tuple(f"{path.name}[{i}]" for i in range(n))
    else:
        raw = np.atleast_1d(arrays[keys["ids"]])
        require(
            raw.shape == (n,),
            call,
            path,
            f"has {keys['ids']!r} of shape {raw.shape}, expected ({n},)",
        )
        ids = tuple(
            x.decode() if isinstance(x, bytes) else str(x) for x in raw.tolist()
        )
    try:
        return Spectra(
            wave, flux, err, ids=ids, meta=meta, normalized=True, rest_frame=True
        )
    except ValueError as err:
        raise ReaderError(f"{call}: file '{path}': {err}") from err
