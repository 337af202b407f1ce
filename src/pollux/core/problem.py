"""`EMProblem`: everything an EM sweep needs besides the parameters it updates."""

from __future__ import annotations

from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._params import SCATTER
from .blocks import Block

__all__ = ["EMProblem", "OutputSpec"]


class OutputSpec(NamedTuple):
    """Static description of one affine output ``y = A z + b`` (+ scatter ``s``)."""

    has_b: bool
    A_free: bool
    b_free: bool
    s_kind: str  # "none", "scalar" or "vector"
    s_free: bool

    @property
    def solve_b(self) -> bool:
        """Whether the M-step solves for the offset ``b``."""
        return self.has_b and self.b_free

    @property
    def has_s(self) -> bool:
        return self.s_kind != "none"

    def scatter2(self, params: dict[str, Array]) -> Array:
        """``s²`` of the output (zero when it has no extra scatter)."""
        return jnp.square(params[SCATTER]) if self.has_s else jnp.zeros(())


class EMProblem(eqx.Module):
    """The data and the fixed ingredients of a closed-form fit, one entry per output.

    Attributes
    ----------
    specs
        Static `OutputSpec` of each output (which parameters are free).
    blocks
        The data of each output (`Block`).
    priors
        ``{"A"|"b"|"s": distribution}`` of each output's free parameters, expanded
        to their shapes.
    ridges
        ``{"A"|"b": (loc, precision)}`` of each output: the Normal priors of the
        M-step's ridge solves (precision zero: flat).
    fixed_latents
        ``(N, K)`` latents held fixed, or None to integrate them out.
    chunk_size
        Stars per chunk of the kernels' data passes (None: all at once); the
        results do not depend on it beyond float rounding.
    axis_name
        Inside `jax.shard_map` over stars: the mesh axis whose shards hold the
        other stars; every sum over stars is then also summed over it
        (`jax.lax.psum`). None: this problem holds all the stars.
    """

    specs: tuple[OutputSpec, ...] = eqx.field(static=True)
    blocks: tuple[Block, ...]
    priors: tuple[dict[str, Any], ...]
    ridges: tuple[dict[str, tuple[Array, Array]], ...]
    fixed_latents: Float[Array, "n_stars k"] | None = None
    chunk_size: int | None = eqx.field(static=True, default=None)
    axis_name: str | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        if self.chunk_size is not None and self.chunk_size < 1:
            msg = f"EMProblem: chunk_size must be >= 1, got {self.chunk_size}"
            raise ValueError(msg)
        sizes = {len(self.specs), len(self.blocks), len(self.priors), len(self.ridges)}
        if len(sizes) != 1:
            msg = (
                "EMProblem: specs, blocks, priors and ridges need one entry per output"
            )
            raise ValueError(msg)

    def sum_over_stars(self, x: Any) -> Any:
        """``x`` (a pytree of sums over this problem's stars) summed over the
        shards of `axis_name` too."""
        return x if self.axis_name is None else jax.lax.psum(x, self.axis_name)

    def outputs(self) -> zip:
        """``(spec, block, prior, ridge)`` of each output."""
        return zip(self.specs, self.blocks, self.priors, self.ridges, strict=True)
