"""A fit and labelling on a Dask `LocalCluster` against the same fit in memory.

For each N in ``--n`` (D = 7214 pixels, K = 32 latents, float32; the simulated
linear data of ``benchmarks/scale.py``) it writes a zarr store (float32 flux,
float16 errors, labels; chunks of 4,096 stars) to a temporary folder and then:

* **in memory**: the arrays read back from the store (the same values),
  ``fit(max_iter=1)`` and ``fit(max_iter=1 + iters)`` (plain EM, ``tol=0``), the
  faster of two runs of each; their difference / ``iters`` is the time of one EM
  sweep;
* **Dask**: the same two fits of `OutputData` holding ``dask.array.from_zarr``
  arrays, on a `LocalCluster` of ``--workers`` worker processes (one thread each)
  with its client as the default: the seconds per sweep the same way, and the bytes
  the client sent (parameters) and received (sums) per sweep
  (``FitResult.stats``, the arrays' own sizes);
* **labelling**: ``infer_latents`` + ``predict`` of all N stars from the store on
  the cluster (Dask arrays computed there), in stars per second;
* **a killed worker**: the ``1 + iters`` fit again while one worker process is
  killed (SIGKILL) half-way through its passes; its wall time against the
  undisturbed fit and the largest relative difference of its objective values.

Prints one table, the command line and the machine. The store is removed at the end.

    python benchmarks/distributed.py                    # N = 10,000 and 100,000
    python benchmarks/distributed.py --n 5000 --iters 2
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import os
import platform
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

# This file's folder comes first on sys.path and its name would hide the
# `distributed` package: take the folder off, and load scale.py by its path.
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
_spec = importlib.util.spec_from_file_location("scale", HERE / "scale.py")
scale = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(scale)
CHUNK, make_data, make_model = scale.CHUNK, scale.make_data, scale.make_model


def log(msg: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def write_store(n: int, seed: int, folder: Path) -> Path:
    import numpy as np
    import zarr

    arrays = make_data(n, seed)
    store = folder / f"spectra-{n}.zarr"
    group = zarr.open_group(str(store), mode="w")
    for name, dtype in [
        ("flux", "float32"),
        ("err", "float16"),
        ("label", "float32"),
        ("label_err", "float32"),
    ]:
        x = arrays.pop(name)
        z = group.create_array(
            name, shape=x.shape, chunks=(CHUNK, x.shape[1]), dtype=dtype
        )
        for start in range(0, n, CHUNK):
            z[start : start + CHUNK] = x[start : start + CHUNK].astype(np.dtype(dtype))
        del x
    return store


def read_memory(store: Path):
    import numpy as np
    import zarr

    from pollux.data import OutputData, PolluxData

    g = zarr.open_group(str(store), mode="r")
    return PolluxData(
        flux=OutputData(g["flux"][:], err=g["err"][:].astype(np.float32)),
        label=OutputData(g["label"][:], err=g["label_err"][:]),
    )


def read_dask(store: Path):
    import dask.array as da
    import numpy as np

    from pollux.data import OutputData, PolluxData

    def arr(name):
        return da.from_zarr(str(store), component=name)

    return PolluxData(
        flux=OutputData(arr("flux"), err=arr("err").astype(np.float32)),
        label=OutputData(arr("label"), err=arr("label_err")),
    )


def timed_fits(model, data, iters: int) -> tuple[float, float, object]:
    """Seconds per EM sweep: the difference of the fastest of two ``max_iter=1``
    fits and of two ``max_iter=1 + iters`` fits, over ``iters``; the seconds of
    the longer fit; its result. (The fits share their start and final pass.)"""
    kw = dict(tol=0.0, accelerate=False, progress=False)

    def best(max_iter):
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            result = model.fit(data, max_iter=max_iter, **kw)
            times.append(time.perf_counter() - t0)
        return min(times), result

    short, _ = best(1)
    long, result = best(1 + iters)
    return (long - short) / iters, long, result


def run(n: int, args, folder: Path) -> dict:
    import numpy as np
    from distributed import Client, LocalCluster

    from pollux.fit.backends import _dask

    out: dict = {"n": n}
    t0 = time.perf_counter()
    store = write_store(n, args.seed, folder)
    out["t_write"] = time.perf_counter() - t0
    log(f"N = {n}: store written in {out['t_write']:.0f} s")
    model = make_model()

    data = read_memory(store)
    model.fit(data, max_iter=1, tol=0.0, progress=False)  # compile
    out["memory"], _, ref = timed_fits(model, data, args.iters)
    ref_losses = np.asarray(ref.losses)
    log(f"in memory: {out['memory']:.2f} s per sweep")
    del data, ref
    gc.collect()

    with (
        LocalCluster(
            n_workers=args.workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            worker_dashboard_address=None,
        ) as cluster,
        Client(cluster) as client,
    ):
        lazy = read_dask(store)
        kw = dict(tol=0.0, accelerate=False, progress=False)
        model.fit(lazy, max_iter=1, **kw)  # compile on the workers
        traffic = {}
        for max_iter in (1, 1 + args.iters):
            traffic[max_iter] = model.fit(lazy, max_iter=max_iter, **kw).stats
        one, many = traffic[1], traffic[1 + args.iters]
        out["dask"], out["t_undisturbed"], fit = timed_fits(model, lazy, args.iters)
        out["sent"] = (many["bytes_sent"] - one["bytes_sent"]) / args.iters
        out["received"] = (many["bytes_received"] - one["bytes_received"]) / args.iters
        out["agree"] = float(
            np.max(np.abs(np.asarray(fit.losses) - ref_losses) / np.abs(ref_losses))
        )
        log(
            f"dask: {out['dask']:.2f} s per sweep, sent {out['sent'] / 1e6:.1f} MB, "
            f"received {out['received'] / 1e6:.1f} MB per sweep"
        )

        t0 = time.perf_counter()
        post = model.infer_latents(lazy, fit.params, names=["flux"])
        pred = model.predict(post, fit.params, names=["label"], param_cov=fit.param_cov)
        import dask

        dask.compute(pred["label"].data, pred["label"].err)
        out["rate"] = n / (time.perf_counter() - t0)
        log(f"labelling: {out['rate']:.0f} stars/s")

        passes = many["passes"]
        pids = client.run(os.getpid)
        victim = pids[sorted(pids)[0]]

        ran = {"passes": 0}
        run = _dask.Runner.run

        def counted(self, *a, **kw):  # count the passes of the fit as they run
            ran["passes"] += 1
            return run(self, *a, **kw)

        _dask.Runner.run = counted

        def kill_half_way():
            while ran["passes"] < passes // 2:
                time.sleep(0.01)
            os.kill(victim, signal.SIGKILL)

        killer = threading.Thread(target=kill_half_way, daemon=True)
        killer.start()
        t0 = time.perf_counter()
        disturbed = model.fit(lazy, max_iter=1 + args.iters, **kw)
        out["t_killed"] = time.perf_counter() - t0
        killer.join(timeout=60)
        _dask.Runner.run = run
        out["killed_agree"] = float(
            np.max(np.abs(np.asarray(disturbed.losses) - np.asarray(fit.losses)))
            / np.abs(np.asarray(fit.losses)).min()
        )
        log(
            f"killed worker: {out['t_killed']:.0f} s vs {out['t_undisturbed']:.0f} s, "
            f"objective within {out['killed_agree']:.1e}"
        )
    shutil.rmtree(store)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, nargs="+", default=[10_000, 100_000])
    p.add_argument("--iters", type=int, default=2, help="sweeps timed (default 2)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    import jax

    jax.config.update("jax_enable_x64", False)
    folder = Path(tempfile.mkdtemp(prefix="pollux-distributed-"))
    rows = []
    try:
        for n in args.n:
            rows.append(run(n, args, folder))
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    print()
    print(
        "| N | in memory s/sweep | Dask s/sweep | ratio | sent MB/sweep | "
        "received MB/sweep | objective vs memory | labelling stars/s | "
        "killed worker: s (undisturbed) | objective vs undisturbed |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['n']:,} | {r['memory']:.2f} | {r['dask']:.2f} | "
            f"{r['dask'] / r['memory']:.2f} | {r['sent'] / 1e6:.2f} | "
            f"{r['received'] / 1e6:.2f} | {r['agree']:.1e} | {r['rate']:.0f} | "
            f"{r['t_killed']:.0f} ({r['t_undisturbed']:.0f}) | "
            f"{r['killed_agree']:.1e} |"
        )
    print()
    print(f"command: python {shlex.join(sys.argv)}")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, "
        f"{args.workers} Dask workers × 1 thread, float32, D = 7214, K = 32"
    )


if __name__ == "__main__":
    main()
