r"""Closed-form EM for outputs affine in the latents (heteroscedastic factor analysis).

One iteration (a *sweep*), for parameters :math:`\theta = \{W_o, b_o, s_o\}`:

1. **E-step** — the exact Gaussian posterior :math:`(\mu_n, \Sigma_n)` of every star's
   latents (`latent_posterior`), which also yields the objective
   :math:`-\log p(y\mid\theta) - \log p(\theta)` at the current :math:`\theta`.
2. **M-step** for :math:`(W_o, b_o)` — row-wise ridge solves (`solve_affine`) on
   sufficient statistics summed over the stars.
3. **s-step** — each free extra scatter (`pollux.core.sstep`).

Every step maximises the expected complete-data log posterior given the previous
steps, so the objective never increases (generalised EM). `em_chunk` runs several
iterations (or SQUAREM cycles) in one compiled loop.

The data are read in chunks of ``problem.chunk_size`` stars (`pollux.core.chunks`),
in at most three passes per sweep:

A. the posterior, the objective and the M-step statistics (`affine_stats`) of each
   chunk — two products over packed triangles, :math:`(C{\times}D)\cdot(D{\times}T)`
   and :math:`(D{\times}C)\cdot(C{\times}T)` with :math:`T = K(K+1)/2` (+ the offset);
B. with the new :math:`(W, b)`: the expected squared residuals and `s_sums`;
C. only for scatter priors whose log density is not convex in :math:`s^2`: the
   s-step objective at a Newton candidate (`s_value`), recomputing those
   residuals (one more product; cheaper than keeping an :math:`(N, D)` array).

Pass B runs only for outputs with a free scatter; for the usual priors
(HalfNormal, HalfCauchy, Exponential, flat) the s-step is the safe bound step of
`s_bound_step` and a sweep reads the data twice. Nothing of size
:math:`(N, D)` is kept beyond the data; what is kept per star is
:math:`(\mu_n, \Sigma_n)`.
"""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._params import SCATTER
from .blocks import gaussian_loglike
from .chunks import Accumulator, fold_chunks, put_rows, take_block, take_rows
from .mstep import (
    affine_stats,
    expected_sq_resid,
    row_covariances,
    solve_affine,
    zero_stats,
)
from .posterior import PosteriorStats, latent_posterior, precisions
from .problem import EMProblem
from .sstep import (
    SSums,
    needs_check,
    s_bound_step,
    s_candidates,
    s_floor_from_sums,
    s_select,
    s_sums,
    s_value,
)

__all__ = [
    "InMemory",
    "affine_resid",
    "em_chunk",
    "em_iteration",
    "final_state",
    "initialize",
    "positive_scatter",
    "run_until_settled",
    "s_steps_with",
    "scatter_floors",
    "sq_norm",
    "squarem_alpha",
    "squarem_cycle",
    "squarem_point",
    "squarem_step",
    "sweep_with",
]

Params = tuple[dict[str, Array], ...]


def neg_log_prior(problem: EMProblem, params: Params) -> Array:
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


def _chunk_size(problem: EMProblem) -> int:
    n = problem.blocks[0].values.shape[0]
    return n if problem.chunk_size is None else min(problem.chunk_size, n)


class PassA(NamedTuple):
    """What pass A returns: the posterior of every star, the data term of the
    objective, and the M-step statistics of every output."""

    mean: Float[Array, "n k"]
    cov: Float[Array, "n k k"] | None
    nll: Array
    stats: tuple[tuple[Array, ...], ...]


