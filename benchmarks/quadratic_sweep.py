"""One sweep of the quadratic (variational) EM against the bare matrix products it
cannot avoid, in the same run, on APOGEE-like spectra.

A sweep of quadratic Lux (`pollux.core.vem`) needs three products over stars and
pixels, each with the ``T = M(M+1)/2`` packed pairs of the ``M = K(K+1)/2 + K + 1``
features: the per-star statistics ``λ (N×D) · θθᵀ (D×T)``, the M-step's normal
matrices ``λᵀ (D×N) · E[φφᵀ] (N×T)`` and the expected squared residuals
``cov(φ) (N×T) · θθᵀ (T×D)`` of the s-step. This times them bare (random arrays of
the same shapes), then one compiled sweep of the benchmark model (flux and labels
quadratic, per-pixel extra scatter) and its parts, and prints a table with the
ratio. ``--fit`` also runs `LuxModel.fit` to convergence and prints its time and
number of SQUAREM cycles.

    python benchmarks/quadratic_sweep.py                    # 2,000 stars, K = 6
    python benchmarks/quadratic_sweep.py --n-stars 20000 --fit
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", False)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import pollux as plx  # noqa: E402
from pollux.core import vem  # noqa: E402
from pollux.core.em import InMemory, s_steps_with, scatter_floors  # noqa: E402
from pollux.core.features import n_features  # noqa: E402
from pollux.core.variational import e_step, star_stats  # noqa: E402
from pollux.fit._em import _INNER  # noqa: E402
from pollux.fit.checks import blocks_for  # noqa: E402
from pollux.fit.polynomial import vem_problem  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from apogee import lux_model, make_data  # noqa: E402


def bench(fn, *args, repeat: int = 5) -> float:
    """Seconds per call of a compiled ``fn(*args)`` (after one warm-up call)."""
    jax.block_until_ready(fn(*args))
    t0 = time.perf_counter()
    for _ in range(repeat):
        jax.block_until_ready(fn(*args))
    return (time.perf_counter() - t0) / repeat


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-stars", type=int, default=2000)
    parser.add_argument("--k", type=int, default=6)
    parser.add_argument("--fit", action="store_true", help="also fit to convergence")
    args = parser.parse_args(argv)

    obs, _ = plx.datasets.apogee_like(args.n_stars, seed=0)
    train, _ = make_data(obs, slice(None), slice(0, 0))
    n, d = train["flux"].data.shape
    k = args.k
    model = lux_model(k, d, train["label"].size, True, True)
    names = ("flux", "label")
    blocks = blocks_for(model, train, names, {}, "benchmark")
    problem, params = vem_problem(model, names, blocks, {}, "benchmark")
    rng = np.random.default_rng(1)
    params = tuple(
        {**p, vem.THETA: jnp.asarray(0.1 * rng.normal(size=p[vem.THETA].shape))}
        for p in params
    )
    state = vem.VState(
        params,
        jnp.asarray(rng.normal(size=(n, k)), jnp.float32),
        jnp.broadcast_to(jnp.eye(k, dtype=jnp.float32) * 4.0, (n, k, k)),
    )

    m = n_features(k)
    t = m * (m + 1) // 2
    lam = jnp.asarray(rng.uniform(size=(n, d)), jnp.float32)
    outer = jnp.asarray(rng.normal(size=(d, t)), jnp.float32)
    packed = jnp.asarray(rng.normal(size=(n, t)), jnp.float32)
    products = {  # arguments, not closures: XLA would fold constants
        "statistics λ·θθᵀ": (jax.jit(lambda a, b: a @ b), lam, outer),
        "normal matrices λᵀ·E[φφᵀ]": (jax.jit(lambda a, b: a.T @ b), lam, packed),
        "residuals cov(φ)·θθᵀ": (jax.jit(lambda a, b: a @ b.T), packed, outer),
    }
    rows = [(name, bench(*call)) for name, call in products.items()]
    bare = sum(s for _, s in rows)

    floors = scatter_floors(problem)
    sweep = jax.jit(lambda pr, st: vem._sweep(pr, floors, st, _INNER))
    pass_a = jax.jit(lambda pr, st: vem._posterior_pass(pr, st, _INNER))
    stats = jax.jit(
        lambda pr, ps: star_stats(
            pr.blocks, vem._thetas(ps), pr.index(), vem._s2s(pr, ps), pr.k
        )
    )
    estep = jax.jit(lambda st, s: e_step(s, st.mean, st.prec, _INNER))

    def m_and_s(pr, st, a):
        params = vem._solve(pr, st.params, a.sums)
        kept = (a.mean, a.cov)
        return s_steps_with(InMemory(pr, vem._resid), pr, floors, params, kept)

    a = pass_a(problem, state)
    parts = [
        ("  pass A (stats, E-step, sums)", bench(pass_a, problem, state)),
        ("    statistics (all outputs)", bench(stats, problem, state.params)),
        ("    E-step", bench(estep, state, stats(problem, state.params))),
        ("  M-step solve and s-step", bench(jax.jit(m_and_s), problem, state, a)),
    ]
    t_sweep = bench(sweep, problem, state)

    # As `fit` runs them: several sweeps (SQUAREM cycles) in one compiled loop,
    # which reuses its (N, D) temporaries; a single call pays the first touch of
    # their freshly allocated pages (~30 ms for each 58 MB array here).
    def looped(cycles: int, accelerate: bool):
        return lambda st: vem.vem_chunk(
            problem,
            st,
            jnp.inf,
            jnp.asarray(-1.0),
            jnp.asarray(cycles),
            cycles,
            _INNER,
            accelerate,
        )

    t0 = time.perf_counter()
    jax.block_until_ready(looped(3, True)(state))
    t_compile = time.perf_counter() - t0
    t_loop = bench(looped(3, True), state, repeat=2) / 9

    print(
        f"quadratic sweep: {n} stars x {d} pixels, K = {k} (M = {m}, T = {t}), "
        f"float32, {jax.devices()[0]}"
    )
    print(f"| {'step':<30} | {'ms':>8} |")
    print(f"|{'-' * 32}|{'-' * 10}|")
    for name, sec in rows:
        print(f"| {name:<30} | {sec * 1e3:>8.1f} |")
    print(f"| {'bare products, together':<30} | {bare * 1e3:>8.1f} |")
    print(f"| {'one sweep':<30} | {t_sweep * 1e3:>8.1f} |")
    for name, sec in parts:
        print(f"| {name:<30} | {sec * 1e3:>8.1f} |")
    print(f"| {'sweep in the fit loop (SQUAREM)':<30} | {t_loop * 1e3:>8.1f} |")
    print(
        f"sweep / bare products: {t_sweep / bare:.2f} (one call), "
        f"{t_loop / bare:.2f} (in the fit's loop)"
    )
    print(f"compile + first run of the SQUAREM loop: {t_compile:.1f} s")

    if args.fit:
        t0 = time.perf_counter()
        result = model.fit(train, progress=False)
        print(
            f"fit: {time.perf_counter() - t0:.1f} s, {result.n_iter} SQUAREM cycles "
            f"(3 sweeps each), converged={result.converged}, "
            f"objective {float(result.losses[-1]):.7g}"
        )


if __name__ == "__main__":
    main()
