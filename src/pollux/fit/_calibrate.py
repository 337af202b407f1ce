r"""Driver of `LuxModel.calibrate`: the extra scatter ``s`` of the predicted outputs,
re-estimated from held-out predictions made the way the model will be used.

The scatter learned jointly with the flux is too small for labels predicted from
the flux alone: the training latents also saw the labels, so the label residuals
of the training stars understate the error of a flux-only prediction. Here every
fold of the stars is held out in turn, the model is refit from scratch on the
others, and the held-out stars' labels are predicted from their flux alone. For
each predicted output the new scatter :math:`t = s^2 \ge 0` maximises

.. math::

    \sum_n m_n \log \mathcal{N}\big(\hat y_n - y_n;\ 0,\
        v_n + \sigma_n^2 + t\big)

over the held-out stars, where :math:`v_n` is the predictive variance without
``s`` (latent posterior and trained-transform uncertainty) and :math:`\sigma_n`
the reported error. That is the s-step of the EM with ``e = (ŷ − y)²`` and
``σ² → v + σ²``, iterated to convergence under a flat prior.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from numpyro.distributions import constraints

from .._params import SCATTER, without_latents
from ..core.blocks import Block
from ..core.sstep import s_step
from ..data import PolluxData
from ._results import FitResult
from .checks import check_data, check_params, require_data
from .heldout import (
    HeldOutPredictions,
    check_folds,
    check_given,
    check_outputs_in_data,
    check_seed,
    fitted_names,
    held_out,
    settings_keywords,
    targets_of,
)

if TYPE_CHECKING:
    from ._protocol import Model

__all__ = ["calibrate", "max_likelihood_scatter", "supported_scatter"]

_MAX_SWEEPS = 2000  # s-steps; Newton converges in a handful, the EM fallback slower


@partial(jax.jit, static_argnames=("scalar",))
def max_likelihood_scatter(
    resid2: jax.Array,
    var: jax.Array,
    mask: jax.Array,
    s0: jax.Array,
    scalar: bool,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    r"""The scatter :math:`s \ge 0` maximising
    :math:`\sum_n m_n \log N(r_n; 0, v_n + s^2)` (flat prior on ``s``).

    ``resid2`` (N, D) squared residuals, ``var`` (N, D) their variance without
    ``s``, ``mask`` (N, D) the observed entries, ``s0`` the start (scalar, or
    (D,) for one value per dimension). Returns ``s``, the Fisher standard error
    of ``s²`` (:math:`\sqrt{2 / \sum_n m_n/(v_n + s^2)^2}`) and the number of
    s-steps taken.

    >>> import numpy as np
    >>> r = np.random.default_rng(0).normal(0.0, np.sqrt(0.5), size=(20000, 1))
    >>> s, se, _ = max_likelihood_scatter(
    ...     r**2, np.full_like(r, 0.25), np.ones(r.shape, bool), np.zeros(1), False)
    >>> bool(abs(float(s[0]) ** 2 - 0.25) < 4 * float(se[0]))
    True
    """
    dtype = jnp.result_type(resid2, var, float)
    resid2, var = jnp.asarray(resid2, dtype), jnp.asarray(var, dtype)
    block = Block(
        jnp.where(mask, 0.0, jnp.nan).astype(dtype),
        jnp.sqrt(jnp.where(mask, var, 0.0)),
    )
    e = jnp.where(mask, resid2, 0.0)
    prior = dist.ImproperUniform(constraints.positive, (), ())
    reduce = jnp.sum if scalar else partial(jnp.sum, axis=0)
    count = jnp.maximum(reduce(mask.astype(dtype)), 1.0)
    scale = reduce(jnp.where(mask, var + e, 0.0)) / count  # typical variance
    rtol = 10 * jnp.finfo(dtype).eps ** 0.75

    def step(carry):
        i, s, _ = carry
        return i + 1, s_step(block, e, s, prior, scalar), s

    def going(carry):
        i, s, prev = carry
        change = jnp.abs(jnp.square(s) - jnp.square(prev))
        return (i < _MAX_SWEEPS) & jnp.any(change > rtol * (scale + jnp.square(s)))

    s0 = jnp.asarray(s0, dtype)
    first = step((jnp.asarray(0), s0, s0))
    n_steps, s, _ = jax.lax.while_loop(going, step, first)
    t = jnp.square(s)
    info = reduce(jnp.where(mask, 1.0 / jnp.square(jnp.where(mask, var, 1.0) + t), 0.0))
    se = jnp.sqrt(2.0 / jnp.maximum(info, jnp.finfo(dtype).tiny))
    return s, se, n_steps


_BISECTIONS = 64  # halvings of a bracket of t = s²: far below float64's resolution


@partial(jax.jit, static_argnames=("scalar",))
def supported_scatter(
    resid2: jax.Array,
    var: jax.Array,
    mask: jax.Array,
    t_ml: jax.Array,
    t_se: jax.Array,
    t_fit: jax.Array,
    support: float,
    scalar: bool,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    r"""The interval of ``t = s²`` that the held-out data support, and the point of
    it nearest ``t_fit``.

    With :math:`\ell(t) = -	frac12 \sum_n m_n [\log(v_n + t) + r_n^2/(v_n + t)]`
    and its maximum at ``t_ml`` (`max_likelihood_scatter`), the interval is
    :math:`\{t \ge 0 : \ell(t) \ge \ell(t_{ml}) - 	frac12\,\mathrm{support}^2\}`
    (``support = 1``: about ±1 standard error of ``t``). ``t_se`` is the Fisher
    standard error of ``t_ml`` (it sets the bracket of the upper end). Returns
    ``(t, lo, hi)``: ``t = t_fit`` where it lies inside, else the end nearer to it.

    >>> import numpy as np
    >>> r = np.random.default_rng(0).normal(0.0, np.sqrt(0.5), size=(20000, 1))
    >>> args = (r**2, np.full_like(r, 0.25), np.ones(r.shape, bool))
    >>> t_ml, se = np.array([0.25]), np.array([0.005])
    >>> t, lo, hi = supported_scatter(*args, t_ml, se, np.array([0.0]), 1.0, False)
    >>> bool(lo[0] < 0.25 < hi[0]) and float(t[0]) == float(lo[0])
    True
    """
    dtype = jnp.result_type(resid2, var, float)
    e = jnp.where(mask, jnp.asarray(resid2, dtype), 0.0)
    v = jnp.where(mask, jnp.asarray(var, dtype), 1.0)
    m = mask.astype(dtype)
    reduce = jnp.sum if scalar else partial(jnp.sum, axis=0)
    t_ml, t_se, t_fit = (jnp.asarray(x, dtype) for x in (t_ml, t_se, t_fit))

    def drop(t):  # ℓ(t_ml) - ℓ(t), summed star by star for precision
        a, b = v + t, v + t_ml
        return 0.5 * reduce(m * (jnp.log(a / b) + e * (1 / a - 1 / b)))

    limit = 0.5 * jnp.asarray(support, dtype) ** 2

    def crossing(inside, outside):  # where drop = limit between the two
        def halve(_, ends):
            a, b = ends
            mid = 0.5 * (a + b)
            within = drop(mid) <= limit
            return jnp.where(within, mid, a), jnp.where(within, b, mid)

        return jax.lax.fori_loop(0, _BISECTIONS, halve, (inside, outside))[0]

    zero = jnp.zeros_like(t_ml)
    lo = jnp.where(drop(zero) <= limit, zero, crossing(t_ml, zero))
    # ℓ is about quadratic near t_ml: the drop there is about 2 (1 + support)²
    top = t_ml + 2 * (1 + jnp.asarray(support, dtype)) * t_se
    hi = jnp.where(drop(top) <= limit, top, crossing(t_ml, top))
    t = jnp.clip(t_fit, lo, hi)
    return t, lo, hi


def _plain(x: Any) -> float | tuple[float, ...]:
    """A float (scalar) or a tuple of floats: hashable, comparable, immutable."""
    arr = np.asarray(x, dtype=float)
    return float(arr) if arr.ndim == 0 else tuple(float(v) for v in arr.ravel())


def _calibrate_output(
    held: HeldOutPredictions, name: str, s_old: Any, support: float = 0.0
) -> tuple[np.ndarray, dict[str, Any]]:
    """New ``s`` of one predicted output and its calibration record: the
    maximum-likelihood ``s`` of the held-out predictions, the interval of ``s``
    they support (`supported_scatter`), and the point of it nearest the old
    ``s`` (the old ``s`` itself where the data cannot reject it)."""
    s_old = np.asarray(s_old, dtype=float)
    scalar = s_old.ndim == 0
    resid = held.residuals(name)
    mask = ~np.isnan(resid)
    var = held.var_model[name] + held.observed_err[name] ** 2
    resid2 = np.where(mask, resid, 0.0) ** 2
    s_ml, se, _ = max_likelihood_scatter(resid2, var, mask, s_old, scalar)
    t_ml = np.square(np.asarray(s_ml, dtype=float))
    se = np.asarray(se, dtype=float)
    seen = mask.any(axis=0) if not scalar else np.asarray(mask.any())
    # (dimensions never observed in a held-out star keep their s)
    t, lo, hi = supported_scatter(
        resid2, var, mask, t_ml, np.where(seen, se, 0.0), s_old**2, support, scalar
    )
    t, lo, hi = (np.asarray(x, dtype=float) for x in (t, lo, hi))
    s_new = np.where(seen, np.sqrt(t), s_old)
    s_ml = np.where(seen, np.sqrt(t_ml), s_old)
    interval = np.where(seen, np.sqrt(lo), 0.0), np.where(seen, np.sqrt(hi), np.inf)
    record = {
        "s_fit": _plain(s_old),
        "s": _plain(s_new),
        "s_ml": _plain(s_ml),
        "s_lo": _plain(interval[0]),
        "s_hi": _plain(interval[1]),
        "support": float(support),
        "s2_se": _plain(np.where(seen, se, np.inf)),
        "n_stars": int(mask.any(axis=1).sum()),
        "z_std_before": _plain(held.z_std(name, s_old)),
        "z_std_after": _plain(held.z_std(name, s_new)),
    }
    return s_new, record


def _check_support(support: Any, call: str) -> float:
    if isinstance(support, (bool, np.bool_)) or not isinstance(
        support, (int, float, np.integer, np.floating)
    ):
        msg = (
            f"{call}(support=...): expected a number of standard errors (e.g. "
            f"1.0; 0 for the maximum-likelihood s), got {type(support).__name__}"
        )
        raise TypeError(msg)
    if not (np.isfinite(support) and support >= 0):
        msg = (
            f"{call}(support=...): expected a finite number ≥ 0 of standard "
            f"errors, got {support!r}"
        )
        raise ValueError(msg)
    return float(support)


def calibrate(
    model: Model,
    data: PolluxData,
    result: FitResult,
    *,
    given: Any,
    folds: Any,
    seed: Any,
    progress: bool,
    support: Any = 0.0,
) -> FitResult:
    call = "LuxModel.calibrate"
    data = check_data(data, call)
    if not isinstance(result, FitResult):
        msg = (
            f"{call}(result=...): expected the FitResult of LuxModel.fit, got "
            f"{type(result).__name__}"
        )
        raise TypeError(msg)
    if not result.settings:
        msg = (
            f"{call}(result=...): the result records no fit settings (it was not "
            "made by LuxModel.fit of this version); refit with LuxModel.fit"
        )
        raise ValueError(msg)
    if result.settings.get("fixed"):
        msg = (
            f"{call}(result=...): the result was fit with fixed parameters "
            f"{list(result.settings['fixed'])}; calibrate refits every fold from "
            "scratch and cannot reproduce that. Calibrate a fit without fixed_params"
        )
        raise ValueError(msg)
    given = check_given(model, given, call)
    fitted = fitted_names(result)
    unknown = [n for n in fitted if n not in model.outputs]
    if unknown:
        msg = (
            f"{call}(result=...): the result was fit to outputs {unknown} that this "
            f"model does not have (registered: {list(model.outputs)})"
        )
        raise ValueError(msg)
    targets = targets_of(fitted, given, call)
    for name in targets:
        if model.outputs[name].scatter_prior is None:
            msg = (
                f"{call}: output {name!r} has no extra scatter 's' to calibrate; "
                f"give its transform a scatter prior, e.g. param_priors={{'s': "
                "dist.HalfNormal(1.0)}} (or .expand((output_size,)) for one per "
                "dimension), and fit again"
            )
            raise ValueError(msg)
    params = check_params(
        model,
        without_latents(result.params),
        None,
        call,
        "result.params",
        required=fitted,
    )
    for name in targets:
        if SCATTER not in params[name]:
            msg = f"{call}(result=...): params[{name!r}] has no extra scatter 's'"
            raise ValueError(msg)
    check_outputs_in_data(data, (*given, *targets), call)
    require_data(data, (*given, *targets), call, each=True)
    folds = check_folds(folds, len(data), call)
    seed = check_seed(seed, call)
    if not isinstance(progress, bool):
        msg = f"{call}(progress=...): expected True or False, got {progress!r}"
        raise TypeError(msg)
    support = _check_support(support, call)

    held = held_out(
        lambda: model,
        data,
        given=given,
        targets=targets,
        fit_kwargs=settings_keywords(result),
        folds=folds,
        seed=seed,
        progress=progress,
        desc="calibrate",
    )
    new_params = {
        k: dict(v) if isinstance(v, Mapping) else v for k, v in result.params.items()
    }
    record = dict(result.calibration)
    for name in targets:
        s_old = result.params[name][SCATTER]
        s_new, entry = _calibrate_output(held, name, s_old, support)
        new_params[name][SCATTER] = jnp.asarray(s_new, dtype=jnp.asarray(s_old).dtype)
        record[name] = {**entry, "given": given, "folds": folds, "seed": seed}
    return dataclasses.replace(result, params=new_params, calibration=record)
