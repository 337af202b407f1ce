"""Outputs that are affine in the latents: ``y = W z + b`` (the closed-form path)."""

from __future__ import annotations

from collections.abc import Mapping

import jax.numpy as jnp
from jaxtyping import Array, Float

from ..models.transforms import AbstractTransform, AffineTransform, LinearTransform

__all__ = ["affine_parts", "is_affine"]


def is_affine(transform: AbstractTransform) -> bool:
    """Whether the closed-form (EM / exact posterior) path handles ``transform``."""
    return type(transform) in (LinearTransform, AffineTransform)


def affine_parts(
    transform: AbstractTransform, params: Mapping[str, Array]
) -> tuple[Float[Array, "d k"], Float[Array, " d"]]:
    """``(W, b)`` with ``y = W z + b``; ``b`` is zero for a `LinearTransform`."""
    W = params["A"]
    b = (
        params["b"]
        if isinstance(transform, AffineTransform)
        else jnp.zeros(W.shape[0], W.dtype)
    )
    return W, b
