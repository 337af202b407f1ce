"""``pollux predict`` (label spectra files into a table) and ``pollux info``."""

from __future__ import annotations

import contextlib
import shutil
import time
import types
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..io.checks import FileError, Source, unique_names
from ..models.trained import FLAGS, Labels
from ._common import (
    UsageError,
    atomic_path,
    check_distinct,
    check_input_file,
    check_no_repeats,
    check_output_path,
    load_model,
)

__all__ = ["RESERVED_COLUMNS", "TABLE_FORMATS", "info", "predict"]

#: Output table formats by file suffix (astropy's writers).
TABLE_FORMATS = {
    ".fits": "fits",
    ".csv": "ascii.csv",
    ".ecsv": "ascii.ecsv",
    ".h5": "hdf5",
    ".hdf5": "hdf5",
}
_MIN_BUCKET = 64

#: Columns of the reader that start every table (``ID``, then what the reader
#: knows: the source file name, the visit, the SNR), by reader metadata key.
_READER_COLUMNS = {"ID": None, "SOURCE": "source", "VISIT": "visit", "SNR": "snr"}
_EMPTY = np.zeros(0)
#: The columns `Labels.table` writes after the labels themselves.
_LABELS_COLUMNS = tuple(
    Labels.table(
        types.SimpleNamespace(
            predictions={},
            columns={},
            reduced_chi2=_EMPTY,
            n_observed=_EMPTY,
            n_clipped=_EMPTY,
            flags=_EMPTY,
            reasons=(),
        )
    )
)
#: Columns every table of ``pollux predict`` holds besides a model's label
#: columns (and their ``_ERR``): no label column may bear one of these names.
RESERVED_COLUMNS = (*_READER_COLUMNS, *_LABELS_COLUMNS)
#: The longest column name a FITS table holds (a TTYPE card's value).
_FITS_NAME_MAX = 68


def _bucket(n: int, batch: int) -> int:
    """Rows a batch of ``n`` is padded to: a power of two from 64 up to ``batch``,
    so that a new number of spectra reuses compiled (and cached) programs."""
    return min(batch, max(_MIN_BUCKET, 1 << (max(n, 1) - 1).bit_length()))


def predict(
    model_path: Path,
    inputs: list[Path],
    out: Path,
    *,
    overwrite: bool,
    cache: bool,
    batch_size: int,
    extra_err: float,
    clip: float | None,
    visits: str,
    keys: dict[str, str | None],
    progress: bool,
) -> int:
    suffix = out.suffix.lower()
    sources = [("model file", model_path), *(("INPUT", p) for p in inputs)]
    if suffix == ".zarr":
        check_distinct([("--out store", out, True)], sources)
        return _predict_store(
            model_path,
            inputs,
            out,
            cache=cache,
            batch_size=batch_size,
            extra_err=extra_err,
            clip=clip,
            keys=keys,
            progress=progress,
        )
    if suffix not in TABLE_FORMATS:
        msg = (
            f"--out {str(out)!r}: unknown table format {suffix!r}; use one of "
            f"{sorted(TABLE_FORMATS)}"
        )
        raise UsageError(msg)
    check_distinct([("output table", out, False)], sources)
    check_output_path(out, overwrite=overwrite, what="output table")
    for path in inputs:
        check_input_file(path, "input", folder_ok=True)  # a zarr store is a folder
    check_no_repeats(inputs, "INPUT")
    t0 = time.perf_counter()
    trained = load_model(model_path, cache=cache)

    import jax
    from tqdm.auto import tqdm

    from ..readers import read_spectra

    name = _spectral_output(trained, model_path)
    predicted = [k for k in trained.fitted if k != name]
    if not predicted:
        msg = f"model file {str(model_path)!r}: nothing to predict from {name!r}"
        raise UsageError(msg)
    check_table_columns(trained, predicted, model_path, out)
    spectra = read_spectra(
        [str(p) for p in inputs],
        wavelength=trained.wavelength.get(name),
        visits=visits,
        **keys,
    )
    size = trained.lux.outputs[name].output_size
    if spectra.flux.shape[1] != size:
        msg = (
            f"the spectra of {[str(p) for p in inputs]} have {spectra.flux.shape[1]} "
            f"pixels but the model's {name!r} has {size}, and the model file "
            f"{str(model_path)!r} stores no wavelength grid to resample onto"
        )
        raise UsageError(msg)
    n = len(spectra)
    if n == 0:
        msg = f"the INPUT files {[str(p) for p in inputs]} hold no spectra"
        raise UsageError(msg)
    t_read = time.perf_counter() - t0
    # Spectra with no observed pixel are not given to the model (it refuses a
    # batch without data): their rows are those of `Labels` for no data.
    observed = np.flatnonzero(
        np.any(np.isfinite(spectra.flux) & np.isfinite(spectra.err), axis=1)
    )
    chunks = []
    with (
        _compile_timer() as compile_s,
        tqdm(total=n, unit="spectra", disable=not progress, desc="predict") as bar,
    ):
        bar.update(n - len(observed))
        for start in range(0, len(observed), batch_size):
            rows_in = observed[start : start + batch_size]
            flux, err = spectra.flux[rows_in], spectra.err[rows_in]
            rows = _bucket(len(flux), batch_size)
            pad = rows - len(flux)
            flux = np.concatenate([flux, np.full((pad, size), np.nan)])
            err = np.concatenate([err, np.full((pad, size), np.inf)])
            labels = trained.label(
                {name: (flux, err)},
                given=[name],
                extra_err={name: extra_err} if extra_err else None,
                clip=clip,
            )
            chunks.append({k: v[: rows - pad] for k, v in labels.table().items()})
            bar.update(rows - pad)
    table = _merge_rows(n, observed, chunks, _no_data_table(trained, predicted, n))
    table = _with_reader_columns(spectra, table)
    _write_table(table, out)
    total = time.perf_counter() - t0
    flagged = int(np.count_nonzero(table["FLAG"]))
    print(
        f"Labelled {n} spectra from {len(inputs)} file(s) in {total:.2f} s (reading "
        f"{t_read:.2f} s; compiling or loading compiled code {compile_s():.2f} s; "
        f"JAX on {jax.default_backend()}); {flagged} flagged. Table: {out}"
    )
    return 0


