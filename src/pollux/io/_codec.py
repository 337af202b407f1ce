"""Model definitions and results as JSON plus named arrays (the model-file payload).

Everything a model file holds is encoded into a JSON-able tree whose arrays are
replaced by ``{"$array": key}`` references into a dict of numpy arrays. Decoding
builds objects only from the whitelists below (transforms, priors,
preprocessors): a model file is data, and loading it never runs code from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import numpyro.distributions as dist

from ..data import AbstractPreprocessor, NullPreprocessor, ShiftScalePreprocessor
from ..observation import ContinuumTransform, DopplerTransform
from ..transforms import (
    AbstractTransform,
    AffineTransform,
    LinearTransform,
    OffsetTransform,
    QuadraticTransform,
    TransformSequence,
)

__all__ = ["FileFormatError", "check_payload", "decode", "encode"]

_TRANSFORMS = {
    t.__name__: t
    for t in (LinearTransform, AffineTransform, QuadraticTransform, OffsetTransform)
}
_ON_A_GRID = {t.__name__: t for t in (ContinuumTransform, DopplerTransform)}
_PRIORS = {
    d.__name__: d
    for d in (
        dist.Normal,
        dist.HalfNormal,
        dist.Cauchy,
        dist.HalfCauchy,
        dist.Laplace,
        dist.LogNormal,
        dist.StudentT,
        dist.Uniform,
        dist.Exponential,
        dist.Gamma,
        dist.InverseGamma,
        dist.Beta,
    )
}
_SUPPORTS = {
    "real": dist.constraints.real,
    "positive": dist.constraints.positive,
    "nonnegative": dist.constraints.nonnegative,
}


class FileFormatError(ValueError):
    """A model file whose content is not what this version of pollux wrote."""


class _Encoder:
    """Collects arrays while turning an object tree into JSON-able values."""

    def __init__(self, call: str):
        self.call = call
        self.arrays: dict[str, np.ndarray] = {}

    def array(self, value: Any, key: str) -> dict[str, str]:
        arr = np.asarray(value)
        if arr.dtype == object:
            msg = f"{self.call}: {key} is not a numeric array; it cannot be stored"
            raise TypeError(msg)
        self.arrays[key] = arr
        return {"$array": key}

    def __call__(self, obj: Any, key: str) -> Any:
        if obj is None or isinstance(obj, (bool, int, float, str)):
            return obj
        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, (np.ndarray, jax.Array)):
            return self.array(obj, key)
        if isinstance(obj, tuple):
            return {"$tuple": [self(v, f"{key}/{i}") for i, v in enumerate(obj)]}
        if isinstance(obj, list):
            return [self(v, f"{key}/{i}") for i, v in enumerate(obj)]
        if isinstance(obj, Mapping):
            out = {}
            for k, v in obj.items():
                if not isinstance(k, str) or k.startswith("$") or "/" in k:
                    msg = f"{self.call}: cannot store the key {k!r} of {key}"
                    raise TypeError(msg)
                out[k] = self(v, f"{key}/{k}")
            return out
        if isinstance(obj, dist.Distribution):
            return {"$prior": self.prior(obj, key)}
        if isinstance(obj, AbstractTransform):
            return {"$transform": self.transform(obj, key)}
        if isinstance(obj, AbstractPreprocessor):
            return {"$preprocessor": self.preprocessor(obj, key)}
        msg = (
            f"{self.call}: cannot store {key} of type {type(obj).__name__} in a "
            "model file"
        )
        raise TypeError(msg)

    def prior(self, d: dist.Distribution, key: str) -> dict[str, Any]:
        if isinstance(d, dist.ExpandedDistribution):
            return {
                "type": "Expanded",
                "base": self.prior(d.base_dist, f"{key}/base"),
                "batch_shape": list(d.batch_shape),
            }
        if isinstance(d, dist.Independent):
            return {
                "type": "Independent",
                "base": self.prior(d.base_dist, f"{key}/base"),
                "ndims": int(d.reinterpreted_batch_ndims),
            }
        if isinstance(d, dist.ImproperUniform):
            names = [n for n, c in _SUPPORTS.items() if d.support is c]
            if names:
                return {
                    "type": "ImproperUniform",
                    "support": names[0],
                    "batch_shape": list(d.batch_shape),
                    "event_shape": list(d.event_shape),
                }
        name = type(d).__name__
        if _PRIORS.get(name) is not type(d):
            msg = (
                f"{self.call}: the prior {name} of {key} cannot be stored in a model "
                f"file; supported priors: {sorted(_PRIORS)}, ImproperUniform on "
                f"{sorted(_SUPPORTS)}, and their .expand / .to_event"
            )
            raise TypeError(msg)
        args = {
            arg: self.array(getattr(d, arg), f"{key}/{arg}")
            for arg in type(d).arg_constraints
        }
        return {"type": name, "args": args}

    def transform(self, t: AbstractTransform, key: str) -> dict[str, Any]:
        if isinstance(t, TransformSequence):  # member priors live in the members
            members = [
                self.transform(m, f"{key}/{i}") for i, m in enumerate(t.transforms)
            ]
            scatter = t.param_priors.get("s")
            priors = {} if scatter is None else {"s": self(scatter, f"{key}/priors/s")}
            return {"type": "TransformSequence", "members": members, "priors": priors}
        priors = {
            k: {"$prior": self.prior(p, f"{key}/priors/{k}")}
            for k, p in t.param_priors.items()
        }
        name = type(t).__name__
        if _ON_A_GRID.get(name) is type(t):  # built from a wavelength grid
            grid = self.array(np.asarray(t.wavelength), f"{key}/wavelength")
            extra = {"degree": t.degree} if isinstance(t, ContinuumTransform) else {}
            return {"type": name, "wavelength": grid, **extra, "priors": priors}
        if _TRANSFORMS.get(name) is not type(t):
            msg = (
                f"{self.call}: the transform {name} of {key} cannot be stored in a "
                "model file (a model file holds no code, and this transform's "
                "function is code); storable transforms: "
                f"{sorted({*_TRANSFORMS, *_ON_A_GRID})} "
                "and TransformSequence of them"
            )
            raise TypeError(msg)
        return {"type": name, "output_size": t.output_size, "priors": priors}

    def preprocessor(self, p: AbstractPreprocessor, key: str) -> dict[str, Any]:
        if type(p) is NullPreprocessor:
            return {"type": "NullPreprocessor"}
        if type(p) is ShiftScalePreprocessor:
            return {
                "type": "ShiftScalePreprocessor",
                "loc": self.array(p.loc, f"{key}/loc"),
                "scale": self.array(p.scale, f"{key}/scale"),
            }
        msg = (
            f"{self.call}: the preprocessor {type(p).__name__} of {key} cannot be "
            "stored; use ShiftScalePreprocessor or NullPreprocessor"
        )
        raise TypeError(msg)


def encode(obj: Any, call: str) -> tuple[Any, dict[str, np.ndarray]]:
    """``(tree, arrays)``: a JSON-able tree and the arrays it references by key."""
    enc = _Encoder(call)
    return enc(obj, ""), enc.arrays


def decode(tree: Any, arrays: Mapping[str, np.ndarray]) -> Any:
    """Rebuild what `encode` stored; raises `FileFormatError` on anything unknown."""
    return _Decoder(arrays)(tree)


class _Decoder:
    def __init__(self, arrays: Mapping[str, np.ndarray]):
        self.arrays = arrays

    def __call__(self, node: Any) -> Any:
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        if isinstance(node, list):
            return [self(v) for v in node]
        if not isinstance(node, dict):
            raise FileFormatError(f"unexpected value {_short(node)}")
        if len(node) == 1:
            ((tag, value),) = node.items()
            if tag == "$array":
                return self.array(value)
            if tag == "$tuple":
                return tuple(self(v) for v in _expect(value, list, tag))
            if tag == "$prior":
                return self.prior(value)
            if tag == "$transform":
                return self.transform(value)
            if tag == "$preprocessor":
                return self.preprocessor(value)
        bad = [k for k in node if k.startswith("$")]
        if bad:
            raise FileFormatError(f"unknown entry {bad[0]!r}")
        return {k: self(v) for k, v in node.items()}

    def array(self, key: Any) -> np.ndarray:
        if not isinstance(key, str) or key not in self.arrays:
            raise FileFormatError(f"the array {_short(key)} is referenced but missing")
        return self.arrays[key]

    def prior(self, spec: Any) -> dist.Distribution:
        spec = _expect(spec, dict, "prior")
        kind = spec.get("type")
        try:
            if kind == "Expanded":
                return self.prior(spec["base"]).expand(_shape(spec["batch_shape"]))
            if kind == "Independent":
                return self.prior(spec["base"]).to_event(
                    _count(spec["ndims"], "ndims", 8)
                )
            if kind == "ImproperUniform":
                return dist.ImproperUniform(
                    _SUPPORTS[spec["support"]],
                    _shape(spec["batch_shape"]),
                    _shape(spec["event_shape"]),
                )
            cls = _PRIORS[kind]
            args = _expect(spec["args"], dict, "prior arguments")
            if set(args) != set(cls.arg_constraints):
                raise FileFormatError(f"prior {kind} with arguments {sorted(args)}")
            return cls(**{k: self(v) for k, v in args.items()})
        except (KeyError, TypeError, ValueError, IndexError) as err:
            if isinstance(err, FileFormatError):
                raise
            raise FileFormatError(f"invalid prior {_short(spec)}: {err}") from err

    def transform(self, spec: Any) -> AbstractTransform:
        spec = _expect(spec, dict, "transform")
        kind = spec.get("type")
        priors = {
            k: self(v) for k, v in _expect(spec.get("priors"), dict, kind).items()
        }
        try:
            if kind == "TransformSequence":
                members = [
                    self.transform(m) for m in _expect(spec["members"], list, kind)
                ]
                return TransformSequence(*members, param_priors=priors)
            if kind in _ON_A_GRID:
                grid = _expect(spec["wavelength"], dict, kind)
                wave = self.array(_expect(grid.get("$array"), str, kind))
                extra = {}
                if kind == "ContinuumTransform":
                    extra["degree"] = _count(spec["degree"], "degree", 10)
                return _ON_A_GRID[kind](wave, **extra, param_priors=priors)
            if kind not in _TRANSFORMS:
                raise FileFormatError(f"unknown transform {_short(kind)}")
            size = _count(spec["output_size"], "output_size", _MAX_SIZE, low=1)
            return _TRANSFORMS[kind](size, param_priors=priors)
        except (KeyError, TypeError, ValueError, IndexError) as err:
            if isinstance(err, FileFormatError):
                raise
            raise FileFormatError(f"invalid transform {_short(kind)}: {err}") from err

    def preprocessor(self, spec: Any) -> AbstractPreprocessor:
        spec = _expect(spec, dict, "preprocessor")
        kind = spec.get("type")
        if kind == "NullPreprocessor":
            return NullPreprocessor()
        if kind == "ShiftScalePreprocessor":
            try:
                return ShiftScalePreprocessor(self(spec["loc"]), self(spec["scale"]))
            except (KeyError, TypeError, ValueError) as err:
                raise FileFormatError(f"invalid preprocessor: {err}") from err
        raise FileFormatError(f"unknown preprocessor {_short(kind)}")


def _expect(value: Any, kind: type, what: Any) -> Any:
    if not isinstance(value, kind):
        raise FileFormatError(
            f"{_short(what)}: expected a {kind.__name__}, got {_short(value)}"
        )
    return value


#: The largest output size and batch dimension a model file may declare.
_MAX_SIZE = 1 << 24


def _short(value: Any, n: int = 80) -> str:
    """``repr(value)`` cut to ``n`` characters (a damaged value may be huge)."""
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def _count(value: Any, what: str, high: int, low: int = 0) -> int:
    """``value`` checked to be an integer in ``[low, high]`` (not a bool)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not low <= value <= high
    ):
        raise FileFormatError(
            f"{what} must be an integer in [{low}, {high}], got {_short(value)}"
        )
    return value


