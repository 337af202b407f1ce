"""Label a million spectra streamed from a zarr store: time, memory and resuming.

For N spectra (``--n``, default 1,000,000) of D = 7214 pixels it measures
`pollux.streaming.label_store` end to end, in fresh subprocesses (float32, JAX x64
off), each kept under a timeout:

* ``train``: fits ``scale.make_model()`` (a `LuxModel`, K = 32 latents, a
  `LinearTransform` flux output with per-pixel scatter and 4 linear labels) to
  ``scale.make_data(2000, seed)`` with ``fit(max_iter=30, progress=False)`` and
  saves it with ``model.save(path, result, data=data)``.
* ``write``: writes the spectra store chunk by chunk (``--chunk`` rows per zarr
  chunk): flux float32, errors float16, Blosc zstd with byte shuffle. The spectra
  come from the training set's generating matrices: ``A``, ``B`` and the scatter
  are drawn from ``seed`` exactly as `scale.make_data` draws them (checked against
  it), then each chunk's latents, errors, noise and missing pixels from its own
  generator ``default_rng([seed, chunk])``, in `scale.make_data`'s order, so memory
  stays bounded at any N. Reports the time, the bytes on disk and the bytes the
  same values take as uncompressed float32 (N x D x 8, flux + err).
* ``label`` (uninterrupted; skipped with ``--skip-uninterrupted``): one
  ``TrainedModel.label`` call on a chunk of the padded shape `label_store` uses
  (warm-up: compiles, timed apart), then ``label_store(trained, store, out,
  chunk_size=chunk)``: its wall time, stars per second and the peak resident
  memory of the process (``ru_maxrss``, warm-up included).
* ``label`` again into a second output store, killed with SIGKILL once
  ``--kill-at`` of the chunks are marked done in the output's ``done`` array
  (polled), then the same call again, which resumes: the chunks done at the kill
  and the resumed run's time.
* ``check``: every chunk done, and the stored rows of chunks done before the kill
  and after it (the first and last of each) equal a fresh in-memory
  ``TrainedModel.label`` of the same rows read from the store (and, when both
  runs ran, the resumed output equals the uninterrupted one, every row); the RMS of
  the predicted labels against the true labels of those chunks, as a sanity check
  that the store shares the training set's generating matrices.

Peak memory of each process is also sampled from ``/proc/PID/status`` (``VmHWM``)
by the driver (the killed run has no ``ru_maxrss`` to report). Everything lives in
a temporary folder under ``--folder`` (the system temporary folder by default),
removed at the end unless ``--keep``; before starting, the free disk space is
checked against an estimate that assumes no compression at all. Prints one table,
the command line and the machine; ``--json`` writes the row.

    python benchmarks/stream_million.py                        # N = 1,000,000
    python benchmarks/stream_million.py --skip-uninterrupted   # only killed + resumed
    python benchmarks/stream_million.py --n 20000 --json stream.json

Measured on 2 CPU cores (``--skip-uninterrupted``, N = 1,000,000): store 36.95 GB
on disk (57.7 GB as float32), written in 956 s; killed at 74/245 chunks (~2,030
stars/s), the resumed run labelled the other 171 chunks in 355 s (1,976 stars/s);
peak RSS of a labelling process 1.54 GB; every chunk done, rows equal to in-memory
labelling; 25.5 min in all.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))

import scale  # noqa: E402  (benchmarks/scale.py: data, model and helpers)

D, K, N_LABELS = scale.D, scale.K, scale.N_LABELS
N_TRAIN = 2000  # training stars
MAX_ITER = 30  # EM sweeps of the training fit
CLEVEL = 3  # Blosc zstd level: 5 saves ~4% more space for ~3x the compression time
STORE, MODEL = "spectra.zarr", "model.pollux"
OUT_FULL, OUT_RESUMED = "labels.zarr", "labels-resumed.zarr"
POLL = 0.2  # seconds between the driver's looks at a worker
# Timeouts per worker: a fixed allowance (start, imports, compiling) plus N at a
# slow rate, 5-10 times below the rates measured on 2 busy CPU cores (label_store
# ~500-800 stars/s, write ~1,000-2,000 stars/s); --timeout overrides them all.
T_TRAIN = 3600.0
T_BASE, RATE_WRITE_MIN, RATE_LABEL_MIN = 600.0, 200.0, 100.0
# The equality check allows this many float32 ulps (see worker_check).
ULPS = 4

rss_bytes, peak_rss_bytes, log = scale.rss_bytes, scale.peak_rss_bytes, scale.log


# Spectra: the training set's generating matrices, one generator per chunk --------------
def matrices(seed: int):
    """``(rng, A, B, s_true)`` drawn from ``seed`` as `scale.make_data` draws them;
    ``rng`` is left where `scale.make_data` starts drawing stars."""
    import numpy as np

    f32 = np.float32
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((D, K), dtype=f32) / f32(np.sqrt(K))
    B = rng.standard_normal((N_LABELS, K), dtype=f32) / f32(np.sqrt(K))
    s_true = rng.uniform(0.0, 0.01, D).astype(f32)
    return rng, A, B, s_true


def draw_stars(rng, m: int, A, B, s_true) -> tuple:
    """``(flux, err, label)`` of ``m`` stars, drawn from ``rng`` in the order and
    with the operations of one chunk of `scale.make_data` (float32)."""
    import numpy as np

    f32 = np.float32
    z = rng.standard_normal((m, K), dtype=f32)
    err = np.empty((m, D), f32)
    rng.random((m, D), dtype=f32, out=err)
    err *= 0.015
    err += 0.005
    flux = np.empty((m, D), f32)
    np.matmul(z, A.T, out=flux)
    noise = rng.standard_normal((m, D), dtype=f32)
    noise *= np.sqrt(err * err + s_true * s_true)
    flux += noise
    del noise
    flux[rng.random((m, D), dtype=f32) < 0.01] = np.nan
    label = z @ B.T + 0.02 * rng.standard_normal((m, N_LABELS), dtype=f32)
    return flux, err, label


def star_chunk(seed: int, index: int, m: int, mats: tuple) -> tuple:
    """Chunk ``index`` (``m`` stars) of the streamed spectra: its own generator."""
    import numpy as np

    return draw_stars(np.random.default_rng([seed, index]), m, *mats)


def check_generator(seed: int) -> None:
    """Refuse to run if `matrices`/`draw_stars` no longer reproduce
    `scale.make_data` (e.g. after a change of its draws)."""
    import numpy as np

    rng, *mats = matrices(seed)
    mine = draw_stars(rng, 8, *mats)
    theirs = scale.make_data(8, seed)
    for key, value in zip(("flux", "err", "label"), mine, strict=True):
        if not np.array_equal(value, theirs[key], equal_nan=True):
            msg = (
                f"the chunk generator no longer reproduces scale.make_data ({key}); "
                "update matrices()/draw_stars() to its draws"
            )
            raise RuntimeError(msg)


def padded_chunk(flux_arr, err_arr, index: int, chunk: int, width: int, n: int):
    """Rows of chunk ``index`` as `label_store` passes them to `TrainedModel.label`:
    float32 ``(width, D)``, padded with missing rows, non-finite values missing."""
    import numpy as np

    start = index * chunk
    rows = min(chunk, n - start)
    flux = np.full((width, D), np.nan, dtype=np.float32)
    err = np.full((width, D), np.inf, dtype=np.float32)
    flux[:rows] = flux_arr[start : start + rows]
    err[:rows] = err_arr[start : start + rows]
    missing = ~(np.isfinite(flux) & np.isfinite(err))
    flux[missing], err[missing] = np.nan, np.inf
    return flux, err


def label_width(n: int, chunk: int) -> int:
    """Rows of every `label_store` call: the chunk, or the next power of two >= N."""
    return min(chunk, 1 << (max(n, 1) - 1).bit_length())


def disk_estimate(n: int) -> int:
    """Conservative bytes on disk: the store uncompressed (float32 flux + float16
    err), two output stores of 13 columns x 8 bytes, 5% and 256 MB to spare."""
    store = n * D * (4 + 2)
    outputs = 2 * n * 13 * 8
    return int(1.05 * (store + outputs)) + 256 * 2**20


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# Workers (fresh subprocesses) -----------------------------------------------------------
def worker_train(args: argparse.Namespace) -> dict:
    import jax

    jax.config.update("jax_enable_x64", False)
    import pollux as plx

    check_generator(args.seed)
    arrays = scale.make_data(N_TRAIN, args.seed)
    data = plx.data.PolluxData(
        flux=plx.data.OutputData(arrays["flux"], err=arrays["err"]),
        label=plx.data.OutputData(arrays["label"], err=arrays["label_err"]),
    ).preprocess()
    del arrays
    model = scale.make_model()
    t0 = time.perf_counter()
    result = model.fit(data, max_iter=MAX_ITER, progress=False)
    jax.block_until_ready(result.params)
    out = {"t_train": time.perf_counter() - t0, "train_iters": int(result.n_iter)}
    model.save(args.folder / MODEL, result, data=data)
    log(f"trained on {N_TRAIN} stars: {out['t_train']:.1f} s")
    return out


def worker_write(args: argparse.Namespace) -> dict:
    import numpy as np
    import zarr
    from zarr.codecs import BloscCodec

    n, chunk = args.n, args.chunk
    _, *mats = matrices(args.seed)
    store = args.folder / STORE
    codec = BloscCodec(cname="zstd", clevel=CLEVEL, shuffle="shuffle")
    t0 = time.perf_counter()
    group = zarr.open_group(str(store), mode="w-")
    flux_arr = group.create_array(
        "flux",
        shape=(n, D),
        chunks=(chunk, D),
        dtype="float32",
        compressors=codec,
        fill_value=np.nan,
    )
    err_arr = group.create_array(
        "err",
        shape=(n, D),
        chunks=(chunk, D),
        dtype="float16",
        compressors=codec,
        fill_value=np.inf,
    )
    n_chunks = math.ceil(n / chunk)
    t_gen = 0.0
    every = max(1, n_chunks // 20)
    for i in range(n_chunks):
        start = i * chunk
        m = min(chunk, n - start)
        t1 = time.perf_counter()
        flux, err, _ = star_chunk(args.seed, i, m, mats)
        err16 = err.astype(np.float16)
        del err
        t_gen += time.perf_counter() - t1
        flux_arr[start : start + m] = flux
        err_arr[start : start + m] = err16
        del flux, err16
        if (i + 1) % every == 0 or i + 1 == n_chunks:
            log(
                f"write: {i + 1}/{n_chunks} chunks, "
                f"{time.perf_counter() - t0:.0f} s, RSS {rss_bytes() / 1e9:.2f} GB"
            )
    out = {
        "t_write": time.perf_counter() - t0,
        "t_generate": t_gen,
        "store_bytes": folder_bytes(store),
        "f32_bytes": n * D * 8,
        "write_peak_rss": peak_rss_bytes(),
    }
    return out


def worker_label(args: argparse.Namespace) -> dict:
    import jax

    jax.config.update("jax_enable_x64", False)
    import zarr

    import pollux as plx
    from pollux.streaming import label_store

    out: dict = {"rss_import": rss_bytes()}
    n, chunk = args.n, args.chunk
    trained = plx.load(args.folder / MODEL)
    src = zarr.open_group(str(args.folder / STORE), mode="r")
    # Warm-up: one label call of the shape (and dtype) label_store will use.
    flux, err = padded_chunk(
        src["flux"], src["err"], 0, chunk, label_width(n, chunk), n
    )
    t0 = time.perf_counter()
    trained.label({"flux": (flux, err)}, given=["flux"]).table()
    out["t_warmup"] = time.perf_counter() - t0
    del flux, err, src
    out["rss_warm"] = rss_bytes()
    log(f"label warm-up: {out['t_warmup']:.1f} s")
    target = args.folder / args.out
    out["resumed"] = target.exists()
    t0 = time.perf_counter()
    label_store(
        trained, args.folder / STORE, target, chunk_size=chunk, progress=args.progress
    )
    out["t_label"] = time.perf_counter() - t0
    out["peak_rss"] = peak_rss_bytes()
    out["backend"] = jax.default_backend()
    out["devices"] = [str(dev) for dev in jax.devices()]
    out["jax"] = jax.__version__
    log(f"label_store: {out['t_label']:.1f} s")
    return out


def worker_check(args: argparse.Namespace) -> dict:
    import jax

    jax.config.update("jax_enable_x64", False)
    import numpy as np
    import zarr

    import pollux as plx

    n, chunk = args.n, args.chunk
    width = label_width(n, chunk)
    trained = plx.load(args.folder / MODEL)
    src = zarr.open_group(str(args.folder / STORE), mode="r")
    group = zarr.open_group(str(args.folder / args.out), mode="r")
    columns = list(group.attrs["columns"])
    done = group["done"][...]
    out: dict = {"all_done": bool(done.all()), "n_done": int(done.sum())}
    eps = float(np.finfo(np.float32).eps)
    problems: list[str] = []
    exact = True

    def compare(col: str, stored, fresh, what: str) -> None:
        """Stored values against fresh ones: strings and integers exactly, floats
        (float32 values kept as float64) to ``ULPS`` float32 ulps."""
        nonlocal exact
        if stored.dtype.kind in "OUTiub" or col == "FLAG_REASON":
            if [str(v) for v in stored.tolist()] != [str(v) for v in fresh.tolist()]:
                problems.append(f"{what} {col}: values differ")
            return
        fresh = np.asarray(fresh, dtype=np.float64)
        if np.array_equal(stored, fresh, equal_nan=True):
            return
        exact = False
        scale_ = np.nanmax(np.abs(np.where(np.isinf(fresh), np.nan, fresh)), initial=0)
        try:
            np.testing.assert_allclose(
                stored, fresh, rtol=ULPS * eps, atol=ULPS * eps * scale_, equal_nan=True
            )
        except AssertionError as err:
            problems.append(f"{what} {col}: {str(err).strip().splitlines()[-1]}")

    # label_store labels each chunk with TrainedModel.label on a (width, D) float32
    # array padded exactly as padded_chunk pads it, so this check runs the same
    # compiled XLA programs on the same bits: on CPU the rows come out identical
    # (reported as "exact"). XLA does not promise bitwise reproducibility across
    # processes in general (thread-dependent reductions, GPU atomics), so a few
    # float32 ulps (ULPS, relative to each value and to the column's largest value)
    # are allowed; anything more means wrong rows, a stale or half-written chunk
    # or a bad resume.
    chunks = sorted({int(c) for c in args.check_chunks.split(",") if c})
    mats = matrices(args.seed)[1:]
    label_cols = [c for c in columns if c.startswith("LABEL_") and "_ERR" not in c]
    sq, count = 0.0, 0
    for i in chunks:
        start = i * chunk
        rows = min(chunk, n - start)
        flux, err = padded_chunk(src["flux"], src["err"], i, chunk, width, n)
        table = trained.label({"flux": (flux, err)}, given=["flux"]).table()
        del flux, err
        for col in columns:
            compare(
                col, group[col][start : start + rows], table[col][:rows], f"chunk {i}"
            )
        true = star_chunk(args.seed, i, rows, mats)[2]
        pred = np.stack([group[c][start : start + rows] for c in label_cols], axis=1)
        ok = np.isfinite(pred)
        sq += float(np.sum((pred - true)[ok] ** 2))
        count += int(ok.sum())
    out["checked_chunks"] = chunks
    out["label_rms"] = math.sqrt(sq / count) if count else None
    if args.compare:
        other = zarr.open_group(str(args.folder / args.compare), mode="r")
        for col in columns:
            for start in range(0, n, 64 * chunk):
                stop = min(n, start + 64 * chunk)
                compare(
                    col, group[col][start:stop], other[col][start:stop], args.compare
                )
        out["compared_with"] = args.compare
    out["equal_ok"] = not problems
    out["equal_exact"] = exact and not problems
    out["problems"] = problems[:20]
    for line in problems[:20]:
        log(f"check: {line}")
    return out


# Driver --------------------------------------------------------------------------------
def proc_status(pid: int, key: str) -> int:
    """``key`` (e.g. ``VmHWM``) of process ``pid`` in bytes, 0 if gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def done_mask(out: Path):
    """The ``done`` array of an output store, None while it does not exist."""
    import zarr

    try:
        return zarr.open_array(str(out / "done"), mode="r")[...]
    except Exception:  # not created yet (label_store renames it into place)
        return None