def label_column_names(trained: Any, predicted: Sequence[str]) -> list[str]:
    """The columns `Labels.table` gives the ``predicted`` outputs: each name of
    ``trained.columns`` (or ``NAME_i``) and its ``_ERR``, in order, repeats kept."""
    names: list[str] = []
    for output in predicted:
        size = trained.lux.outputs[output].output_size
        cols = trained.columns.get(output) or [
            f"{output.upper()}_{i}" for i in range(size)
        ]
        for col in cols:
            names += [col, f"{col}_ERR"]
    return names


def check_table_columns(
    trained: Any,
    predicted: Sequence[str],
    model_path: Path,
    out: Path,
    reserved: Sequence[str] = RESERVED_COLUMNS,
) -> None:
    """Refuse a model whose label columns would collide in the output table
    (with each other, their ``_ERR`` or the ``reserved`` columns), or that a FITS
    ``out`` cannot name — before any spectrum is labelled."""
    names = label_column_names(trained, predicted)
    src = Source("MODEL", model_path)
    try:
        unique_names(names, src, f"label columns {names}", reserved=reserved)
    except FileError as err:
        msg = (
            f"{err} (each label column X comes with X_ERR; the model file is "
            "valid: retrain it with other [data] label_columns)"
        )
        raise UsageError(msg) from None
    if out.suffix.lower() == ".fits":
        for col in names:
            if len(col) > _FITS_NAME_MAX or not (col.isascii() and col.isprintable()):
                msg = (
                    f"--out {str(out)!r}: the model's column {col!r} cannot name a "
                    f"FITS column (printable ASCII, at most {_FITS_NAME_MAX} "
                    "characters); write .csv, .ecsv or .h5 instead"
                )
                raise UsageError(msg)


