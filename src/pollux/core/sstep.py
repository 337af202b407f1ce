r"""s-step of the closed-form EM: the extra scatter of one output, for fixed
expected squared residuals.

For :math:`t = s^2 \ge 0` (one value per output dimension, or one per output) it
raises

.. math::

    F(t) = \sum_n m_n\Big[-\tfrac12\log(\sigma_n^2 + t)
        - \tfrac12 \frac{e_n}{\sigma_n^2 + t}\Big] + \log p(\sqrt t),

where :math:`e_n = E[(y_n - W z_n - b)^2]` under the latent posterior and
:math:`m_n` masks missing values.
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
    "s_candidates",
    "s_floor",
    "s_select",
    "s_step",
    "s_sums",
    "s_value",
]


class SSums(NamedTuple):
    """Sums over the stars that the s-step needs at the current ``t0 = s²``."""

    grad: Array  # dF/dt of the data term
    hess: Array  # d²F/dt² of the data term
    ex2: Array  # Σ E[x²] of the EM surrogate
    count: Array  # observed values
    value: Array  # the data term of F(t0)


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


def s_sums(block: Block, e: Float[Array, "n d"], t0: Array, scalar: bool) -> SSums:
    """`SSums` of these stars (sums over chunks of stars add up)."""
    mask = block.mask
    v = jnp.where(mask, block.err2 + t0, 1.0)
    a = jnp.where(mask, 1.0 / v, 0.0)
    ea = e * a
    ex2 = jnp.where(mask, t0 * (1.0 - t0 * a) + jnp.square(t0 * a) * e, 0.0)
    return SSums(
        grad=_reduce(0.5 * a * (ea - 1.0), scalar),
        hess=_reduce(a * a * (0.5 - ea), scalar),
        ex2=_reduce(ex2, scalar),
        count=_reduce(mask.astype(e.dtype), scalar),
        value=s_value(block, e, t0, scalar),
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

    # EM: maximise Q on u = log t, Newton steps accepted only where Q rises
    # (everything here has the size of s, not of the data).
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

    u = jnp.log(t0)
    start = jnp.log(jnp.maximum(sums.ex2 / count, t_min))  # the maximiser, no prior
    u, _ = jax.lax.fori_loop(0, 4, newton_u, keep_better(start, u, surrogate(u)))
    return newton, jnp.maximum(jnp.exp(u), t_min)


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

    The data enter through two passes: `s_sums` at the current value, then
    `s_value` at the Newton candidate; a chunked caller sums both over chunks of
    stars and gets the same step (`pollux.core.em`).
    """
    t_min = s_floor(block)
    t0 = jnp.maximum(jnp.square(s), t_min)
    sums = s_sums(block, e, t0, scalar)
    newton, em = s_candidates(sums, t0, prior, t_min)
    value = s_value(block, e, newton, scalar)
    return s_select(sums, value, t0, newton, em, prior, t_min)
