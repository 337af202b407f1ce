r"""s-step of the closed-form EM: the extra scatter of one output, for fixed
expected squared residuals.

For :math:`t = s^2 \ge 0` (one value per output dimension, or one per output) it
raises

.. math::

    F(t) = \sum_n m_n\Big[-\tfrac12\log(\sigma_n^2 + t)
        - \tfrac12 \frac{e_n}{\sigma_n^2 + t}\Big] + \log p(\sqrt t),

where :math:`e_n = E[(y_n - W z_n - b)^2]` under the latent posterior and
:math:`m_n` masks missing values.

The data enter through sums over the stars at the current value :math:`t_0`
(`s_sums`), which chunks of stars add up. From them come two steps that each never
lower :math:`F` (see `s_step`); only priors whose log density is not convex in
:math:`t` need a second pass over the data (`s_value`) to check a Newton step.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from jaxtyping import Array, Float

from .blocks import Block

__all__ = [
    "SSums",
    "needs_check",
    "s_bound_step",
    "s_candidates",
    "s_floor",
    "s_select",
    "s_step",
    "s_sums",
    "s_value",
]


class SSums(NamedTuple):
    """Sums over the stars that the s-step needs at the current ``t0 = s²``
    (``v = σ² + t0``, ``a = 1/v``)."""

    grad: Array  # dF/dt of the data term
    hess: Array  # d²F/dt² of the data term
    ex2: Array  # Σ E[x²] of the EM surrogate
    count: Array  # observed values
    value: Array  # the data term of F(t0)
    ea3: Array  # Σ e a³: bounds the curvature above t0
    a2: Array  # Σ a²
    lo3: Array  # Σ e / (σ² + t0/4)³: bounds the curvature below t0
    hi2: Array  # Σ 1 / (σ² + 4 t0)²


LOWER, UPPER = 0.25, 4.0  # intervals [t0/4, t0] and [t0, 4 t0] of the tight bounds

# Priors whose log density log p(√t) is convex in t = s² (or linear): their
# curvature only helps the bound step, which then needs no check.
_CONVEX_PRIORS = (dist.HalfNormal, dist.HalfCauchy, dist.Exponential)


def needs_check(prior: dist.Distribution) -> bool:
    """Whether the s-step under ``prior`` checks a Newton step with a second pass
    over the data (`s_value`); False for HalfNormal, HalfCauchy, Exponential and
    flat priors, whose steps are safe by construction."""
    base = prior
    while isinstance(base, (dist.Independent, dist.ExpandedDistribution)):
        base = base.base_dist
    return not isinstance(base, (*_CONVEX_PRIORS, dist.ImproperUniform))


def _reduce(x: Array, scalar: bool) -> Array:
    return jnp.sum(x) if scalar else jnp.sum(x, axis=0)


def s_floor(block: Block) -> Array:
    """Smallest ``t = s²`` the s-step uses: ``1e-12`` times the typical
    ``y² + σ²`` of the observed values (plus one), a constant of the data."""
    total = jnp.sum(jnp.square(block.y) + block.err2)
    return s_floor_from_sums(total, jnp.sum(block.mask))


def s_floor_from_sums(sum_y2_err2: Array, n_obs: Array) -> Array:
    """`s_floor` from ``Σ (y² + σ²)`` and the number of observed values."""
    return 1e-12 * (sum_y2_err2 / jnp.maximum(n_obs, 1) + 1.0)


def s_value(block: Block, e: Float[Array, "n d"], t: Array, scalar: bool) -> Array:
    """The data term of ``F(t)``: ``Σ -½[log(σ² + t) + e/(σ² + t)]`` over observed
    values."""
    v = jnp.where(block.mask, block.err2 + t, 1.0)
    return _reduce(jnp.where(block.mask, -0.5 * (jnp.log(v) + e / v), 0.0), scalar)


def s_sums(
    block: Block, e: Float[Array, "n d"], t0: Array, scalar: bool, check: bool = True
) -> SSums:
    """`SSums` of these stars (sums over chunks of stars add up); without
    ``check`` (the bound step) ``value`` and ``hess``, which only a checked Newton
    step uses, are left zero (no logarithms)."""
    mask = block.mask
    v = jnp.where(mask, block.err2 + t0, 1.0)
    a = jnp.where(mask, 1.0 / v, 0.0)
    ea = e * a
    ex2 = jnp.where(mask, t0 * (1.0 - t0 * a) + jnp.square(t0 * a) * e, 0.0)
    a_lo = jnp.where(mask, 1.0 / jnp.where(mask, block.err2 + LOWER * t0, 1.0), 0.0)
    a_hi = jnp.where(mask, 1.0 / jnp.where(mask, block.err2 + UPPER * t0, 1.0), 0.0)
    grad = _reduce(0.5 * a * (ea - 1.0), scalar)
    zero = jnp.zeros_like(grad)
    return SSums(
        grad=grad,
        hess=_reduce(a * a * (0.5 - ea), scalar) if check else zero,
        ex2=_reduce(ex2, scalar),
        count=_reduce(mask.astype(e.dtype), scalar),
        value=s_value(block, e, t0, scalar) if check else zero,
        ea3=_reduce(ea * a * a, scalar),
        a2=_reduce(a * a, scalar),
        lo3=_reduce(e * a_lo**3, scalar),
        hi2=_reduce(a_hi * a_hi, scalar),
    )


def _log_prior(prior: dist.Distribution, t: Array, t_min: Array) -> Array:
    return prior.log_prob(jnp.sqrt(jnp.maximum(t, t_min)))


def s_candidates(
    sums: SSums, t0: Array, prior: dist.Distribution, t_min: Array
) -> tuple[Array, Array]:
    """The Newton and EM candidates for ``t = s²`` (see `s_step`)."""
    log_prior = lambda t: _log_prior(prior, t, t_min)
    d_prior = jax.grad(lambda t: jnp.sum(log_prior(t)))
    d2_prior = jax.grad(lambda t: jnp.sum(d_prior(t)))

    # Newton on F (its derivatives need no logarithms).
    g = sums.grad + d_prior(t0)
    h = sums.hess + d2_prior(t0)
    newton = jnp.maximum(t0 - g / jnp.where(h < 0, h, -jnp.inf), t_min)
    return newton, _em_step(sums, t0, log_prior, t_min)[0]


def _em_step(sums: SSums, t0: Array, log_prior, t_min: Array) -> tuple[Array, Array]:
    """The EM update and the rise of its surrogate, a lower bound on the rise of
    ``F``: maximise ``Q`` on ``u = log t``, Newton steps accepted only where ``Q``
    rises (everything here has the size of ``s``, not of the data)."""
    count = jnp.maximum(sums.count, 1.0)

    def surrogate(u):
        t = jnp.exp(u)
        return -0.5 * count * u - 0.5 * sums.ex2 / t + log_prior(t)

    dq = jax.grad(lambda u: jnp.sum(surrogate(u)))
    d2q = jax.grad(lambda u: jnp.sum(dq(u)))

    def keep_better(cand, u, q):
        q_cand = surrogate(cand)
        better = q_cand > q
        return jnp.where(better, cand, u), jnp.where(better, q_cand, q)

    def newton_u(_, carry):
        u, q = carry
        h_u = d2q(u)
        return keep_better(u - dq(u) / jnp.where(h_u < 0, h_u, -jnp.inf), u, q)

    u0 = jnp.log(t0)
    q0 = surrogate(u0)
    start = jnp.log(jnp.maximum(sums.ex2 / count, t_min))  # the maximiser, no prior
    u, q = jax.lax.fori_loop(0, 4, newton_u, keep_better(start, u0, q0))
    return jnp.maximum(jnp.exp(u), t_min), q - q0


def s_bound_step(
    sums: SSums, t0: Array, prior: dist.Distribution, t_min: Array
) -> Array:
    r"""The new ``t = s²`` from one pass over the data, never lowering ``F`` for a
    prior whose log density is convex in ``t`` (`needs_check` False).

    Above :math:`t_0` the data term's curvature is bounded by
    :math:`\sum_n e_n a_n^3` (:math:`a = 1/v_0`); on :math:`[t_0, 4t_0]` more tightly,
    :math:`-F'' = \sum_n e_n/v_n^3 - 1/(2v_n^2) \le \sum_n e_n a_n^3 -
    \tfrac12\sum_n (\sigma_n^2 + 4t_0)^{-2} = M_+` (:math:`v = \sigma^2 + t`,
    :math:`a = 1/v_0`), and on :math:`[t_0/4, t_0]` by :math:`M_- = \sum_n
    e_n (\sigma_n^2 + t_0/4)^{-3} - \tfrac12 \sum_n a_n^2`; a convex log prior
    only adds curvature of the helpful sign. So
    :math:`F(t_0 + \delta) \ge F(t_0) + g\delta - \tfrac12 M\delta^2`, whose
    maximiser within the interval is a safe step (about Newton's near the
    optimum). The EM update is safe too; the step with the larger guaranteed rise
    is taken.
    """
    log_prior = lambda t: _log_prior(prior, t, t_min)
    g = sums.grad + jax.grad(lambda t: jnp.sum(log_prior(t)))(t0)
    lo = jnp.maximum(LOWER * t0, t_min) - t0

    def bound_step(M, lower, upper):
        """Maximiser of ``gδ − Mδ²/2`` on ``[lower, upper]`` and its value."""
        delta = jnp.where(M > 0, g / jnp.where(M > 0, M, 1.0), jnp.sign(g) * jnp.inf)
        delta = jnp.clip(delta, lower, upper)
        delta = jnp.where(jnp.isfinite(delta), delta, 0.0)
        return delta, g * delta - 0.5 * jnp.maximum(M, 0.0) * delta**2

    # Three bounds: above t0 without limit (e a³ bounds −F'' for every t ≥ t0),
    # above within 4 t0 and below within t0/4 (tighter: about Newton's step).
    zero = jnp.zeros_like(g)
    steps = [
        bound_step(sums.ea3, zero, jnp.inf),
        bound_step(sums.ea3 - 0.5 * sums.hi2, zero, (UPPER - 1.0) * t0),
        bound_step(sums.lo3 - 0.5 * sums.a2, lo, zero),
    ]
    em, best = _em_step(sums, t0, log_prior, t_min)
    t_new = em
    for delta, rise in steps:
        better = rise > best
        t_new = jnp.where(better, t0 + delta, t_new)
        best = jnp.where(better, rise, best)
    return jnp.maximum(t_new, t_min)


def s_select(
    sums: SSums,
    value_newton: Array,
    t0: Array,
    newton: Array,
    em: Array,
    prior: dist.Distribution,
    t_min: Array,
) -> Array:
    """The new ``s``: the Newton candidate where it raises ``F``, else the EM one
    (``F`` is evaluated by `s_value` at both points, so a Newton step of zero is
    never taken for a rise in rounding)."""
    before = sums.value + _log_prior(prior, t0, t_min)
    after = value_newton + _log_prior(prior, newton, t_min)
    return jnp.sqrt(jnp.where((after > before) & (newton != t0), newton, em))


def s_step(
    block: Block,
    e: Float[Array, "n d"],
    s: Array,
    prior: dist.Distribution,
    scalar: bool,
) -> Array:
    r"""Improve ``s`` for fixed expected squared residuals ``e`` (never worse).

    Two candidates for :math:`t = s^2`: a Newton step on the exact objective
    :math:`F(t) = \sum_n -\tfrac12[\log(\sigma_n^2+t) + e_n/(\sigma_n^2+t)] + \log p(\sqrt t)`,
    and the EM update that treats the extra scatter as a latent offset
    :math:`x_n \sim N(0, t)`; the EM surrogate
    :math:`Q(t) = -\tfrac{n}{2}\log t - \tfrac{1}{2t}\sum_n E[x_n^2] + \log p(\sqrt t)`
    minorises :math:`F`, so raising :math:`Q` never lowers :math:`F`. The Newton
    step is kept where it raises :math:`F`, else the EM update.

    For a prior whose log density is convex in :math:`t` (HalfNormal,
    HalfCauchy, Exponential, flat) the Newton step is replaced by the maximiser
    of a lower bound on :math:`F` (`s_bound_step`), safe without evaluating
    :math:`F` again: one pass over the data (`s_sums`). Otherwise the Newton step
    is checked with a second pass (`s_value`). A chunked caller sums both over
    chunks of stars and gets the same step (`pollux.core.em`).
    """
    t_min = s_floor(block)
    t0 = jnp.maximum(jnp.square(s), t_min)
    if not needs_check(prior):
        sums = s_sums(block, e, t0, scalar, check=False)
        return jnp.sqrt(s_bound_step(sums, t0, prior, t_min))
    sums = s_sums(block, e, t0, scalar)
    newton, em = s_candidates(sums, t0, prior, t_min)
    value = s_value(block, e, newton, scalar)
    return s_select(sums, value, t0, newton, em, prior, t_min)
