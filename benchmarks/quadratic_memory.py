"""Peak memory of a quadratic Lux fit on APOGEE-like spectra, against the size of
the data (Linux: the process's VmHWM, reset once the data are in memory).

The issue's target is a peak of at most 1.5 × the data + 2 GB. A few SQUAREM
cycles are enough: the affine start and every sweep reach their peak at once.

    python benchmarks/quadratic_memory.py --n-stars 20000 --max-iter 2
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", False)

import numpy as np  # noqa: E402

import pollux as plx  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from apogee import lux_model, make_data  # noqa: E402


def high_water_gb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) * 1024 / 1e9
    raise RuntimeError("no VmHWM in /proc/self/status")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-stars", type=int, default=20000)
    parser.add_argument("--max-iter", type=int, default=2)
    parser.add_argument("--chunk-size", type=int, default=None)
    args = parser.parse_args(argv)

    obs, _ = plx.datasets.apogee_like(args.n_stars, seed=1)
    train, _ = make_data(obs, slice(None), slice(0, 0))
    del obs
    gc.collect()
    data_gb = (
        sum(
            np.asarray(train[n].data).nbytes + np.asarray(train[n].err).nbytes
            for n in train.names
        )
        / 1e9
    )
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = high_water_gb()
    model = lux_model(6, train["flux"].size, train["label"].size, True, True)
    t0 = time.perf_counter()
    result = model.fit(
        train, progress=False, max_iter=args.max_iter, chunk_size=args.chunk_size
    )
    seconds = time.perf_counter() - t0
    peak = high_water_gb()
    print(
        f"{args.n_stars} stars x {train['flux'].size} pixels, quadratic K = 6, "
        f"float32, {result.n_iter} SQUAREM cycles, {seconds:.0f} s"
    )
    print("| data GB | process before fit GB | process peak GB | target GB |")
    print("|---|---|---|---|")
    print(f"| {data_gb:.2f} | {before:.2f} | {peak:.2f} | {1.5 * data_gb + 2:.2f} |")


if __name__ == "__main__":
    main()
