"""What every fuzzing test shares: its number of examples and the invariant.

The invariant of a read of a damaged file: either the result equals the
undamaged one (the damage did not matter), or the call raises a `ValueError` or
`TypeError` whose message names the file — never another exception, never a
hang, and the file on disk is left as it was.

CI runs each target with the few examples its test names (derandomized, so the
suite is deterministic); ``benchmarks/fuzz.py`` sets ``POLLUX_FUZZ_EXAMPLES``
(e.g. 10000) for a long, randomized run.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, event, settings

#: Examples per target in a long run (None: each test's own, small number).
LONG_RUN = int(os.environ.get("POLLUX_FUZZ_EXAMPLES", "0")) or None
#: Seconds one example may take before it counts as a hang.
HANG_S = 120


def fuzz_settings(examples: int) -> settings:
    """Hypothesis settings of a fuzzing target: ``examples`` in CI (fixed
    seed), `LONG_RUN` in the long run (random)."""
    return settings(
        max_examples=LONG_RUN or examples,
        deadline=None,
        derandomize=LONG_RUN is None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


def digest(path: Path) -> str:
    """SHA-256 of a file, or of every file under a folder (names included)."""
    h = hashlib.sha256()
    path = Path(path)
    files = (
        sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    )
    for p in files:
        h.update(str(p.relative_to(path) if path.is_dir() else "").encode())
        h.update(p.read_bytes())
    return h.hexdigest()


@contextlib.contextmanager
def watchdog(seconds: float = HANG_S) -> Iterator[None]:
    """Fail (TimeoutError) when the block runs longer than ``seconds``."""

    def expire(signum, frame):
        raise TimeoutError(f"hang: no result after {seconds} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def refused_or_result(call: Callable[[], Any], *paths: Path, names: Any = None) -> Any:
    """``call()``'s result, or None when it refused the damage: a `ValueError`
    or `TypeError` naming one of ``names`` (default: the file names of
    ``paths``). Any other exception fails the test, as does a change to the
    files at ``paths``."""
    before = [digest(p) for p in paths]
    names = [Path(p).name for p in paths] if names is None else list(names)
    try:
        with watchdog():
            result = call()
    except (ValueError, TypeError) as err:
        text = str(err)
        assert any(n in text for n in names), f"the message names no file: {text}"
        assert "\n" not in text.strip(), f"the message is not one line: {text}"
        event("outcome: refused")
        return None
    else:
        event("outcome: accepted")
        return result
    finally:
        assert [digest(p) for p in paths] == before, "a file on disk was changed"
