"""What every ``pollux`` command shares: usage errors, output paths, JAX set-up."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "REPORT_SUFFIXES",
    "Staged",
    "UsageError",
    "atomic_path",
    "check_distinct",
    "check_input_file",
    "check_no_repeats",
    "check_output_path",
    "check_replaceable_folder",
    "is_inside",
    "load_model",
    "match_rows",
    "same_path",
    "setup_jax",
    "staged_outputs",
]


class UsageError(ValueError):
    """A mistake in the command line or its inputs: reported, exit status 2."""


def setup_jax(*, cache: bool, float64: bool) -> None:
    """Turn on the persistent compilation cache and double precision as asked.

    Must run before JAX makes any array (double precision) and before any numpyro
    distribution is flattened (the cache's stable keys).
    """
    if cache:
        from .._jaxcache import enable_compilation_cache

        enable_compilation_cache()
    if float64:
        import jax

        jax.config.update("jax_enable_x64", True)


def check_output_path(
    path: Path, *, overwrite: bool, what: str, folder: bool = False
) -> Path:
    """Refuse an output of the wrong kind (a file where a ``folder`` goes, or the
    reverse), an existing one (unless ``overwrite``), a missing parent folder or
    one this process may not write into."""
    name = str(path)
    if path.exists() and path.is_dir() != folder:
        kind = "a file; give a folder" if folder else "a folder; give a file name"
        msg = f"{what} {name!r} is {kind}"
        raise UsageError(msg)
    if path.exists() and not overwrite:
        msg = f"{what} {name!r} exists; pass --overwrite to replace it"
        raise UsageError(msg)
    parent = path.parent
    if not parent.is_dir():
        kind = "is not a folder" if parent.exists() else "does not exist"
        msg = f"{what} {name!r}: the folder {str(parent)!r} {kind}"
        raise UsageError(msg)
    if not os.access(parent, os.W_OK | os.X_OK):
        msg = f"{what} {name!r}: no permission to write into {str(parent)!r}"
        raise UsageError(msg)
    return path


def check_input_file(path: Path, what: str, *, folder_ok: bool = False) -> Path:
    """Refuse an input that does not exist, is not readable, or is a folder
    where a file is expected (unless ``folder_ok``, e.g. a zarr store)."""
    name = str(path)
    if not path.exists():
        msg = f"{what} {name!r} does not exist"
        raise UsageError(msg)
    if path.is_dir() and not folder_ok:
        msg = f"{what} {name!r} is a folder; give a file"
        raise UsageError(msg)
    if not os.access(path, os.R_OK):
        msg = f"{what} {name!r}: no permission to read it"
        raise UsageError(msg)
    return path


def _real(path: Any) -> str:
    return os.path.realpath(os.fspath(path))


def same_path(a: Any, b: Any) -> bool:
    """Whether ``a`` and ``b`` name the same file or folder
    (`pollux.io.checks.same_file`)."""
    from ..io.checks import same_file

    return same_file(a, b)


def is_inside(path: Any, folder: Any) -> bool:
    """Whether ``path`` lies inside ``folder`` (or is it), symlinks resolved."""
    if same_path(path, folder):
        return True
    return Path(_real(path)).is_relative_to(Path(_real(folder)))


def check_distinct(
    outputs: Sequence[tuple[str, Path, bool]], inputs: Sequence[tuple[str, Path]]
) -> None:
    """Refuse outputs ``(what, path, is_folder)`` that name an input ``(what,
    path)`` or each other, or a folder output holding an input or another output
    (replacing the folder would delete it) — before any work is done."""
    for i, (what, path, folder) in enumerate(outputs):
        for other, src in inputs:
            if same_path(path, src):
                msg = (
                    f"{what} {str(path)!r} is the {other} {str(src)!r}; an input is "
                    f"never overwritten: give another {what}"
                )
                raise UsageError(msg)
            if folder and is_inside(src, path):
                msg = (
                    f"{what} {str(path)!r} holds the {other} {str(src)!r} (writing "
                    f"the folder would replace it): give another {what}"
                )
                raise UsageError(msg)
        for j, (what2, path2, _) in enumerate(outputs):
            if i < j and same_path(path, path2):
                msg = (
                    f"{what} {str(path)!r} and {what2} {str(path2)!r} are the same "
                    "path: give each its own"
                )
                raise UsageError(msg)
            if i != j and folder and is_inside(path2, path):
                msg = (
                    f"{what2} {str(path2)!r} is inside the {what} {str(path)!r}: "
                    "give each its own place"
                )
                raise UsageError(msg)


def check_no_repeats(paths: Sequence[Path], what: str) -> None:
    """Refuse a file named twice in ``paths`` (also through another path, a
    symlink or a hard link): its spectra would be read twice."""
    seen: dict[Any, Path] = {}
    for path in paths:
        try:
            st = os.stat(path)
            key: Any = (st.st_dev, st.st_ino)
        except (OSError, ValueError):
            key = _real(path)
        if key in seen:
            first = seen[key]
            also = "" if str(first) == str(path) else f" (as {str(first)!r})"
            msg = (
                f"{what} {str(path)!r} is given twice{also}: its spectra would be "
                "read twice"
            )
            raise UsageError(msg)
        seen[key] = path


#: What a report folder holds: replacing a folder with anything else is refused.
REPORT_SUFFIXES = (".png", ".json")


def check_replaceable_folder(path: Path, what: str) -> None:
    """Refuse to replace (``--overwrite``) an existing folder holding anything but
    the figures and summaries a report writes: a subfolder or another file means
    it is not an old report (e.g. ``--out .``)."""
    if not path.is_dir():
        return
    for entry in path.iterdir():
        if not (entry.is_file() and entry.suffix.lower() in REPORT_SUFFIXES):
            msg = (
                f"{what} {str(path)!r} holds {entry.name!r}, which no report "
                "writes; refusing to replace the folder: give a new or empty one"
            )
            raise UsageError(msg)


def _partial(path: Path, tag: str) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{tag}{path.suffix}")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary name beside ``path``, renamed to it only if the block completes.

    An interrupted or failed write leaves nothing under ``path`` (and no temporary).
    """
    tmp = _partial(path, "partial")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


class Staged:
    """Outputs written under temporary names beside their targets (`file`,
    `folder`), all moved into place by `commit` (an existing target is replaced
    only then) or all removed by `discard`."""

    def __init__(self) -> None:
        self._items: list[tuple[Path, Path]] = []  # (temporary, target)

    def file(self, path: Path) -> Path:
        """A temporary name for the file ``path`` (not created)."""
        tmp = _partial(path, "partial")
        _remove(tmp)
        self._items.append((tmp, path))
        return tmp

    def folder(self, path: Path) -> Path:
        """A new, empty temporary folder for the folder ``path``."""
        tmp = _partial(path, "partial")
        _remove(tmp)
        self._items.append((tmp, path))
        tmp.mkdir()
        return tmp

    def commit(self) -> None:
        """Move every temporary onto its target; on failure put back what was
        there and raise."""
        aside: list[tuple[Path, Path]] = []  # (old target moved away, target)
        placed: list[tuple[Path, Path]] = []
        try:
            for tmp, path in self._items:
                if path.exists() or path.is_symlink():
                    old = _partial(path, "old")
                    _remove(old)
                    os.replace(path, old)
                    aside.append((old, path))
                os.replace(tmp, path)
                placed.append((tmp, path))
        except BaseException:
            for tmp, path in reversed(placed):
                with contextlib.suppress(OSError):
                    os.replace(path, tmp)
            for old, path in reversed(aside):
                with contextlib.suppress(OSError):
                    os.replace(old, path)
            raise
        for old, _ in aside:
            _remove(old)
        self._items = []

    def discard(self) -> None:
        """Remove every temporary not committed."""
        for tmp, _ in self._items:
            _remove(tmp)
        self._items = []


@contextlib.contextmanager
def staged_outputs() -> Iterator[Staged]:
    """A `Staged` committed when the block completes, discarded otherwise."""
    staged = Staged()
    try:
        yield staged
        staged.commit()
    finally:
        staged.discard()


def load_model(path: Path, *, cache: bool) -> Any:
    """The `TrainedModel` at ``path``, JAX set up first (the cache as asked, double
    precision if the file was fit in it)."""
    from ..models import load, model_file_info

    setup_jax(cache=cache, float64=bool(model_file_info(path).get("x64")))
    return load(path)


def match_rows(ids: Sequence[str], table: Any, id_column: str | None, what: str):
    """Row of ``table`` (a `pollux.readers.LabelTable`) for each spectrum id: by
    position without ``id_column``, else by identifier (unique in the table)."""
    import numpy as np

    if id_column is None:
        if len(table.ids) != len(ids):
            msg = (
                f"{what}: {len(ids)} spectra but {len(table.ids)} table rows; give the "
                "column of identifiers to match them by ([data] id_column, "
                "--id-column)"
            )
            raise UsageError(msg)
        return np.arange(len(ids))
    where: dict[str, int] = {}
    for row, key in enumerate(table.ids):
        if str(key) in where:
            msg = f"{what}: the identifier {key!r} appears twice in the table"
            raise UsageError(msg)
        where[str(key)] = row
    missing = [i for i in ids if i not in where]
    if missing:
        msg = (
            f"{what}: {len(missing)} spectra have no row in the table (column "
            f"{id_column!r}), e.g. {missing[:3]}"
        )
        raise UsageError(msg)
    return np.array([where[i] for i in ids])
