"""Label spectra stores of any length, chunk by chunk, into a resumable zarr store.

`label_store` reads ``flux`` and ``err`` arrays from a zarr store or HDF5 file one
chunk of rows at a time, labels each chunk with `TrainedModel.label` and writes the
results table into a zarr store as it goes. Memory stays bounded by the chunk size,
every call has the same shape (the last chunk is padded, so nothing is compiled
twice), and an interrupted run continues where it stopped.

Layout of the output store (a zarr v3 group):

* one 1-D array of length N per column of `Labels.table` (float64, except
  ``N_OBSERVED`` and ``N_CLIPPED``, int64, and ``FLAG``, int32; rows not yet
  labelled hold NaN or -1), chunked like the source rows;
* ``FLAG_REASON``: zarr's variable-length UTF-8 string array (``""`` if unflagged);
* ``done``: one boolean per chunk, set only once that chunk's rows are written;
* attributes: ``format``, ``model_path``, ``model_created``, ``model_fingerprint``,
  ``source``, ``flux_key``, ``err_key``, ``n``, ``n_pixels``, ``chunk_size``,
  ``n_chunks``, ``columns`` (column order), ``extra_err`` and ``clip``.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from ._params import check_positive_int
from .models.trained import TrainedModel, load

__all__ = ["label_store"]

#: Value of the ``format`` attribute of stores written by `label_store`.
FORMAT = "pollux.label_store/1"
_OUTPUT = "flux"
_INT_COLUMNS = {"N_OBSERVED": "int64", "N_CLIPPED": "int64", "FLAG": "int32"}
#: Attributes that must match for a run to resume an existing store.
_RESUME_KEYS = (
    "n",
    "n_pixels",
    "chunk_size",
    "columns",
    "model_fingerprint",
    "extra_err",
    "clip",
)


def label_store(
    trained: TrainedModel | str | os.PathLike,
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    flux_key: str = "flux",
    err_key: str = "err",
    chunk_size: int = 4096,
    extra_err: float | None = None,
    clip: float | None = None,
    resume: bool = True,
    progress: bool = True,
) -> Path:
    """Label every spectrum of a zarr or HDF5 store, writing a resumable zarr table.

    Parameters
    ----------
    trained
        A `TrainedModel` (from `pollux.load`) with a fitted ``"flux"`` output, or
        the path of its model file.
    source
        A zarr store (directory) or HDF5 file holding ``flux`` and ``err`` arrays of
        shape ``(N, D)``, ``D`` the model's flux size (spectra already on its
        wavelength grid). Any float or integer dtype (e.g. float16 errors); read
        ``chunk_size`` rows at a time. A non-finite flux or error marks a pixel as
        missing; negative errors are refused.
    out
        The zarr store (directory) to write; see the module docstring for its layout.
    flux_key, err_key
        Names (paths) of the flux and error arrays in ``source``.
    chunk_size
        Rows labelled per call (and rows per chunk of ``out``): memory grows as
        ``chunk_size × D``. The last chunk is padded with missing rows to this size
        (to the next power of two if ``N`` is smaller), so no shape is compiled twice.
    extra_err
        A systematic flux error added in quadrature (see `TrainedModel.label`).
    clip
        Outlier clipping in standard deviations (see `TrainedModel.label`).
    resume
        If ``out`` exists: continue it (True), skipping chunks already done, after
        checking it was made for the same N, D, chunk size, columns, model,
        ``extra_err`` and ``clip``; or refuse it (False). An existing store is never
        overwritten.
    progress
        Show a progress bar over stars.

    Returns
    -------
    Path
        The path of ``out``.

    Raises
    ------
    FileNotFoundError
        ``source`` (or a model file path ``trained``) does not exist.
    TypeError
        An argument of the wrong type (e.g. a non-integer ``chunk_size``).
    ValueError
        A bad argument (e.g. ``chunk_size <= 0``), a source that is not zarr/HDF5,
        lacks a key, has mismatched flux/err shapes or the wrong number of pixels,
        or an existing ``out`` that cannot be resumed (or ``resume=False``).

    Examples
    --------
    Label a store of spectra with a saved model (interrupt it at will; running the
    same call again finishes the remaining chunks)::

        import pollux as plx
        import zarr
        from pollux.streaming import label_store

        trained = plx.load("model.pollux")
        path = label_store(trained, "spectra.zarr", "labels.zarr", chunk_size=4096)
        table = zarr.open_group(path, mode="r")
        teff, flags = table["TEFF"][:], table["FLAG"][:]
    """
    call = "label_store"
    chunk_size = check_positive_int(chunk_size, f"{call}(chunk_size=...)")
    extra_err = _check_number(extra_err, "extra_err", call, positive=False)
    clip = _check_number(clip, "clip", call, positive=True)
    for name, flag in (("resume", resume), ("progress", progress)):
        if not isinstance(flag, bool):
            msg = f"{call}({name}=...): expected True or False, got {flag!r}"
            raise TypeError(msg)
    model_path = None
    if not isinstance(trained, TrainedModel):
        if not isinstance(trained, (str, os.PathLike)):
            msg = (
                f"{call}(trained=...): expected a TrainedModel or a model file path, "
                f"got {type(trained).__name__}"
            )
            raise TypeError(msg)
        model_path = str(Path(trained).resolve())
        trained = load(trained)
    if _OUTPUT not in trained.fitted:
        msg = (
            f"{call}(trained=...): the model has no fitted {_OUTPUT!r} output "
            f"(fitted: {list(trained.fitted)})"
        )
        raise ValueError(msg)
    for name, key in (("flux_key", flux_key), ("err_key", err_key)):
        if not isinstance(key, str) or not key:
            msg = f"{call}({name}=...): expected a non-empty string, got {key!r}"
            raise TypeError(msg)
    out = _check_out(out, call)
    columns = _columns(trained, call)
    size = trained.lux.outputs[_OUTPUT].output_size
    with _open_source(source, flux_key, err_key, call) as (src, flux_arr, err_arr):
        n, d = flux_arr.shape
        if d != size:
            msg = (
                f"{call}(source=...): '{src}' has spectra of {d} pixels but the "
                f"model's {_OUTPUT!r} output has {size}"
            )
            raise ValueError(msg)
        attrs = {
            "format": FORMAT,
            "model_path": model_path,
            "model_created": trained.info.get("created"),
            "model_fingerprint": _fingerprint(trained),
            "source": str(src.resolve()),
            "flux_key": flux_key,
            "err_key": err_key,
            "n": n,
            "n_pixels": d,
            "chunk_size": chunk_size,
            "n_chunks": math.ceil(n / chunk_size),
            "columns": columns,
            "extra_err": extra_err,
            "clip": clip,
        }
        if out.exists():
            group = _reopen(out, attrs, resume, call)
        else:
            group = _create(out, attrs)
        _run(trained, group, attrs, flux_arr, err_arr, progress)
    return out


def _check_number(value: Any, name: str, call: str, *, positive: bool) -> float | None:
    """``value`` as a float (None passes): finite and > 0 (``positive``) or >= 0."""
    if value is None:
        return None
    bound = "> 0" if positive else ">= 0"
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        msg = f"{call}({name}=...): expected None or a number {bound}, got {value!r}"
        raise TypeError(msg)
    value = float(value)
    if not np.isfinite(value) or value < 0 or (positive and value == 0):
        msg = (
            f"{call}({name}=...): expected None or a finite number {bound}, got {value}"
        )
        raise ValueError(msg)
    return value


def _check_out(out: Any, call: str) -> Path:
    if not isinstance(out, (str, os.PathLike)):
        msg = f"{call}(out=...): expected a path, got {type(out).__name__}"
        raise TypeError(msg)
    out = Path(out)
    if not out.parent.is_dir():
        msg = f"{call}(out=...): the folder '{out.parent}' does not exist"
        raise ValueError(msg)
    return out


def _columns(trained: TrainedModel, call: str) -> list[str]:
    """The columns of ``trained.label(...).table()`` given the flux, in order."""
    columns = []
    for name in trained.fitted:
        if name == _OUTPUT:
            continue
        size = trained.lux.outputs[name].output_size
        names = trained.columns.get(name) or [
            f"{name.upper()}_{i}" for i in range(size)
        ]
        for col in names:
            columns += [col, f"{col}_ERR"]
    columns += ["REDUCED_CHI2", "N_OBSERVED", "N_CLIPPED", "FLAG", "FLAG_REASON"]
    if "done" in columns:
        msg = f"{call}(trained=...): a column named 'done' clashes with the done array"
        raise ValueError(msg)
    return columns


def _fingerprint(trained: TrainedModel) -> str:
    """SHA-256 of the fitted parameters and their covariances."""
    digest = hashlib.sha256()
    leaves = jax.tree_util.tree_leaves(
        (trained.result.params, trained.result.param_cov)
    )
    for leaf in leaves:
        arr = np.ascontiguousarray(leaf)
        digest.update(f"{arr.dtype}{arr.shape}".encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()


@contextlib.contextmanager
def _open_source(
    source: Any, flux_key: str, err_key: str, call: str
) -> Iterator[tuple[Path, Any, Any]]:
    """``(path, flux, err)``: the source's arrays, opened read-only and sliced lazily."""
    if not isinstance(source, (str, os.PathLike)):
        msg = f"{call}(source=...): expected a path, got {type(source).__name__}"
        raise TypeError(msg)
    src = Path(source)
    if not src.exists():
        msg = f"{call}(source=...): no such file or directory '{src}'"
        raise FileNotFoundError(msg)
    with contextlib.ExitStack() as stack:
        if src.is_dir():
            import zarr

            try:
                store = zarr.open_group(str(src), mode="r")
            except Exception as err:
                msg = f"{call}(source=...): '{src}' is not a zarr group ({err})"
                raise ValueError(msg) from err
            kind = zarr.Array
        else:
            import h5py

            if not h5py.is_hdf5(src):
                msg = (
                    f"{call}(source=...): '{src}' is neither a zarr store (directory) "
                    "nor an HDF5 file"
                )
                raise ValueError(msg)
            store = stack.enter_context(h5py.File(src, "r"))
            kind = h5py.Dataset
        arrays = []
        for name, key in (("flux_key", flux_key), ("err_key", err_key)):
            arr = store.get(key)
            if not isinstance(arr, kind):
                msg = f"{call}({name}={key!r}): '{src}' has no array {key!r}"
                raise ValueError(msg)
            if not (
                np.issubdtype(arr.dtype, np.floating)
                or np.issubdtype(arr.dtype, np.integer)
            ):
                msg = f"{call}({name}={key!r}): '{src}' has a non-numeric {arr.dtype}"
                raise ValueError(msg)
            arrays.append(arr)
        flux, err = arrays
        if len(flux.shape) != 2 or flux.shape != err.shape:
            msg = (
                f"{call}(source=...): '{src}' needs flux and err of the same shape "
                f"(N, D), got {flux.shape} and {err.shape}"
            )
            raise ValueError(msg)
        yield src, flux, err


