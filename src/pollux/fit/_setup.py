"""From a `LuxModel` to the numerical core: the `EMProblem` of a closed-form fit.

Shared by `fit` (the EM itself) and `optimize` (its deterministic start values).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from jaxtyping import Array

from .._params import SCATTER
from ..core.blocks import Block
from ..core.problem import EMProblem, OutputSpec

if TYPE_CHECKING:
    from ._protocol import Model

__all__ = ["em_problem", "on_device", "ridge_from_prior", "scatter_setup"]


def on_device(x: Any, dtype: Any = None) -> Array:
    """``x`` as a JAX array (of ``dtype``, if given), converted on the host:
    ``jnp.asarray`` compiles a small program for every new shape and dtype, which
    a fresh process pays for at each step of setting up a fit or a labelling.

    >>> on_device([1, 2], np.float32)
    Array([1., 2.], dtype=float32)
    """
    return jax.device_put(np.asarray(x, dtype))


def ridge_from_prior(
    prior: dist.Distribution, shape: tuple[int, ...], where: str
) -> tuple[np.ndarray, np.ndarray]:
    """``(loc, precision)`` arrays of ``shape`` for a Normal or flat prior.

    Raises a `ValueError` naming ``where`` for any other prior.
    """
    base = prior
    while isinstance(base, (dist.Independent, dist.ExpandedDistribution)):
        base = base.base_dist
    if isinstance(base, dist.Normal):
        loc = np.broadcast_to(np.asarray(base.loc), shape)
        prec = np.broadcast_to(1.0 / np.square(np.asarray(base.scale)), shape)
        return loc, prec
    support = getattr(base, "support", None)
    support = getattr(support, "base_constraint", support)  # independent(real, n)
    if isinstance(base, dist.ImproperUniform) and support is dist.constraints.real:
        return np.zeros(shape), np.zeros(shape)
    msg = (
        f"{where}: the closed-form fit supports Normal or ImproperUniform(real) "
        f"priors on transform parameters, got {type(base).__name__}. Use "
        "LuxModel.optimize (numpyro MAP) for this prior."
    )
    raise ValueError(msg)


def scatter_setup(
    transform: Any, fx: Mapping[str, Any], shapes: Mapping[str, tuple], dtype: Any
) -> tuple[str, bool, Array | None]:
    """``(s_kind, s_free, start)`` of an output's extra scatter: ``"none"``,
    ``"scalar"`` or ``"vector"``; whether it is fitted; its fixed value or a start
    of ones (None without scatter)."""
    prior = transform.scatter_prior
    if prior is None and SCATTER not in fx:
        return "none", False, None
    shape = shapes[SCATTER] if SCATTER in shapes else np.shape(fx[SCATTER])
    start = on_device(fx.get(SCATTER, np.ones(shape)), dtype)
    kind = "scalar" if tuple(shape) == () else "vector"
    return kind, prior is not None and SCATTER not in fx, start


def em_problem(
    model: Model,
    names: tuple[str, ...],
    blocks: tuple[Block, ...],
    fixed: Mapping[str, Any],
    call: str,
    fixed_latents: Array | None = None,
    ridge_from_priors: bool = True,
    chunk_size: int | None = None,
) -> tuple[EMProblem, tuple[dict[str, Array], ...]]:
    """The `EMProblem` of the affine outputs ``names`` and their start parameters
    (fixed values where given, else zeros and unit scatter).

    ``ridge_from_priors=False`` uses flat ridges (any prior accepted).
    """
    k = model.latent_size
    n = blocks[0].values.shape[0]
    dtype = blocks[0].values.dtype
    specs, priors, ridges, params = [], [], [], []
    for name in names:
        t = model.outputs[name]
        fx = fixed.get(name, {})
        shapes = t.param_shapes(k, n)
        expanded = t.expanded_priors(k, n)
        has_b = "b" in shapes
        s_kind, s_free, s0 = scatter_setup(t, fx, shapes, dtype)
        specs.append(
            OutputSpec(
                has_b=has_b,
                A_free="A" not in fx,
                b_free=has_b and "b" not in fx,
                s_kind=s_kind,
                s_free=s_free,
            )
        )
        ridge = {}
        for p in ("A", "b"):
            if p in shapes and p not in fx:
                ridge[p] = (
                    ridge_from_prior(
                        expanded[p],
                        shapes[p],
                        f"{call}: prior of {name!r} parameter {p!r}",
                    )
                    if ridge_from_priors
                    else (np.zeros(shapes[p]), np.zeros(shapes[p]))
                )
        ridges.append(jax.tree.map(lambda a: on_device(a, dtype), ridge))
        pr = {p: expanded[p] for p in ("A", "b") if p in expanded}
        if t.scatter_prior is not None:
            pr[SCATTER] = t.scatter_prior
        priors.append(pr)
        d = t.output_size
        p0 = {
            "A": on_device(fx.get("A", np.zeros((d, k))), dtype),
            "b": on_device(fx.get("b", np.zeros(d)), dtype),
        }
        if s0 is not None:
            p0[SCATTER] = s0
        params.append(p0)
    if fixed_latents is not None:
        fixed_latents = jnp.asarray(fixed_latents, dtype)
    problem = EMProblem(
        specs=tuple(specs),
        blocks=blocks,
        priors=tuple(priors),
        ridges=tuple(ridges),
        fixed_latents=fixed_latents,
        chunk_size=chunk_size,
    )
    return problem, tuple(params)
