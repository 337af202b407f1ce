"""The TOML configuration of ``pollux train``: parsed, checked, with defaults.

Example (every key but ``[data]`` has a default)::

    [data]                     # either the built-in APOGEE-like spectra ...
    apogee_like = 1500         # number of stars (seed: apogee_like_seed = 0)
    apogee_like_dwarfs = 0.3   # fraction of dwarfs and subgiants (default 0)
    # ... or files: spectra (APOGEE FITS, npz, HDF5, zarr) and a label table
    # spectra = ["spectra/*.fits"]         # paths or globs, relative to this file
    # labels = "allStar.fits"              # FITS / CSV / ECSV table
    # label_columns = ["TEFF", "LOGG", "FE_H", "MG_FE"]
    # label_err_columns = ["TEFF_ERR", "LOGG_ERR", "FE_H_ERR", "MG_FE_ERR"]
    # id_column = "APOGEE_ID"              # matches table rows to spectra
    # visits = "combined"                  # apStar files: or "all" visits

    [model]
    latent_size = 6
    flux = "quadratic"         # linear | affine | quadratic
    label = "quadratic"
    flux_scatter = true        # learn an extra scatter per pixel
    label_scatter = true       # ... and per label (needed by calibrate)

    [fit]
    max_iter = 300
    tol = 1e-6
    float64 = false
    accelerate = true          # SQUAREM cycles

    [calibrate]
    folds = 5                  # 0: no calibration
    seed = 0                   # of the split into folds

    [output]
    model = "model.pollux"     # relative to this file
    report = "report"          # folder of figures; "" for none
    holdout = 0.2              # fraction of stars kept out of training for the report
    seed = 0                   # of the hold-out split

Limits (`LIMITS`): ``apogee_like`` 2..100000 (the rows of the built-in label
table); ``latent_size`` 1..64, and at most 10 with a quadratic transform
(``QuadraticTransform.max_latent_size``); ``max_iter`` 1..1000000; ``folds`` 0
or 2..100 (and at most the number of training stars); seeds 0..2**32-1; every
number finite. ``label_columns`` are unique (ignoring case), none of them, nor
its ``_ERR``, a column the predicted table holds anyway (``RESERVED_COLUMNS`` of
``pollux predict``: ID, SOURCE, VISIT, SNR, REDUCED_CHI2, N_OBSERVED, N_CLIPPED,
FLAG, FLAG_REASON), none of ``label_err_columns`` or ``id_column``. A report
needs held-out stars (``holdout > 0``).
"""

from __future__ import annotations

import dataclasses
import glob
import math
import os
import tomllib
from pathlib import Path
from typing import Any

from ._common import UsageError

__all__ = ["LIMITS", "TrainConfig", "check_config", "parse_config", "read_config"]

_SEED_MAX = 2**32 - 1
#: ``(section, key): (lowest, highest)`` of every integer setting.
LIMITS = {
    ("data", "apogee_like"): (2, 100_000),
    ("data", "apogee_like_seed"): (0, _SEED_MAX),
    ("model", "latent_size"): (1, 64),
    ("fit", "max_iter"): (1, 1_000_000),
    ("calibrate", "folds"): (0, 100),
    ("calibrate", "seed"): (0, _SEED_MAX),
    ("output", "seed"): (0, _SEED_MAX),
}

