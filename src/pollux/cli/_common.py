"""What every ``pollux`` command shares: usage errors, output paths, JAX set-up."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "UsageError",
    "atomic_path",
    "check_output_path",
    "load_model",
    "match_rows",
    "setup_jax",
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
    """Refuse an existing output (unless ``overwrite``), one of the wrong kind (a
    file where a ``folder`` goes, or the reverse) or a missing parent folder."""
    if path.exists() and not overwrite:
        msg = f"{what} {str(path)!r} exists; pass --overwrite to replace it"
        raise UsageError(msg)
    if path.exists() and path.is_dir() != folder:
        kind = "a file; give a folder" if folder else "a folder; give a file name"
        msg = f"{what} {str(path)!r} is {kind}"
        raise UsageError(msg)
    if not path.parent.is_dir():
        msg = f"the folder of the {what} {str(path.parent)!r} does not exist"
        raise UsageError(msg)
    return path


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary name beside ``path``, renamed to it only if the block completes.

    An interrupted or failed write leaves nothing under ``path`` (and no temporary).
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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
                "column of identifiers to match them by"
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
