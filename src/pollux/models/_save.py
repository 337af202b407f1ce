"""`save_model`: a model and its fit result, checked, into a model file.

The model hands over its own definition (``model.definition()``); the file
format is `pollux.io`'s.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..data import PolluxData
from ..fit import FitResult, Model
from ..fit.checks import check_params
from ..io import preprocessors_of, write_model_file
from ..io.checks import unique_names

__all__ = ["save_model"]


def save_model(
    model: Any,
    path: Any,
    result: FitResult,
    *,
    data: PolluxData | None = None,
    columns: Mapping[str, Sequence[str]] | None = None,
    wavelength: Mapping[str, Any] | Any = None,
    overwrite: bool = False,
) -> Path:
    """Write ``model`` and its fit ``result`` to one model file.

    Parameters
    ----------
    model
        A `LuxModel` (or `CannonModel`) with storable transforms (all but
        `FunctionTransform`, whose function is code) and priors.
    path
        File to write (by convention ``*.pollux``); written under a temporary name
        and renamed, so an interrupted write never leaves a partial file.
    result
        The `FitResult` of ``model.fit`` (or of ``model.calibrate``).
    data
        The `PolluxData` whose preprocessors were used (physical units): its
        preprocessors and the range of each output are stored, not its arrays.
        Without it, the loaded model works in model units only.
    columns
        Names of each output's dimensions, e.g. ``{"label": ["TEFF", "LOGG"]}``.
    wavelength
        Wavelength grid of spectral outputs, ``{"flux": (D,) array}`` (or one array
        for the output named ``"flux"``); new spectra are resampled onto it.
    overwrite
        Replace an existing file (otherwise refused).

    Returns
    -------
    Path
        The path written.
    """
    call = f"{type(model).__name__}.save"
    lux = _savable(model, call)
    if not isinstance(result, FitResult):
        msg = f"{call}(result=...): expected a FitResult, got {type(result).__name__}"
        raise TypeError(msg)
    fitted = [k for k in result.params if k in lux.outputs]
    check_params(lux, result.params, None, call, "result.params", required=fitted)
    definition = model.definition()
    extras: dict[str, Any] = {
        "columns": _check_columns(columns, lux, call),
        "wavelength": _check_wavelength(wavelength, lux, call),
    }
    if data is not None:
        extras["preprocessors"] = preprocessors_of(data, lux.outputs, call)
        extras["ranges"] = _ranges(data, lux.outputs)
    return write_model_file(
        path, definition, result, extras, overwrite=overwrite, call=call
    )


def _savable(model: Any, call: str) -> Model:
    """``model`` checked: a model (latent size, outputs) that defines itself."""
    if not (isinstance(model, Model) and callable(getattr(model, "definition", None))):
        msg = f"{call}: expected a LuxModel or CannonModel, got {type(model).__name__}"
        raise TypeError(msg)
    return model


def _check_columns(columns: Any, lux: Model, call: str) -> dict[str, tuple]:
    if columns is None:
        return {}
    if not isinstance(columns, Mapping):
        msg = f"{call}(columns=...): expected a dict like {{'label': ['TEFF', ...]}}"
        raise TypeError(msg)
    out = {}
    for name, cols in columns.items():
        if name not in lux.outputs:
            msg = f"{call}(columns=...): {name!r} is not an output of the model"
            raise ValueError(msg)
        if isinstance(cols, str):
            cols = (cols,)
        elif not isinstance(cols, Iterable):
            msg = f"{call}(columns=...): {name!r} needs a list of names, got {cols!r}"
            raise TypeError(msg)
        cols = tuple(cols)
        size = lux.outputs[name].output_size
        if len(cols) != size or not all(isinstance(c, str) and c for c in cols):
            msg = (
                f"{call}(columns=...): {name!r} needs {size} non-empty names, got "
                f"{list(cols)}"
            )
            raise ValueError(msg)
        out[name] = unique_names(cols, None, "columns", call=call)
    return out


def _check_wavelength(wavelength: Any, lux: Model, call: str) -> dict[str, Any]:
    if wavelength is None:
        return {}
    if not isinstance(wavelength, Mapping):
        wavelength = {"flux": wavelength}
    out = {}
    for name, wave in wavelength.items():
        if name not in lux.outputs:
            msg = f"{call}(wavelength=...): {name!r} is not an output of the model"
            raise ValueError(msg)
        try:
            arr = np.asarray(wave, dtype=float)
        except (TypeError, ValueError) as err:
            msg = f"{call}(wavelength=...): {name!r} is not an array of numbers"
            raise TypeError(msg) from err
        size = lux.outputs[name].output_size
        if arr.shape != (size,) or not np.all(np.isfinite(arr)):
            msg = (
                f"{call}(wavelength=...): {name!r} needs {size} finite wavelengths, "
                f"got shape {arr.shape}"
            )
            raise ValueError(msg)
        if np.any(np.diff(arr) <= 0):
            msg = f"{call}(wavelength=...): {name!r} wavelengths must increase"
            raise ValueError(msg)
        out[name] = arr
    return out


def _ranges(data: PolluxData, outputs: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for name, output in data.items():
        if name not in outputs:
            continue
        values = np.asarray(output.data)
        if output.preprocessed:
            values = np.asarray(output.preprocessor.inverse_transform(values))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
            out[name] = {"min": np.nanmin(values, 0), "max": np.nanmax(values, 0)}
    return out
