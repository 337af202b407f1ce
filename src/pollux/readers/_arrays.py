"""Named arrays from npz, HDF5 and zarr files, and spectra stored as such arrays."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._common import (
    MAX_VALUE,
    MIN_ERROR,
    ReaderError,
    ReaderSource,
    as_path,
    declared_size,
    detect_format,
    file_masks,
    number_array,
    one_line,
    require,
    wavelength_array,
)
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


def _npz_header(store: Any, key: str, src: ReaderSource) -> None:
    """Refuse an npz member whose ``.npy`` header declares more bytes than the
    member holds (or than `MAX_ARRAY_BYTES`), before numpy allocates them."""
    names = store.zip.namelist()
    member = f"{key}.npy" if f"{key}.npy" in names else key
    info = store.zip.getinfo(member)
    with store.zip.open(member) as f:
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            return  # numpy's own reader checks the rest
        read = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, _, dtype = read(f)
        body = info.file_size - f.tell()
    item = f"array {key!r}"
    declared_size(shape, dtype, src, item)
    size = math.prod(shape) * dtype.itemsize
    if not dtype.hasobject and size > body:
        raise src.error(
            item,
            f"declares shape {shape} ({size} bytes) but holds {body} bytes",
            "the file is truncated or damaged",
        )


def _load_npz(
    path: Path, select: Select, src: ReaderSource, watch: tuple[str, ...]
) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as store:
        keys = select(list(store.files))
        for k in keys:
            _npz_header(store, k, src)
        return {k: np.asarray(store[k]) for k in keys}


def _not_an_array(k: str, what: str, src: ReaderSource) -> ReaderError:
    return src.error(
        f"key {k!r}",
        f"is {what}, not an array",
        "store the array itself under that name, or rename it",
    )


def _load_hdf5(
    path: Path, select: Select, src: ReaderSource, watch: tuple[str, ...]
) -> dict[str, np.ndarray]:
    import h5py

    with h5py.File(path, "r") as store:
        names: list[str] = []
        store.visititems(
            lambda name, obj: (
                names.append(name) if isinstance(obj, h5py.Dataset) else None
            )
        )
        for k in watch:  # a link to an array counts; a group or dangling link not
            if k in names or store.get(k, getlink=True) is None:
                continue
            try:
                obj = store.get(k)
            except Exception:  # an external link to a missing file
                obj = None
            if not isinstance(obj, h5py.Dataset):
                what = "a group" if isinstance(obj, h5py.Group) else "a link to nothing"
                raise _not_an_array(k, what, src)
            names.append(k)
        keys = select(names)
        for k in keys:
            obj = store[k]
            if not isinstance(obj, h5py.Dataset):
                raise _not_an_array(k, "a group", src)
            if obj.shape is not None:
                declared_size(obj.shape, obj.dtype, src, f"array {k!r}")
        return {k: np.asarray(store[k][()]) for k in keys}


def _load_zarr(
    path: Path, select: Select, src: ReaderSource, watch: tuple[str, ...]
) -> dict[str, np.ndarray]:
    import zarr

    store = zarr.open(str(path), mode="r")
    if not isinstance(store, zarr.Group):
        msg = "it is a single zarr array, not a group of named arrays"
        raise TypeError(msg)
    members = dict(store.members(max_depth=None))
    names = [name for name, obj in members.items() if isinstance(obj, zarr.Array)]
    for k in watch:
        if k in members and not isinstance(members[k], zarr.Array):
            raise _not_an_array(k, "a group", src)
    keys = select(names)
    for k in keys:
        obj = store[k]
        if not isinstance(obj, zarr.Array):
            raise _not_an_array(k, "a group", src)
        declared_size(obj.shape, obj.dtype, src, f"array {k!r}")
    return {k: np.asarray(store[k][...]) for k in keys}


_LOADERS = {"npz": _load_npz, "hdf5": _load_hdf5, "zarr": _load_zarr}


def load_store(
    path: Path, fmt: str, select: Select, call: str, watch: Sequence[str] = ()
) -> dict[str, np.ndarray]:
    """The arrays ``select(available_keys)`` of an npz/HDF5/zarr file.

    A member named as one of ``watch`` (the aliases looked for) that is not an
    array (an HDF5/zarr group, a dangling link) is refused rather than passed
    over. Errors of the underlying libraries (e.g. corrupted or truncated
    files) become ValueErrors naming the file; `ReaderError` raised by
    ``select`` or the checks of declared sizes passes through.
    """
    try:
        return _LOADERS[fmt](path, select, ReaderSource(call, path), tuple(watch))
    except ReaderError:
        raise
    except TimeoutError:  # a watchdog's, not damage of the file
        raise
    except Exception as err:
        msg = f"{call}: file '{path}' could not be read as {fmt}: {one_line(err)}"
        raise ReaderError(msg) from err


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


_ROLES = {
    "flux": FLUX_KEYS,
    "err": ERR_KEYS,
    "ivar": IVAR_KEYS,
    "wave": WAVELENGTH_KEYS,
    "ids": ID_KEYS,
    "snr": SNR_KEYS,
    "vhelio": VHELIO_KEYS,
}
_ARGS = {"flux": "flux_key", "err": "err_key", "wave": "wavelength_key"}


def _pick(
    available: list[str],
    explicit: str | None,
    aliases: tuple[str, ...],
    call: str,
    path: Path,
    arg: str | None,
) -> str | None:
    """The explicit key, else the one alias of ``aliases`` in ``available``
    (several are refused: which one is meant is not known)."""
    if explicit is not None:
        return explicit
    found = [k for k in aliases if k in available]
    require(
        len(found) <= 1,
        call,
        path,
        f"has several arrays {found} of one kind; which one is meant is not known"
        + (f"; pass {arg}=" if arg else "; remove or rename all but one"),
    )
    return found[0] if found else None


def _item(key: str) -> str:
    return f"array {key!r}"


def _numbers(arr: np.ndarray, src: ReaderSource, key: str, what: str) -> None:
    """Refuse text, bytes, objects and structured values (``what``: flux, ...)."""
    if arr.dtype.kind not in "biufc" or arr.dtype.names is not None:
        raise src.error(
            _item(key),
            f"holds non-numeric {what} (dtype {arr.dtype})",
            f"store the {what} as floats",
        )


def _errors_from_ivar(ivar: Any, src: ReaderSource, key: str) -> np.ndarray:
    """``err = 1/sqrt(ivar)`` (``ivar = 0``: a missing pixel) of a checked ivar."""
    _numbers(np.asarray(ivar), src, key, "inverse variances")
    ivar = number_array(ivar, src, _item(key), limit=1 / MIN_ERROR**2)
    with np.errstate(invalid="ignore"):
        neg = int(np.sum(ivar < 0))
        tiny = (ivar > 0) & (ivar < 1 / MAX_VALUE**2)
    require(not neg, src.call, src.path, f"has {neg} negative ivar values in {key!r}")
    if np.any(tiny):
        raise src.error(
            _item(key),
            f"holds {int(tiny.sum())} positive value(s) below {1 / MAX_VALUE**2:g} "
            f"(errors beyond {MAX_VALUE:g})",
            "mark missing pixels with ivar = 0",
        )
    with np.errstate(divide="ignore"):
        return 1 / np.sqrt(ivar)


def _meta_column(
    arrays: dict, key: str | None, n: int, src: ReaderSource
) -> np.ndarray:
    """A per-row column (snr, vhelio): real, finite or NaN (unknown), ``(n,)``."""
    if key is None:
        return np.full(n, np.nan)
    raw = np.asarray(arrays[key])
    require(
        raw.shape == (n,),
        src.call,
        src.path,
        f"has {key!r} of shape {raw.shape}, expected ({n},)",
    )
    col = number_array(raw, src, _item(key))
    if np.any(np.isinf(col)):
        raise src.error(
            _item(key),
            f"holds {int(np.sum(np.isinf(col)))} infinite value(s)",
            "mark unknown values with NaN",
        )
    return col


def _ids(raw: Any, n: int, src: ReaderSource, key: str) -> tuple[str, ...]:
    """Identifiers: text (str or bytes, UTF-8) or integers, one per row."""
    raw = np.asarray(raw)
    if raw.ndim == 0:
        raw = raw[None]
    require(
        raw.shape == (n,),
        src.call,
        src.path,
        f"has {key!r} of shape {raw.shape}, expected ({n},)",
    )
    kind = raw.dtype.kind
    items = raw.tolist()
    ok = kind in "iuSUT" or (
        kind == "O" and all(isinstance(x, (str, bytes)) for x in items)
    )
    if not ok or raw.dtype.names is not None:
        raise src.error(
            _item(key),
            f"holds values of dtype {raw.dtype}; identifiers are text or integers",
            "store the identifiers as strings",
        )
    out = []
    for x in items:
        if isinstance(x, bytes):
            try:
                x = x.decode()
            except UnicodeDecodeError:
                raise src.error(
                    _item(key),
                    f"holds {x[:20]!r}, which is not UTF-8 text",
                    "store the identifiers as UTF-8 strings",
                ) from None
        x = str(x)
        if not x.strip():
            raise src.error(
                _item(key),
                f"holds an empty identifier in row {len(out)}",
                "give every spectrum an identifier (or store no ids)",
            )
        out.append(x)
    return tuple(out)


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

    Flux from ``flux_key`` or the one of `FLUX_KEYS` the file holds; errors from
    ``err_key``, the one of `ERR_KEYS`, or ``ivar`` (``err = 1/sqrt(ivar)``,
    ``ivar = 0`` masked); wavelengths from ``wavelength_key`` or the one of
    `WAVELENGTH_KEYS`. Without wavelengths the spectra are assumed to be on
    ``target`` when their length matches it. Optional per-row ``ids``,
    ``snr(s)``, ``vhelio(s)`` are kept.

    Every array is checked before use (a `ReaderError` naming the file and the
    array): real numbers only (complex, bool, text refused), flux and errors
    within `MAX_VALUE`, errors >= 0 and not below `MIN_ERROR`, finite positive
    monotonic wavelengths, at least one spectrum of at least one pixel, and no
    two arrays of one kind (e.g. both ``flux`` and ``spectra``) unless a key
    names the one to use.
    """
    explicit = {"flux_key": flux_key, "err_key": err_key}
    explicit["wavelength_key"] = wavelength_key
    given = [(a, k) for a, k in explicit.items() if k is not None]
    for i, (arg, key) in enumerate(given):
        for other, key2 in given[:i]:
            if key == key2:
                msg = (
                    f"read_spectra({arg}={key!r}): names the same array as "
                    f"{other}; pass the key of each kind of array"
                )
                raise ValueError(msg)
    keys: dict[str, str | None] = {}
    src = ReaderSource(call, path)

    def select(available: list[str]) -> list[str]:
        for arg, value in explicit.items():
            require(
                value is None or value in available,
                f"read_spectra({arg}={value!r})",
                path,
                f"has no key {value!r}; available: {sorted(available)}",
            )
        for role, aliases in _ROLES.items():
            arg = _ARGS.get(role)
            value = explicit.get(arg) if arg else None
            if role == "ivar" and keys["err"]:
                keys["ivar"] = None
                continue
            taken = {k for k in (*keys.values(), *explicit.values()) if k is not None}
            keys[role] = _pick(
                [k for k in available if k not in taken],
                value,
                aliases,
                call,
                path,
                arg,
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

    watch = [k for aliases in _ROLES.values() for k in aliases]
    watch += [k for k in explicit.values() if k is not None]
    arrays = load_store(path, fmt, select, call, watch)
    raw_flux = np.asarray(arrays[keys["flux"]])
    _numbers(raw_flux, src, keys["flux"], "flux")
    flux = number_array(raw_flux, src, _item(keys["flux"]), ndim=(1, 2))
    if keys["err"]:
        err_item = _item(keys["err"])
        raw_err = np.asarray(arrays[keys["err"]])
        _numbers(raw_err, src, keys["err"], "errors")
    else:
        err_item = _item(keys["ivar"])
        ivar = np.asarray(arrays[keys["ivar"]])
        require(
            ivar.shape == flux.shape,
            call,
            path,
            f"has flux of shape {flux.shape} but ivar of shape {ivar.shape}",
        )
        raw_err = _errors_from_ivar(ivar, src, keys["ivar"])
    flux, err = file_masks(
        np.atleast_2d(flux),
        np.atleast_2d(raw_err),
        call,
        path,
        items=(_item(keys["flux"]), err_item),
    )
    n, d = flux.shape
    require(
        n > 0, call, path, f"holds no spectra ({keys['flux']!r} has shape {flux.shape})"
    )
    require(
        d > 0, call, path, f"holds no pixels ({keys['flux']!r} has shape {flux.shape})"
    )

    if keys["wave"] is not None:
        raw_wave = np.asarray(arrays[keys["wave"]])
        require(
            raw_wave.shape == (d,),
            call,
            path,
            f"has wavelength of shape {raw_wave.shape}, expected ({d},) to match its "
            "flux",
        )
        _numbers(raw_wave, src, keys["wave"], "wavelengths")
        wave = wavelength_array(raw_wave, src, _item(keys["wave"]), decreasing=True)
        if d > 1 and wave[0] > wave[-1]:
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
        meta[name] = _meta_column(arrays, keys[name], n, src)
    meta["flag"] = np.full(n, "")
    if keys["ids"] is None:
        ids = tuple(f"{path.name}[{i}]" for i in range(n))
    else:
        ids = _ids(arrays[keys["ids"]], n, src, keys["ids"])
    try:
        return Spectra(
            wave, flux, err, ids=ids, meta=meta, normalized=True, rest_frame=True
        )
    except ValueError as err:
        raise ReaderError(f"{call}: file '{path}': {err}") from err