def posterior_pass(
    problem: EMProblem,
    params: Params,
    latents: Array | None = None,
    unweighted: bool = False,
) -> PassA:
    """Pass A over the chunks of stars at ``params``.

    ``latents`` (else ``problem.fixed_latents``) replaces the posterior by fixed
    latents; ``unweighted`` weighs every observed value by one (the start-value
    regression), without an objective.
    """
    blocks = problem.blocks
    n, size = blocks[0].values.shape[0], _chunk_size(problem)
    dtype = blocks[0].values.dtype
    k = params[0]["A"].shape[1]
    Ws = tuple(p["A"] for p in params)
    bs = tuple(p["b"] for p in params)
    s2s = tuple(spec.scatter2(p) for spec, p in zip(problem.specs, params, strict=True))
    z = problem.fixed_latents if latents is None else latents

    def chunk_terms(chunk, mean, cov):
        weights = (
            (b.mask.astype(dtype) for b in chunk)
            if unweighted
            else (precisions(b, s2) for b, s2 in zip(chunk, s2s, strict=True))
        )
        return tuple(
            affine_stats(spec, block, lam, mean, cov, W, b)
            for spec, block, lam, W, b in zip(
                problem.specs, chunk, weights, Ws, bs, strict=True
            )
        )

    def body(start, valid, carry):
        mean_all, cov_all, acc = carry
        chunk = tuple(take_block(b, start, size, valid) for b in blocks)
        if z is None:
            mean, cov, nll = latent_posterior(chunk, Ws, bs, s2s)
            mean_all = put_rows(mean_all, mean, start, valid)
            cov_all = put_rows(cov_all, cov, start, valid)
        else:
            mean, cov = take_rows(z, start, size), None
            nll = jnp.zeros((), dtype)
            if not unweighted:
                for spec, block, W, b, p in zip(
                    problem.specs, chunk, Ws, bs, params, strict=True
                ):
                    s = p[SCATTER] if spec.has_s else None
                    nll = nll - gaussian_loglike(block, mean @ W.T + b, s)
        return mean_all, cov_all, acc.add((nll, chunk_terms(chunk, mean, cov)))

    zeros = tuple(
        zero_stats(spec, W.shape[0], k, dtype)
        for spec, W in zip(problem.specs, Ws, strict=True)
    )
    init = (
        jnp.zeros((n, k), dtype) if z is None else None,
        jnp.zeros((n, k, k), dtype) if z is None else None,
        Accumulator.zeros((jnp.zeros((), dtype), zeros)),
    )
    mean, cov, acc = fold_chunks(body, n, size, init)
    nll, stats = problem.sum_over_stars(acc.total)
    return PassA(mean if z is None else z, cov, nll, stats)


def free_scatter(problem: EMProblem) -> list[int]:
    """Indices of the outputs with a free extra scatter."""
    return [i for i, spec in enumerate(problem.specs) if spec.has_s and spec.s_free]


def checked_scatter(problem: EMProblem) -> list[int]:
    """The outputs of `free_scatter` whose prior needs the checked Newton step
    (pass C)."""
    return [i for i in free_scatter(problem) if needs_check(problem.priors[i][SCATTER])]


def _zeros(problem: EMProblem, i: int, dtype) -> Array:
    if problem.specs[i].s_kind == "scalar":
        return jnp.zeros((), dtype)
    return jnp.zeros(problem.blocks[i].values.shape[1], dtype)


def affine_resid(
    problem: EMProblem, i: int, block: Any, mean: Array, cov: Array | None, p: dict
) -> Array:
    """`expected_sq_resid` of output ``i`` (the residuals of the affine passes)."""
    return expected_sq_resid(block, mean, cov, p["A"], p["b"])


def _s_fold(problem, params, mean, cov, outputs, terms, init, resid):
    """``terms(i, block, e)`` of the given outputs summed over the stars, ``e`` the
    expected squared residuals ``resid(problem, i, block, mean, cov, params[i])``
    under the posterior ``(mean, cov)``."""
    n, size = mean.shape[0], _chunk_size(problem)

    def body(start, valid, acc):
        m = take_rows(mean, start, size)
        c = None if cov is None else take_rows(cov, start, size)
        out = []
        for i in outputs:
            block = take_block(problem.blocks[i], start, size, valid)
            e = resid(problem, i, block, m, c, params[i])
            out.append(terms(i, block, e))
        return acc.add(tuple(out))

    totals = fold_chunks(body, n, size, Accumulator.zeros(init)).total
    return problem.sum_over_stars(totals)


def s_start(
    problem: EMProblem, floors: tuple[Array | None, ...], params: Params
) -> dict[int, Array]:
    """The current ``t0 = s²`` (at least its floor) of each free scatter."""
    return {
        i: jnp.maximum(jnp.square(params[i][SCATTER]), floors[i])
        for i in free_scatter(problem)
    }


def s_sum_pass(
    problem: EMProblem,
    params: Params,
    mean: Float[Array, "n k"],
    cov: Float[Array, "n k k"] | None,
    t0: dict[int, Array],
    resid: Any = affine_resid,
) -> dict[int, SSums]:
    """Pass B: the `SSums` of every free scatter at ``t0``, for the posterior
    ``(mean, cov)`` and the new weights in ``params`` (``resid``: the expected
    squared residuals of an output, see `_s_fold`)."""
    free, checked = free_scatter(problem), checked_scatter(problem)
    dtype = mean.dtype
    scalar = {i: problem.specs[i].s_kind == "scalar" for i in free}
    sums = _s_fold(
        problem,
        params,
        mean,
        cov,
        free,
        lambda i, block, e: s_sums(block, e, t0[i], scalar[i], i in checked),
        tuple(SSums(*[_zeros(problem, i, dtype)] * len(SSums._fields)) for i in free),
        resid,
    )
    return dict(zip(free, sums, strict=True))


