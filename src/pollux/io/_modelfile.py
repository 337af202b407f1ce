"""Model files: one zip archive holding a JSON manifest and ``.npy`` arrays.

Format (version 2; version 1 lacks ``payload_sha256``), documented in
docs/model_files.md:

- ``manifest.json``: ``format`` ("pollux-model"), ``format_version``,
  ``pollux_version``, ``created`` (UTC, ISO 8601), ``x64`` (whether the arrays
  are double precision), ``payload`` (the model definition, the fit result, the
  preprocessors, column names, wavelength grids and training ranges, encoded by
  `pollux.io._codec`), ``payload_sha256`` (SHA-256 of the payload's JSON, keys
  sorted, no spaces) and ``arrays`` (for every array its dtype, shape and
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
from ._codec import FileFormatError, check_payload, decode, encode
from .checks import (
    MAX_ARRAY_BYTES,
    FileError,
    Source,
    json_document,
    npy_array,
    zip_members,
)

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
FORMAT_VERSION = 2
_MANIFEST = "manifest.json"
#: The largest manifest read (bytes): far above any real one.
_MAX_MANIFEST = 1 << 26


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pollux")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


def _sha256(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


def _payload_sha256(tree: Any) -> str:
    """SHA-256 of the payload's canonical JSON (keys sorted, no spaces)."""
    text = json.dumps(tree, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


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
        "payload_sha256": _payload_sha256(tree),
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
    """``read(zipfile, src)`` on the model file at ``path``, every way of being
    unreadable turned into a `ValueError` (a missing file: `FileNotFoundError`)."""
    if not isinstance(path, (str, os.PathLike)):
        msg = f"{call}(path=...): expected a file path, got {type(path).__name__}"
        raise TypeError(msg)
    path = Path(path)
    if not path.is_file():
        msg = f"{call}(path=...): no model file at {str(path)!r}"
        raise FileNotFoundError(msg)
    src = Source(call, path)
    try:
        with zipfile.ZipFile(path) as zf:
            return read(zf, src)
    except FileError:
        raise
    except (*UNREADABLE, ValueError) as err:  # e.g. a member name not UTF-8
        raise src.error(
            None,
            f"not a readable pollux model file (not a zip archive, or truncated "
            f"or damaged: {err!r})",
        ) from err


def read_manifest(path: Any, call: str) -> dict[str, Any]:
    """The checked manifest of a model file (its arrays are not read)."""
    return _open(path, call, _read_manifest)


def read_model_file(path: Any, call: str = "pollux.load") -> dict[str, Any]:
    """The decoded payload of a model file, checked; see the module docstring."""

    def read(zf: zipfile.ZipFile, src: Source) -> tuple:
        manifest = _read_manifest(zf, src)
        zip_members(
            zf, [_MANIFEST, *(f"arrays{key}.npy" for key in manifest["arrays"])], src
        )
        return manifest, _read_arrays(zf, manifest, src), src

    manifest, arrays, src = _open(path, call, read)
    try:
        payload = decode(manifest["payload"], arrays)
        check_payload(payload)
    except FileFormatError as err:
        raise src.error(None, f"damaged or not written by pollux: {err}") from err
    payload["info"] = {
        k: manifest.get(k) for k in ("format_version", "pollux_version", "created")
    }
    payload["info"]["x64"] = manifest.get("x64") is True
    return payload


def _read_manifest(zf: zipfile.ZipFile, src: Source) -> dict[str, Any]:
    try:
        info = zf.getinfo(_MANIFEST)
    except KeyError:
        raise src.error(
            None, f"has no {_MANIFEST}: it is not a pollux model file"
        ) from None
    if info.file_size > _MAX_MANIFEST:
        raise src.error(
            _MANIFEST, f"declares {info.file_size} bytes", "the file is damaged"
        )
    manifest = json_document(zf.read(_MANIFEST), src, _MANIFEST)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise src.error(None, f"not a pollux model file (format is not {FORMAT!r})")
    version = manifest.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise src.error(_MANIFEST, f"invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise src.error(
            None,
            f"written by pollux {manifest.get('pollux_version')} in model-file "
            f"format {version}; this pollux reads formats up to {FORMAT_VERSION}",
            "Upgrade pollux to load it",
        )
    if version >= 2 and manifest.get("payload_sha256") != _payload_sha256(
        manifest.get("payload")
    ):
        raise src.error(
            _MANIFEST,
            "its payload does not match its checksum",
            "the file was modified or damaged after it was written",
        )
    arrays = manifest.get("arrays")
    if not isinstance(arrays, dict) or "payload" not in manifest:
        raise src.error(_MANIFEST, "lacks 'arrays' or 'payload'", "the file is damaged")
    for key, meta in arrays.items():
        if not (
            key.startswith("/")
            and isinstance(meta, dict)
            and isinstance(meta.get("dtype"), str)
            and isinstance(meta.get("shape"), list)
            and isinstance(meta.get("sha256"), str)
        ):
            raise src.error(
                f"the record of array {key!r}", "is damaged", "the file is damaged"
            )
    return manifest


def _read_arrays(
    zf: zipfile.ZipFile, manifest: dict[str, Any], src: Source
) -> dict[str, np.ndarray]:
    arrays = {}
    for key, meta in manifest["arrays"].items():
        item = f"array {key!r}"
        member = f"arrays{key}.npy"
        if zf.getinfo(member).file_size > MAX_ARRAY_BYTES:
            raise src.error(item, "declares an impossible size", "the file is damaged")
        arr = npy_array(zf.read(member), src, item)
        if (
            _sha256(arr) != meta["sha256"]
            or arr.dtype.str != meta["dtype"]
            or list(arr.shape) != meta["shape"]
        ):
            raise src.error(
                item,
                "does not match its checksum",
                "the file was modified or damaged after it was written",
            )
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
        if name not in outputs:
            continue
        size = outputs[name].output_size
        widths = {
            p: np.shape(getattr(output.preprocessor, p, 0.0)) for p in ("loc", "scale")
        }
        if output.shape[1] != size or any(
            w not in ((), (size,)) for w in widths.values()
        ):
            msg = (
                f"{call}(data=...): the model's output {name!r} has {size} "
                f"dimensions but the data has {output.shape[1]} and its "
                f"preprocessor's loc and scale have shapes {list(widths.values())}; "
                "give the data (and preprocessors) the model was trained with"
            )
            raise ValueError(msg)
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
