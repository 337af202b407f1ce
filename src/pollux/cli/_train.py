"""``pollux train CONFIG.toml``: fit, calibrate, save a model file, write a report."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from ._common import UsageError, check_output_path, match_rows
from ._config import TrainConfig

__all__ = ["TrainingSet", "build_model", "load_training_set", "train"]

_APOGEE_COLUMNS = ("TEFF", "LOGG", "FE_H", "MG_FE")


class TrainingSet:
    """Flux and labels (physical units) of the stars to train on."""

    def __init__(self, flux, flux_err, label, label_err, wavelength, columns):
        self.flux, self.flux_err = flux, flux_err
        self.label, self.label_err = label, label_err
        self.wavelength, self.columns = wavelength, tuple(columns)

    def __len__(self) -> int:
        return len(self.flux)

    def subset(self, idx: np.ndarray) -> TrainingSet:
        return TrainingSet(
            self.flux[idx],
            self.flux_err[idx],
            self.label[idx],
            None if self.label_err is None else self.label_err[idx],
            self.wavelength,
            self.columns,
        )


def load_training_set(cfg: TrainConfig) -> TrainingSet:
    """The stars of ``[data]``: built-in APOGEE-like spectra or files + a table."""
    if cfg.apogee_like is not None:
        from ..datasets import apogee_like

        obs, truth = apogee_like(
            cfg.apogee_like, seed=cfg.apogee_like_seed, dwarfs=cfg.apogee_like_dwarfs
        )
        return TrainingSet(
            obs["flux"],
            obs["flux_err"],
            obs["label"],
            obs["label_err"],
            truth["wavelength"],
            _APOGEE_COLUMNS,
        )
    from ..readers import apogee_wavelength, read_spectra, read_table

    spectra = read_spectra(
        list(cfg.spectra), wavelength=apogee_wavelength(), visits=cfg.visits
    )
    table = read_table(
        cfg.labels,
        list(cfg.label_columns),
        err_columns=None
        if cfg.label_err_columns is None
        else list(cfg.label_err_columns),
        id_column=cfg.id_column,
    )
    rows = match_rows(spectra.ids, table, cfg.id_column, "[data]")
    labels = table.values[rows]
    keep = np.all(np.isfinite(labels), axis=1) & (spectra.n_bad < spectra.flux.shape[1])
    if keep.sum() < 10:
        msg = f"[data]: only {int(keep.sum())} stars have complete labels and flux"
        raise UsageError(msg)
    err = None if table.err is None else table.err[rows][keep]
    if err is not None:
        err = np.where(np.isfinite(err) & (err >= 0), err, np.inf)
    return TrainingSet(
        spectra.flux[keep],
        spectra.err[keep],
        labels[keep],
        err,
        spectra.wavelength,
        cfg.label_columns,
    )


def build_model(cfg: TrainConfig, n_flux: int, n_labels: int) -> Any:
    """The `LuxModel` of ``[model]``: flux and label transforms, extra scatters."""
    import numpyro.distributions as dist

    from ..models import LuxModel
    from ..transforms import (
        AffineTransform,
        LinearTransform,
        QuadraticTransform,
    )

    kinds = {
        "linear": LinearTransform,
        "affine": AffineTransform,
        "quadratic": QuadraticTransform,
    }
    model = LuxModel(latent_size=cfg.latent_size)
    for name, kind, size, scatter in (
        ("flux", cfg.flux, n_flux, cfg.flux_scatter),
        ("label", cfg.label, n_labels, cfg.label_scatter),
    ):
        priors = {"s": dist.HalfNormal(1.0).expand((size,))} if scatter else None
        model.register_output(name, kinds[kind](size, param_priors=priors))
    return model


def _flux_preprocessor(flux: np.ndarray) -> Any:
    """Median and half the 16–84% range per pixel; a pixel never observed (or
    constant) in the training set keeps loc 1, scale 1 (it carries no weight)."""
    import warnings

    from ..data import ShiftScalePreprocessor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels
        loc = np.nanmedian(flux, axis=0)
        lo, hi = np.nanpercentile(flux, [16.0, 84.0], axis=0)
    scale = 0.5 * (hi - lo)
    bad = ~(np.isfinite(scale) & (scale > 0))
    return ShiftScalePreprocessor(np.where(bad, 1.0, loc), np.where(bad, 1.0, scale))


def train(config_path: Path, *, overwrite: bool, cache: bool, progress: bool) -> int:
    from ._config import read_config

    cfg = read_config(config_path)
    check_output_path(cfg.model, overwrite=overwrite, what="model file")
    if cfg.report is not None:
        check_output_path(
            cfg.report, overwrite=overwrite, what="report folder", folder=True
        )
    from ._common import setup_jax

    setup_jax(cache=cache, float64=cfg.float64)
    from ..data import OutputData, PolluxData, ShiftScalePreprocessor

    t0 = time.perf_counter()
    stars = load_training_set(cfg)
    perm = np.random.default_rng(cfg.split_seed).permutation(len(stars))
    n_test = round(cfg.holdout * len(stars))
    if len(stars) - n_test < 10:
        msg = (
            f"[output] holdout = {cfg.holdout} leaves {len(stars) - n_test} of "
            f"{len(stars)} stars to train on; at least 10 are needed"
        )
        raise UsageError(msg)
    train_set, test_set = stars.subset(perm[n_test:]), stars.subset(perm[:n_test])
    print(
        f"Training on {len(train_set)} stars × {stars.flux.shape[1]} pixels, "
        f"{len(stars.columns)} labels {list(stars.columns)}; {len(test_set)} held out"
    )
    data = PolluxData(
        flux=OutputData(
            train_set.flux,
            err=train_set.flux_err,
            preprocessor=_flux_preprocessor(train_set.flux),
        ),
        label=OutputData(
            train_set.label,
            err=train_set.label_err,
            preprocessor=ShiftScalePreprocessor.from_data(train_set.label),
        ),
    )
    model = build_model(cfg, stars.flux.shape[1], len(stars.columns))
    pre = data.preprocess()
    result = model.fit(
        pre,
        max_iter=cfg.max_iter,
        tol=cfg.tol,
        accelerate=cfg.accelerate,
        progress=progress,
    )
    print(
        f"fit: {result.n_iter} iterations, converged={result.converged}, "
        f"{time.perf_counter() - t0:.0f} s so far"
    )
    if cfg.folds:
        result = model.calibrate(
            pre, result, folds=cfg.folds, seed=cfg.calibrate_seed, progress=progress
        )
        print(f"calibrate: {cfg.folds} folds, {time.perf_counter() - t0:.0f} s so far")
    path = model.save(
        cfg.model,
        result,
        data=data,
        columns={"label": list(stars.columns)},
        wavelength={"flux": stars.wavelength},
        overwrite=overwrite,
    )
    print(f"Model written to {path}")
    if cfg.report is not None:
        from ..models import load
        from ._report import write_report

        trained = load(path)
        reference = None
        if len(test_set):
            reference = (test_set.label, test_set.label_err)
        paths = write_report(
            trained,
            test_set.flux if len(test_set) else None,
            test_set.flux_err if len(test_set) else None,
            reference=reference,
            out=cfg.report,
        )
        print(f"Report ({len(paths)} files) written to {cfg.report}/")
    print(f"Total time: {time.perf_counter() - t0:.0f} s")
    return 0
