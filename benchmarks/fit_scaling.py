"""How `LuxModel.fit` scales: time per EM iteration against the bare matrix products.

For each size (n_stars x n_pix, latent size K) it simulates a linear flux + label
model with per-pixel extra scatter, runs `fit` for a fixed number of plain EM
iterations (after a JIT warm-up) and times, in the same run, the two matrix products
an iteration cannot avoid: ``λ (N×D) · vec(W_d W_dᵀ) (D×K²)`` for the latent
precisions and ``λᵀ (D×N) · vec(E[z zᵀ]) (N×K²)`` for the M-step statistics.
Prints a table; ``--sizes`` takes ``N,D,K`` triples.

    python benchmarks/fit_scaling.py                       # CPU-sized defaults
    python benchmarks/fit_scaling.py --sizes 20000,7214,32 --dtype float32
"""

from __future__ import annotations

import argparse
import time

import jax


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", nargs="+", default=["1024,128,8", "4096,1024,16", "8192,2048,32"]
    )
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    parser.add_argument("--iters", type=int, default=20)
    args = parser.parse_args(argv)
    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)

    import jax.numpy as jnp
    import numpy as np
    import numpyro.distributions as dist

    import pollux as plx
    from pollux.models.transforms import LinearTransform

    def bench(fn, repeat=5):
        jax.block_until_ready(fn())
        t0 = time.perf_counter()
        for _ in range(repeat):
            jax.block_until_ready(fn())
        return (time.perf_counter() - t0) / repeat

    print(
        f"backend={jax.default_backend()} device={jax.devices()[0]} dtype={args.dtype}"
    )
    head = (
        f"{'N':>7} {'D':>6} {'K':>4} {'iter [ms]':>10} {'2 matmuls [ms]':>15} "
        f"{'ratio':>6} {'GFLOP/s':>8}"
    )
    print(head)
    print("-" * len(head))
    for size in args.sizes:
        n, d, k = (int(v) for v in size.split(","))
        rng = np.random.default_rng(0)
        obs, _ = plx.datasets.make_simulated_linear_data(n, k, 2, d, rng=rng)
        obs["flux"] = obs["flux"] + rng.normal(size=obs["flux"].shape) * 0.3
        data = plx.data.PolluxData(
            flux=plx.data.OutputData(obs["flux"], err=obs["flux_err"]),
            label=plx.data.OutputData(obs["label"], err=obs["label_err"]),
        )
        model = plx.LuxModel(latent_size=k)
        model.register_output(
            "flux",
            LinearTransform(d, param_priors={"s": dist.HalfNormal(1.0).expand((d,))}),
        )
        model.register_output("label", LinearTransform(2))

        def run_fit(iters, model=model, data=data):
            return model.fit(data, max_iter=iters, tol=0.0, progress=False).params

        # Difference of two run lengths isolates the per-iteration cost from the
        # fixed set-up (initialisation, final posterior).
        t_long = bench(lambda: run_fit(2 * args.iters), repeat=2)
        t_short = bench(lambda: run_fit(args.iters), repeat=2)
        per_iter = (t_long - t_short) / (3 * args.iters)  # SQUAREM: 3 sweeps/iter

        dtype = jnp.float64 if args.dtype == "float64" else jnp.float32
        lam = jnp.asarray(rng.uniform(size=(n, d)), dtype)
        WW = jnp.asarray(rng.normal(size=(d, k * k)), dtype)
        S = jnp.asarray(rng.normal(size=(n, k * k)), dtype)
        mm = jax.jit(lambda lam, WW, S: (lam @ WW, lam.T @ S))
        t_mm = bench(lambda mm=mm, lam=lam, WW=WW, S=S: mm(lam, WW, S))
        flops = 2 * 2 * n * d * k * k
        print(
            f"{n:>7} {d:>6} {k:>4} {per_iter * 1e3:>10.2f} {t_mm * 1e3:>15.2f} "
            f"{per_iter / t_mm:>6.1f} {flops / t_mm / 1e9:>8.1f}"
        )


if __name__ == "__main__":
    main()
