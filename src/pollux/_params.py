"""Names and small argument checks shared by every layer of pollux.

A parameter dict is nested: ``{output: {param: array}, "latents": (N, K)}``. The
name ``"latents"`` is therefore reserved (no output may use it), and the parameter
name ``"s"`` on any output is its extra scatter.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "LATENTS",
    "RESERVED",
    "SCATTER",
    "check_positive_int",
    "names_with_params",
    "without_latents",
]

LATENTS = "latents"
SCATTER = "s"
RESERVED = frozenset({LATENTS})


def without_latents(params: Any) -> Any:
    """``params`` without its ``"latents"`` (those of the stars it was fit to).

    Anything that is not a mapping is returned unchanged, for the caller's check to
    refuse with its own message.

    >>> without_latents({"flux": {"A": 1}, "latents": 2})
    {'flux': {'A': 1}}
    """
    if isinstance(params, Mapping):
        return {k: v for k, v in params.items() if k != LATENTS}
    return params


def check_positive_int(value: Any, where: str) -> int:
    """``value`` if it is an int ≥ 1; else a `TypeError` (not an int) or a
    `ValueError` (< 1) whose message starts with ``where``.

    >>> check_positive_int(3, "f(n=...)")
    3
    >>> check_positive_int(0, "f(n=...)")
    Traceback (most recent call last):
    ...
    ValueError: f(n=...): expected a positive int, got 0
    """
    return _check_int(value, where, 1, "positive")


def check_nonnegative_int(value: Any, where: str) -> int:
    """``value`` if it is an int ≥ 0 (e.g. a seed), else a `TypeError` or
    `ValueError` whose message starts with ``where``."""
    return _check_int(value, where, 0, "non-negative")


def _check_int(value: Any, where: str, minimum: int, word: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        msg = f"{where}: expected a {word} int, got {value!r}"
        raise TypeError(msg)
    if value < minimum:
        msg = f"{where}: expected a {word} int, got {value}"
        raise ValueError(msg)
    return int(value)


def names_with_params(registered: Iterable[str], params: Any, call: str) -> list[str]:
    """The registered outputs that ``params`` holds parameters for, in registration
    order (the ``names=None`` rule of the prediction calls)."""
    if not isinstance(params, Mapping):
        msg = f"{call}(params=...): expected a dict like {{'flux': {{'A': ...}}}}"
        raise TypeError(msg)
    return [name for name in registered if name in params]