def run_worker(
    kind: str,
    args: argparse.Namespace,
    folder: Path,
    timeout: float,
    *,
    extra: tuple[str, ...] = (),
    tag: str | None = None,
    watch: Path | None = None,
    kill_at: int | None = None,
) -> dict:
    """Run a worker in a fresh process under ``timeout`` seconds; with ``watch``,
    follow its output store's ``done`` array (memory per chunk done) and, with
    ``kill_at``, SIGKILL it once that many chunks are done."""
    tag = tag or kind
    cmd = [
        sys.executable,
        str(HERE),
        "--worker",
        kind,
        "--n",
        str(args.n),
        "--chunk",
        str(args.chunk),
        "--seed",
        str(args.seed),
        "--folder",
        str(folder),
        *extra,
    ]
    res: dict = {}
    # n_done: chunks done when first seen (a resumed store starts above 0), then
    # VmRSS each time it grows: memory should not grow with the chunks done.
    hwm, n_done, rss_by_done = 0, None, {}
    killed = False
    result_file = folder / f"{tag}.stdout"
    t0 = time.perf_counter()
    last_look = 0.0
    with result_file.open("w") as stdout:
        # stdout: the result (a file, so it never blocks); stderr: progress, shown
        proc = subprocess.Popen(cmd, stdout=stdout)
        try:
            while proc.poll() is None:
                hwm = max(hwm, proc_status(proc.pid, "VmHWM"))
                wall = time.perf_counter() - t0
                if wall > timeout:
                    msg = f"{tag} worker exceeded its timeout of {timeout:.0f} s"
                    raise TimeoutError(msg)
                if watch is not None and wall - last_look >= 2 * POLL:
                    last_look = wall
                    mask = done_mask(watch)
                    if mask is not None:
                        if n_done is not None and int(mask.sum()) > n_done:
                            rss_by_done[int(mask.sum())] = proc_status(
                                proc.pid, "VmRSS"
                            )
                        n_done = int(mask.sum())
                    if kill_at is not None and (n_done or 0) >= kill_at:
                        hwm = max(hwm, proc_status(proc.pid, "VmHWM"))
                        proc.send_signal(signal.SIGKILL)
                        proc.wait(timeout=60)
                        killed = True
                        res["t_until_kill"] = time.perf_counter() - t0
                        break
                time.sleep(POLL)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=60)
    res["t_process"] = time.perf_counter() - t0
    res["hwm"] = hwm
    if rss_by_done:
        res["rss_by_done"] = rss_by_done
    if killed:
        res["killed"] = True
        return res
    if proc.returncode != 0:
        msg = f"{tag} worker failed (exit {proc.returncode}): {shlex.join(cmd)}"
        raise RuntimeError(msg)
    lines = result_file.read_text().strip().splitlines()
    return res | json.loads(lines[-1])


