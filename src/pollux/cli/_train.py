"""``pollux train CONFIG.toml``: fit, calibrate, save a model file, write a report."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from ._common import (
    Staged,
    UsageError,
    check_distinct,
    check_input_file,
    check_no_repeats,
    check_output_path,
    check_replaceable_folder,
    match_rows,
    staged_outputs,
)
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
    rows = match_rows(
        spectra.ids, table, cfg.id_column, f"[data] labels {str(cfg.labels)!r}"
    )
    labels = table.values[rows]
    keep = np.all(np.isfinite(labels), axis=1) & (spectra.n_bad < spectra.flux.shape[1])
    if keep.sum() < 10:
        msg = (
            f"[data]: only {int(keep.sum())} of the {len(keep)} stars of [data] "
            "spectra have both flux and every label of [data] label_columns; at "
            "least 10 are needed"
        )
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


def check_paths(cfg: TrainConfig, config_path: Path, *, overwrite: bool) -> None:
    """Refuse, before any work, outputs that collide with each other or with an
    input (the configuration, the label table, a spectra file), existing ones
    (unless ``overwrite``) and a report folder that is not an old report."""
    outputs = [("[output] model", cfg.model, False)]
    if cfg.report is not None:
        outputs.append(("[output] report", cfg.report, True))
    inputs = [("configuration file", config_path)]
    if cfg.labels is not None:
        inputs.append(("[data] labels table", cfg.labels))
    inputs += [("[data] spectra file", path) for path in cfg.spectra]
    check_distinct(outputs, inputs)
    check_output_path(cfg.model, overwrite=overwrite, what="[output] model file")
    if cfg.report is not None:
        what = "[output] report folder"
        check_output_path(cfg.report, overwrite=overwrite, what=what, folder=True)
        check_replaceable_folder(cfg.report, what)
    if cfg.labels is not None:
        check_input_file(cfg.labels, "[data] labels table")
    check_no_repeats(cfg.spectra, "[data] spectra: the file")


def train(config_path: Path, *, overwrite: bool, cache: bool, progress: bool) -> int:
    from ._config import read_config

    cfg = read_config(config_path)
    check_paths(cfg, config_path, overwrite=overwrite)
    from ._common import setup_jax

    setup_jax(cache=cache, float64=cfg.float64)
    where = f"configuration {str(config_path)!r}"
    t0 = time.perf_counter()
    try:
        with staged_outputs() as staged:
            n_files = _train(cfg, staged, progress)
    except MemoryError as err:
        msg = (
            f"{where}: out of memory ({err}); use fewer stars ([data]) or a smaller "
            "[model] latent_size"
        )
        raise UsageError(msg) from None
    except FloatingPointError as err:
        raise UsageError(f"{where}: {err}") from None
    except RuntimeError as err:  # XLA's RESOURCE_EXHAUSTED: out of device memory
        if "RESOURCE_EXHAUSTED" not in str(err):
            raise
        first = str(err).strip().splitlines()[0]
        msg = (
            f"{where}: out of device memory ({first}); use fewer stars ([data]) or "
            "a smaller [model] latent_size"
        )
        raise UsageError(msg) from None
    print(f"Model written to {cfg.model}")
    if cfg.report is not None:
        print(f"Report ({n_files} files) written to {cfg.report}/")
    print(f"Total time: {time.perf_counter() - t0:.0f} s")
    return 0


def _check_sizes(cfg: TrainConfig, n_stars: int, n_test: int) -> None:
    """Settings that the number of stars read makes impossible, named."""
    n_train = n_stars - n_test
    if n_train < 10:
        msg = (
            f"[output] holdout = {cfg.holdout} leaves {n_train} of "
            f"{n_stars} stars to train on; at least 10 are needed"
        )
        raise UsageError(msg)
    if cfg.report is not None and n_test == 0:
        msg = (
            f"[output] holdout = {cfg.holdout} keeps none of the {n_stars} stars out "
            'for the [output] report; give a larger holdout, or report = ""'
        )
        raise UsageError(msg)
    if cfg.latent_size > n_train:
        msg = (
            f"[model] latent_size = {cfg.latent_size} is more than the {n_train} "
            "training stars; use a smaller latent_size or more stars"
        )
        raise UsageError(msg)
    if cfg.folds > n_train:
        msg = (
            f"[calibrate] folds = {cfg.folds} is more than the {n_train} training "
            "stars; use fewer folds (0: no calibration) or more stars"
        )
        raise UsageError(msg)


def _train(cfg: TrainConfig, staged: Staged, progress: bool) -> int:
    """Read, fit, calibrate; the model file and the report into ``staged``;
    returns the number of report files."""
    from ..data import OutputData, PolluxData, ShiftScalePreprocessor

    t0 = time.perf_counter()
    stars = load_training_set(cfg)
    perm = np.random.default_rng(cfg.split_seed).permutation(len(stars))
    n_test = round(cfg.holdout * len(stars))
    _check_sizes(cfg, len(stars), n_test)
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
        staged.file(cfg.model),
        result,
        data=data,
        columns={"label": list(stars.columns)},
        wavelength={"flux": stars.wavelength},
    )
    if cfg.report is not None:
        from ..models import load
        from ._report import write_report

        trained = load(path)
        paths = write_report(
            trained,
            test_set.flux,
            test_set.flux_err,
            reference=(test_set.label, test_set.label_err),
            out=cfg.report,
            staged=staged,
        )
        return len(paths)
    return 0