_TRANSFORMS = ("linear", "affine", "quadratic")
_SECTIONS = {
    "data": {
        "apogee_like",
        "apogee_like_seed",
        "apogee_like_dwarfs",
        "spectra",
        "labels",
        "label_columns",
        "label_err_columns",
        "id_column",
        "visits",
    },
    "model": {"latent_size", "flux", "label", "flux_scatter", "label_scatter"},
    "fit": {"max_iter", "tol", "float64", "accelerate"},
    "calibrate": {"folds", "seed"},
    "output": {"model", "report", "holdout", "seed"},
}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A checked ``pollux train`` configuration (paths resolved)."""

    apogee_like: int | None = None
    apogee_like_seed: int = 0
    apogee_like_dwarfs: float = 0.0
    spectra: tuple[Path, ...] = ()
    labels: Path | None = None
    label_columns: tuple[str, ...] = ()
    label_err_columns: tuple[str, ...] | None = None
    id_column: str | None = None
    visits: str = "combined"
    latent_size: int = 6
    flux: str = "quadratic"
    label: str = "quadratic"
    flux_scatter: bool = True
    label_scatter: bool = True
    max_iter: int = 300
    tol: float = 1e-6
    float64: bool = False
    accelerate: bool = True
    folds: int = 5
    calibrate_seed: int = 0
    model: Path = Path("model.pollux")
    report: Path | None = Path("report")
    holdout: float = 0.2
    split_seed: int = 0


def read_config(path: Path) -> TrainConfig:
    """Parse and check ``path`` (`parse_config`, `check_config`); every problem
    is a `UsageError` naming the key."""
    if not path.is_file():
        msg = f"no configuration file at {str(path)!r}"
        raise UsageError(msg)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        msg = f"{str(path)!r} is not valid TOML: {err}"
        raise UsageError(msg) from err
    except OSError as err:
        msg = f"configuration file {str(path)!r} cannot be read ({err.strerror})"
        raise UsageError(msg) from err
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        msg = f"{str(path)!r} is not valid TOML: {err}"
        raise UsageError(msg) from err
    except RecursionError as err:
        msg = f"{str(path)!r} is not valid TOML: arrays or tables nested too deep"
        raise UsageError(msg) from err
    return check_config(parse_config(raw, path.parent))


def check_config(cfg: TrainConfig) -> TrainConfig:
    """Refuse settings that are each valid but not together: a latent size
    beyond what a transform allows, a report without held-out stars."""
    from ..transforms import AffineTransform, LinearTransform, QuadraticTransform

    kinds = {
        "linear": LinearTransform,
        "affine": AffineTransform,
        "quadratic": QuadraticTransform,
    }
    for key in ("flux", "label"):
        kind = kinds[getattr(cfg, key)]
        limit = kind.max_latent_size
        if limit is not None and cfg.latent_size > limit:
            msg = (
                f"[model] latent_size: at most {limit} with {key} = "
                f"{getattr(cfg, key)!r} ({kind.__name__}), got {cfg.latent_size}; "
                f"use a smaller latent_size or another [model] {key}"
            )
            raise UsageError(msg)
    if cfg.report is not None and cfg.holdout == 0:
        msg = (
            "[output] holdout = 0 keeps no star out for the [output] report; give "
            'holdout > 0, or report = "" for no report'
        )
        raise UsageError(msg)
    return cfg


def parse_config(raw: dict[str, Any], base: Path) -> TrainConfig:
    """Check a parsed TOML document; relative paths are taken from ``base``."""
    unknown = sorted(set(raw) - set(_SECTIONS))
    if unknown:
        msg = f"unknown section(s) {unknown}; sections are {sorted(_SECTIONS)}"
        raise UsageError(msg)
    for section, keys in _SECTIONS.items():
        value = raw.get(section, {})
        if not isinstance(value, dict):
            raise UsageError(f"[{section}] must be a table of keys")
        bad = sorted(set(value) - keys)
        if bad:
            msg = f"[{section}]: unknown key(s) {bad}; known keys are {sorted(keys)}"
            raise UsageError(msg)
    data, model = raw.get("data", {}), raw.get("model", {})
    fit, cal, out = raw.get("fit", {}), raw.get("calibrate", {}), raw.get("output", {})
    kw: dict[str, Any] = {}
    builtin = {k for k in data if k.startswith("apogee_like")}
    if builtin and set(data) - builtin:
        msg = (
            f"[data]: give either apogee_like (with {sorted(builtin)}) or spectra "
            f"files (with {sorted(set(data) - builtin)}), not both"
        )
        raise UsageError(msg)
    if "apogee_like" in data:
        kw["apogee_like"] = _int(data, "data", "apogee_like")
        kw["apogee_like_seed"] = _int(data, "data", "apogee_like_seed", default=0)
        kw["apogee_like_dwarfs"] = _float(data, "data", "apogee_like_dwarfs", 0, 1, 0.0)
    elif "spectra" in data:
        kw["spectra"] = _paths(data["spectra"], base)
        if "labels" not in data or "label_columns" not in data:
            msg = "[data]: spectra need a label table: give labels and label_columns"
            raise UsageError(msg)
        kw["labels"] = _path(data["labels"], base, "[data] labels")
        kw["label_columns"] = _strings(data, "label_columns")
        if "label_err_columns" in data:
            errs = _strings(data, "label_err_columns")
            if len(errs) != len(kw["label_columns"]):
                msg = (
                    f"[data] label_err_columns: {len(errs)} column(s) for the "
                    f"{len(kw['label_columns'])} of [data] label_columns; give one "
                    "error column per label column"
                )
                raise UsageError(msg)
            kw["label_err_columns"] = errs
        kw["id_column"] = _str(data, "data", "id_column", None)
        _check_columns(
            kw["label_columns"], kw.get("label_err_columns"), kw["id_column"]
        )
        kw["visits"] = _choice(data, "data", "visits", ("combined", "all"), "combined")
    else:
        msg = "[data]: give apogee_like = N_STARS, or spectra and labels files"
        raise UsageError(msg)
    kw["latent_size"] = _int(model, "model", "latent_size", default=6)
    kw["flux"] = _choice(model, "model", "flux", _TRANSFORMS, "quadratic")
    kw["label"] = _choice(model, "model", "label", _TRANSFORMS, "quadratic")
    kw["flux_scatter"] = _bool(model, "model", "flux_scatter", True)
    kw["label_scatter"] = _bool(model, "model", "label_scatter", True)
    kw["max_iter"] = _int(fit, "fit", "max_iter", default=300)
    kw["tol"] = _float(fit, "fit", "tol", 0.0, None, 1e-6)
    kw["float64"] = _bool(fit, "fit", "float64", False)
    kw["accelerate"] = _bool(fit, "fit", "accelerate", True)
    kw["folds"] = _int(cal, "calibrate", "folds", default=5)
    if kw["folds"] == 1:
        raise UsageError("[calibrate] folds: 0 (no calibration) or at least 2")
    if kw["folds"] and not kw["label_scatter"]:
        msg = "[calibrate] folds > 0 needs [model] label_scatter = true"
        raise UsageError(msg)
    kw["calibrate_seed"] = _int(cal, "calibrate", "seed", default=0)
    kw["model"] = _path(out.get("model", "model.pollux"), base, "[output] model")
    report = out.get("report", "report")
    kw["report"] = _path(report, base, "[output] report") if report != "" else None
    kw["holdout"] = _float(out, "output", "holdout", 0.0, 0.9, 0.2)
    kw["split_seed"] = _int(out, "output", "seed", default=0)
    return TrainConfig(**kw)


def _int(table: dict, section: str, key: str, *, default: Any = None) -> int:
    low, high = LIMITS[section, key]
    value = table.get(key, default)
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not low <= value <= high
    ):
        msg = (
            f"[{section}] {key}: expected an integer in [{low}, {high}], got "
            f"{_show(value)}"
        )
        raise UsageError(msg)
    return value


def _float(table: dict, section: str, key: str, low: float, high: Any, default: float):
    value = table.get(key, default)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        try:
            ok = math.isfinite(float(value))  # a huge TOML integer overflows
        except OverflowError:
            ok = False
    if not ok or not value >= low or (high is not None and value > high):
        span = f">= {low}" if high is None else f"in [{low}, {high}]"
        msg = f"[{section}] {key}: expected a finite number {span}, got {_show(value)}"
        raise UsageError(msg)
    return float(value)


def _show(value: Any, limit: int = 60) -> str:
    """``repr(value)``, shortened: a message stays one readable line."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 5]}...{text[-2:]}"


