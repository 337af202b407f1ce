"""``pollux predict`` (label spectra files into a table) and ``pollux info``."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ._common import UsageError, atomic_path, check_output_path, load_model

__all__ = ["TABLE_FORMATS", "info", "predict"]

#: Output table formats by file suffix (astropy's writers).
TABLE_FORMATS = {
    ".fits": "fits",
    ".csv": "ascii.csv",
    ".ecsv": "ascii.ecsv",
    ".h5": "hdf5",
    ".hdf5": "hdf5",
}
_MIN_BUCKET = 64


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
    if suffix == ".zarr":
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
    check_output_path(out, overwrite=overwrite, what="output table")
    for path in inputs:
        if not path.exists():
            raise UsageError(f"input {str(path)!r} does not exist")
    t0 = time.perf_counter()
    trained = load_model(model_path, cache=cache)

    import jax
    from tqdm.auto import tqdm

    from ..readers import read_spectra

    name = _spectral_output(trained)
    spectra = read_spectra(
        [str(p) for p in inputs],
        wavelength=trained.wavelength.get(name),
        visits=visits,
        **keys,
    )
    size = trained.lux.outputs[name].output_size
    if spectra.flux.shape[1] != size:
        msg = (
            f"the spectra have {spectra.flux.shape[1]} pixels but the model's "
            f"{name!r} has {size}, and the model file stores no wavelength grid to "
            "resample onto"
        )
        raise UsageError(msg)
    n = len(spectra)
    if n == 0:
        raise UsageError("the INPUT files hold no spectra")
    t_read = time.perf_counter() - t0
    chunks = []
    with (
        _compile_timer() as compile_s,
        tqdm(total=n, unit="spectra", disable=not progress, desc="predict") as bar,
    ):
        for start in range(0, n, batch_size):
            flux = spectra.flux[start : start + batch_size]
            err = spectra.err[start : start + batch_size]
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
    table = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
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
    t0 = time.perf_counter()
    trained = load_model(model_path, cache=cache)
    from ..streaming import label_store

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
    print(f"Labelled {inputs[0]} in {time.perf_counter() - t0:.1f} s. Store: {out}")
    return 0


def _spectral_output(trained: Any) -> str:
    if trained.wavelength:
        return next(iter(trained.wavelength))
    if "flux" in trained.fitted:
        return "flux"
    msg = "the model has no output named 'flux' and no wavelength grid for one"
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
    """ID, source file and SNR first; the reader's flags merged into ours."""
    meta = spectra.meta
    reader_flag = np.asarray(meta.get("flag", [""] * len(spectra)), dtype=str)
    reasons = [
        ",".join(r for r in (a, b) if r)
        for a, b in zip(reader_flag, table["FLAG_REASON"], strict=True)
    ]
    out: dict[str, np.ndarray] = {"ID": np.asarray(spectra.ids, dtype=str)}
    if "source" in meta:
        out["SOURCE"] = np.asarray([Path(s).name for s in meta["source"]], dtype=str)
    for key in ("visit", "snr"):
        if key in meta:
            out[key.upper()] = np.asarray(meta[key])
    out.update(table)
    out["FLAG_REASON"] = np.asarray(reasons, dtype=str)
    return out


def _write_table(columns: dict[str, np.ndarray], out: Path) -> None:
    from astropy.table import Table

    table = Table(columns)
    fmt = TABLE_FORMATS[out.suffix.lower()]
    extra = {"path": "labels", "serialize_meta": True} if fmt == "hdf5" else {}
    with atomic_path(out) as tmp:
        table.write(tmp, format=fmt, **extra)


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
    print(
        f"  fit: {n_train} training stars, {result.n_iter} iterations, "
        f"converged={result.converged}, final objective {float(result.losses[-1]):.6g}"
    )
    for name, record in result.calibration.items():
        print(
            f"  calibrated {name!r}: {record['folds']} folds given {list(record['given'])};"
            f" held-out z std {_fmt(record['z_std_before'])} -> "
            f"{_fmt(record['z_std_after'])}"
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


def _fmt(value: Any) -> str:
    values = np.atleast_1d(np.asarray(value, dtype=float))
    return "[" + ", ".join(f"{v:.2f}" for v in values) + "]"
