"""Data blocks as the numerical kernels see them, and the masked Gaussian likelihood."""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

from ..data import OutputData
from ..models.transforms import SCATTER

__all__ = ["Block", "block_from_output", "blocks_for", "gaussian_loglike"]


class Block(NamedTuple):
    """One output in kernel form; missing entries have ``mask`` False and ``y`` 0."""

    y: Float[Array, "n_stars n_dim"]
    err2: Float[Array, "n_stars n_dim"]
    mask: Bool[Array, "n_stars n_dim"]


def block_from_output(out: OutputData) -> Block:
    """Masked arrays for the likelihood: NaN data or infinite error -> missing."""
    y = out.data
    mask = ~jnp.isnan(y)
    if out.err is None:
        err2 = jnp.zeros_like(y)
    else:
        mask = mask & jnp.isfinite(out.err)
        err2 = jnp.where(mask, out.err**2, 0.0).astype(y.dtype)
    return Block(jnp.where(mask, y, 0.0), err2, mask)


def check_variance_defined(
    block: Block, name: str, has_scatter: bool, has_err: bool, call: str
) -> None:
    """Refuse outputs whose likelihood variance would be zero."""
    if has_scatter:
        return
    if not has_err:
        msg = (
            f"{call}: output {name!r} has no reported errors and no extra scatter "
            "'s'; give OutputData(err=...) or add an 's' prior to its transform"
        )
        raise ValueError(msg)
    if bool(np.any(np.asarray((block.err2 == 0) & block.mask))):
        msg = (
            f"{call}: output {name!r} has observed values with zero error and no "
            "extra scatter 's'; the likelihood would be infinite. Give positive "
            "errors or add an 's' prior to its transform"
        )
        raise ValueError(msg)


def blocks_for(model, data, names, fixed, call: str) -> tuple[Block, ...]:
    """Checked kernel blocks of the outputs ``names`` of ``data`` for ``model``."""
    blocks = []
    for name in names:
        t = model.outputs[name]
        if data[name].size != t.output_size:
            msg = (
                f"{call}: output {name!r} has {data[name].size} dimensions in the data "
                f"but its transform has output_size={t.output_size}"
            )
            raise ValueError(msg)
        block = block_from_output(data[name])
        has_scatter = t.scatter_prior is not None or SCATTER in fixed.get(name, {})
        check_variance_defined(
            block, name, has_scatter, data[name].err is not None, call
        )
        blocks.append(block)
    return tuple(blocks)


def gaussian_loglike(
    block: Block, pred: Float[Array, "n_stars n_dim"], s: Array | None
) -> Float[Array, ""]:
    """Sum of Normal log-densities over observed entries, variance ``err² + s²``."""
    var = block.err2 if s is None else block.err2 + jnp.square(s)
    var = jnp.where(block.mask, var, 1.0)
    resid = jnp.where(block.mask, block.y - pred, 0.0)
    terms = -0.5 * (resid**2 / var + jnp.log(2 * jnp.pi * var))
    return jnp.sum(jnp.where(block.mask, terms, 0.0))
