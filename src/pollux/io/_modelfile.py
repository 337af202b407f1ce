"""Model files: one zip archive holding a JSON manifest and ``.npy`` arrays.

Format (version 1), documented in docs/model_files.md:

- ``manifest.json``: ``format`` ("pollux-model"), ``format_version``,
  ``pollux_version``, ``created`` (UTC, ISO 8601), ``x64`` (whether the arrays
  are double precision), ``payload`` (the model definition, the fit result, the
  preprocessors, column names, wavelength grids and training ranges, encoded by
  `pollux.io._codec`) and ``arrays`` (for every array its dtype, shape and
  SHA-256 of its bytes);
- ``arrays/<key>.npy``: one array per key, in numpy's ``.npy`` format, read with
  ``allow_pickle=False``.

Reading never unpickles and never evaluates anything; every array is checked
against its checksum, every parameter for finite values and for the shapes the
model definition implies.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import os
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..data import AbstractPreprocessor, PolluxData
from ._codec import FileFormatError, decode, encode

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "UNREADABLE",
    "model_file_info",
    "read_manifest",
    "read_model_file",
    "write_model_file",
]

#: What reading a damaged zip archive can raise (zipfile, zlib, the file system).
UNREADABLE = (
    zipfile.BadZipFile,
    zlib.error,
    EOFError,
    OSError,
    NotImplementedError,
    RuntimeError,
)
FORMAT = "pollux-model"
#: Version of the layout written by this pollux; files of every earlier version load.
FORMAT_VERSION = 1
_MANIFEST = "manifest.json"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pollux")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


def _sha256(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


def write_model_file(
    path: Any,
    definition: Mapping[str, Any],
    result: Any,
    extras: Mapping[str, Any],
    *,
    overwrite: bool,
    call: str,
) -> Path:
    """Write a model file atomically (temporary name, then rename)."""
    if not isinstance(path, (str, os.PathLike)):
        msg = f"{call}(path=...): expected a file path, got {type(path).__name__}"
        raise TypeError(msg)
    path = Path(path)
    if not isinstance(overwrite, bool):
        msg = f"{call}(overwrite=...): expected True or False, got {overwrite!r}"
        raise TypeError(msg)
    if path.is_dir():
        msg = f"{call}(path=...): {str(path)!r} is a folder; give a file name"
        raise ValueError(msg)
    if path.exists() and not overwrite:
        msg = (
            f"{call}(path=...): {str(path)!r} exists; pass overwrite=True to replace it"
        )
        raise ValueError(msg)
    if not path.parent.is_dir():
        msg = f"{call}(path=...): the folder {str(path.parent)!r} does not exist"
        raise ValueError(msg)
    payload = {
        "model": dict(definition),
        "result": {
            "params": result.params,
            "posterior": {
                "mean": result.posterior.mean,
                "cov": result.posterior.cov,
                "multimodal": result.posterior.multimodal,
            },
            "losses": result.losses,
            "n_iter": result.n_iter,
            "converged": result.converged,
            "param_cov": result.param_cov,
            "settings": result.settings,
            "calibration": result.calibration,
        },
        **extras,
    }
    tree, arrays = encode(payload, call)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "pollux_version": _version(),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "x64": any(
            a.dtype == np.float64 for k, a in arrays.items() if k.startswith("/result/")
        ),
        "payload": tree,
        "arrays": {
            k: {"dtype": a.dtype.str, "shape": list(a.shape), "sha256": _sha256(a)}
            for k, a in arrays.items()
        },
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(_MANIFEST, json.dumps(manifest, indent=1))
            for key, arr in arrays.items():
                buf = io.BytesIO()
                np.lib.format.write_array(buf, arr, allow_pickle=False)
                zf.writestr(f"arrays{key}.npy", buf.getvalue())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _open(path: Any, call: str, read: Any) -> Any:
    """``read(zipfile, where)`` on the model file at ``path``, every way of being
    unreadable turned into a `ValueError` (a missing file: `FileNotFoundError`)."""
    if not isinstance(path, (str, os.PathLike)):
        msg = f"{call}(path=...): expected a file path, got {type(path).__name__}"
        raise TypeError(msg)
    path = Path(path)
    if not path.is_file():
        msg = f"{call}(path=...): no model file at {str(path)!r}"
        raise FileNotFoundError(msg)
    where = f"{call}: {str(path)!r}"
    try:
        with zipfile.ZipFile(path) as zf:
            return read(zf, where)
    except UNREADABLE as err:
        msg = (
            f"{where} is not a readable pollux model file (not a zip archive, or "
            f"truncated or damaged: {err!r})"
        )
        raise ValueError(msg) from err


def read_manifest(path: Any, call: str) -> dict[str, Any]:
    """The checked manifest of a model file (its arrays are not read)."""
    return _open(path, call, _read_manifest)


def read_model_file(path: Any, call: str = "pollux.load") -> dict[str, Any]:
    """The decoded payload of a model file, checked; see the module docstring."""

    def read(zf: zipfile.ZipFile, where: str) -> tuple:
        manifest = _read_manifest(zf, where)
        return manifest, _read_arrays(zf, manifest, where), where

    manifest, arrays, where = _open(path, call, read)
    try:
        payload = decode(manifest["payload"], arrays)
        if not isinstance(payload, dict) or not {"model", "result"} <= set(payload):
            raise FileFormatError("the payload lacks the model or the result")
        payload["info"] = {
            k: manifest.get(k) for k in ("format_version", "pollux_version", "created")
        }
        payload["info"]["x64"] = bool(manifest.get("x64", False))
        return payload
    except FileFormatError as err:
        msg = f"{where} is damaged or was not written by pollux: {err}"
        raise ValueError(msg) from err


def _read_manifest(zf: zipfile.ZipFile, where: str) -> dict[str, Any]:
    try:
        manifest = json.loads(zf.read(_MANIFEST))
    except KeyError:
        msg = f"{where} has no {_MANIFEST}: it is not a pollux model file"
        raise ValueError(msg) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        msg = f"{where}: its {_MANIFEST} is not valid JSON ({err}); the file is damaged"
        raise ValueError(msg) from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        msg = f"{where} is not a pollux model file (format is not {FORMAT!r})"
        raise ValueError(msg)
    version = manifest.get("format_version")
    if not isinstance(version, int) or version < 1:
        msg = f"{where}: invalid format_version {version!r}"
        raise ValueError(msg)
    if version > FORMAT_VERSION:
        msg = (
            f"{where} was written by pollux {manifest.get('pollux_version')} in "
            f"model-file format {version}; this pollux reads formats up to "
            f"{FORMAT_VERSION}. Upgrade pollux to load it"
        )
        raise ValueError(msg)
    if not isinstance(manifest.get("arrays"), dict) or "payload" not in manifest:
        msg = f"{where}: the manifest lacks 'arrays' or 'payload'; the file is damaged"
        raise ValueError(msg)
    return manifest


def _read_arrays(
    zf: zipfile.ZipFile, manifest: dict[str, Any], where: str
) -> dict[str, np.ndarray]:
    arrays = {}
    for key, meta in manifest["arrays"].items():
        try:
            raw = zf.read(f"arrays{key}.npy")
            arr = np.lib.format.read_array(io.BytesIO(raw), allow_pickle=False)
        except KeyError:
            msg = f"{where}: the array {key!r} is missing; the file is damaged"
            raise ValueError(msg) from None
        except ValueError as err:
            msg = f"{where}: the array {key!r} cannot be read ({err})"
            raise ValueError(msg) from err
        if not isinstance(meta, dict) or (
            _sha256(arr) != meta.get("sha256")
            or arr.dtype.str != meta.get("dtype")
            or list(arr.shape) != meta.get("shape")
        ):
            msg = (
                f"{where}: the array {key!r} does not match its checksum; the file "
                "was modified or damaged after it was written"
            )
            raise ValueError(msg)
        arrays[key] = arr
    return arrays


def preprocessors_of(data: Any, outputs: Mapping[str, Any], call: str) -> dict:
    """The preprocessors of ``data``'s outputs that the model has."""
    if not isinstance(data, PolluxData):
        msg = (
            f"{call}(data=...): expected the PolluxData (physical units) whose "
            f"preprocessors the model was trained with, got {type(data).__name__}"
        )
        raise TypeError(msg)
    out: dict[str, AbstractPreprocessor] = {}
    for name, output in data.items():
        if name in outputs:
            out[name] = output.preprocessor
    if not out:
        msg = (
            f"{call}(data=...): the data holds none of the model's outputs "
            f"{list(outputs)}"
        )
        raise ValueError(msg)
    return out


def model_file_info(path: Any) -> dict[str, Any]:
    """The manifest of a model file without its arrays (no JAX work at all).

    Lets a program decide, e.g., to enable double precision before `pollux.load`.
    """
    return {
        k: v
        for k, v in read_manifest(path, "pollux.model_file_info").items()
        if k != "arrays"
    }