def s_newton(
    problem: EMProblem,
    floors: tuple[Array | None, ...],
    sums: dict[int, SSums],
    t0: dict[int, Array],
) -> dict[int, tuple[Array, Array]]:
    """The Newton and EM candidates of every output of `checked_scatter`."""
    return {
        i: s_candidates(sums[i], t0[i], problem.priors[i][SCATTER], floors[i])
        for i in checked_scatter(problem)
    }


def s_value_pass(
    problem: EMProblem,
    params: Params,
    mean: Float[Array, "n k"],
    cov: Float[Array, "n k k"] | None,
    cands: dict[int, tuple[Array, Array]],
    resid: Any = affine_resid,
) -> dict[int, Array]:
    """Pass C: the data term of the s-step objective at each Newton candidate."""
    checked = checked_scatter(problem)
    values = _s_fold(
        problem,
        params,
        mean,
        cov,
        checked,
        lambda i, block, e: s_value(
            block, e, cands[i][0], problem.specs[i].s_kind == "scalar"
        ),
        tuple(_zeros(problem, i, mean.dtype) for i in checked),
        resid,
    )
    return dict(zip(checked, values, strict=True))


def s_finish(
    problem: EMProblem,
    floors: tuple[Array | None, ...],
    params: Params,
    t0: dict[int, Array],
    sums: dict[int, SSums],
    cands: dict[int, tuple[Array, Array]],
    values: dict[int, Array],
) -> Params:
    """The new scatter of every free output from the sums of passes B and C."""
    new = list(params)
    for i in free_scatter(problem):
        prior = problem.priors[i][SCATTER]
        if i in cands:
            newton, em_t = cands[i]
            s = s_select(sums[i], values[i], t0[i], newton, em_t, prior, floors[i])
        else:
            s = jnp.sqrt(s_bound_step(sums[i], t0[i], prior, floors[i]))
        new[i] = dict(params[i], **{SCATTER: s})
    return tuple(new)


class InMemory(NamedTuple):
    """The passes of a sweep over the blocks of ``problem`` (inside a compiled
    program). Another source of passes — Dask chunks on workers
    (`pollux.fit.backends`) — provides the same three methods and a ``host``
    that compiles the small steps run between them."""

    problem: EMProblem
    resid: Any = affine_resid  # the expected squared residuals (`_s_fold`)

    @staticmethod
    def host(fn: Any) -> Any:
        """The steps between passes: traced into the surrounding program."""
        return fn

    def posterior(self, params: Params) -> tuple[Array, Any, Any]:
        """Pass A: the data term of the objective, the M-step statistics and
        what the later passes need of the posterior."""
        a = posterior_pass(self.problem, params)
        return a.nll, a.stats, (a.mean, a.cov)

    def s_sums(self, params: Params, kept: Any, t0: dict[int, Array]):
        """Pass B (`s_sum_pass`) for the posterior ``kept``."""
        return s_sum_pass(self.problem, params, *kept, t0, self.resid)

    def s_values(self, params: Params, kept: Any, cands: dict):
        """Pass C (`s_value_pass`) for the posterior ``kept``."""
        return s_value_pass(self.problem, params, *kept, cands, self.resid)


def s_steps_with(
    passes: Any,
    problem: EMProblem,
    floors: tuple[Array | None, ...],
    params: Params,
    kept: Any,
) -> Params:
    """The s-step of every output with a free scatter, for the posterior ``kept``
    of pass A and the new ``(W, b)`` in ``params`` (passes B and C of
    ``passes``)."""
    if not free_scatter(problem):
        return params
    host = passes.host
    t0 = host(s_start)(problem, floors, params)
    sums = passes.s_sums(params, kept, t0)
    cands = host(s_newton)(problem, floors, sums, t0)
    values = passes.s_values(params, kept, cands) if cands else {}
    return host(s_finish)(problem, floors, params, t0, sums, cands, values)


def sweep_with(
    passes: Any, problem: EMProblem, floors: tuple[Array | None, ...], params: Params
) -> tuple[Params, Array]:
    """One EM sweep over the data of ``passes``: the new parameters and the
    objective at the old ones."""
    host = passes.host
    nll, stats, kept = passes.posterior(params)
    loss = nll + host(neg_log_prior)(problem, params)
    new = host(m_solve)(problem, params, stats)
    return s_steps_with(passes, problem, floors, new, kept), loss


