"""Opt-in persistent compilation cache of JAX for command-line runs of pollux.

Importing pollux changes no JAX setting: `enable_compilation_cache` is called by
the command-line interface (``pollux train``, ``predict`` and ``report``, unless
turned off by ``--no-cache``), or by
a user who wants compiled programs reused across processes.

Why JAX's defaults are not enough
---------------------------------
JAX writes a compiled program to its persistent cache only when it took at least
``jax_persistent_cache_min_compile_time_secs`` (default 1 s) to compile. Most of
pollux's programs (and every eager ``jnp`` operation) compile in well under a
second each, but there are dozens of them, and a few take close to a second, so
on a loaded machine the same program is cached in one run and skipped in the
next: a second process then recompiles whatever happened to fall under the
threshold in the first, and its start-up time varies from run to run. Setting the
threshold to 0 caches every program, so a second process compiles nothing.

The cache key (``jax._src.cache_key``) is the StableHLO of the program with its
debug information stripped (source locations, so also
``jax_include_full_tracebacks_in_locations``, do not enter it unless
``jax_compilation_cache_include_metadata_in_key`` is set), the jaxlib version, the
platform, ``XLA_FLAGS`` (and ``--xla*`` command-line arguments), the compile
options (which, with the default ``jax_persistent_cache_enable_xla_caches``,
include the cache directory itself) and the devices. So the key is the same in
every process that runs the same program with the same shapes, dtypes and
settings (for example ``jax_enable_x64``) from the same cache directory.

Except for one thing: numpyro (0.15 to at least 0.19) orders the pytree leaves of a
distribution as ``tuple(set_of_field_names)``
(``Distribution.gather_pytree_data_fields``), which depends on Python's per-process
string hash seed (``PYTHONHASHSEED``). A jitted function that takes distributions
as arguments (``LuxModel.fit`` passes its priors inside the ``EMProblem`` to
``em_chunk``, ``final_state`` and ``initialize``) then gets its parameters in a
different order in different processes: a different program, so a different cache
key and a cache miss in about half of the processes. `enable_compilation_cache`
therefore makes numpyro sort those field names (`sort_numpyro_pytree_fields`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = [
    "default_cache_dir",
    "enable_compilation_cache",
    "sort_numpyro_pytree_fields",
]

#: JAX settings made by `enable_compilation_cache` besides the cache directory.
CACHE_SETTINGS: dict[str, float | int] = {
    # Cache every program, however quickly it compiled (default: only >= 1 s).
    "jax_persistent_cache_min_compile_time_secs": 0.0,
    # No minimum entry size; -1 also stops JAX from overriding it later.
    "jax_persistent_cache_min_entry_size_bytes": -1,
}


def default_cache_dir() -> Path:
    """The folder of pollux's JAX compilation cache.

    ``$POLLUX_CACHE_DIR`` if set (and not empty), else ``$XDG_CACHE_HOME/pollux/jax``
    if ``$XDG_CACHE_HOME`` is set, else ``~/Library/Caches/pollux/jax`` on macOS and
    ``~/.cache/pollux/jax`` elsewhere. The folder is not created.

    Returns
    -------
    Path
        An absolute path.

    Examples
    --------
    >>> import os
    >>> from unittest import mock
    >>> with mock.patch.dict(os.environ, {"POLLUX_CACHE_DIR": "/tmp/plx-cache"}):
    ...     default_cache_dir().as_posix()
    '/tmp/plx-cache'
    >>> env = {"POLLUX_CACHE_DIR": "", "XDG_CACHE_HOME": "/tmp/xdg"}
    >>> with mock.patch.dict(os.environ, env):
    ...     default_cache_dir().as_posix()
    '/tmp/xdg/pollux/jax'
    """
    explicit = os.environ.get("POLLUX_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser().absolute()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        base = Path(xdg).expanduser()
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path.home() / ".cache"
    return (base / "pollux" / "jax").absolute()


def enable_compilation_cache(path: str | os.PathLike[str] | None = None) -> Path:
    """Turn on JAX's persistent compilation cache for every compiled program.

    Sets ``jax_compilation_cache_dir`` to ``path`` (created if missing),
    ``jax_persistent_cache_min_compile_time_secs = 0`` and
    ``jax_persistent_cache_min_entry_size_bytes = -1``, so that every program JAX
    compiles (including small ones and eager operations) is written to the cache
    and loaded from it by later processes, instead of only the programs that took
    over a second to compile (JAX's default, which makes the time a second process
    spends compiling vary from run to run). Also sets
    ``jax_enable_compilation_cache = True``.

    Idempotent: calling it again with the same folder changes nothing; with another
    folder, the cache moves there. It is best called before the first JAX
    computation, but works after one too (programs compiled before are not
    written to the cache). pollux never calls it on import; the command-line
    interface does.

    Parameters
    ----------
    path
        The cache folder; default `default_cache_dir`.

    Returns
    -------
    Path
        The absolute path of the cache folder.

    Examples
    --------
    >>> import tempfile
    >>> import jax
    >>> import jax.numpy as jnp
    >>> names = ["jax_compilation_cache_dir", *CACHE_SETTINGS]
    >>> saved = {name: getattr(jax.config, name) for name in names}
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     folder = enable_compilation_cache(tmp)
    ...     value = jax.jit(lambda x: 3 * x + 1)(jnp.arange(4.0))
    ...     n_entries = len([p for p in folder.iterdir() if p.name.endswith("-cache")])
    ...     for name, old in saved.items():  # restore the settings of this process
    ...         jax.config.update(name, old)
    ...     _reset_jax_cache()
    >>> folder.name == os.path.basename(tmp), n_entries > 0
    (True, True)
    """
    import jax

    folder = Path(default_cache_dir() if path is None else path).expanduser()
    folder = folder.absolute()
    folder.mkdir(parents=True, exist_ok=True)
    current = jax.config.jax_compilation_cache_dir
    if current is not None and Path(current) != folder:
        # JAX opens its cache once per process, at the first compile after the
        # folder is set: forget the old folder so that the new one is used.
        _reset_jax_cache()
    jax.config.update("jax_enable_compilation_cache", True)
    for name, value in CACHE_SETTINGS.items():
        jax.config.update(name, value)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    sort_numpyro_pytree_fields()
    return folder


def sort_numpyro_pytree_fields() -> bool:
    """Make the pytree layout of numpyro distributions the same in every process.

    numpyro returns a distribution's data and auxiliary field names as
    ``tuple(set(...))``, in an order that depends on the process's string hash
    seed, so the programs of jitted functions taking distributions differ between
    processes (and miss the persistent cache). This sorts them instead (flattening
    and unflattening both use the sorted order). Call it before any distribution
    is flattened (`enable_compilation_cache` does, at start-up): a pytree flattened
    before the change must not be unflattened after it. Idempotent.

    Returns
    -------
    bool
        False if numpyro is not installed or has no such methods, else True.
    """
    try:
        from numpyro.distributions.distribution import Distribution
    except ImportError:  # pragma: no cover - numpyro is a dependency
        return False
    if getattr(Distribution, "_pollux_sorted_fields", False):
        return True
    for name in ("gather_pytree_data_fields", "gather_pytree_aux_fields"):
        original = getattr(Distribution, name, None)
        if original is None:  # pragma: no cover - other numpyro versions
            return False
        func = original.__func__

        def gather(cls, _func=func) -> tuple[str, ...]:
            return tuple(sorted(_func(cls)))

        setattr(Distribution, name, classmethod(gather))
    Distribution._pollux_sorted_fields = True
    return True


def _reset_jax_cache() -> None:
    """Make JAX open its persistent cache again (from the folder set then)."""
    from jax.experimental.compilation_cache import compilation_cache

    compilation_cache.reset_cache()