def _bool(table: dict, section: str, key: str, default: bool) -> bool:
    value = table.get(key, default)
    if not isinstance(value, bool):
        msg = f"[{section}] {key}: expected true or false, got {value!r}"
        raise UsageError(msg)
    return value


def _str(table: dict, section: str, key: str, default: Any) -> Any:
    value = table.get(key, default)
    if value is not default and (not isinstance(value, str) or not value):
        msg = f"[{section}] {key}: expected a non-empty string, got {_show(value)}"
        raise UsageError(msg)
    return value


def _choice(table: dict, section: str, key: str, choices: tuple, default: str) -> str:
    value = table.get(key, default)
    if value not in choices:
        msg = f"[{section}] {key}: expected one of {list(choices)}, got {_show(value)}"
        raise UsageError(msg)
    return value


def _strings(table: dict, key: str) -> tuple[str, ...]:
    value = table[key]
    if isinstance(value, str):
        value = [value]
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(v, str) and v for v in value)
    ):
        msg = f"[data] {key}: expected a list of column names, got {_show(value)}"
        raise UsageError(msg)
    return tuple(value)


def _unique(names: Any, key: str, reserved: Any = (), note: str = "") -> None:
    """`pollux.io.checks.unique_names` of ``names``, its error naming ``[data] key``."""
    from ..io.checks import unique_names

    try:
        unique_names(names, None, key, reserved=reserved, call="[data]")
    except ValueError as err:
        text = str(err).replace(f"[data]({key}=...)", f"[data] {key}", 1)
        raise UsageError(text + note) from None