gb = scale.gb


def num(x: float | None, digits: int = 1) -> str:
    return scale.num(x, digits)


HEADER = (
    "| N | D | chunk | store GB (disk) | uncompressed f32 GB | write s | label s "
    "| stars/s | peak RSS GB | warm-up s | killed at chunk | resume s | all done "
    "| equality check | label RMS |"
)
SEP = "|" + "---|" * 15


def row(r: dict) -> str:
    if r.get("killed_at") is None:
        killed = "-"
    else:
        killed = f"{r['killed_at']}/{r['n_chunks']}"
    if r.get("equal_ok") is None:
        equal = "-"
    elif r["equal_ok"]:
        equal = "ok (exact)" if r["equal_exact"] else f"ok (<= {ULPS} ulp)"
    else:
        equal = "FAILED"
    all_done = "-" if r.get("all_done") is None else ("yes" if r["all_done"] else "no")
    return (
        f"| {r['n']} | {D} | {r['chunk']} | {gb(r.get('store_bytes'))} | "
        f"{gb(r.get('f32_bytes'))} | {num(r.get('t_write'))} | "
        f"{num(r.get('t_label'))} | {num(r.get('rate'), 0)} | "
        f"{gb(r.get('peak_rss'))} | {num(r.get('t_warmup'))} | {killed} | "
        f"{num(r.get('t_resume'))} | {all_done} | {equal} | "
        f"{num(r.get('label_rms'), 4)} |"
    )


