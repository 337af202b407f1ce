"""`load`: a model file back into a `TrainedModel` (its model, fit and units)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._params import LATENTS, without_latents
from ..data import AbstractPreprocessor
from ..fit import FitResult, LatentPosterior
from ..fit.checks import check_params
from ..io import read_model_file
from ._trained import TrainedModel
from .cannon import CannonModel
from .lux import LuxModel

__all__ = ["load"]


def load(path: Any) -> TrainedModel:
    """Read a model file written by `LuxModel.save` (any earlier format version).

    Loading runs no code from the file: it is a zip of JSON and ``.npy`` arrays
    read without pickle, built only into pollux's own transforms, priors and
    preprocessors, and checked (checksums, finite parameters, shapes).

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    ValueError
        Not a pollux model file, truncated, modified, from a newer format, or
        with non-finite or inconsistent parameters.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> import pollux as plx
    >>> from pollux.models.transforms import LinearTransform
    >>> obs, _ = plx.datasets.make_simulated_linear_data(
    ...     n_stars=100, n_latents=2, n_labels=2, n_flux=8, rng=0)
    >>> data = plx.data.PolluxData(
    ...     flux=plx.data.OutputData(obs["flux"], err=obs["flux_err"]),
    ...     label=plx.data.OutputData(obs["label"], err=obs["label_err"]))
    >>> model = plx.LuxModel(latent_size=2)
    >>> model.register_output("flux", LinearTransform(output_size=8))
    >>> model.register_output("label", LinearTransform(output_size=2))
    >>> result = model.fit(data, progress=False)
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "model.pollux"
    >>> _ = model.save(path, result, data=data)
    >>> trained = plx.load(path)
    >>> labels = trained.label({"flux": (obs["flux"][:5], obs["flux_err"][:5])})
    >>> labels.predictions["label"].shape
    (5, 2)
    """
    payload = read_model_file(path)
    where = f"pollux.load: {os.fspath(path)!r}"
    if payload["info"]["x64"] and not jax.config.jax_enable_x64:
        warnings.warn(
            f"{where} holds float64 arrays but JAX runs in float32; enable "
            "jax_enable_x64 before loading for the same numbers as when it was saved",
            stacklevel=2,
        )
    part = "the model definition"
    try:  # the payload's structure is checked (pollux.io); its meaning here
        model = _model_from(payload["model"])
        lux = model.model if isinstance(model, CannonModel) else model
        part = "the stored fit result"
        result = result_from_payload(lux, payload["result"], where)
        part = "the stored preprocessors, columns or ranges"
        extras = _checked_extras(payload, lux)
        return TrainedModel(model=model, result=result, info=payload["info"], **extras)
    except _DAMAGE as err:
        if where in str(err):
            raise
        msg = f"{where}: {part} is damaged or inconsistent ({err})"
        raise ValueError(msg) from err


#: What building a model from a damaged (but well-formed) payload can raise.
_DAMAGE = (KeyError, TypeError, ValueError, IndexError, OverflowError, AttributeError)


def _checked_extras(payload: Mapping[str, Any], lux: LuxModel) -> dict[str, Any]:
    """Preprocessors, columns, wavelengths and ranges of a payload, checked against
    the model's outputs."""
    sizes = {k: t.output_size for k, t in lux.outputs.items()}
    extras = {
        k: dict(payload.get(k, {}))
        for k in ("preprocessors", "columns", "wavelength", "ranges")
    }
    for kind, items in extras.items():
        for name, value in items.items():
            if name not in sizes:
                raise ValueError(f"{kind} of an unknown output {name!r}")
            if kind == "preprocessors" and not isinstance(value, AbstractPreprocessor):
                raise TypeError(f"the preprocessor of {name!r} is {value!r}")
            if kind == "preprocessors" and not all(
                np.shape(getattr(value, p, 0.0)) in ((), (sizes[name],))
                for p in ("loc", "scale")
            ):
                raise ValueError(
                    f"the preprocessor of {name!r} is not of width {sizes[name]}"
                )
            if kind == "columns" and (
                not isinstance(value, tuple) or len(value) != sizes[name]
            ):
                raise ValueError(f"the columns of {name!r} are {value!r}")
            if kind == "wavelength" and np.shape(value) != (sizes[name],):
                raise ValueError(f"the wavelength of {name!r} has the wrong shape")
            if kind == "wavelength" and not (
                np.all(np.isfinite(value))
                and np.all(np.asarray(value) > 0)
                and np.all(np.diff(value) > 0)
            ):
                raise ValueError(
                    f"the stored wavelength grid of {name!r} is not finite, "
                    "positive and increasing"
                )
            if kind == "ranges" and not (
                set(value) == {"min", "max"}
                and all(np.shape(v) == (sizes[name],) for v in value.values())
            ):
                raise ValueError(f"the ranges of {name!r} are damaged")
    return extras


def _model_from(spec: Mapping[str, Any]) -> LuxModel | CannonModel:
    kind = spec["kind"]
    if kind == "CannonModel":
        return CannonModel(
            spec["n_labels"], spec["flux_size"], flux=spec["flux"], label=spec["label"]
        )
    if kind != "LuxModel":
        msg = f"unknown model kind {kind!r}"
        raise ValueError(msg)
    model = LuxModel(latent_size=spec["latent_size"])
    for name, transform in spec["outputs"].items():
        model.register_output(name, transform)
    return model


def result_from_payload(model: Any, tree: Mapping[str, Any], where: str) -> FitResult:
    """Rebuild a checked `FitResult` for ``model`` (a `LuxModel`)."""
    try:
        post = tree["posterior"]
        raw_params = tree["params"]
        if not isinstance(raw_params, dict):
            raise TypeError("params is not a dict")
        _check_finite(raw_params, "params", where)
        _check_finite(tree["param_cov"], "param_cov", where)
        params = _to_jax(raw_params)
        check_params(
            model,
            without_latents(params),
            None,
            where,
            "params",
            required=[k for k in params if k != LATENTS],
        )
        flags = post["multimodal"]
        n, k = np.shape(post["mean"])[:1], model.latent_size
        if (
            np.shape(post["mean"]) != (*n, k)
            or np.shape(post["cov"]) != (*n, k, k)
            or (flags is not None and np.shape(flags) != n)
        ):
            raise TypeError("the training posterior has the wrong shape")
        posterior = LatentPosterior(
            jnp.asarray(post["mean"]),
            jnp.asarray(post["cov"]),
            None if flags is None else jnp.asarray(flags),
        )
        return FitResult(
            params=params,
            posterior=posterior,
            losses=jnp.asarray(tree["losses"]),
            n_iter=int(tree["n_iter"]),
            converged=bool(tree["converged"]),
            param_cov=_to_jax(tree["param_cov"]),
            settings=dict(tree["settings"]),
            calibration=dict(tree["calibration"]),
        )
    except (KeyError, TypeError, IndexError) as err:
        msg = f"{where}: the stored fit result is incomplete or damaged ({err})"
        raise ValueError(msg) from err


def _check_finite(tree: Any, what: str, where: str) -> None:
    if isinstance(tree, Mapping):
        for k, v in tree.items():
            _check_finite(v, f"{what}[{k!r}]", where)
    elif isinstance(tree, np.ndarray) and not np.all(np.isfinite(tree)):
        msg = f"{where}: {what} holds non-finite values; the file is damaged"
        raise ValueError(msg)


def _to_jax(tree: Any) -> Any:
    if isinstance(tree, Mapping):
        return {k: _to_jax(v) for k, v in tree.items()}
    return jnp.asarray(tree)