def _create(out: Path, attrs: Mapping[str, Any]) -> Any:
    """A new store at ``out``, built under a temporary name and then renamed, so
    ``out`` never holds a store without all its arrays."""
    import zarr

    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        group = zarr.open_group(str(tmp), mode="w", attributes=dict(attrs))
        n, chunk = attrs["n"], attrs["chunk_size"]
        for col in attrs["columns"]:
            if col == "FLAG_REASON":
                dtype, fill = str, ""
            elif col in _INT_COLUMNS:
                dtype, fill = _INT_COLUMNS[col], -1
            else:
                dtype, fill = "float64", np.nan
            group.create_array(
                col, shape=(n,), chunks=(chunk,), dtype=dtype, fill_value=fill
            )
        n_chunks = attrs["n_chunks"]
        group.create_array(
            "done",
            shape=(n_chunks,),
            chunks=(min(max(n_chunks, 1), 1024),),
            dtype=bool,
            fill_value=False,
        )
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return zarr.open_group(str(out), mode="r+")


def _reopen(out: Path, attrs: Mapping[str, Any], resume: bool, call: str) -> Any:
    """The existing store at ``out``, if it may be resumed for this run."""
    import zarr

    start_over = "pass a new out path, or delete it to start over"
    if not resume:
        msg = f"{call}(out=...): '{out}' exists and resume=False; {start_over}"
        raise ValueError(msg)
    try:
        group = zarr.open_group(str(out), mode="r+")
        stored = dict(group.attrs)
    except Exception as err:
        msg = f"{call}(out=...): '{out}' exists and is not a zarr store ({err}); {start_over}"
        raise ValueError(msg) from err
    if stored.get("format") != FORMAT:
        msg = f"{call}(out=...): '{out}' was not written by label_store; {start_over}"
        raise ValueError(msg)
    differ = [
        f"{key}={stored.get(key)!r} (this run: {attrs[key]!r})"
        for key in _RESUME_KEYS
        if stored.get(key) != attrs[key]
    ]
    missing = [k for k in [*attrs["columns"], "done"] if k not in group]
    if missing:
        differ.append(f"the arrays {missing} missing")
    if differ:
        why = "; ".join(differ)
        msg = (
            f"{call}(out=...): '{out}' cannot be resumed by this run ({why}); "
            f"{start_over}"
        )
        raise ValueError(msg)
    return group