def floor_sums(problem: EMProblem) -> dict[int, tuple[Array, Array]]:
    """``(Σ y² + σ², observed count)`` of each output with a free scatter, summed
    over the stars: the data's part of `s_floor`."""
    free = free_scatter(problem)
    n, size = problem.blocks[0].values.shape[0], _chunk_size(problem)
    dtype = problem.blocks[0].values.dtype

    def body(start, valid, acc):
        sums = []
        for i in free:
            b = take_block(problem.blocks[i], start, size, valid)
            sums.append(
                (jnp.sum(jnp.square(b.y) + b.err2), jnp.sum(b.mask, dtype=dtype))
            )
        return acc.add(tuple(sums))

    zero = jnp.zeros((), dtype)
    init = Accumulator.zeros(tuple((zero, zero) for _ in free))
    totals = problem.sum_over_stars(fold_chunks(body, n, size, init).total)
    return dict(zip(free, totals, strict=True))


def floors_from_sums(
    problem: EMProblem, sums: dict[int, tuple[Array, Array]]
) -> tuple[Array | None, ...]:
    """`s_floor` of each output with a free scatter (None for the others)."""
    return tuple(
        s_floor_from_sums(*sums[i]) if i in sums else None
        for i in range(len(problem.specs))
    )


def scatter_floors(problem: Any) -> tuple[Array | None, ...]:
    """`s_floor` of each output with a free scatter (a constant of the data),
    from sums over the chunks of stars."""
    if not free_scatter(problem):
        return (None,) * len(problem.specs)
    return floors_from_sums(problem, floor_sums(problem))


def m_solve(problem: EMProblem, params: Params, stats) -> Params:
    """The M-step: new ``(W, b)`` of every output from its statistics."""
    out = []
    for spec, ridge, p, st in zip(
        problem.specs, problem.ridges, params, stats, strict=True
    ):
        W, b = solve_affine(spec, st, ridge, p["A"], p["b"])
        out.append(dict(p, A=W, b=b))
    return tuple(out)


def _sweep(
    problem: EMProblem, floors: tuple[Array | None, ...], params: Params
) -> tuple[Params, Array]:
    """One EM sweep over the blocks of ``problem``."""
    return sweep_with(InMemory(problem), problem, floors, params)


def em_iteration(problem: EMProblem, params: Params) -> tuple[Params, Array]:
    """One EM sweep: returns the new parameters and the objective at the old ones."""
    return _sweep(problem, scatter_floors(problem), params)


def sq_norm(tree: Any) -> Array:
    """Sum of the squares of every entry of a pytree."""
    return sum(jnp.sum(x**2) for x in jax.tree.leaves(tree))


def squarem_alpha(r_sq: Array, v_sq: Array) -> Array:
    """SQUAREM's step length ``α = -|r|/|v|``, at most -1 (-1 where ``v = 0``),
    from the squared norms of ``r = p1 - p0`` and ``v = p2 - 2p1 + p0``."""
    r_norm, v_norm = jnp.sqrt(r_sq), jnp.sqrt(v_sq)
    alpha = jnp.where(v_norm > 0, -r_norm / jnp.where(v_norm > 0, v_norm, 1.0), -1.0)
    return jnp.minimum(alpha, -1.0)


def squarem_step(p0: Any, p1: Any, p2: Any, alpha: Array) -> Any:
    """The extrapolated point ``p0 - 2αr + α²v`` of three successive iterates."""
    return jax.tree.map(
        lambda a, b, c: a - 2 * alpha * (b - a) + alpha**2 * (c - 2 * b + a), p0, p1, p2
    )


def squarem_point(p0: Any, p1: Any, p2: Any, sq: Any = sq_norm) -> Any:
    """SQUAREM's extrapolated point ``p0 - 2αr + α²v`` of three successive
    iterates (``r = p1 - p0``, ``v = p2 - 2p1 + p0``, `squarem_alpha`;
    ``sq(t)``: the squared norm of a difference of iterates)."""
    r = jax.tree.map(jnp.subtract, p1, p0)
    v = jax.tree.map(lambda a, b, c: a - 2 * b + c, p2, p1, p0)
    return squarem_step(p0, p1, p2, squarem_alpha(sq(r), sq(v)))