def _no_data_table(trained: Any, predicted: Sequence[str], n: int) -> dict:
    """`Labels.table` of ``n`` spectra without data: NaN labels, infinite errors,
    no observed value, flagged ``no_data`` (what `TrainedModel.label` gives them)."""
    from ..data import OutputData, PolluxData

    dtype = np.float64 if trained.info.get("x64") else np.float32
    out = {}
    for output in predicted:
        size = trained.lux.outputs[output].output_size
        out[output] = OutputData(
            np.full((n, size), np.nan, dtype), err=np.full((n, size), np.inf, dtype)
        )
    return Labels(
        predictions=PolluxData(**out),
        posterior=None,
        reduced_chi2=np.full(n, np.nan),
        n_observed=np.zeros(n, dtype=np.int64),
        flags=np.full(n, FLAGS["no_data"], dtype=np.int32),
        reasons=("no_data",) * n,
        columns=dict(trained.columns),
        n_clipped=np.zeros(n, dtype=np.int64),
    ).table()


def _merge_rows(
    n: int, observed: np.ndarray, chunks: list[dict], no_data: dict
) -> dict[str, np.ndarray]:
    """The table of ``n`` spectra: the labelled ``chunks`` in the rows
    ``observed``, ``no_data``'s rows elsewhere; the column order is the model's."""
    if not chunks:
        return no_data
    done = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
    if len(observed) == n:
        return done
    missing = np.ones(n, dtype=bool)
    missing[observed] = False
    table = {}
    for key, values in done.items():
        other = no_data[key]
        column = np.empty(n, dtype=np.result_type(values.dtype, other.dtype))
        column[observed] = values
        column[missing] = other[missing]
        table[key] = column
    return table


def _predict_store(
    model_path: Path,
    inputs: list[Path],
    out: Path,
    *,
    cache: bool,
    batch_size: int,
    extra_err: float,
    clip: float | None,
    keys: dict[str, str | None],
    progress: bool,
) -> int:
    """One zarr/HDF5 store of flux and errors → a zarr store of results, chunk by
    chunk (`pollux.streaming.label_store`); an existing output is resumed."""
    if len(inputs) != 1:
        msg = "--out *.zarr labels one zarr or HDF5 store of spectra: give one INPUT"
        raise UsageError(msg)
    if keys.get("wavelength_key"):
        msg = "--wavelength-key: a store is labelled on the model's own grid"
        raise UsageError(msg)
    check_input_file(inputs[0], "input", folder_ok=True)
    check_output_path(out, overwrite=True, what="--out store", folder=True)
    t0 = time.perf_counter()
    trained = load_model(model_path, cache=cache)
    predicted = [k for k in trained.fitted if k != "flux"]
    check_table_columns(
        trained, predicted, model_path, out, reserved=(*_LABELS_COLUMNS, "done")
    )
    from ..streaming import label_store

    existed = out.exists()
    try:
        label_store(
            trained,
            inputs[0],
            out,
            flux_key=keys.get("flux_key") or "flux",
            err_key=keys.get("err_key") or "err",
            chunk_size=batch_size,
            extra_err=extra_err or None,
            clip=clip,
            resume=True,
            progress=progress,
        )
    except Exception:
        if not existed and _nothing_done(out):
            shutil.rmtree(out, ignore_errors=True)  # a store of no row: not kept
        raise
    print(f"Labelled {inputs[0]} in {time.perf_counter() - t0:.1f} s. Store: {out}")
    return 0


def _nothing_done(store: Path) -> bool:
    """Whether the zarr store at ``store`` holds no chunk labelled yet (a store
    with chunks done is kept: running again resumes it)."""
    if not store.is_dir():
        return False
    try:
        import zarr

        return not bool(np.any(zarr.open_group(str(store), mode="r")["done"][...]))
    except Exception:  # not a store of label_store: not ours to remove
        return False


def _spectral_output(trained: Any, model_path: Path) -> str:
    if trained.wavelength:
        return next(iter(trained.wavelength))
    if "flux" in trained.fitted:
        return "flux"
    msg = (
        f"model file {str(model_path)!r}: no output named 'flux' and no wavelength "
        "grid for one"
    )
    raise UsageError(msg)


@contextlib.contextmanager
def _compile_timer() -> Iterator[Callable[[], float]]:
    """A callable giving the seconds JAX spends compiling (or loading compiled
    programs from the persistent cache) inside the block."""
    import jax

    total = [0.0]

    def listen(event: str, duration: float, **_: Any) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            total[0] += duration

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        yield lambda: total[0]
    finally:
        unregister = getattr(jax.monitoring, "unregister_event_duration_listener", None)
        if unregister is not None:  # jax >= 0.4.36
            unregister(listen)


