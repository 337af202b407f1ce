r"""Closed-form EM for outputs affine in the latents (heteroscedastic factor analysis).

One iteration, for parameters :math:`\theta = \{W_o, b_o, s_o\}`:

1. **E-step** — the exact Gaussian posterior :math:`(\mu_n, \Sigma_n)` of every star's
   latents (`latent_posterior`), which also yields the objective
   :math:`-\log p(y\mid\theta) - \log p(\theta)` at the current :math:`\theta`.
2. **M-step** for :math:`(W_o, b_o)` — row-wise ridge solves (`m_step_affine`).
3. **s-step** — each free extra scatter (`s_step`).

Every step maximises the expected complete-data log posterior given the previous
steps, so the objective never increases (generalised EM). `em_chunk` runs several
iterations (or SQUAREM cycles) in one compiled loop.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._params import SCATTER
from .blocks import gaussian_loglike
from .mstep import expected_sq_resid, m_step_affine
from .posterior import PosteriorStats, latent_posterior, precisions
from .problem import EMProblem
from .sstep import s_step

__all__ = [
    "em_chunk",
    "em_iteration",
    "final_state",
    "initialize",
    "positive_scatter",
    "run_until_settled",
    "squarem_point",
]

Params = tuple[dict[str, Array], ...]


def _neg_log_prior(problem: EMProblem, params: Params) -> Array:
    total = jnp.zeros(())
    for spec, p, pr in zip(problem.specs, params, problem.priors, strict=True):
        free = (
            ("A", spec.A_free),
            ("b", spec.solve_b),
            (SCATTER, spec.has_s and spec.s_free),
        )
        for name, is_free in free:
            if is_free:
                total = total - jnp.sum(pr[name].log_prob(p[name]))
    return total


def _evaluate(problem: EMProblem, params: Params) -> tuple[PosteriorStats, Array]:
    """Latent posterior (or the fixed latents) and the data term of the objective."""
    z = problem.fixed_latents
    if z is None:
        post = latent_posterior(
            problem.blocks,
            tuple(p["A"] for p in params),
            tuple(p["b"] for p in params),
            tuple(
                spec.scatter2(p) for spec, p in zip(problem.specs, params, strict=True)
            ),
        )
        return post, post.neg_log_marginal
    nll = jnp.zeros(())
    for spec, p, block in zip(problem.specs, params, problem.blocks, strict=True):
        pred = z @ p["A"].T + p["b"]
        nll = nll - gaussian_loglike(block, pred, p[SCATTER] if spec.has_s else None)
    return PosteriorStats(z, None, nll), nll


def _objective(problem: EMProblem, params: Params) -> tuple[PosteriorStats, Array]:
    post, nll = _evaluate(problem, params)
    return post, nll + _neg_log_prior(problem, params)


def _update_output(spec, block, prior, ridge, lam, mean, cov, p):
    """New ``(W, b)`` for weights ``lam``, then the s-step, for one output."""
    W, b = m_step_affine(spec, block, lam, mean, cov, p["A"], p["b"], ridge)
    q = dict(p, A=W, b=b)
    if spec.has_s and spec.s_free:
        e = expected_sq_resid(block, mean, cov, W, b)
        q[SCATTER] = s_step(
            block, e, p[SCATTER], prior[SCATTER], scalar=spec.s_kind == "scalar"
        )
    return q


def _m_steps(problem: EMProblem, params: Params, post: PosteriorStats) -> Params:
    """M-step for ``(W, b)`` then the s-step, for every output."""
    return tuple(
        _update_output(
            spec,
            block,
            prior,
            ridge,
            precisions(block, spec.scatter2(p)),
            post.mean,
            post.cov,
            p,
        )
        for (spec, block, prior, ridge), p in zip(
            problem.outputs(), params, strict=True
        )
    )


def em_iteration(problem: EMProblem, params: Params) -> tuple[Params, Array]:
    """One EM sweep: returns the new parameters and the objective at the old ones."""
    post, loss = _objective(problem, params)
    return _m_steps(problem, params, post), loss


def squarem_point(p0: Any, p1: Any, p2: Any) -> Any:
    """SQUAREM's extrapolated point ``p0 - 2αr + α²v`` of three successive
    iterates (``r = p1 - p0``, ``v = p2 - 2p1 + p0``, ``α = -|r|/|v| <= -1``)."""
    r = jax.tree.map(jnp.subtract, p1, p0)
    v = jax.tree.map(lambda a, b, c: a - 2 * b + c, p2, p1, p0)
    norm = lambda t: jnp.sqrt(sum(jnp.sum(x**2) for x in jax.tree.leaves(t)))
    r_norm, v_norm = norm(r), norm(v)
    alpha = jnp.where(v_norm > 0, -r_norm / jnp.where(v_norm > 0, v_norm, 1.0), -1.0)
    alpha = jnp.minimum(alpha, -1.0)
    return jax.tree.map(lambda a, ri, vi: a - 2 * alpha * ri + alpha**2 * vi, p0, r, v)


def positive_scatter(params: Params) -> Params:
    """Parameters with every extra scatter ``s`` made non-negative."""
    return tuple(
        {**q, SCATTER: jnp.abs(q[SCATTER])} if SCATTER in q else q for q in params
    )


def _squarem_cycle(problem: EMProblem, params: Params) -> tuple[Params, Array]:
    """EM steps with a squared extrapolation (SQUAREM, Varadhan & Roland 2008).

    From ``p0``: ``p1 = M(p0)``, ``p2 = M(p1)``, ``r = p1 - p0``, ``v = p2 - 2 p1 + p0``
    and ``p' = p0 - 2αr + α²v`` with ``α = -|r|/|v|`` (at most -1). The cycle ends
    at ``M(p')`` when the objective at ``p'`` is no worse than at ``p1``, else at
    ``p2`` (plain EM); either way the objective never increases.
    """
    p1, loss0 = em_iteration(problem, params)
    p2, loss1 = em_iteration(problem, p1)
    extrap = positive_scatter(squarem_point(params, p1, p2))
    post_ext, loss_ext = _objective(problem, extrap)
    ok = jnp.isfinite(loss_ext) & (loss_ext <= loss1)
    from_ext = _m_steps(problem, extrap, post_ext)
    # Both candidates are computed and one selected (a select, no nested branch).
    new = jax.tree.map(lambda a, b_: jnp.where(ok, a, b_), from_ext, p2)
    return new, loss0


def run_until_settled(
    step: Any,
    state: Any,
    prev_loss: Array,
    threshold: Array,
    max_steps: Array,
    n_steps: int,
) -> tuple[Any, Float[Array, " n_steps"], Array, Array]:
    """``state, loss = step(state)`` in a ``while_loop`` until a step changes the
    objective by at most ``threshold`` or ``min(max_steps, n_steps)`` steps ran.

    Returns the state, the objective of each step (NaN past the last), the number
    of steps and whether the objective settled.
    """
    losses0 = jnp.full((n_steps,), jnp.nan, dtype=prev_loss.dtype)

    def cond(carry):
        i, _, _, _, done = carry
        return (i < jnp.minimum(max_steps, n_steps)) & ~done

    def body(carry):
        i, st, losses, last, _ = carry
        new, loss = step(st)
        done = jnp.abs(last - loss) <= threshold
        return i + 1, new, losses.at[i].set(loss), loss, done

    init = (0, state, losses0, prev_loss, jnp.asarray(False))
    n, state, losses, _, done = jax.lax.while_loop(cond, body, init)
    return state, losses, n, done


@partial(jax.jit, static_argnames=("n_steps", "accelerate"))
def em_chunk(
    problem: EMProblem,
    params: Params,
    prev_loss: Array,
    threshold: Array,
    max_steps: Array,
    n_steps: int,
    accelerate: bool = False,
) -> tuple[Params, Float[Array, " n_steps"], Array, Array]:
    """Up to ``min(max_steps, n_steps)`` EM iterations (or SQUAREM cycles) in one
    compiled loop (``n_steps`` is the static buffer length).

    Stops early once an iteration changes the objective by at most ``threshold``.
    Returns the parameters, the objective at the start of each iteration (NaN past
    the last), the number of iterations run and whether it converged.
    """
    iteration = _squarem_cycle if accelerate else em_iteration
    return run_until_settled(
        partial(iteration, problem), params, prev_loss, threshold, max_steps, n_steps
    )


@jax.jit
def final_state(problem: EMProblem, params: Params) -> tuple[PosteriorStats, Array]:
    """Posterior and objective at the final parameters."""
    return _objective(problem, params)


@jax.jit
def initialize(
    problem: EMProblem, params: Params, latents: Float[Array, "n k"]
) -> Params:
    """Start values of every output whose ``A`` is free: an unweighted regression
    on the given latents, then the scatter that its residuals call for."""
    return tuple(
        _update_output(
            spec,
            block,
            prior,
            ridge,
            block.mask.astype(block.y.dtype),
            latents,
            None,
            p,
        )
        if spec.A_free
        else p
        for (spec, block, prior, ridge), p in zip(
            problem.outputs(), params, strict=True
        )
    )
