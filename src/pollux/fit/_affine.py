"""Outputs that are affine in the latents, ``y = W z + b``: the closed-form path."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from jaxtyping import Array

from .._params import SCATTER
from ._setup import on_device

if TYPE_CHECKING:
    from ._protocol import Model

__all__ = ["affine_params"]


def affine_params(
    model: Model,
    params: Mapping[str, Any],
    names: Iterable[str],
    dtype: Any,
) -> tuple[tuple[Array, ...], tuple[Array, ...], tuple[Array, ...]]:
    """``(Ws, bs, s2s)`` of the outputs ``names`` from checked parameters, in
    ``dtype`` (``s2`` is zero for an output without extra scatter)."""
    Ws, bs, s2s = [], [], []
    for name in names:
        t = model.outputs[name]
        p = params[name]
        W, b = t.affine_parts(p)  # y = W z + b; None: b = 0
        W = on_device(W, dtype)
        Ws.append(W)
        bs.append(on_device(np.zeros(W.shape[0]) if b is None else b, dtype))
        s2s.append(on_device(np.square(p[SCATTER]) if SCATTER in p else 0.0, dtype))
    return tuple(Ws), tuple(bs), tuple(s2s)
