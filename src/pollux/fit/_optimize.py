"""Driver of `optimize`: the Lux model as a numpyro model, MAP by AutoDelta + SVI."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import numpyro.optim
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoDelta
from numpyro.infer.initialization import init_to_median

from .._params import LATENTS, SCATTER, check_positive_int, without_latents
from ..core.blocks import Block, gaussian_loglike
from ..core.em import initialize
from ..core.pca import pca_latents
from ..core.posterior import posterior_moments
from ..data import PolluxData
from ..transforms import expand_prior
from ._affine import affine_params
from ._setup import em_problem
from .checks import blocks_for, check_data, check_params, resolve_names

if TYPE_CHECKING:
    from ._protocol import Model

__all__ = ["optimize_map"]


def site_name(output: str, param: str) -> str:
    """numpyro site name of an output's parameter."""
    return f"{output}:{param}"


def latent_prior_dist(latent_prior: Any, n: int, k: int, call: str):
    if latent_prior is None:
        return dist.Normal(0.0, 1.0).expand((n, k)).to_event(2)
    if latent_prior is False:
        return dist.ImproperUniform(dist.constraints.real, (), (n, k))
    if isinstance(latent_prior, dist.Distribution):
        return expand_prior(latent_prior, (n, k), f"{call}(latent_prior=...)")
    msg = (
        f"{call}(latent_prior=...): expected a numpyro distribution, None (unit "
        f"Normal) or False (flat), got {latent_prior!r}"
    )
    raise TypeError(msg)


def lux_numpyro_model(
    model: Model,
    names: tuple[str, ...],
    blocks: dict[str, Block],
    fixed: dict[str, Any],
    latent_dist: dist.Distribution,
    n: int,
    custom_model: Any = None,
    data: PolluxData | None = None,
) -> None:
    """The Lux model: latents, transform parameters, masked Gaussian likelihoods;
    then ``custom_model(latents, params, data)``, which may add sites and factors
    of its own (``params``: ``{output: {param: value}}`` of this draw)."""
    k = model.latent_size
    if LATENTS in fixed:
        z = fixed[LATENTS]
    else:
        z = numpyro.sample(LATENTS, latent_dist)
    drawn: dict[str, dict[str, Any]] = {}
    for name in names:
        t = model.outputs[name]
        fx = fixed.get(name, {})
        params = {
            p: fx[p] if p in fx else numpyro.sample(site_name(name, p), prior)
            for p, prior in t.expanded_priors(k, n).items()
        }
        params.update({p: v for p, v in fx.items() if p not in params})
        drawn[name] = dict(params)
        s = params.pop(SCATTER, None)
        pred = t.apply(z, **params)
        numpyro.factor(f"{name}:loglike", gaussian_loglike(blocks[name], pred, s))
    if custom_model is not None:
        custom_model(z, drawn, data)


def _initial_values(model, names, blocks, fixed, latent_dist, n) -> dict[str, Any]:
    """Deterministic start values for the free sites the closed form can give."""
    k = model.latent_size
    values: dict[str, Any] = {}
    block_list = tuple(blocks[name] for name in names)
    dtype = block_list[0].values.dtype
    transforms_fixed = all(
        model.outputs[n_].is_affine
        and all(p in fixed.get(n_, {}) for p in model.outputs[n_].param_shapes(k, n))
        for n_ in names
    )
    if LATENTS in fixed:
        z = fixed[LATENTS]
    elif transforms_fixed:
        # Apply mode: start at the exact posterior mean given the fixed transforms.
        sub = {n_: fixed[n_] for n_ in names}
        z, _ = posterior_moments(block_list, *affine_params(model, sub, names, dtype))
        values[LATENTS] = z
    else:
        z = pca_latents(block_list, k)
        values[LATENTS] = z
    if LATENTS in values and not bool(latent_dist.support.check(values[LATENTS]).all()):
        values.pop(LATENTS)
    for name in names:  # the starts the transforms declare (`start_params`)
        fx = fixed.get(name, {})
        for p, v in model.outputs[name].start_params(k, n).items():
            if p not in fx:
                values[site_name(name, p)] = jnp.asarray(v, dtype)
    # Affine outputs with a free A: regression on those latents (flat ridge).
    todo = tuple(
        n_
        for n_ in names
        if model.outputs[n_].is_affine and "A" not in fixed.get(n_, {})
    )
    if not todo:
        return values
    problem, params = em_problem(
        model,
        todo,
        tuple(blocks[n_] for n_ in todo),
        fixed,
        "LuxModel.optimize",
        ridge_from_priors=False,
    )
    params = initialize(problem, params, jnp.asarray(z, dtype))
    for name, spec, p in zip(todo, problem.specs, params, strict=True):
        values[site_name(name, "A")] = p["A"]
        if spec.solve_b:
            values[site_name(name, "b")] = p["b"]
        scatter_prior = model.outputs[name].scatter_prior
        if spec.s_free and bool(jnp.all(scatter_prior.support.check(p[SCATTER]))):
            values[site_name(name, SCATTER)] = p[SCATTER]
    return values


