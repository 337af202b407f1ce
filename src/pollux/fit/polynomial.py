"""Outputs polynomial in the latents (linear, affine, quadratic): variational path.

`fit`, `infer_latents` and `predict` use it as soon as one of their outputs is a
`QuadraticTransform`; affine-only calls keep the exact closed-form path.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._params import SCATTER
from ..core.blocks import Block
from ..core.features import (
    feature_index,
    moments,
    outer_packed,
    sym_pack,
)
from ..core.linalg import cholesky, inverse_from_cholesky
from ..core.variational import e_step, map_modes, star_stats
from ..core.vem import THETA, FeatureSpec, VEMProblem
from ..transforms import (
    AbstractTransform,
)
from ._setup import on_device, ridge_from_prior, scatter_setup

if TYPE_CHECKING:
    from ._protocol import Model

__all__ = [
    "polynomial_thetas",
    "posterior_polynomial",
    "predictive_polynomial",
    "require_polynomial",
    "uses_quadratic",
    "vem_problem",
]


def uses_quadratic(model: Model, names: Iterable[str]) -> bool:
    """Whether an output of ``names`` is polynomial but not affine in the latents
    (the variational path)."""
    return any(not model.outputs[n].is_affine for n in names)


def require_polynomial(model: Model, names: Iterable[str], call: str) -> None:
    """Refuse outputs that declare no features of the latents, and outputs whose
    features the latent size makes too many, saying what to do instead."""
    for name in names:
        t = model.outputs[name]
        if t.feature_kind is None:
            msg = (
                f"{call}: output {name!r} uses {type(t).__name__}, which is not a "
                "polynomial of the latents; fit, infer_latents and predict handle "
                "LinearTransform, AffineTransform and QuadraticTransform. Use "
                "LuxModel.optimize (numpyro MAP) instead."
            )
            raise ValueError(msg)
        limit = t.max_latent_size
        if limit is not None and model.latent_size > limit:
            msg = (
                f"{call}: output {name!r} is a {type(t).__name__} with latent_size="
                f"{model.latent_size}; the fast path supports it up to "
                f"latent_size={limit} (its cost grows as the latent "
                "size to the fourth power). Use a smaller latent_size, or a "
                "LinearTransform for larger ones."
            )
            raise ValueError(msg)


def polynomial_thetas(
    model: Model, params: Mapping[str, Any], names: Iterable[str], dtype: Any
) -> tuple[tuple[Array, ...], tuple[str, ...], tuple[Array, ...]]:
    """``(thetas, kinds, s2s)``: feature weights of checked named parameters, the
    outputs' feature kinds and their squared scatters."""
    thetas, kinds, s2s = [], [], []
    for name in names:
        t = model.outputs[name]
        p = {key: np.asarray(v, dtype) for key, v in params[name].items()}
        thetas.append(
            _feature_weights(type(t), {k: v for k, v in p.items() if k != SCATTER})
        )
        kinds.append(t.feature_kind)
        s2s.append(on_device(np.square(p[SCATTER]) if SCATTER in p else 0.0, dtype))
    return tuple(thetas), tuple(kinds), tuple(s2s)


@partial(jax.jit, static_argnums=0)
def _feature_weights(cls: type[AbstractTransform], p: dict[str, Array]) -> Array:
    """The feature weights of one output's named parameters (one program, not
    an eager operation each)."""
    return cls.to_features(p)