def _run(
    trained: TrainedModel,
    group: Any,
    attrs: Mapping[str, Any],
    flux_arr: Any,
    err_arr: Any,
    progress: bool,
) -> None:
    """Label the chunks of ``group`` not done yet and write their rows."""
    from tqdm.auto import tqdm

    n, d, chunk = attrs["n"], attrs["n_pixels"], attrs["chunk_size"]
    columns = attrs["columns"]
    done = group["done"]
    todo = np.flatnonzero(~done[...])
    width = min(chunk, 1 << (max(n, 1) - 1).bit_length())
    dtype = np.float64 if jax.config.jax_enable_x64 else np.float32
    extra = None if attrs["extra_err"] is None else {_OUTPUT: attrs["extra_err"]}
    arrays = {col: group[col] for col in columns}
    remaining = sum(min(chunk, n - i * chunk) for i in todo.tolist())
    with tqdm(
        total=n,
        initial=n - remaining,
        unit="star",
        disable=not progress,
        desc="label_store",
    ) as bar:
        for i in todo.tolist():
            start = i * chunk
            rows = min(chunk, n - start)
            flux = np.full((width, d), np.nan, dtype=dtype)
            err = np.full((width, d), np.inf, dtype=dtype)
            flux[:rows] = flux_arr[start : start + rows]
            err[:rows] = err_arr[start : start + rows]
            if np.any(err < 0):
                msg = (
                    f"label_store(source=...): '{attrs['source']}' has negative "
                    f"errors in rows {start}..{start + rows - 1}"
                )
                raise ValueError(msg)
            missing = ~(np.isfinite(flux) & np.isfinite(err))
            flux[missing], err[missing] = np.nan, np.inf
            table = trained.label(
                {_OUTPUT: (flux, err)},
                given=[_OUTPUT],
                extra_err=extra,
                clip=attrs["clip"],
            ).table()
            if list(table) != columns:
                msg = f"label_store: expected the columns {columns}, got {list(table)}"
                raise RuntimeError(msg)
            for col, arr in arrays.items():
                values = table[col][:rows]
                arr[start : start + rows] = (
                    values if col == "FLAG_REASON" else values.astype(arr.dtype)
                )
            done[i] = True
            bar.update(rows)
