"""How precisely do noisy training labels pin down `calibrate`'s extra scatter?

Runs the 5-fold held-out predictions that `LuxModel.calibrate` uses (the apogee
benchmark's training set and Lux quadratic model) and fits the per-label floor ``s``
with calibrate's own kernel twice: against the observed (noisy) training labels, as
calibrate does, and against the true labels. Prints both with their Fisher standard
errors, in physical units.

    python benchmarks/apogee_calibration_check.py          # ~10 min on 2 cores
"""

from __future__ import annotations

import time

import numpy as np
from apogee import lux_model, make_data

import pollux as plx
from pollux.fit._calibrate import max_likelihood_scatter


def main() -> None:
    obs, truth = plx.datasets.apogee_like(7000, seed=0)
    train, _ = make_data(obs, slice(0, 2000), slice(2000, None))
    t0 = time.perf_counter()
    held = plx.validation.held_out_predictions(
        lambda: lux_model(6, train["flux"].size, 4, True, True), train, folds=5, seed=0
    )
    print(f"held-out predictions: {time.perf_counter() - t0:.0f} s")
    pre = train["label"].preprocessor
    scale, loc = np.asarray(pre.scale), np.asarray(pre.loc)
    idx = np.asarray(held.index)
    true = (truth["label"][:2000][idx] - loc) / scale
    mean = np.asarray(held.mean["label"])
    var = np.asarray(held.var_model["label"])
    observed = np.asarray(held.observed["label"])
    err = np.asarray(held.observed_err["label"])
    mask = np.isfinite(observed)
    for name, target, v in (("observed", observed, var + err**2), ("true", true, var)):
        r2 = np.where(mask, mean - target, 0.0) ** 2
        s, se, _ = max_likelihood_scatter(r2, v, mask, np.zeros(4), False)
        print(
            f"{name:>8} labels: s = {np.round(np.asarray(s) * scale, 4).tolist()}, "
            f"SE(s²) = {np.round(np.asarray(se) * scale**2, 5).tolist()}"
        )


if __name__ == "__main__":
    main()
