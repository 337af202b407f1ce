"""Every compiled loop of pollux finishes: repeated fits, labelling and MAP fits on
fresh data, in a fresh interpreter, each call under a watchdog.

jaxlib 0.10's LAPACK kernels deadlock XLA:CPU when several batched calls run at
once (docs/troubleshooting.md); pollux's kernels avoid them. A hang shows here as a
failure that names the call that hung, never as a CI job that hangs. The sizes are
those at which pollux 0.1.0 hung in the first fit of ``hang_repro.py`` (3 of 3 runs,
2-core x86-64, jaxlib 0.10.2); a deadlock depends on thread timing, and this script
did not hang with that code in one run on a loaded machine, so the deterministic
guard is ``tests/core/test_linalg.py::test_compiled_kernels_make_no_lapack_calls``.
"""

from __future__ import annotations

import textwrap

import pytest

LIMIT_S = 120  # per call; a normal call here takes a few seconds at most

SCRIPT = textwrap.dedent(
    """
    import json, os, sys, threading, time
    import jax
    jax.config.update("jax_enable_x64", sys.argv[1] == "float64")
    import numpy as np
    import numpyro
    import numpyro.distributions as dist
    import pollux as plx
    from pollux.models.transforms import LinearTransform

    n, d, k, n_fits, limit = (int(a) for a in sys.argv[2:7])
    dtype = sys.argv[1]
    state = {"call": None, "t": 0.0}

    def watchdog():
        while True:
            time.sleep(0.5)
            if state["call"] and time.perf_counter() - state["t"] > limit:
                print(f"HANG in {state['call']} (over {limit} s)", flush=True)
                os._exit(3)

    threading.Thread(target=watchdog, daemon=True).start()

    def timed(name, fn):
        state["call"], state["t"] = name, time.perf_counter()
        out = fn()
        jax.block_until_ready(out)
        state["call"] = None
        return out

    model = plx.LuxModel(latent_size=k)
    model.register_output("flux", LinearTransform(d, param_priors={
        "A": dist.Normal(0, 1), "s": dist.HalfNormal(1.0).expand((d,))}))
    model.register_output("label", LinearTransform(4, param_priors={
        "s": dist.HalfNormal(1.0).expand((4,))}))
    for i in range(n_fits):
        rng = np.random.default_rng(i)
        z = rng.normal(size=(n, 8))
        flux = z @ rng.normal(size=(8, d)) * 0.05 + rng.normal(size=(n, d)) * 0.01
        flux[rng.random((n, d)) < 0.01] = np.nan
        label = z[:, :4] + rng.normal(size=(n, 4)) * 0.05
        data = plx.data.PolluxData(
            flux=plx.data.OutputData(flux.astype(dtype), err=np.full((n, d), 0.01, dtype)),
            label=plx.data.OutputData(label.astype(dtype), err=np.full((n, 4), 0.05, dtype)),
        )
        result = timed(f"fit {i}", lambda: model.fit(data, progress=False))
        post = timed(f"infer_latents {i}",
                     lambda: model.infer_latents(data, result.params, names=["flux"]))
        timed(f"predict {i}", lambda: model.predict(
            post, result.params, names=["label"], param_cov=result.param_cov)["label"].err)
    params, _ = timed("optimize", lambda: model.optimize(
        data[:200], num_steps=200, rng_key=0, optimizer=numpyro.optim.Adam(1e-3),
        svi_run_kwargs={"progress_bar": False}))
    print("RESULT" + json.dumps({"n_iter": result.n_iter,
                                 "finite": bool(np.isfinite(result.losses).all())}))
    """
)


@pytest.mark.slow
@pytest.mark.parametrize(
    "dtype, size",
    [("float64", (2000, 1000, 16, 3)), ("float32", (2000, 1000, 16, 3))],
)
def test_repeated_fits_and_labelling_finish(run_fresh, dtype, size):
    n, d, k, n_fits = size
    out = run_fresh(
        SCRIPT,
        dtype,
        *map(str, (n, d, k, n_fits, LIMIT_S)),
        timeout=LIMIT_S * (3 * n_fits + 2),
    )
    assert out["finite"]
    assert out["n_iter"] >= 1
