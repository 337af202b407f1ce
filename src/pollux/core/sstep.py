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

from functools import partial

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from jaxtyping import Array, Float

from .blocks import Block

__all__ = ["s_step"]


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
    step is kept where it raises :math:`F`, else the EM update. Only two passes
    over the data evaluate logarithms.
    """
    mask = block.mask
    dtype = e.dtype
    n_obs = jnp.maximum(jnp.sum(mask), 1)
    t_min = 1e-12 * (jnp.sum(e) / n_obs + 1.0)
    reduce = jnp.sum if scalar else partial(jnp.sum, axis=0)
    count = jnp.maximum(reduce(mask.astype(dtype)), 1.0)

    def log_prior(t):
        return prior.log_prob(jnp.sqrt(jnp.maximum(t, t_min)))

    d_prior = jax.grad(lambda t: jnp.sum(log_prior(t)))
    d2_prior = jax.grad(lambda t: jnp.sum(d_prior(t)))

    def objective(t):
        v = jnp.where(mask, block.err2 + t, 1.0)
        return reduce(jnp.where(mask, -0.5 * (jnp.log(v) + e / v), 0.0)) + log_prior(t)

    t0 = jnp.maximum(jnp.square(s), t_min)
    a = jnp.where(mask, 1.0 / jnp.where(mask, block.err2 + t0, 1.0), 0.0)
    ea = e * a

    # Newton on F (derivatives need no logarithms).
    g = 0.5 * reduce(a * (ea - 1.0)) + d_prior(t0)
    h = reduce(a * a * (0.5 - ea)) + d2_prior(t0)
    newton = jnp.maximum(t0 - g / jnp.where(h < 0, h, -jnp.inf), t_min)

    # EM: maximise Q on u = log t, Newton steps accepted only where Q rises
    # (everything here has the size of s, not of the data).
    Ex2 = reduce(jnp.where(mask, t0 * (1.0 - t0 * a) + jnp.square(t0 * a) * e, 0.0))

    def surrogate(u):
        t = jnp.exp(u)
        return -0.5 * count * u - 0.5 * Ex2 / t + log_prior(t)

    dq = jax.grad(lambda u: jnp.sum(surrogate(u)))
    d2q = jax.grad(lambda u: jnp.sum(dq(u)))
    u = jnp.log(t0)
    q = surrogate(u)
    start = jnp.log(jnp.maximum(Ex2 / count, t_min))  # the maximiser without prior
    for cand in (start, None, None, None, None):
        if cand is None:
            h_u = d2q(u)
            cand = u - dq(u) / jnp.where(h_u < 0, h_u, -jnp.inf)
        q_cand = surrogate(cand)
        better = q_cand > q
        u, q = jnp.where(better, cand, u), jnp.where(better, q_cand, q)
    em = jnp.maximum(jnp.exp(u), t_min)

    t_new = jnp.where(objective(newton) > objective(t0), newton, em)
    return jnp.sqrt(t_new)