def _check_columns(columns: tuple, err_columns: tuple | None, id_column: Any) -> None:
    """Label columns: unique (ignoring case), none (nor its ``_ERR``) a column of
    the predicted table, none an error column or the identifier column."""
    from ._predict import RESERVED_COLUMNS

    _unique(columns, "label_columns", RESERVED_COLUMNS)
    _unique(
        [c for col in columns for c in (col, f"{col}_ERR")],
        "label_columns",
        RESERVED_COLUMNS,
        " (a predicted table holds each label column X and X_ERR)",
    )
    if err_columns is not None:
        _unique(err_columns, "label_err_columns")
    lower = {c.lower(): c for c in columns}
    for other, key in (
        (err_columns or (), "label_err_columns"),
        ((id_column,) if id_column else (), "id_column"),
    ):
        both = [c for c in other if c.lower() in lower]
        if both:
            msg = (
                f"[data] label_columns: {lower[both[0].lower()]!r} is also in [data] "
                f"{key}; a column is either a label, its error or the identifier"
            )
            raise UsageError(msg)
    if (
        id_column
        and err_columns
        and id_column.lower() in {c.lower() for c in err_columns}
    ):
        msg = f"[data] id_column: {id_column!r} is also in [data] label_err_columns"
        raise UsageError(msg)


def _path(value: Any, base: Path, what: str) -> Path:
    if not isinstance(value, str) or not value:
        msg = f"{what}: expected a path, got {_show(value)}"
        raise UsageError(msg)
    try:
        os.fsencode(value)
        usable = "\x00" not in value
    except UnicodeEncodeError:  # a lone surrogate ("\ud800")
        usable = False
    if not usable:
        msg = f"{what}: {_show(value)} is not a usable path (a NUL or a lone surrogate)"
        raise UsageError(msg)
    try:
        path = Path(value).expanduser()
    except RuntimeError as err:  # "~user" of an unknown user
        raise UsageError(f"{what}: cannot expand {_show(value)} ({err})") from err
    return path if path.is_absolute() else base / path


def _paths(value: Any, base: Path) -> tuple[Path, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        msg = (
            "[data] spectra: expected a path, a glob or a list of them, got "
            f"{_show(value)}"
        )
        raise UsageError(msg)
    found: list[Path] = []
    for item in items:
        pattern = _path(item, base, "[data] spectra")
        matches = sorted(glob.glob(str(pattern)))
        if not matches:
            msg = (
                f"[data] spectra: nothing matches {_show(item)} (looked in "
                f"{str(base)!r})"
            )
            raise UsageError(msg)
        found.extend(Path(m) for m in matches)
    return tuple(found)