def _init_from_values(site=None, values=None):
    """numpyro init strategy: given start values, else the prior median."""
    if site is None:
        return partial(_init_from_values, values=values)
    if site["name"] in values:
        return values[site["name"]]
    return init_to_median(site)


def _check_rng_key(rng_key: Any, call: str) -> jax.Array:
    if isinstance(rng_key, (int, np.integer)) and not isinstance(rng_key, bool):
        return jax.random.PRNGKey(int(rng_key))
    if isinstance(rng_key, jax.Array) and jax.dtypes.issubdtype(
        rng_key.dtype, jax.dtypes.prng_key
    ):
        return rng_key
    arr = np.asarray(rng_key) if hasattr(rng_key, "dtype") else None
    if arr is None or arr.dtype != np.uint32 or arr.shape != (2,):
        msg = (
            f"{call}(rng_key=...): expected a key from jax.random.PRNGKey(seed) (or "
            f"an int seed), got {rng_key!r}"
        )
        raise TypeError(msg)
    return jnp.asarray(arr)


def _check_optimizer(optimizer: Any, call: str) -> None:
    is_numpyro = isinstance(optimizer, numpyro.optim._NumPyroOptim)
    is_optax = hasattr(optimizer, "init") and hasattr(optimizer, "update")
    if not (is_numpyro or is_optax):
        msg = (
            f"{call}(optimizer=...): expected a numpyro optimiser such as "
            f"numpyro.optim.Adam(1e-3) (or an optax one), got {optimizer!r}"
        )
        raise TypeError(msg)


def _check_output_shapes(model, names, blocks, fixed, n, call) -> None:
    """Evaluate each transform's output shape abstractly, before any tracing."""
    k = model.latent_size
    for name in names:
        t = model.outputs[name]
        fx = fixed.get(name, {})
        structs = {
            p: jax.ShapeDtypeStruct(shape, blocks[name].values.dtype)
            for p, shape in t.param_shapes(k, n).items()
            if p != SCATTER
        }
        structs.update({p: v for p, v in fx.items() if p != SCATTER})
        z = jax.ShapeDtypeStruct((n, k), blocks[name].values.dtype)
        try:
            out = jax.eval_shape(lambda z, p, t=t: t.apply(z, **p), z, structs)
        except Exception as err:
            msg = f"{call}: the transform of output {name!r} fails on its inputs: {err}"
            raise ValueError(msg) from err
        if tuple(out.shape) != (n, t.output_size):
            msg = (
                f"{call}: the transform of output {name!r} returns shape "
                f"{tuple(out.shape)}, expected ({n}, {t.output_size})"
            )
            raise ValueError(msg)


def optimize_map(
    model: Model,
    data: PolluxData,
    num_steps: int,
    rng_key: Any,
    optimizer: Any = None,
    fixed_params: dict | None = None,
    names: Any = None,
    latent_prior: Any = None,
    svi_run_kwargs: dict | None = None,
    custom_model: Any = None,
):
    call = "LuxModel.optimize"
    data = check_data(data, call)
    names = resolve_names(model, names, call, data.names)
    check_positive_int(num_steps, f"{call}(num_steps=...)")
    rng_key = _check_rng_key(rng_key, call)
    if optimizer is None:
        optimizer = numpyro.optim.Adam(1e-3)
    _check_optimizer(optimizer, call)
    if svi_run_kwargs is None:
        svi_run_kwargs = {}
    if not isinstance(svi_run_kwargs, dict):
        msg = f"{call}(svi_run_kwargs=...): expected a dict, got {svi_run_kwargs!r}"
        raise TypeError(msg)
    if custom_model is not None and not callable(custom_model):
        msg = (
            f"{call}(custom_model=...): expected a function custom_model(latents, "
            f"params, data) that adds numpyro sites or factors, got {custom_model!r}"
        )
        raise TypeError(msg)
    n, k = len(data), model.latent_size
    fixed = check_params(model, fixed_params, n, call)
    latent_dist = latent_prior_dist(latent_prior, n, k, call)
    block_list = blocks_for(model, data, names, fixed, call)
    blocks = dict(zip(names, block_list, strict=True))
    dtype = block_list[0].values.dtype
    fixed = jax.tree.map(lambda a: jnp.asarray(a, dtype), fixed)
    _check_output_shapes(model, names, blocks, fixed, n, call)

    values = _initial_values(model, names, blocks, fixed, latent_dist, n)
    guide = AutoDelta(
        lux_numpyro_model, init_loc_fn=partial(_init_from_values, values=values)
    )
    svi = SVI(lux_numpyro_model, guide, optimizer, Trace_ELBO())
    args = (model, names, blocks, fixed, latent_dist, n, custom_model, data)
    result = svi.run(rng_key, num_steps, *args, **svi_run_kwargs)
    found = guide.median(result.params)

    params: dict[str, Any] = {k: dict(v) for k, v in without_latents(fixed).items()}
    if LATENTS in fixed:
        params[LATENTS] = fixed[LATENTS]
    for site, value in found.items():
        if site == LATENTS:
            params[LATENTS] = value
            continue
        output, sep, pname = site.partition(":")
        if not sep:  # a site of custom_model's own
            params[site] = value
            continue
        params.setdefault(output, {})[pname] = value
    return params, result
