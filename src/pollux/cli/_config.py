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
"""

from __future__ import annotations

import dataclasses
import glob
import tomllib
from pathlib import Path
from typing import Any

from ._common import UsageError

__all__ = ["TrainConfig", "read_config"]

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
    """Parse and check ``path``; every problem is a `UsageError` naming the key."""
    if not path.is_file():
        msg = f"no configuration file at {str(path)!r}"
        raise UsageError(msg)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        msg = f"{str(path)!r} is not valid TOML: {err}"
        raise UsageError(msg) from err
    return parse_config(raw, path.parent)


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
        kw["apogee_like"] = _int(data, "data", "apogee_like", 2)
        kw["apogee_like_seed"] = _int(data, "data", "apogee_like_seed", 0, default=0)
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
                msg = "[data]: label_err_columns must name one column per label column"
                raise UsageError(msg)
            kw["label_err_columns"] = errs
        kw["id_column"] = _str(data, "data", "id_column", None)
        kw["visits"] = _choice(data, "data", "visits", ("combined", "all"), "combined")
    else:
        msg = "[data]: give apogee_like = N_STARS, or spectra and labels files"
        raise UsageError(msg)
    kw["latent_size"] = _int(model, "model", "latent_size", 1, default=6)
    kw["flux"] = _choice(model, "model", "flux", _TRANSFORMS, "quadratic")
    kw["label"] = _choice(model, "model", "label", _TRANSFORMS, "quadratic")
    kw["flux_scatter"] = _bool(model, "model", "flux_scatter", True)
    kw["label_scatter"] = _bool(model, "model", "label_scatter", True)
    kw["max_iter"] = _int(fit, "fit", "max_iter", 1, default=300)
    kw["tol"] = _float(fit, "fit", "tol", 0.0, None, 1e-6)
    kw["float64"] = _bool(fit, "fit", "float64", False)
    kw["accelerate"] = _bool(fit, "fit", "accelerate", True)
    kw["folds"] = _int(cal, "calibrate", "folds", 0, default=5)
    if kw["folds"] == 1:
        raise UsageError("[calibrate] folds: 0 (no calibration) or at least 2")
    if kw["folds"] and not kw["label_scatter"]:
        msg = "[calibrate] folds > 0 needs [model] label_scatter = true"
        raise UsageError(msg)
    kw["calibrate_seed"] = _int(cal, "calibrate", "seed", 0, default=0)
    kw["model"] = _path(out.get("model", "model.pollux"), base, "[output] model")
    report = out.get("report", "report")
    kw["report"] = _path(report, base, "[output] report") if report != "" else None
    kw["holdout"] = _float(out, "output", "holdout", 0.0, 0.9, 0.2)
    kw["split_seed"] = _int(out, "output", "seed", 0, default=0)
    return TrainConfig(**kw)


def _int(table: dict, section: str, key: str, low: int, *, default: Any = None) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        msg = f"[{section}] {key}: expected an integer >= {low}, got {value!r}"
        raise UsageError(msg)
    return value


def _float(table: dict, section: str, key: str, low: float, high: Any, default: float):
    value = table.get(key, default)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not value >= low or (high is not None and value > high):
        span = f">= {low}" if high is None else f"in [{low}, {high}]"
        msg = f"[{section}] {key}: expected a number {span}, got {value!r}"
        raise UsageError(msg)
    return float(value)


def _bool(table: dict, section: str, key: str, default: bool) -> bool:
    value = table.get(key, default)
    if not isinstance(value, bool):
        msg = f"[{section}] {key}: expected true or false, got {value!r}"
        raise UsageError(msg)
    return value


def _str(table: dict, section: str, key: str, default: Any) -> Any:
    value = table.get(key, default)
    if value is not default and (not isinstance(value, str) or not value):
        msg = f"[{section}] {key}: expected a non-empty string, got {value!r}"
        raise UsageError(msg)
    return value


def _choice(table: dict, section: str, key: str, choices: tuple, default: str) -> str:
    value = table.get(key, default)
    if value not in choices:
        msg = f"[{section}] {key}: expected one of {list(choices)}, got {value!r}"
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
        msg = f"[data] {key}: expected a list of column names, got {value!r}"
        raise UsageError(msg)
    return tuple(value)


def _path(value: Any, base: Path, what: str) -> Path:
    if not isinstance(value, str) or not value:
        msg = f"{what}: expected a path, got {value!r}"
        raise UsageError(msg)
    try:
        path = Path(value).expanduser()
    except RuntimeError as err:  # "~user" of an unknown user
        raise UsageError(f"{what}: cannot expand {value!r} ({err})") from err
    return path if path.is_absolute() else base / path


def _paths(value: Any, base: Path) -> tuple[Path, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        msg = (
            f"[data] spectra: expected a path, a glob or a list of them, got {value!r}"
        )
        raise UsageError(msg)
    found: list[Path] = []
    for item in items:
        pattern = _path(item, base, "[data] spectra")
        matches = sorted(glob.glob(str(pattern)))
        if not matches:
            msg = f"[data] spectra: nothing matches {item!r} (looked in {str(base)!r})"
            raise UsageError(msg)
        found.extend(Path(m) for m in matches)
    return tuple(found)
