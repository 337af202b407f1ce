"""How pollux scales to survey-sized training sets: time, memory and labelling rate.

For each N in ``--n`` (D = 7214 pixels, K = 32 latents, float32, JAX x64 off) it
simulates a linear model cheaply (chunk by chunk into preallocated float32 arrays:
random ``A`` (D, K), ``z ~ N(0, I)``, ``flux = z Aᵀ + noise`` with per-pixel errors
``U(0.005, 0.02)`` and a small per-pixel extra scatter, 1% NaN pixels, and 4 labels
linear in ``z``) and fits a `LuxModel` with a `LinearTransform` flux output (per-pixel
extra scatter ``s``) and a 4-label `LinearTransform` output. Two fresh subprocesses
per N:

* ``fit``: the first ``fit(max_iter=3)`` (cold: compiles included) and the same
  again (warm); then ``fit(max_iter=1)`` and ``fit(max_iter=1 + iters)``, whose
  difference gives the seconds per EM sweep (all fits ``accelerate=False, tol=0``);
  the peak resident memory of the process up to there (``ru_maxrss``, data
  generation and preprocessing included) and of the fits alone (Linux ``VmHWM``,
  reset once the preprocessed data are ready), the latter against the data's own
  size (flux + err bytes); then, in the same process, the two bare matrix
  products an EM sweep cannot avoid, jitted, warmed, median of 3:
  ``einsum("nd,nk->dk", W (N, D), Z2 (N, K²))`` and ``W (N, D) @ V (D, K²)``.
  The model is saved with ``model.save(path, result, data=data)``.
* ``label``: the first ``infer_latents`` + ``predict`` of 1,000 stars (cold) and
  the same again (warm); labelling throughput from memory (``infer_latents`` +
  ``predict`` on chunks of 4,096 stars, warmed) and, unless ``--skip-zarr``, from a
  zarr store (float32 flux, float16 errors, written to a temporary folder and
  removed afterwards) with `pollux.streaming.label_store` (warmed with one
  ``TrainedModel.label`` call on a chunk of the same shape).

Before each N it prints the memory estimate (2.4 x the data's size, as measured for
the fit at N = 20,000) and skips an N whose estimate exceeds the available RAM.
Prints one table, the command line and the machine; ``--json`` writes the rows.

    python benchmarks/scale.py                         # N = 2,000, 20,000, 100,000
    python benchmarks/scale.py --n 2000 --iters 2 --skip-zarr
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
D, K, N_LABELS = 7214, 32, 4
CHUNK = 4096  # labelling chunk (stars)
N_COLD = 1000  # stars of the cold/warm labelling call
FIT_MEMORY_FACTOR = 2.4  # measured peak fit memory / (flux + err bytes), N = 20k


# Data and model -----------------------------------------------------------------------
def make_data(n: int, seed: int) -> dict:
    """Simulated float32 observations, generated ``CHUNK`` stars at a time."""
    import numpy as np

    f32 = np.float32
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((D, K), dtype=f32) / f32(np.sqrt(K))  # unit-variance flux
    B = rng.standard_normal((N_LABELS, K), dtype=f32) / f32(np.sqrt(K))
    s_true = rng.uniform(0.0, 0.01, D).astype(f32)
    flux = np.empty((n, D), f32)
    err = np.empty((n, D), f32)
    label = np.empty((n, N_LABELS), f32)
    label_err = np.full((n, N_LABELS), 0.02, f32)
    for start in range(0, n, CHUNK):
        m = min(CHUNK, n - start)
        z = rng.standard_normal((m, K), dtype=f32)
        e = err[start : start + m]
        rng.random((m, D), dtype=f32, out=e)
        e *= 0.015
        e += 0.005
        f = flux[start : start + m]
        np.matmul(z, A.T, out=f)
        noise = rng.standard_normal((m, D), dtype=f32)
        noise *= np.sqrt(e * e + s_true * s_true)
        f += noise
        f[rng.random((m, D), dtype=f32) < 0.01] = np.nan
        label[start : start + m] = z @ B.T + 0.02 * rng.standard_normal(
            (m, N_LABELS), dtype=f32
        )
    return {"flux": flux, "err": err, "label": label, "label_err": label_err}


def make_model():
    import numpyro.distributions as dist

    import pollux as plx
    from pollux.models.transforms import LinearTransform

    model = plx.LuxModel(latent_size=K)
    model.register_output(
        "flux",
        LinearTransform(D, param_priors={"s": dist.HalfNormal(1.0).expand((D,))}),
    )
    model.register_output("label", LinearTransform(N_LABELS))
    return model


def rss_bytes() -> int:
    """Current resident memory of this process (VmRSS), 0 if unknown."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far (``ru_maxrss``)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux: KiB


