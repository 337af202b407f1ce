"""Standalone reproducer of an XLA:CPU deadlock in jaxlib 0.10 (no pollux needed).

jaxlib 0.10's CPU LAPACK kernels (``lapack_*potrf_ffi``, ``lapack_*trsm_ffi``, …)
split a batch of matrices over XLA:CPU's intra-op thread pool and then *block* a
pool thread until the pieces are done (``jax::ParallelBatchMap`` →
``BlockingCounter::Wait``). When XLA runs as many independent batched LAPACK calls
at once as the pool has threads (one per CPU), every pool thread waits for pieces
that no free thread is left to run: the program never returns, at 0% CPU.

This script compiles ``--calls-per-program`` independent batched triangular
solves (or Cholesky factorisations) into one program and runs it ``--calls``
times on fresh data under a watchdog. It prints ``OK`` or ``HANG`` (exit status
3, after ``--limit`` seconds); ``--pure`` uses pollux's loop-based kernels
(`pollux.core.linalg`) instead of LAPACK, for comparison.

    python benchmarks/xla_cpu_hang.py [--calls 200] [--batch 2000] [--k 16]
        [--independent 4] [--op trsm|potrf] [--limit 20] [--pure]

See docs/troubleshooting.md for what it gave on each jax version.
"""

from __future__ import annotations

import argparse
import os
import platform
import threading
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import jax.scipy.linalg as jsl  # noqa: E402
import numpy as np  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--batch", type=int, default=2000)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--independent", type=int, default=4)
    ap.add_argument("--op", choices=["trsm", "potrf"], default="trsm")
    ap.add_argument("--limit", type=float, default=20.0)
    ap.add_argument("--pure", action="store_true")
    a = ap.parse_args()

    if a.pure:
        from pollux.core import linalg

        chol, tri = linalg.cholesky, linalg.solve_lower
    else:
        chol = jnp.linalg.cholesky

        def tri(L, B):
            return jsl.solve_triangular(L, B, lower=True)

    @jax.jit
    def program(Ps, Bs):
        # Independent calls: XLA may run all of them at the same time.
        if a.op == "potrf":
            return [chol(P) for P in Ps]
        return [tri(P, B) for P, B in zip(Ps, Bs, strict=True)]

    print(
        f"jax {jax.__version__}, jaxlib {jax.lib.__version__}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs, {a.independent} independent batched {a.op} of "
        f"{a.batch} x {a.k}x{a.k} per program, {'pure JAX' if a.pure else 'LAPACK'}",
        flush=True,
    )
    state = {"t": None, "i": -1}

    def watchdog():
        while True:
            time.sleep(0.2)
            t = state["t"]
            if t is not None and time.perf_counter() - t > a.limit:
                print(f"HANG at call {state['i']} (over {a.limit:.0f} s)", flush=True)
                os._exit(3)

    threading.Thread(target=watchdog, daemon=True).start()
    times = []
    for i in range(a.calls):
        rng = np.random.default_rng(i)
        X = rng.normal(size=(a.independent, a.batch, a.k, a.k))
        Ps = list(np.eye(a.k) * a.k + X @ np.swapaxes(X, -1, -2) / a.k)
        Bs = list(rng.normal(size=(a.independent, a.batch, a.k, a.k)))
        if a.op == "trsm":
            Ps = [np.linalg.cholesky(P) for P in Ps]
        state["i"], state["t"] = i, time.perf_counter()
        jax.block_until_ready(program(Ps, Bs))
        times.append(time.perf_counter() - state["t"])
        state["t"] = None
    print(f"OK {a.calls} calls, median {np.median(times) * 1e3:.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