def _shape(value: Any) -> tuple[int, ...]:
    """A stored shape: at most 8 dimensions, each at most `_MAX_SIZE`."""
    dims = _expect(value, list, "shape")
    if len(dims) > 8:
        raise FileFormatError(f"a shape of {len(dims)} dimensions")
    return tuple(_count(d, "a dimension", _MAX_SIZE) for d in dims)


def _field(tree: Mapping[str, Any], key: str, kind: Any, where: str) -> Any:
    if key not in tree:
        raise FileFormatError(f"{where} lacks {key!r}")
    value = tree[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        names = (
            kind.__name__
            if isinstance(kind, type)
            else "/".join(k.__name__ for k in kind)
        )
        raise FileFormatError(f"{where}[{key!r}] is not a {names}: {_short(value)}")
    return value


def check_payload(payload: Any) -> None:
    """Refuse a decoded payload that lacks a part `pollux.load` needs, or holds
    one of another type (`FileFormatError`)."""
    _expect(payload, dict, "the payload")
    if not {"model", "result"} <= set(payload):
        raise FileFormatError("the payload lacks the model or the result")
    model = _field(payload, "model", dict, "the payload")
    kind = _field(model, "kind", str, "the model")
    if kind == "LuxModel":
        _count(_field(model, "latent_size", int, "the model"), "latent_size", 4096, 1)
        outputs = _field(model, "outputs", dict, "the model")
        if not outputs or not all(
            isinstance(t, AbstractTransform) for t in outputs.values()
        ):
            raise FileFormatError("the model's outputs are not transforms")
    elif kind == "CannonModel":
        _count(_field(model, "n_labels", int, "the model"), "n_labels", 64, 1)
        _count(_field(model, "flux_size", int, "the model"), "flux_size", _MAX_SIZE, 1)
        _field(model, "flux", str, "the model")
        _field(model, "label", str, "the model")
    else:
        raise FileFormatError(f"unknown model kind {_short(kind)}")
    result = _field(payload, "result", dict, "the payload")
    params = _field(result, "params", dict, "the result")
    for name, value in params.items():
        if isinstance(value, dict):
            for key in value:
                _field(value, key, np.ndarray, f"the parameters of {name!r}")
        else:
            _field(params, name, np.ndarray, "the parameters")
    for name in _field(result, "param_cov", dict, "the result"):
        _field(result["param_cov"], name, np.ndarray, "param_cov")
    post = _field(result, "posterior", dict, "the result")
    _field(post, "mean", np.ndarray, "the posterior")
    _field(post, "cov", np.ndarray, "the posterior")
    _field(post, "multimodal", (np.ndarray, type(None)), "the posterior")
    losses = _field(result, "losses", np.ndarray, "the result")
    if losses.ndim != 1 or losses.size == 0:
        raise FileFormatError("the result's losses are not a list of numbers")
    _count(_field(result, "n_iter", int, "the result"), "n_iter", 1 << 40)
    _field(result, "converged", bool, "the result")
    for key in ("settings", "calibration"):
        _field(result, key, dict, "the result")
    for key in ("preprocessors", "columns", "wavelength", "ranges"):
        if key in payload:
            _field(payload, key, dict, "the payload")