def default_timeouts(n: int) -> dict:
    return {
        "train": T_TRAIN,
        "write": T_BASE + n / RATE_WRITE_MIN,
        "label": T_BASE + n / RATE_LABEL_MIN,
        "check": T_BASE + n / (10 * RATE_LABEL_MIN),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="spectra to label")
    ap.add_argument("--chunk", type=int, default=4096, help="rows per chunk")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--kill-at",
        type=float,
        default=0.3,
        help="fraction of the chunks done when the first run is killed",
    )
    ap.add_argument(
        "--skip-uninterrupted",
        action="store_true",
        help="run only the killed + resumed labelling (half the time)",
    )
    ap.add_argument("--folder", type=Path, help="where to make the temporary folder")
    ap.add_argument("--keep", action="store_true", help="keep the store and outputs")
    ap.add_argument(
        "--timeout", type=float, help="seconds per worker (default: grows with N)"
    )
    ap.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="label_store's progress bar",
    )
    ap.add_argument("--json", type=Path, help="also write the row here")
    ap.add_argument(
        "--worker", choices=["train", "write", "label", "check"], help=argparse.SUPPRESS
    )
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--check-chunks", default="", help=argparse.SUPPRESS)
    ap.add_argument("--compare", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.n < 1 or args.chunk < 1:
        ap.error("--n and --chunk must be positive")
    if not 0 < args.kill_at < 1:
        ap.error("--kill-at must be a fraction between 0 and 1")
    if args.worker:
        workers = {
            "train": worker_train,
            "write": worker_write,
            "label": worker_label,
            "check": worker_check,
        }
        print(json.dumps(workers[args.worker](args)))
        return

    n, chunk = args.n, args.chunk
    n_chunks = math.ceil(n / chunk)
    if n_chunks < 2:
        ap.error("the run must have at least 2 chunks to interrupt one: --n > --chunk")
    kill_at = min(n_chunks - 1, max(1, math.ceil(args.kill_at * n_chunks)))
    base = args.folder or Path(tempfile.gettempdir())
    if not base.is_dir():
        ap.error(f"--folder {base} is not a folder")
    need, free = disk_estimate(n), shutil.disk_usage(base).free
    command = shlex.join(["python", *sys.argv])
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0
    ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    print(f"command: {command}")
    print(
        f"N = {n} spectra x D = {D} pixels, chunks of {chunk} ({n_chunks} chunks), "
        f"disk needed <= {gb(need)} GB (no compression assumed), free in {base}: "
        f"{gb(free)} GB",
        flush=True,
    )
    if need > free:
        sys.exit(
            f"stream_million.py: not enough disk space in {base}: the store and "
            f"outputs may take up to {gb(need)} GB and only {gb(free)} GB are free; "
            "pass --folder on a bigger disk or a smaller --n"
        )
    timeouts = default_timeouts(n)
    if args.timeout:
        timeouts = dict.fromkeys(timeouts, args.timeout)
    folder = Path(tempfile.mkdtemp(prefix="pollux-stream-", dir=base))
    log(f"working in {folder}")
    r: dict = {"n": n, "d": D, "chunk": chunk, "n_chunks": n_chunks}
    progress = ["--progress" if args.progress else "--no-progress"]
    t_start = time.perf_counter()
    try:
        r |= run_worker("train", args, folder, timeouts["train"])
        res = run_worker("write", args, folder, timeouts["write"])
        r |= {k: v for k, v in res.items() if k != "t_process"}
        log(
            f"store: {gb(r['store_bytes'])} GB on disk "
            f"(uncompressed float32: {gb(r['f32_bytes'])} GB), {r['t_write']:.0f} s"
        )
        peaks = []
        if not args.skip_uninterrupted:
            res = run_worker(
                "label",
                args,
                folder,
                timeouts["label"],
                extra=("--out", OUT_FULL, *progress),
                watch=folder / OUT_FULL,
            )
            r["label_run"] = res
            r["t_label"], r["t_warmup"] = res["t_label"], res["t_warmup"]
            r["rate"] = n / res["t_label"]
            peaks.append(res["peak_rss"])
        first = run_worker(
            "label",
            args,
            folder,
            timeouts["label"],
            extra=("--out", OUT_RESUMED, *progress),
            tag="killed",
            watch=folder / OUT_RESUMED,
            kill_at=kill_at,
        )
        r["killed_run"] = first
        mask = done_mask(folder / OUT_RESUMED)
        if not first.get("killed") or mask is None:
            msg = "the first run ended before it could be killed (try a larger --n)"
            raise RuntimeError(msg)
        before = [int(i) for i in mask.nonzero()[0]]
        r["killed_at"] = len(before)
        peaks.append(first["hwm"])
        log(f"killed at {len(before)}/{n_chunks} chunks done")
        res = run_worker(
            "label",
            args,
            folder,
            timeouts["label"],
            extra=("--out", OUT_RESUMED, *progress),
            tag="resumed",
            watch=folder / OUT_RESUMED,
        )
        r["resumed_run"] = res
        r["t_resume"] = res["t_label"]
        r.setdefault("t_warmup", res["t_warmup"])
        peaks.append(res["peak_rss"])
        r["peak_rss"] = max(peaks)
        after = [i for i in range(n_chunks) if i not in set(before)]
        check = {before[0], before[-1], after[0], after[-1]}
        extra = ("--out", OUT_RESUMED, "--check-chunks", ",".join(map(str, check)))
        if not args.skip_uninterrupted:
            extra += ("--compare", OUT_FULL)
        res = run_worker("check", args, folder, timeouts["check"], extra=extra)
        r |= {k: v for k, v in res.items() if k not in ("t_process", "hwm")}
    finally:
        if args.keep:
            log(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    r["runtime"] = time.perf_counter() - t_start
    machine = {
        "cpu_count": os.cpu_count(),
        "cpus_usable": affinity,
        "ram_total": ram,
        "backend": r["resumed_run"]["backend"],
        "devices": r["resumed_run"]["devices"],
        "jax": r["resumed_run"]["jax"],
    }

    print()
    print(f"command: {command}")
    print(
        f"machine: {machine['cpu_count']} CPUs ({affinity} usable), {gb(ram)} GB RAM, "
        f"jax {machine['jax']} backend {machine['backend']}, devices "
        f"{machine['devices']}"
    )
    print(
        f"store: flux float32 + err float16, Blosc zstd level {CLEVEL} + shuffle, "
        f"{chunk} rows per chunk; uncompressed f32 = N x D x 8 bytes (flux + err); "
        "write s: generating + compressing + writing; label s, stars/s: the "
        "label_store call of the uninterrupted run (warm-up apart); peak RSS: "
        "largest of the labelling processes (ru_maxrss; VmHWM for the killed one); "
        "killed at chunk: chunks done when SIGKILL landed; resume s: the second "
        f"label_store call; equality: chunks {sorted(check)} against a fresh "
        "TrainedModel.label of the same rows"
        + (
            ", and every row against the uninterrupted run"
            if r.get("compared_with")
            else ""
        )
        + "; label RMS: predicted vs true labels of those chunks"
    )
    print()
    print(HEADER)
    print(SEP)
    print(row(r))
    print(f"\ntotal runtime: {r['runtime']:.0f} s")
    if args.json:
        payload = {"command": command, "machine": machine, "row": r}
        args.json.write_text(json.dumps(payload, indent=1))
    if not (r.get("all_done") and r.get("equal_ok")):
        sys.exit("stream_million.py: the resumed output is incomplete or differs")


if __name__ == "__main__":
    main()