def _with_reader_columns(spectra: Any, table: dict[str, np.ndarray]) -> dict:
    """The `_READER_COLUMNS` the reader knows first (ID, source file name, visit,
    SNR), then ``table``; the reader's flags merged into ours."""
    meta = spectra.meta
    reader_flag = np.asarray(meta.get("flag", [""] * len(spectra)), dtype=str)
    reasons = [
        ",".join(r for r in (a, b) if r)
        for a, b in zip(reader_flag, table["FLAG_REASON"], strict=True)
    ]
    out: dict[str, np.ndarray] = {}
    for column, key in _READER_COLUMNS.items():
        if key is None:
            out[column] = np.asarray(spectra.ids, dtype=str)
        elif key == "source" and key in meta:
            out[column] = np.asarray([Path(s).name for s in meta[key]], dtype=str)
        elif key in meta:
            out[column] = np.asarray(meta[key])
    clash = sorted(set(out) & set(table))
    if clash:  # refused earlier (check_table_columns): never silently replaced
        raise UsageError(f"the label columns {clash} are columns of the reader")
    out.update(table)
    out["FLAG_REASON"] = np.asarray(reasons, dtype=str)
    return out


def _write_table(columns: dict[str, np.ndarray], out: Path) -> None:
    from astropy.table import Table

    table = Table(columns)
    fmt = TABLE_FORMATS[out.suffix.lower()]
    extra = {"path": "labels", "serialize_meta": True} if fmt == "hdf5" else {}
    try:
        with atomic_path(out) as tmp:
            table.write(tmp, format=fmt, **extra)
    except OSError as err:
        why = err.strerror or str(err)
        msg = f"output table {str(out)!r}: could not be written ({why})"
        raise UsageError(msg) from err


def info(model_path: Path) -> int:
    trained = load_model(model_path, cache=False)
    manifest, result, lux = trained.info, trained.result, trained.lux
    print(f"{model_path}")
    print(
        f"  format {manifest['format_version']}, written by pollux "
        f"{manifest['pollux_version']} on {manifest['created']}, "
        f"{'float64' if manifest.get('x64') else 'float32'}"
    )
    print(f"  {trained.model!r}")
    for name, t in lux.outputs.items():
        scatter = "with extra scatter s" if t.scatter_prior is not None else "no s"
        cols = trained.columns.get(name)
        extra = f" columns {list(cols)}" if cols else ""
        wave = trained.wavelength.get(name)
        if wave is not None:
            extra += f" λ {wave[0]:.1f}–{wave[-1]:.1f} Å"
        print(
            f"  output {name!r}: {type(t).__name__}({t.output_size}), {scatter}{extra}"
        )
    n_train = len(result.posterior)
    losses = np.asarray(result.losses, dtype=float).ravel()
    final = float(losses[-1]) if losses.size else float("nan")
    print(
        f"  fit: {n_train} training stars, {result.n_iter} iterations, "
        f"converged={result.converged}, final objective {final:.6g}"
    )
    for name, record in result.calibration.items():
        print(
            f"  calibrated {name!r}: {record['folds']} folds given {list(record['given'])};"
            f" held-out z std {_fmt(record['z_std_before'])} -> "
            f"{_fmt(record['z_std_after'])}"
        )
        if "s_lo" in record:  # (model files before the supported interval lack it)
            print(
                f"    s {_fmt(record['s_fit'], '.3g')} -> {_fmt(record['s'], '.3g')}"
                f"; held-out data support {_fmt(record['s_lo'], '.3g')} .. "
                f"{_fmt(record['s_hi'], '.3g')} (±{record['support']:g} se; "
                f"max. likelihood {_fmt(record['s_ml'], '.3g')})"
            )
    for name, rng in trained.ranges.items():
        cols = trained.columns.get(name)
        if cols:
            spans = ", ".join(
                f"{c} {lo:.4g}..{hi:.4g}"
                for c, lo, hi in zip(cols, rng["min"], rng["max"], strict=True)
            )
            print(f"  training range of {name!r}: {spans}")
    return 0


def _fmt(value: Any, spec: str = ".2f") -> str:
    values = np.atleast_1d(np.asarray(value, dtype=float))
    return "[" + ", ".join(f"{v:{spec}}" for v in values) + "]"