def positive_scatter(params: Params) -> Params:
    """Parameters with every extra scatter ``s`` made non-negative."""
    return tuple(
        {**q, SCATTER: jnp.abs(q[SCATTER])} if SCATTER in q else q for q in params
    )


def _select(pred: Array, a: Any, b: Any) -> Any:
    return jax.tree.map(lambda x, y: jnp.where(pred, x, y), a, b)


def squarem_cycle(
    sweep: Any, params: Params, *, traced: bool = True
) -> tuple[Params, Array]:
    """EM steps with a squared extrapolation (SQUAREM, Varadhan & Roland 2008).

    From ``p0``: ``p1 = M(p0)``, ``p2 = M(p1)``, ``r = p1 - p0``, ``v = p2 - 2 p1 + p0``
    and ``p' = p0 - 2αr + α²v`` with ``α = -|r|/|v|`` (at most -1). The cycle ends
    at ``M(p')`` when the objective at ``p'`` is no worse than at ``p1``, else at
    ``p2`` (plain EM); either way the objective never increases.

    ``sweep(params) -> (new, loss)`` is `M`. Traced, the three sweeps are one loop
    over a single traced sweep, whose input is ``p0``, ``p1`` or the extrapolated
    point; ``traced=False`` runs the same steps from the host (sweeps whose passes
    run elsewhere, e.g. on Dask workers).
    """

    def body(i, carry):
        p1, p2, p3, losses = carry
        extrap = positive_scatter(squarem_point(params, p1, p2))
        x = _select(i == 0, params, _select(i == 1, p1, extrap))
        new, loss = sweep(x)
        return (
            _select(i == 0, new, p1),
            _select(i == 1, new, p2),
            _select(i == 2, new, p3),
            losses.at[i].set(loss),
        )

    dtype = jax.tree.leaves(params)[0].dtype
    carry = (params, params, params, jnp.zeros(3, dtype))
    if traced:
        carry = jax.lax.fori_loop(0, 3, body, carry)
    else:
        for i in range(3):
            carry = body(i, carry)
    _, p2, p3, losses = carry
    ok = jnp.isfinite(losses[2]) & (losses[2] <= losses[1])
    return _select(ok, p3, p2), losses[0]


def run_until_settled(
    step: Any,
    state: Any,
    prev_loss: Array,
    threshold: Array,
    max_steps: Array,
    n_steps: int,
    *,
    traced: bool = True,
) -> tuple[Any, Float[Array, " n_steps"], Array, Array]:
    """``state, loss = step(state)`` in a ``while_loop`` until a step changes the
    objective by at most ``threshold`` or ``min(max_steps, n_steps)`` steps ran
    (``traced=False``: the same loop run from the host).

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
    if traced:
        n, state, losses, _, done = jax.lax.while_loop(cond, body, init)
    else:
        carry = init
        while bool(cond(carry)):
            carry = body(carry)
        n, state, losses, _, done = carry
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
    sweep = partial(_sweep, problem, scatter_floors(problem))
    return run_until_settled(
        partial(squarem_cycle, sweep) if accelerate else sweep,
        params,
        prev_loss,
        threshold,
        max_steps,
        n_steps,
    )


def row_covs(problem: EMProblem, stats, params: Params) -> tuple[Array, ...]:
    """`row_covariances` of every output from its M-step statistics."""
    return tuple(
        row_covariances(spec, st, ridge, p["A"])
        for spec, st, ridge, p in zip(
            problem.specs, stats, problem.ridges, params, strict=True
        )
    )


@jax.jit
def final_state(
    problem: EMProblem, params: Params
) -> tuple[PosteriorStats, Array, tuple[Array, ...]]:
    """Posterior and objective at the final parameters, and the covariance of
    each output's rows (`row_covariances`), from one pass over the data."""
    a = posterior_pass(problem, params)
    loss = a.nll + neg_log_prior(problem, params)
    return (
        PosteriorStats(a.mean, a.cov, a.nll),
        loss,
        row_covs(problem, a.stats, params),
    )


@jax.jit
def initialize(
    problem: EMProblem, params: Params, latents: Float[Array, "n k"]
) -> Params:
    """Start values of every output whose ``A`` is free: an unweighted regression
    on the given latents, then the scatter that its residuals call for."""
    a = posterior_pass(problem, params, latents=latents, unweighted=True)
    new = m_solve(problem, params, a.stats)
    new = s_steps_with(
        InMemory(problem), problem, scatter_floors(problem), new, (latents, None)
    )
    return tuple(
        q if spec.A_free else p
        for spec, p, q in zip(problem.specs, params, new, strict=True)
    )
