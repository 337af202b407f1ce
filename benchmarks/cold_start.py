"""Cold start of pollux in fresh processes, with and without JAX's persistent cache.

Two workloads, each run in fresh subprocesses (like the ``pollux predict`` command):

* ``predict`` — a quadratic (K=6) model trained on 600 APOGEE-like stars
  (`pollux.datasets.apogee_like`, float32) is saved with ``np.savez``; each process
  loads it and labels 100 other stars from their flux:
  ``infer_latents(names=["flux"])`` then ``predict(names=["label"], param_cov=...)``
  and ``unprocess``.
* ``fit`` — the seed workload: 1,024 simulated stars x (128 flux + 2 labels), K=8,
  linear outputs, float64: ``fit`` then ``infer_latents`` + ``predict``.

Cache modes: ``none`` (no persistent cache), ``pollux`` (`pollux._jaxcache.
enable_compilation_cache`: every program cached) and ``jax-default`` (only
``jax_compilation_cache_dir`` set: JAX caches only programs that took >= 1 s to
compile). With a cache, processes 1, 2 and 3 run one after the other on a fresh
cache folder; the whole sequence is repeated ``--repeat`` times.

Columns: ``import`` (``import jax, pollux``), ``first`` (wall time of the first
call, compiles included), ``warm`` (the same call again), ``compile`` (total of
JAX's ``/jax/core/compile/backend_compile_duration``: compiling, or computing the
cache key and loading from the cache), ``trace+lower`` (``jaxpr_trace_duration``
+ ``jaxpr_to_mlir_module_duration``), ``programs`` (programs compiled or loaded),
``hits`` (loaded from the persistent cache), ``written`` (new cache entries) and
``process`` (wall time of the whole subprocess, interpreter start included).

    python benchmarks/cold_start.py                   # both workloads, 3 repeats
    python benchmarks/cold_start.py --workloads predict --repeat 1
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

HERE = Path(__file__).resolve()
EVENTS = {
    "trace": "/jax/core/compile/jaxpr_trace_duration",
    "lower": "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "compile": "/jax/core/compile/backend_compile_duration",
    "retrieval": "/jax/compilation_cache/cache_retrieval_time_sec",
}
HITS = "/jax/compilation_cache/cache_hits"
WRITES = "/jax/compilation_cache/cache_misses"  # recorded when an entry is written


# Training (parent process) ----------------------------------------------------------
def train_predict_model(folder: Path, max_iter: int) -> None:
    """Fit the quadratic APOGEE-like model and save it and 100 test stars."""
    import jax

    jax.config.update("jax_enable_x64", False)
    import numpy as np
    import numpyro.distributions as dist

    import pollux as plx
    from pollux.data import OutputData, PolluxData, ShiftScalePreprocessor
    from pollux.models.transforms import LinearTransform, QuadraticTransform

    obs, _ = plx.datasets.apogee_like(n_stars=700, seed=0)
    train, test = slice(0, 600), slice(600, 700)
    arrays = {k: np.asarray(v, np.float32) for k, v in obs.items()}
    pre_f = ShiftScalePreprocessor.from_data_percentiles(arrays["flux"][train])
    pre_l = ShiftScalePreprocessor.from_data(arrays["label"][train])
    data = PolluxData(
        flux=OutputData(
            arrays["flux"][train], err=arrays["flux_err"][train], preprocessor=pre_f
        ),
        label=OutputData(
            arrays["label"][train], err=arrays["label_err"][train], preprocessor=pre_l
        ),
    ).preprocess()
    n_pix, n_labels = arrays["flux"].shape[1], arrays["label"].shape[1]
    model = _apogee_model(
        plx, dist, LinearTransform, QuadraticTransform, n_pix, n_labels
    )
    result = model.fit(data, max_iter=max_iter, progress=False)
    saved = {
        f"params/{o}/{p}": np.asarray(v)
        for o, d in result.params.items()
        if o != "latents"
        for p, v in d.items()
    }
    saved |= {f"param_cov/{o}": np.asarray(v) for o, v in result.param_cov.items()}
    saved |= {
        "pre/flux/loc": np.asarray(pre_f.loc),
        "pre/flux/scale": np.asarray(pre_f.scale),
        "test/flux": arrays["flux"][test],
        "test/flux_err": arrays["flux_err"][test],
        "meta/n_pix": np.asarray(n_pix),
        "meta/n_labels": np.asarray(n_labels),
    }
    np.savez(folder / "predict_model.npz", **saved)


def _apogee_model(plx, dist, LinearTransform, QuadraticTransform, n_pix, n_labels):
    import numpy as np

    model = plx.LuxModel(latent_size=6)
    model.register_output(
        "flux",
        QuadraticTransform(n_pix, param_priors={"s": dist.HalfNormal(np.ones(n_pix))}),
    )
    model.register_output(
        "label",
        LinearTransform(
            n_labels, param_priors={"s": dist.HalfNormal(np.ones(n_labels))}
        ),
    )
    return model


# Worker (fresh subprocess) ----------------------------------------------------------
def worker(workload: str, folder: Path, cache: str, cache_dir: str | None) -> dict:
    t_start = time.perf_counter()
    import jax

    jax.config.update("jax_enable_x64", workload == "fit")
    if cache == "pollux":
        from pollux._jaxcache import enable_compilation_cache

        enable_compilation_cache(cache_dir)
    elif cache == "jax-default":
        jax.config.update("jax_compilation_cache_dir", cache_dir)
    import numpy as np

    import pollux  # noqa: F401

    t_import = time.perf_counter() - t_start

    durations: dict[str, float] = defaultdict(float)
    counts: Counter[str] = Counter()

    def on_duration(event: str, duration: float, **kwargs) -> None:
        durations[event] += duration
        counts[event] += 1

    def on_event(event: str, **kwargs) -> None:
        counts[event] += 1

    jax.monitoring.register_event_duration_secs_listener(on_duration)
    jax.monitoring.register_event_listener(on_event)

    if workload == "predict":
        run = _predict_call(np, folder)
    else:
        run = _fit_call(np)

    t0 = time.perf_counter()
    run()
    t_first = time.perf_counter() - t0
    first = {k: durations[v] for k, v in EVENTS.items()}
    first |= {
        "programs": counts[EVENTS["compile"]],
        "hits": counts[HITS],
        "written": counts[WRITES],
    }
    t0 = time.perf_counter()
    run()
    t_warm = time.perf_counter() - t0
    return {
        "import": t_import,
        "first": t_first,
        "warm": t_warm,
        **first,
        "warm_programs": counts[EVENTS["compile"]] - first["programs"],
    }


def _predict_call(np, folder: Path):
    import numpyro.distributions as dist

    import pollux as plx
    from pollux.data import OutputData, PolluxData, ShiftScalePreprocessor
    from pollux.models.transforms import LinearTransform, QuadraticTransform

    z = np.load(folder / "predict_model.npz")
    params: dict = {}
    param_cov = {}
    for key in z.files:
        parts = key.split("/")
        if parts[0] == "params":
            params.setdefault(parts[1], {})[parts[2]] = z[key]
        elif parts[0] == "param_cov":
            param_cov[parts[1]] = z[key]
    n_pix, n_labels = int(z["meta/n_pix"]), int(z["meta/n_labels"])
    flux, flux_err = z["test/flux"], z["test/flux_err"]
    loc, scale = z["pre/flux/loc"], z["pre/flux/scale"]

    def run() -> None:
        # what `pollux predict` does once it has read the model and the spectra
        model = _apogee_model(
            plx, dist, LinearTransform, QuadraticTransform, n_pix, n_labels
        )
        pre = ShiftScalePreprocessor(loc, scale)
        test = PolluxData(
            flux=OutputData(flux, err=flux_err, preprocessor=pre)
        ).preprocess()
        post = model.infer_latents(test, params, names=["flux"])
        pred = model.predict(post, params, names=["label"], param_cov=param_cov)
        np.asarray(pred["label"].data), np.asarray(pred["label"].err)

    return run


def _fit_call(np):
    import numpyro.distributions as dist

    import pollux as plx
    from pollux.models.transforms import LinearTransform

    obs, _ = plx.datasets.make_simulated_linear_data(
        n_stars=1024, n_latents=8, n_labels=2, n_flux=128, rng=0
    )

    def run() -> None:
        data = plx.data.PolluxData(
            flux=plx.data.OutputData(obs["flux"], err=obs["flux_err"]),
            label=plx.data.OutputData(obs["label"], err=obs["label_err"]),
        )
        model = plx.LuxModel(latent_size=8)
        model.register_output(
            "flux",
            LinearTransform(128, param_priors={"s": dist.HalfNormal(np.ones(128))}),
        )
        model.register_output(
            "label",
            LinearTransform(2, param_priors={"s": dist.HalfNormal(np.ones(2))}),
        )
        result = model.fit(data, progress=False)
        post = model.infer_latents(data, result.params, names=["flux"])
        pred = model.predict(
            post, result.params, names=["label"], param_cov=result.param_cov
        )
        np.asarray(pred["label"].data)

    return run


# Driver -------------------------------------------------------------------------------
def spawn(workload: str, folder: Path, cache: str, cache_dir: Path | None) -> dict:
    cmd = [
        sys.executable,
        str(HERE),
        "--worker",
        workload,
        "--folder",
        str(folder),
        "--cache",
        cache,
    ]
    if cache_dir is not None:
        cmd += ["--cache-dir", str(cache_dir)]
    n_before = _n_entries(cache_dir)
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(f"worker failed:\n{out.stderr[-4000:]}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["process"] = wall
    res["entries"] = _n_entries(cache_dir) - n_before
    return res


def _n_entries(cache_dir: Path | None) -> int:
    if cache_dir is None or not cache_dir.exists():
        return 0
    return sum(1 for p in cache_dir.iterdir() if p.name.endswith("-cache"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workloads", nargs="+", default=["predict", "fit"])
    ap.add_argument("--modes", nargs="+", default=["none", "pollux", "jax-default"])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--train-iter", type=int, default=3, help="max_iter of training")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--cache", default="none", help=argparse.SUPPRESS)
    ap.add_argument("--cache-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.folder, args.cache, args.cache_dir)))
        return

    rows = []
    with tempfile.TemporaryDirectory(prefix="pollux-cold-") as tmp:
        folder = Path(tmp)
        if "predict" in args.workloads:
            t0 = time.perf_counter()
            train_predict_model(folder, args.train_iter)
            print(
                f"trained the predict model in {time.perf_counter() - t0:.1f} s",
                flush=True,
            )
        for workload in args.workloads:
            for rep in range(args.repeat):
                for mode in args.modes:
                    if mode == "none":
                        runs = [("no cache", None)]
                    else:
                        cache_dir = folder / f"cache-{workload}-{mode}-{rep}"
                        runs = [(f"process {i}", cache_dir) for i in (1, 2, 3)]
                    for label, cache_dir in runs:
                        res = spawn(workload, folder, mode, cache_dir)
                        res |= {
                            "workload": workload,
                            "mode": mode,
                            "run": label,
                            "repeat": rep + 1,
                        }
                        rows.append(res)
                        print(_row(res), flush=True)
    print()
    print(HEADER)
    print(SEP)
    for res in sorted(
        rows, key=lambda r: (r["workload"], r["mode"], r["run"], r["repeat"])
    ):
        print(_row(res))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


HEADER = (
    "| workload | cache | run | rep | import s | first s | warm s | compile s "
    "| trace+lower s | programs | hits | written | process s |"
)
SEP = "|" + "---|" * 13


def _row(r: dict) -> str:
    return (
        f"| {r['workload']} | {r['mode']} | {r['run']} | {r['repeat']} | "
        f"{r['import']:.2f} | {r['first']:.2f} | {r['warm']:.2f} | "
        f"{r['compile']:.2f} | {r['trace'] + r['lower']:.2f} | {r['programs']} | "
        f"{r['hits']} | {r['entries']} | {r['process']:.1f} |"
    )


if __name__ == "__main__":
    main()
