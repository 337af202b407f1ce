"""What `LuxModel.calibrate` costs for quadratic Lux on APOGEE-like spectra, with
every fold started from one flux-only fit of all the training stars (the
default) and with every fold fitted from scratch, in the same run.

Prints a table: the time of `fit`, of the flux-only start, of each fold's fit and
its SQUAREM cycles, of `calibrate` as a whole, and the held-out RMSE and z-score
spread of the calibrated model on separate test stars, for both ways.

    python benchmarks/calibrate_cost.py                 # 2,000 training stars
    python benchmarks/calibrate_cost.py --n-train 500 --n-test 500   # quick
"""

from __future__ import annotations

import argparse
import inspect
import sys
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", False)

import numpy as np  # noqa: E402

import pollux as plx  # noqa: E402
from pollux.fit import heldout  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from apogee import lux_model, make_data  # noqa: E402


class Timed:
    """Records the time and cycles of every fit that a calibrate runs."""

    def __init__(self, model):
        self.model, self.fits = model, []
        self._fit = model.fit
        self.__signature__ = inspect.signature(model.fit)  # as calibrate sees it

    def __call__(self, data, **kwargs):
        t0 = time.perf_counter()
        result = self._fit(data, **kwargs)
        kind = "flux-only start" if kwargs.get("names") == ["flux"] else "fold"
        self.fits.append((kind, time.perf_counter() - t0, result.n_iter))
        return result


def scores(model, result, test, truth, snr):
    post = model.infer_latents(test, result.params, names=["flux"])
    pred = model.predict(
        post, result.params, names=["label"], param_cov=result.param_cov
    )
    phys = test.unprocess(pred)["label"]
    mean, err = np.asarray(phys.data), np.asarray(phys.err)
    sel = (snr >= 60) & (snr < 120)
    r = mean[sel] - truth[sel]
    return np.sqrt(np.mean(r**2, axis=0)), np.std(r / err[sel], axis=0)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-test", type=int, default=2000)
    parser.add_argument("--folds", type=int, default=5)
    args = parser.parse_args(argv)

    n = args.n_train
    obs, truth = plx.datasets.apogee_like(n + args.n_test, seed=0)
    train, test = make_data(obs, slice(0, n), slice(n, None))
    true_labels, snr = truth["label"][n:], truth["snr"][n:]
    model = lux_model(6, train["flux"].size, train["label"].size, True, True)
    t0 = time.perf_counter()
    result = model.fit(train, progress=False)
    t_fit = time.perf_counter() - t0
    print(f"fit: {t_fit:.1f} s, {result.n_iter} SQUAREM cycles", flush=True)

    rows = []
    for way in ("flux-only start", "from scratch"):
        timed = Timed(model)
        model.fit = timed
        original = heldout.given_start
        if way == "from scratch":
            heldout.given_start = lambda *a, **k: None
        try:
            t0 = time.perf_counter()
            cal = model.calibrate(train, result, folds=args.folds, progress=False)
            t_cal = time.perf_counter() - t0
        finally:
            heldout.given_start = original
            del model.fit
        rmse, z = scores(model, cal, test, true_labels, snr)
        rows.append((way, t_cal, timed.fits, rmse, z))
        print(way, f"{t_cal:.1f} s", timed.fits, flush=True)

    print()
    print(
        f"{n} training stars x {train['flux'].size} pixels, quadratic K = 6, "
        f"float32, {args.folds} folds; test: {args.n_test} stars, SNR 60-120"
    )
    print(
        "| folds start | calibrate s | fit + calibrate s | start s | fold fits s "
        "(cycles) | RMSE Teff, logg, [Fe/H], [Mg/Fe] | z std |"
    )
    print("|---|---|---|---|---|---|---|")
    for way, t_cal, fits, rmse, z in rows:
        start = sum(t for kind, t, _ in fits if kind != "fold")
        folds = ", ".join(f"{t:.0f} ({c})" for kind, t, c in fits if kind == "fold")
        print(
            f"| {way} | {t_cal:.0f} | {t_fit + t_cal:.0f} | {start:.0f} | {folds} | "
            + ", ".join(f"{v:.4g}" for v in rmse)
            + " | "
            + ", ".join(f"{v:.2f}" for v in z)
            + " |"
        )


if __name__ == "__main__":
    main()