def vem_problem(
    model: Model,
    names: tuple[str, ...],
    blocks: tuple[Block, ...],
    fixed: Mapping[str, Any],
    call: str,
    fixed_latents: Array | None = None,
    chunk_size: int | None = None,
) -> tuple[VEMProblem, tuple[dict[str, Array], ...]]:
    """The `VEMProblem` of the outputs ``names`` (read ``chunk_size`` stars at a
    time) and start parameters (fixed values where given, else zero weights and
    unit scatter)."""
    k = model.latent_size
    n = blocks[0].values.shape[0]
    dtype = blocks[0].values.dtype
    specs, priors, ridges, params = [], [], [], []
    for name in names:
        t = model.outputs[name]
        kind = t.feature_kind
        fx = fixed.get(name, {})
        held = [p for p in t.param_names if p in fx]
        if held and len(held) != len(t.param_names):
            msg = (
                f"{call}(fixed_params[{name!r}]): with a non-affine output "
                f"in the fit, hold all of {list(t.param_names)} fixed or none "
                f"(got {held})"
            )
            raise ValueError(msg)
        free = not held
        shapes = t.param_shapes(k, n)
        expanded = t.expanded_priors(k, n)
        s_kind, s_free, s0 = scatter_setup(t, fx, shapes, dtype)
        specs.append(FeatureSpec(kind=kind, free=free, s_kind=s_kind, s_free=s_free))
        if free:
            rid = {
                p: ridge_from_prior(
                    expanded[p], shapes[p], f"{call}: prior of {name!r} parameter {p!r}"
                )
                for p in t.param_names
            }
            loc, prec = t.ridge_to_features(rid)
            ridges.append((jnp.asarray(loc, dtype), jnp.asarray(prec, dtype)))
            theta = jnp.zeros((t.output_size, len(feature_index(kind, k))), dtype)
        else:
            ridges.append(None)
            theta = polynomial_thetas(model, {name: fx}, [name], dtype)[0][0]
        pr = {p: expanded[p] for p in t.param_names}
        if t.scatter_prior is not None:
            pr[SCATTER] = t.scatter_prior
        priors.append(pr)
        p0 = {THETA: theta}
        if s0 is not None:
            p0[SCATTER] = s0
        params.append(p0)
    problem = VEMProblem(
        specs=tuple(specs),
        k=k,
        blocks=blocks,
        priors=tuple(priors),
        ridges=tuple(ridges),
        fixed_latents=None
        if fixed_latents is None
        else jnp.asarray(fixed_latents, dtype),
        chunk_size=chunk_size,
    )
    return problem, tuple(params)


def output_params(
    transform: AbstractTransform, spec: FeatureSpec, p: Mapping[str, Array], k: int
) -> dict[str, Array]:
    """The transform's named parameters (and ``s``) of one output's state."""
    out = transform.from_features(p[THETA], k)
    if spec.has_s:
        out[SCATTER] = p[SCATTER]
    return out


def _starts(k: int, dtype: Any) -> Array:
    """Gauss–Newton starting points: the origin and ±1.5 along each latent axis."""
    eye = 1.5 * np.eye(k)
    return jnp.asarray(np.concatenate([np.zeros((1, k)), eye, -eye]), dtype)


@partial(jax.jit, static_argnames=("kinds", "k", "n_iter"))
def posterior_polynomial(
    blocks: tuple[Block, ...],
    thetas: tuple[Array, ...],
    s2s: tuple[Array, ...],
    kinds: tuple[str, ...],
    k: int,
    n_iter: int = 30,
) -> tuple[Array, Array, Array]:
    """Gaussian posterior of every star's latents for fixed parameters.

    Gauss–Newton from several starts finds the mode (`map_modes`), whose
    Gauss–Newton precision starts ``n_iter`` natural-gradient updates of the
    Gaussian (`e_step`). Returns ``(mean, cov, multimodal)``.
    """
    index = tuple(feature_index(kind, k) for kind in kinds)
    stats = star_stats(blocks, thetas, index, s2s, k)
    modes = map_modes(stats, _starts(k, blocks[0].values.dtype), n_iter)
    mean, prec, _ = e_step(stats, modes.mean, modes.prec, n_iter)
    return mean, inverse_from_cholesky(cholesky(prec)), modes.multimodal


@partial(jax.jit, static_argnames=("kind",))
def predictive_polynomial(
    mean: Float[Array, "n k"],
    cov: Float[Array, "n k k"],
    theta: Float[Array, "d mo"],
    s2: Array,
    row_cov: Float[Array, "d mo mo"] | None,
    kind: str,
) -> tuple[Float[Array, "n d"], Float[Array, "n d"]]:
    r"""Exact predictive mean and standard deviation of ``y = θᵀφ(z)`` (+ ``s``)
    under ``z ~ N(mean, cov)``: :math:`\theta_d^\top E\phi` and
    :math:`\theta_d^\top \operatorname{cov}(\phi)\,\theta_d + s_d^2`
    (+ :math:`\operatorname{tr}(C_d E[\phi\phi^\top])` for row covariances ``C``)."""
    idx = feature_index(kind, mean.shape[1])
    Ephi, cov_phi = moments(mean, cov)
    E, C = Ephi[:, idx], cov_phi[:, idx[:, None], idx[None, :]]
    var = sym_pack(C, doubled=True) @ outer_packed(theta).T + s2
    if row_cov is not None:
        second = sym_pack(C + E[:, :, None] * E[:, None, :], doubled=True)
        var = var + second @ sym_pack(row_cov).T
    return E @ theta.T, jnp.sqrt(var)


def n_row_features(transform: AbstractTransform, k: int) -> int:
    """Size of a row of `FitResult.param_cov` for ``transform``."""
    return len(feature_index(transform.feature_kind, k))
