"""What every ``pollux`` command shares: usage errors, output paths, JAX set-up."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "UsageError",
    "atomic_path",
    "check_output_path",
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


def check_output_path(path: Path, *, overwrite: bool, what: str) -> Path:
    """Refuse an existing output (unless ``overwrite``) or a missing parent folder."""
    if path.exists() and not overwrite:
        msg = f"{what} {str(path)!r} exists; pass --overwrite to replace it"
        raise UsageError(msg)
    folder = what == "report folder"
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
