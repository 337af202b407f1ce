"""Checks of what comes from a file, before it is used.

Every reader of pollux — model files, spectra (FITS, HDF5, npz, zarr), label
tables, TOML settings — passes what it takes from a file through these checks:
shapes, declared sizes (bounded before anything is allocated), dtypes (complex,
object and text refused where numbers are expected), finiteness, names (unique,
not colliding with reserved ones) and structure (exactly the expected zip
members). A failed check raises `FileError` (a `ValueError`) whose message names
the file, the item in it, what is wrong and what to do::

    read_spectra(paths=...): file 'a.npz', array 'flux': complex values (dtype
    complex128); store the real flux

Parsing of headers and manifests happens here too, so that no exception of a
library (RecursionError, MemoryError, astropy's VerifyError, ...) escapes a read.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import zipfile
from collections.abc import Iterable
from pathlib import PurePosixPath
from typing import Any

import numpy as np

__all__ = [
    "MAX_ARRAY_BYTES",
    "MAX_DEPTH",
    "FileError",
    "Source",
    "header_value",
    "json_document",
    "npy_array",
    "real_array",
    "same_file",
    "unique_names",
    "zip_members",
]

#: The largest array a file may declare (bytes) before it is refused unread.
MAX_ARRAY_BYTES = 1 << 32
#: The deepest nesting of lists and objects a JSON manifest may hold.
MAX_DEPTH = 32


class FileError(ValueError):
    """A file whose content cannot be used; the message says which file, which
    item in it, what is wrong and what to do."""


@dataclasses.dataclass(frozen=True)
class Source:
    """Where values come from: the call reading them and the file they are in.

    >>> Source("pollux.load", "m.pollux").error("array 'x'", "is empty").args[0]
    "pollux.load: file 'm.pollux', array 'x': is empty"
    """

    call: str
    path: Any

    def error(
        self, item: str | None, problem: str, fix: str | None = None
    ) -> FileError:
        """The `FileError` of ``problem`` with ``item`` (None: the whole file)."""
        where = f"{self.call}: file '{os.fspath(self.path)}'"
        if item:
            where += f", {item}"
        return FileError(f"{where}: {problem}" + (f"; {fix}" if fix else ""))


def real_array(
    value: Any,
    src: Source,
    item: str,
    *,
    ndim: int | Iterable[int] | None = None,
    integer: bool = False,
    finite: bool = False,
    limit: float | None = None,
) -> np.ndarray:
    """``value`` (from a file) as a float64 (``integer``: int64) numpy array.

    Refuses what is not real numbers (complex, object, text, structured), other
    numbers of dimensions than ``ndim``, non-finite values (``finite``) and
    finite values beyond ``±limit``.

    >>> real_array([1, 2], Source("f", "a.npz"), "array 'x'").tolist()
    [1.0, 2.0]
    >>> real_array([1j], Source("f", "a.npz"), "array 'x'")
    Traceback (most recent call last):
    ...
    pollux.io.checks.FileError: f: file 'a.npz', array 'x': complex values (dtype complex128) where real numbers are expected; store the real part (or the modulus) yourself
    """
    try:
        arr = np.asarray(value)
    except Exception as err:  # ragged lists and the like
        raise src.error(item, f"not an array ({err})") from None
    kind = arr.dtype.kind
    if kind == "c":
        raise src.error(
            item,
            f"complex values (dtype {arr.dtype}) where real numbers are expected",
            "store the real part (or the modulus) yourself",
        )
    if kind not in "biuf":
        raise src.error(
            item,
            f"not numbers (dtype {arr.dtype})",
            "store numeric arrays (float or integer)",
        )
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if arr.ndim not in allowed:
            dims = " or ".join(str(d) for d in allowed)
            raise src.error(
                item, f"has shape {arr.shape}; expected {dims} dimension(s)"
            )
    if integer:
        if kind == "f":
            if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
                raise src.error(item, "holds values that are not whole numbers")
            if arr.size and np.max(np.abs(arr)) >= 2.0**62:
                raise src.error(item, "holds integers too large to use")
        return arr.astype(np.int64)
    out = arr.astype(np.float64)
    if finite and not np.all(np.isfinite(out)):
        n = int(np.sum(~np.isfinite(out)))
        raise src.error(item, f"holds {n} NaN or infinite value(s)")
    if limit is not None:
        big = np.isfinite(out) & (np.abs(out) > limit)
        if np.any(big):
            first = float(out[big].flat[0])
            raise src.error(
                item,
                f"holds {int(big.sum())} value(s) beyond ±{limit:g} (e.g. {first:g}), "
                "which no spectrum or label has",
                "mark missing values with NaN (or a zero or infinite error)",
            )
    return out


def unique_names(
    names: Iterable[Any],
    src: Source | None,
    item: str,
    *,
    reserved: Iterable[str] = (),
    call: str | None = None,
) -> tuple[str, ...]:
    """``names`` as a tuple of non-empty strings, checked to be unique (also
    case-insensitively) and none of ``reserved``; ``src=None`` for names given
    by a caller (the message then starts with ``call``)."""

    def error(problem: str, fix: str) -> Exception:
        if src is None:
            return ValueError(f"{call}({item}=...): {problem}; {fix}")
        return src.error(item, problem, fix)

    names = tuple(names)
    bad = [n for n in names if not isinstance(n, str) or not n.strip()]
    if bad:
        raise error(f"the name {bad[0]!r} is not a non-empty string", "name it")
    seen: dict[str, str] = {}
    for n in names:
        if n.lower() in seen:
            first = seen[n.lower()]
            raise error(
                f"the name {n!r} appears twice"
                if first == n
                else f"the names {first!r} and {n!r} differ only in case",
                "give every column its own name",
            )
        seen[n.lower()] = n
    reserved = {r.lower(): r for r in reserved}
    clash = [n for n in names if n.lower() in reserved]
    if clash:
        raise error(
            f"the name {clash[0]!r} is one of the columns the table holds anyway "
            f"({sorted(reserved.values())})",
            "rename it",
        )
    return names


def header_value(
    header: Any, key: str, src: Source, kind: type, default: Any = None
) -> Any:
    """The value of FITS header card ``key`` as ``kind`` (float, int or str),
    ``default`` if absent; a card that cannot be parsed or holds another kind of
    value is a `FileError` naming it."""
    try:
        if key not in header:
            return default
        value = header[key]
    except Exception as err:  # astropy's VerifyError and parse errors
        raise src.error(
            f"header card {key!r}", f"cannot be parsed ({err})", "fix the FITS header"
        ) from None
    if kind is str:
        return str(value).strip()
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )
    ok = ok and math.isfinite(float(value))
    if ok and kind is int:
        ok = float(value) == int(value)
    if not ok:
        raise src.error(
            f"header card {key!r}",
            f"holds {value!r}; expected a finite {'integer' if kind is int else 'number'}",
            "fix the FITS header",
        )
    return kind(value)


def json_document(raw: bytes, src: Source, item: str) -> Any:
    """``raw`` parsed as JSON, with at most `MAX_DEPTH` levels of nesting."""
    try:
        doc = json.loads(raw)
    except RecursionError:
        raise src.error(
            item, f"nests deeper than {MAX_DEPTH} levels", "the file is damaged"
        ) from None
    except (ValueError, UnicodeDecodeError) as err:
        raise src.error(
            item, f"is not valid JSON ({err})", "the file is damaged"
        ) from None
    stack = [(doc, 0)]
    while stack:  # the depth, without recursion
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise src.error(
                item, f"nests deeper than {MAX_DEPTH} levels", "the file is damaged"
            )
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
    return doc


def npy_array(raw: bytes, src: Source, item: str) -> np.ndarray:
    """The ``.npy`` bytes ``raw`` as an array, its header checked first: real
    numbers only (no complex values, text or pickled objects), and exactly as many bytes as it declares (so a
    damaged size is refused before anything is allocated)."""
    buf = io.BytesIO(raw)
    try:
        version = np.lib.format.read_magic(buf)
        read_header = {
            (1, 0): np.lib.format.read_array_header_1_0,
            (2, 0): np.lib.format.read_array_header_2_0,
        }[version]
        shape, fortran, dtype = read_header(buf)
    except Exception as err:
        raise src.error(
            item, f"is not a .npy array ({err})", "the file is damaged"
        ) from None
    if dtype.hasobject or dtype.kind not in "biuf" or dtype.fields:
        raise src.error(
            item, f"cannot be read: it holds values of dtype {dtype}, not real numbers"
        )
    n = math.prod(shape)
    size = n * dtype.itemsize
    body = len(raw) - buf.tell()
    if size > MAX_ARRAY_BYTES or size != body:
        raise src.error(
            item,
            f"declares shape {shape} ({size} bytes) but holds {body} bytes",
            "the file is truncated or damaged",
        )
    arr = np.frombuffer(raw, dtype=dtype, count=n, offset=buf.tell())
    return arr.reshape(shape, order="F" if fortran else "C").copy()


def zip_members(zf: zipfile.ZipFile, expected: Iterable[str], src: Source) -> None:
    """Refuse a zip archive whose members are not exactly ``expected``: none
    missing, none extra, none twice, no absolute or ``..`` names."""
    names = zf.namelist()
    expected = set(expected)
    for name in names:
        parts = PurePosixPath(name.replace("\\", "/")).parts
        if name.startswith(("/", "\\")) or ".." in parts or name[1:2] == ":":
            raise src.error(
                f"member {name!r}", "has an unsafe name", "the file was tampered with"
            )
    twice = sorted({n for n in names if names.count(n) > 1})
    extra = sorted(set(names) - expected)
    missing = sorted(expected - set(names))
    for found, problem in (
        (twice, "appear twice"),
        (extra, "are unexpected"),
        (missing, "are missing"),
    ):
        if found:
            raise src.error(
                None,
                f"the zip member(s) {found[:3]} {problem}",
                "the file is damaged or was not written by pollux",
            )


def same_file(a: Any, b: Any) -> bool:
    """Whether paths ``a`` and ``b`` name the same file or folder: the same
    inode (hard links and symlinks followed) or, for a path that does not exist
    yet, the same path once symlinks are resolved."""
    try:
        if os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b):
            return True
    except OSError:
        pass
    return os.path.realpath(os.fspath(a)) == os.path.realpath(os.fspath(b))
