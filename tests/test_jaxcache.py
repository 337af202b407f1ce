"""The opt-in persistent compilation cache (`pollux._jaxcache`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pollux._jaxcache import default_cache_dir

# A tiny program (compiles in milliseconds: JAX's default 1 s threshold would skip
# it) in a fresh process; prints how many programs came from the persistent cache.
CHILD = """
import json, sys
import jax
import jax.numpy as jnp
from pollux._jaxcache import enable_compilation_cache

hits = []
jax.monitoring.register_event_listener(
    lambda event, **kw: hits.append(event)
    if event == "/jax/compilation_cache/cache_hits" else None
)
folder = enable_compilation_cache(sys.argv[1])
assert enable_compilation_cache(sys.argv[1]) == folder  # idempotent
y = jax.jit(lambda x: jnp.sin(x) * 2.0 + 1.0)(jnp.arange(5.0))
y.block_until_ready()
print(json.dumps({"hits": len(hits), "folder": str(folder)}))
"""


def _run(code: str, *args: str, env: dict[str, str] | None = None) -> str:
    full_env = {**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})}
    for name in (
        "JAX_COMPILATION_CACHE_DIR",
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
    ):
        full_env.pop(name, None)
    out = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=full_env,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def test_second_process_loads_from_cache(tmp_path: Path) -> None:
    cache = tmp_path / "jax-cache"
    first = json.loads(_run(CHILD, str(cache)))
    entries = sorted(p.name for p in cache.iterdir() if p.name.endswith("-cache"))
    assert first["folder"] == str(cache.absolute())
    assert entries, "the first process wrote nothing to the cache"
    second = json.loads(_run(CHILD, str(cache)))
    assert second["hits"] >= 1
    # same keys in both processes: the second one wrote no new entry
    assert sorted(p.name for p in cache.iterdir() if p.name.endswith("-cache")) == (
        entries
    )


def test_import_pollux_leaves_jax_config_alone() -> None:
    code = (
        "import json, jax, pollux\n"
        "c = jax.config\n"
        "print(json.dumps([c.jax_compilation_cache_dir,"
        " c.jax_persistent_cache_min_compile_time_secs]))"
    )
    assert json.loads(_run(code)) == [None, 1.0]


def test_enable_twice_moves_the_cache(tmp_path: Path) -> None:
    code = CHILD.replace(
        'print(json.dumps({"hits"',
        "enable_compilation_cache(sys.argv[2])\n"
        "jax.jit(lambda x: x * 7.0 - 1.0)(jnp.arange(3.0)).block_until_ready()\n"
        'print(json.dumps({"hits"',
    )
    _run(code, str(tmp_path / "a"), str(tmp_path / "b"))
    assert any(p.name.endswith("-cache") for p in (tmp_path / "a").iterdir())
    assert any(p.name.endswith("-cache") for p in (tmp_path / "b").iterdir())


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"POLLUX_CACHE_DIR": "/x/plx", "XDG_CACHE_HOME": "/x/xdg"}, "/x/plx"),
        ({"POLLUX_CACHE_DIR": "", "XDG_CACHE_HOME": "/x/xdg"}, "/x/xdg/pollux/jax"),
    ],
)
def test_default_cache_dir_env(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: str
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert default_cache_dir() == Path(expected)


def test_default_cache_dir_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("POLLUX_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    expected = (
        tmp_path / "Library" / "Caches" / "pollux" / "jax"
        if sys.platform == "darwin"
        else tmp_path / ".cache" / "pollux" / "jax"
    )
    assert default_cache_dir() == expected