def reset_peak():
    """Reset the peak resident memory (Linux ``VmHWM``); returns a function that
    reads the peak since then (None where that is not possible)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return lambda: None

    def peak() -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return None

    return peak


def log(msg: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# Workers (fresh subprocesses) -----------------------------------------------------------
def worker_fit(n: int, seed: int, iters: int, folder: Path) -> dict:
    import jax

    jax.config.update("jax_enable_x64", False)
    import jax.numpy as jnp
    import numpy as np

    import pollux as plx

    out: dict = {"rss_import": rss_bytes()}
    t0 = time.perf_counter()
    arrays = make_data(n, seed)
    out["t_data"] = time.perf_counter() - t0
    out["data_bytes"] = arrays["flux"].nbytes + arrays["err"].nbytes
    data = plx.data.PolluxData(
        flux=plx.data.OutputData(arrays["flux"], err=arrays["err"]),
        label=plx.data.OutputData(arrays["label"], err=arrays["label_err"]),
    ).preprocess()
    del arrays  # the PolluxData holds the values now
    jax.block_until_ready(data)  # preprocessing runs asynchronously
    gc.collect()  # the raw PolluxData (a temporary above) is freed by the collector
    out["rss_data"] = rss_bytes()
    out["peak_data"] = peak_rss_bytes()
    fit_peak = reset_peak()
    log(f"data: {out['t_data']:.1f} s, {out['data_bytes'] / 1e9:.2f} GB flux + err")
    model = make_model()

    def fit(max_iter: int):
        result = model.fit(
            data, max_iter=max_iter, tol=0.0, progress=False, accelerate=False
        )
        jax.block_until_ready(result.params)
        return result

    def timed(max_iter: int):
        t0 = time.perf_counter()
        result = fit(max_iter)
        return time.perf_counter() - t0, result

    out["t_fit_cold"], _ = timed(3)
    log(f"fit(max_iter=3) cold: {out['t_fit_cold']:.1f} s")
    out["t_fit_warm"], _ = timed(3)
    log(f"fit(max_iter=3) warm: {out['t_fit_warm']:.1f} s")
    out["t_fit_1"], _ = timed(1)
    out["t_fit_long"], result = timed(1 + iters)
    out["n_iter_long"] = int(result.n_iter)
    out["t_sweep"] = (out["t_fit_long"] - out["t_fit_1"]) / iters
    log(
        f"fit(max_iter=1): {out['t_fit_1']:.1f} s, fit(max_iter={1 + iters}): "
        f"{out['t_fit_long']:.1f} s -> {out['t_sweep']:.2f} s per sweep"
    )
    out["peak_rss"] = peak_rss_bytes()
    out["peak_fit"] = fit_peak()
    model.save(folder / "model.pollux", result, data=data, overwrite=True)
    data = result = None  # free them (the closure `fit` holds `data` by name)

    # The two matrix products of a sweep, alone.
    rng = np.random.default_rng(seed + 1)
    W = jnp.asarray(rng.random((n, D), dtype=np.float32))
    Z2 = jnp.asarray(rng.standard_normal((n, K * K), dtype=np.float32))
    V = jnp.asarray(rng.standard_normal((D, K * K), dtype=np.float32))
    products = {
        "t_mm_stats": (jax.jit(lambda w, z: jnp.einsum("nd,nk->dk", w, z)), (W, Z2)),
        "t_mm_prec": (jax.jit(lambda w, v: w @ v), (W, V)),
    }
    for key, (fn, args) in products.items():
        jax.block_until_ready(fn(*args))
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times.append(time.perf_counter() - t0)
        out[key] = float(np.median(times))
    out["t_mm"] = out["t_mm_stats"] + out["t_mm_prec"]
    log(f"products: einsum {out['t_mm_stats']:.2f} s + matmul {out['t_mm_prec']:.2f} s")
    out["backend"] = jax.default_backend()
    out["devices"] = [str(dev) for dev in jax.devices()]
    return out


def worker_label(n: int, seed: int, folder: Path, skip_zarr: bool) -> dict:
    import jax

    jax.config.update("jax_enable_x64", False)
    import numpy as np

    import pollux as plx

    arrays = make_data(n, seed)
    flux, err = arrays["flux"], arrays["err"]
    del arrays
    trained = plx.load(folder / "model.pollux")
    model, fitted = trained.lux, trained.result

    def label(f, e) -> None:
        data = plx.data.PolluxData(flux=plx.data.OutputData(f, err=e)).preprocess()
        post = model.infer_latents(data, fitted.params, names=["flux"])
        pred = model.predict(
            post, fitted.params, names=["label"], param_cov=fitted.param_cov
        )
        np.asarray(pred["label"].data), np.asarray(pred["label"].err)

    out: dict = {}
    m = min(N_COLD, n)
    for key in ("t_label_cold", "t_label_warm"):
        t0 = time.perf_counter()
        label(flux[:m], err[:m])
        out[key] = time.perf_counter() - t0
    log(
        f"label {m} stars: cold {out['t_label_cold']:.1f} s, "
        f"warm {out['t_label_warm']:.1f} s"
    )

    # From memory: chunks of CHUNK stars (the last one padded, so one shape).
    width = min(CHUNK, n)

    def chunk(start: int) -> tuple:
        rows = min(width, n - start)
        if rows == width:
            return flux[start : start + rows], err[start : start + rows]
        f = np.full((width, D), np.nan, np.float32)
        e = np.full((width, D), np.inf, np.float32)
        f[:rows], e[:rows] = flux[start:], err[start:]
        return f, e

    label(*chunk(0))  # compile the chunk shape
    t0 = time.perf_counter()
    for start in range(0, n, width):
        label(*chunk(start))
    out["t_label_memory"] = time.perf_counter() - t0
    out["rate_memory"] = n / out["t_label_memory"]
    log(f"from memory: {out['rate_memory']:.0f} stars/s")

    if not skip_zarr:
        import zarr

        from pollux.streaming import label_store

        tmp = Path(tempfile.mkdtemp(prefix="zarr-", dir=folder))
        try:
            store = tmp / "spectra.zarr"
            t0 = time.perf_counter()
            group = zarr.open_group(str(store), mode="w")
            zf = group.create_array(
                "flux", shape=(n, D), chunks=(CHUNK, D), dtype="float32"
            )
            ze = group.create_array(
                "err", shape=(n, D), chunks=(CHUNK, D), dtype="float16"
            )
            for start in range(0, n, CHUNK):
                stop = min(start + CHUNK, n)
                zf[start:stop] = flux[start:stop]
                ze[start:stop] = err[start:stop].astype(np.float16)
            out["t_zarr_write"] = time.perf_counter() - t0
            out["zarr_bytes"] = sum(
                p.stat().st_size for p in store.rglob("*") if p.is_file()
            )
            # label_store pads to min(chunk, next power of two >= n) rows: warm that
            # shape with the same call label_store makes.
            lwidth = min(CHUNK, 1 << (max(n, 1) - 1).bit_length())
            f = np.full((lwidth, D), np.nan, np.float32)
            e = np.full((lwidth, D), np.inf, np.float32)
            rows = min(lwidth, n)
            f[:rows] = flux[:rows]
            e[:rows] = err[:rows].astype(np.float16)
            t0 = time.perf_counter()
            trained.label({"flux": (f, e)}, given=["flux"]).table()
            out["t_zarr_warmup"] = time.perf_counter() - t0
            log(f"label_store warm-up (one label call): {out['t_zarr_warmup']:.1f} s")
            t0 = time.perf_counter()
            label_store(trained, store, tmp / "labels.zarr", progress=False)
            out["t_label_zarr"] = time.perf_counter() - t0
            out["rate_zarr"] = n / out["t_label_zarr"]
            log(
                f"zarr: written in {out['t_zarr_write']:.1f} s "
                f"({out['zarr_bytes'] / 1e9:.2f} GB), label_store "
                f"{out['rate_zarr']:.0f} stars/s"
            )
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


# Driver --------------------------------------------------------------------------------
def spawn(kind: str, n: int, args: argparse.Namespace, folder: Path) -> dict:
    cmd = [
        sys.executable,
        str(HERE),
        "--worker",
        kind,
        "--n",
        str(n),
        "--iters",
        str(args.iters),
        "--seed",
        str(args.seed),
        "--folder",
        str(folder),
    ]
    if args.skip_zarr:
        cmd.append("--skip-zarr")
    t0 = time.perf_counter()
    # stdout: the result (last line); stderr: progress, passed through
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        msg = f"{kind} worker for N={n} failed (exit {proc.returncode})"
        raise RuntimeError(msg)
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res[f"t_process_{kind}"] = wall
    return res


def available_ram() -> int:
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def total_ram() -> int:
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def gb(x: float | None) -> str:
    return "-" if x is None else f"{x / 1e9:.2f}"


def num(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


HEADER = (
    "| N | data GB | est. GB | peak RSS GB | fit peak GB | fit peak/data "
    "| sweep s | 2 products s | sweep/products | fit cold s | fit warm s "
    "| label cold s | label warm s | memory stars/s | zarr stars/s |"
)
SEP = "|" + "---|" * 15


def row(r: dict) -> str:
    if r.get("skipped"):
        return f"| {r['n']} | {gb(r['data_bytes'])} | {gb(r['est_bytes'])} | " + (
            f"skipped: {r['skipped']} |" + " |" * 11
        )
    return (
        f"| {r['n']} | {gb(r['data_bytes'])} | {gb(r['est_bytes'])} | "
        f"{gb(r['peak_rss'])} | {gb(r.get('peak_fit'))} | "
        f"{num(r.get('peak_ratio'), 1)} | {num(r['t_sweep'])} | {num(r['t_mm'])} | "
        f"{num(r['sweep_ratio'], 1)} | {num(r['t_fit_cold'], 1)} | "
        f"{num(r['t_fit_warm'], 1)} | {num(r['t_label_cold'], 1)} | "
        f"{num(r['t_label_warm'], 2)} | {num(r['rate_memory'], 0)} | "
        f"{num(r.get('rate_zarr'), 0)} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[2000, 20000, 100000])
    ap.add_argument("--iters", type=int, default=3, help="EM sweeps to time")
    ap.add_argument("--skip-zarr", action="store_true", help="no label_store run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="also write the rows here")
    ap.add_argument("--worker", choices=["fit", "label"], help=argparse.SUPPRESS)
    ap.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.iters < 1 or any(n < 1 for n in args.n):
        ap.error("--n and --iters must be positive")
    if args.worker:
        (n,) = args.n
        if args.worker == "fit":
            res = worker_fit(n, args.seed, args.iters, args.folder)
        else:
            res = worker_label(n, args.seed, args.folder, args.skip_zarr)
        print(json.dumps(res))
        return

    import jax

    jax.config.update("jax_enable_x64", False)

    command = shlex.join(["python", *sys.argv])
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0
    machine = {
        "cpu_count": os.cpu_count(),
        "cpus_usable": affinity,
        "ram_total": total_ram(),
        "backend": jax.default_backend(),
        "devices": [str(dev) for dev in jax.devices()],
        "jax": jax.__version__,
    }
    print(f"command: {command}")
    print(
        f"machine: {machine['cpu_count']} CPUs ({affinity} usable), "
        f"{gb(machine['ram_total'])} GB RAM, jax {machine['jax']} backend "
        f"{machine['backend']}, devices {machine['devices']}"
    )
    print(f"D = {D} pixels, K = {K} latents, {N_LABELS} labels, float32\n", flush=True)

    rows = []
    t_start = time.perf_counter()
    for n in args.n:
        data_bytes = 2 * n * D * 4
        est = FIT_MEMORY_FACTOR * data_bytes
        avail = available_ram()
        print(
            f"N = {n}: data {gb(data_bytes)} GB, estimated fit memory "
            f"{gb(est)} GB ({FIT_MEMORY_FACTOR} x data), available {gb(avail)} GB",
            flush=True,
        )
        r: dict = {"n": n, "data_bytes": data_bytes, "est_bytes": est}
        if est > avail:
            r["skipped"] = "estimate exceeds available RAM"
            print(
                f"  skipped N = {n}: estimated {gb(est)} GB > {gb(avail)} GB available",
                flush=True,
            )
            rows.append(r)
            continue
        with tempfile.TemporaryDirectory(prefix="pollux-scale-") as tmp:
            r |= spawn("fit", n, args, Path(tmp))
            r |= spawn("label", n, args, Path(tmp))
        if r.get("peak_fit") is not None:
            r["peak_ratio"] = r["peak_fit"] / r["data_bytes"]
        r["sweep_ratio"] = r["t_sweep"] / r["t_mm"]
        rows.append(r)
        print(row(r), flush=True)
    runtime = time.perf_counter() - t_start

    print()
    print(f"command: {command}")
    print(
        f"machine: {machine['cpu_count']} CPUs ({affinity} usable), "
        f"backend {machine['backend']}, devices {machine['devices']}"
    )
    print(
        f"sweep: (fit(max_iter=1+{args.iters}) - fit(max_iter=1)) / {args.iters}, "
        "accelerate=False, tol=0; 2 products: einsum('nd,nk->dk') (N,D)x(N,K²) + "
        "(N,D)@(D,K²), median of 3; peak RSS: ru_maxrss of the fit process "
        "(with data generation and preprocessing); fit peak: VmHWM over the fits "
        "alone (data resident), against the data's size; label: infer_latents + predict, "
        f"{N_COLD} stars (at most N) cold/warm, chunks of {CHUNK} for memory "
        "stars/s; zarr: label_store on float32 flux + float16 err"
    )
    print()
    print(HEADER)
    print(SEP)
    for r in rows:
        print(row(r))
    print(f"\ntotal runtime: {runtime:.0f} s")
    if args.json:
        payload = {
            "command": command,
            "machine": machine,
            "runtime": runtime,
            "rows": rows,
        }
        args.json.write_text(json.dumps(payload, indent=1))


if __name__ == "__main__":
    main()
