r"""Variational EM for outputs polynomial (at most quadratic) in the latents.

Each output is linear in the features :math:`\phi(z)` with weights :math:`\theta_d`
(`features`); each star's latents get a Gaussian :math:`q_n = N(\mu_n, \Sigma_n)`.
One sweep raises the evidence lower bound :math:`\sum_n \mathcal{L}_n` plus the log
prior of the parameters three times, so the objective (its negative) never increases:

1. **E-step** — natural-gradient updates of every :math:`q_n` (`e_step`), each kept
   only where it raises :math:`\mathcal{L}_n`;
2. **M-step** — row-wise ridge solves on the expected features,
   :math:`\big(\sum_n \lambda_{nd} E[\phi_n\phi_n^\top] + T_d\big)\theta_d
   = \sum_n \lambda_{nd} y_{nd} E[\phi_n] + T_d m_d` (one
   :math:`(D{\times}N)\cdot(N{\times}M^2)` product per output);
3. **s-step** — each free extra scatter (the s-step of `pollux.core.em`) with the
   expected squared residual
   :math:`(y - \theta^\top E\phi)^2 + \theta^\top\operatorname{cov}(\phi)\theta`.

With latents held fixed the E-step is skipped and the objective is the negative log
likelihood plus the negative log prior.

As in `pollux.core.em`, the data are read ``problem.chunk_size`` stars at a time
(`pollux.core.chunks`): pass A runs each chunk's E-step and adds its share of the
objective and of the M-step sums, the s-step's passes recompute the chunk's
expected residuals with the new weights, so nothing of size :math:`(N, D)` is kept
beyond the data. Under `jax.shard_map` (``axis_name``) every sum over stars is also
summed over the devices, and SQUAREM's step length sees every device's stars.
"""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._params import SCATTER
from .blocks import Block, gaussian_loglike
from .chunks import Accumulator, fold_chunks, put_rows, take_block, take_rows
from .em import (
    InMemory,
    positive_scatter,
    run_until_settled,
    s_steps_with,
    scatter_floors,
    sq_norm,
    squarem_alpha,
    squarem_step,
)
from .features import (
    feature_index,
    moments,
    outer_packed,
    qab_from_theta,
    sym_pack,
    sym_unpack,
)
from .linalg import cholesky, inverse_from_cholesky
from .mstep import ridge_inverse, ridge_solve
from .posterior import precisions
from .variational import e_step, star_stats

__all__ = [
    "FeatureSpec",
    "InMemoryV",
    "VEMProblem",
    "VState",
    "diff_sq",
    "extrapolated_stars",
    "final_with",
    "named_params",
    "row_covs",
    "squarem_cycle_with",
    "squarem_sweeps",
    "sweep_with",
    "vem_chunk",
    "vem_final",
]

THETA = "theta"
Params = tuple[dict[str, Array], ...]


class FeatureSpec(NamedTuple):
    """Static description of one output: its features and which parameters are free."""

    kind: str  # "linear", "affine" or "quadratic"
    free: bool  # whether the feature weights are fitted
    s_kind: str  # "none", "scalar" or "vector"
    s_free: bool

    @property
    def has_s(self) -> bool:
        return self.s_kind != "none"


class VEMProblem(eqx.Module):
    """Data and fixed ingredients of a variational EM fit, one entry per output.

    ``ridges`` are ``(loc, precision)`` of the Normal priors on each free output's
    feature weights (`theta_ridge`); ``priors`` the distributions of the named
    parameters (``Q``, ``A``, ``b``, ``s``) whose log density enters the objective.
    """

    specs: tuple[FeatureSpec, ...] = eqx.field(static=True)
    k: int = eqx.field(static=True)
    blocks: tuple[Block, ...]
    priors: tuple[dict[str, Any], ...]
    ridges: tuple[tuple[Array, Array] | None, ...]
    fixed_latents: Float[Array, "n k"] | None = None
    chunk_size: int | None = eqx.field(static=True, default=None)
    axis_name: str | None = eqx.field(static=True, default=None)

    def sum_over_stars(self, x: Any) -> Any:
        """``x`` (sums over this problem's stars) summed over the shards of
        ``axis_name`` too (as `EMProblem.sum_over_stars`)."""
        return x if self.axis_name is None else jax.lax.psum(x, self.axis_name)

    def index(self) -> tuple[np.ndarray, ...]:
        return tuple(feature_index(s.kind, self.k) for s in self.specs)


def named_params(kind: str, theta: Array, k: int) -> dict[str, Array]:
    """``Q``/``A``/``b`` of feature weights (the transform's own parameter names)."""
    if kind == "quadratic":
        Q, A, b = qab_from_theta(theta, k)
        return {"Q": Q, "A": A, "b": b}
    if kind == "affine":
        return {"A": theta[:, :k], "b": theta[:, k]}
    return {"A": theta}


def _s2(spec: FeatureSpec, p: dict[str, Array]) -> Array:
    return jnp.square(p[SCATTER]) if spec.has_s else jnp.zeros(())


def _neg_log_prior(problem: VEMProblem, params: Params) -> Array:
    total = jnp.zeros(())
    for spec, p, pr in zip(problem.specs, params, problem.priors, strict=True):
        if spec.free:
            for name, value in named_params(spec.kind, p[THETA], problem.k).items():
                total = total - jnp.sum(pr[name].log_prob(value))
        if spec.has_s and spec.s_free:
            total = total - jnp.sum(pr[SCATTER].log_prob(p[SCATTER]))
    return total


def _feature_moments(mean: Array, cov: Array | None) -> tuple[Array, Any, Array]:
    """``E[φ]``, ``cov(φ)`` (None at a point) and ``E[φφᵀ]``."""
    Ephi, cov_phi = moments(mean, cov)
    second = Ephi[:, :, None] * Ephi[:, None, :]
    return Ephi, cov_phi, second if cov_phi is None else second + cov_phi


def _chunk_size(problem: VEMProblem) -> int:
    n = problem.blocks[0].values.shape[0]
    return n if problem.chunk_size is None else min(problem.chunk_size, n)


def _thetas(params: Params) -> tuple[Array, ...]:
    return tuple(p[THETA] for p in params)


def _s2s(problem: VEMProblem, params: Params) -> tuple[Array, ...]:
    return tuple(_s2(s, p) for s, p in zip(problem.specs, params, strict=True))


def _normal_sums(
    problem: VEMProblem, chunk: tuple[Block, ...], s2s, Ephi: Array, second: Array
) -> tuple[tuple[Array, ...], ...]:
    """The M-step's sums over these stars for each free output: ``Σ_n λ_nd
    E[φφᵀ]_n`` on its packed feature pairs (one ``(D×C)·(C×T)`` product) and
    ``Σ_n λ_nd y_nd E[φ]_n``; ``()`` for an output held fixed."""
    out = []
    for spec, block, idx, s2 in zip(
        problem.specs, chunk, problem.index(), s2s, strict=True
    ):
        if not spec.free:
            out.append(())
            continue
        lam = precisions(block, s2)
        S = sym_pack(second[:, idx[:, None], idx[None, :]])
        out.append((lam.T @ S, (lam * block.y).T @ Ephi[:, idx]))
    return tuple(out)


class PassA(NamedTuple):
    """The E-step over every chunk of stars: the new posteriors, the objective's
    data term at the sweep's parameters and the M-step's sums (`_normal_sums`)."""

    mean: Float[Array, "n k"]
    prec: Float[Array, "n k k"]
    cov: Float[Array, "n k k"] | None
    nll: Array
    sums: tuple[tuple[Array, ...], ...]


def _posterior_pass(problem: VEMProblem, state: VState, n_inner: int) -> PassA:
    r"""Pass A over the chunks of ``problem.chunk_size`` stars: each chunk's
    `star_stats`, ``n_inner`` E-step updates of its posteriors (none with fixed
    latents) and its share of the objective and of the M-step sums; the sums are
    Kahan-compensated across chunks and, sharded, summed over the devices."""
    params = state.params
    blocks, z = problem.blocks, problem.fixed_latents
    n, size = blocks[0].values.shape[0], _chunk_size(problem)
    dtype = blocks[0].values.dtype
    thetas, s2s = _thetas(params), _s2s(problem, params)

    def body(start, valid, carry):
        mean_all, prec_all, cov_all, acc = carry
        chunk = tuple(take_block(b, start, size, valid) for b in blocks)
        if z is None:
            stats = star_stats(chunk, thetas, problem.index(), s2s, problem.k)
            mean, prec, nelbo = e_step(
                stats,
                take_rows(mean_all, start, size),
                take_rows(prec_all, start, size),
                n_inner,
            )
            cov = inverse_from_cholesky(cholesky(prec))
            nll = jnp.sum(jnp.where(valid, nelbo, 0.0))
            mean_all = put_rows(mean_all, mean, start, valid)
            prec_all = put_rows(prec_all, prec, start, valid)
            cov_all = put_rows(cov_all, cov, start, valid)
        else:
            mean, cov = take_rows(z, start, size), None
            nll = _fixed_nll(problem, chunk, mean, params)
        Ephi, _, second = _feature_moments(mean, cov)
        sums = _normal_sums(problem, chunk, s2s, Ephi, second)
        return mean_all, prec_all, cov_all, acc.add((nll, sums))

    k = problem.k
    zero = jnp.zeros((), dtype)
    sums0 = tuple(
        (
            jnp.zeros((t.shape[0], len(idx) * (len(idx) + 1) // 2), dtype),
            jnp.zeros(t.shape, dtype),
        )
        if spec.free
        else ()
        for spec, t, idx in zip(problem.specs, thetas, problem.index(), strict=True)
    )
    cov0 = None if z is not None else jnp.zeros((n, k, k), dtype)
    init = (state.mean, state.prec, cov0, Accumulator.zeros((zero, sums0)))
    mean, prec, cov, acc = fold_chunks(body, n, size, init)
    nll, sums = problem.sum_over_stars(acc.total)
    if z is not None:
        return PassA(z, state.prec, None, nll, sums)
    return PassA(mean, prec, cov, nll, sums)


def _normal_matrices(problem: VEMProblem, sums) -> tuple[Array | None, ...]:
    """``Σ_n λ_nd E[φφᵀ]_n + diag(prec_d)`` of each free output (the M-step's
    left-hand sides; None where fixed)."""
    return tuple(
        sym_unpack(st[0], len(idx)) + jax.vmap(jnp.diag)(ridge[1])
        if spec.free
        else None
        for spec, st, idx, ridge in zip(
            problem.specs, sums, problem.index(), problem.ridges, strict=True
        )
    )


def _solve(problem: VEMProblem, params: Params, sums) -> Params:
    """The M-step: ridge solves for the free feature weights."""
    new = []
    for spec, p, st, G, ridge in zip(
        problem.specs,
        params,
        sums,
        _normal_matrices(problem, sums),
        problem.ridges,
        strict=True,
    ):
        if spec.free:
            loc, prec = ridge
            p = dict(p, **{THETA: ridge_solve(G, st[1] + prec * loc)})
        new.append(p)
    return tuple(new)


def _resid(problem: VEMProblem, i: int, block: Block, mean, cov, p) -> Array:
    r"""Expected squared residuals of output ``i`` under ``q``:
    :math:`(y - \theta^\top E\phi)^2 + \theta^\top\operatorname{cov}(\phi)\theta`
    (zero where missing)."""
    idx = problem.index()[i]
    theta = p[THETA]
    Ephi, cov_phi = moments(mean, cov)
    e = jnp.square(block.y - Ephi[:, idx] @ theta.T)
    if cov_phi is not None:
        C = sym_pack(cov_phi[:, idx[:, None], idx[None, :]], doubled=True)
        e = e + C @ outer_packed(theta).T
    return jnp.where(block.mask, e, 0.0)


def _fixed_nll(problem: VEMProblem, chunk, z: Array, params: Params) -> Array:
    Ephi, _ = moments(z, None)
    nll = jnp.zeros(())
    for spec, block, idx, p in zip(
        problem.specs, chunk, problem.index(), params, strict=True
    ):
        pred = Ephi[:, idx] @ p[THETA].T
        nll = nll - gaussian_loglike(block, pred, p[SCATTER] if spec.has_s else None)
    return nll


class VState(NamedTuple):
    params: Params
    mean: Float[Array, "n k"]
    prec: Float[Array, "n k k"]


class InMemoryV(NamedTuple):
    """The passes of a variational sweep over the blocks of ``problem`` (inside a
    compiled program), and the per-star steps of SQUAREM. Another source of
    passes — Dask chunks on workers (`pollux.fit.backends`), which keep the
    posteriors of their stars — provides the same methods and a ``host`` that
    compiles the small steps run between them. ``stars`` are the per-star part
    of the state, here ``(mean, prec)``."""

    problem: VEMProblem

    @staticmethod
    def host(fn: Any) -> Any:
        """The steps between passes: traced into the surrounding program."""
        return fn

    def posterior(self, params: Params, stars: Any, n_inner: int):
        """Pass A (`_posterior_pass`): the objective's data term, the M-step
        sums, the new ``stars`` and what the s-step passes read, ``(mean, cov)``."""
        a = _posterior_pass(self.problem, VState(params, *stars), n_inner)
        return a.nll, a.sums, (a.mean, a.prec), (a.mean, a.cov)

    def s_sums(self, params: Params, kept: Any, t0: dict):
        return InMemory(self.problem, _resid).s_sums(params, kept, t0)

    def s_values(self, params: Params, kept: Any, cands: dict):
        return InMemory(self.problem, _resid).s_values(params, kept, cands)

    def star_sq(self, t0: Any, t1: Any, t2: Any) -> tuple[Array, Array]:
        """`diff_sq` of three ``stars``, summed over the devices."""
        return self.problem.sum_over_stars(diff_sq(t0, t1, t2))

    def extrapolate(self, t0: Any, t1: Any, t2: Any, alpha: Array) -> Any:
        return extrapolated_stars(t0, t1, t2, alpha)

    @staticmethod
    def select(ok: Array, a: Any, b: Any) -> Any:
        return jax.tree.map(lambda x, y: jnp.where(ok, x, y), a, b)

    @staticmethod
    def squarem_sweeps(sweep: Any, extrapolate: Any, x0: Any) -> tuple[tuple, tuple]:
        """`squarem_sweeps` with the sweep traced once, in a loop of three
        (compiles in about a third of the time of three traced sweeps)."""

        def step(carry, i):
            x, x1 = carry  # the last iterate, and x1 once swept
            x_in = jax.lax.cond(i == 2, lambda: extrapolate(x0, x1, x), lambda: x)
            out, loss = sweep(x_in)
            x1 = jax.tree.map(lambda a, b: jnp.where(i == 0, a, b), out, x1)
            return (out, x1), (out, loss)

        _, (outs, losses) = jax.lax.scan(step, (x0, x0), jnp.arange(3))
        xs = tuple(jax.tree.map(lambda a, j=j: a[j], outs) for j in range(3))
        return xs, (losses[0], losses[1], losses[2])


def diff_sq(t0: Any, t1: Any, t2: Any) -> tuple[Array, Array]:
    """``(|r|², |v|²)``: the squared norms of SQUAREM's differences ``r = t1 -
    t0`` and ``v = t2 - 2 t1 + t0`` of three successive iterates."""
    r = jax.tree.map(jnp.subtract, t1, t0)
    v = jax.tree.map(lambda a, b, c: a - 2 * b + c, t2, t1, t0)
    return sq_norm(r), sq_norm(v)


def extrapolated_stars(t0: Any, t1: Any, t2: Any, alpha: Array) -> Any:
    """SQUAREM's extrapolated ``(mean, prec)`` of every star (`squarem_step`);
    a star whose extrapolated precision is not positive definite keeps its
    posterior of ``t2``."""
    mean, prec = squarem_step(t0, t1, t2, alpha)
    L = cholesky(prec)
    pd = jnp.all(jnp.isfinite(L), axis=(1, 2)) & jnp.all(jnp.isfinite(mean), axis=1)
    return (
        jnp.where(pd[:, None], mean, t2[0]),
        jnp.where(pd[:, None, None], prec, t2[1]),
    )


def sweep_with(
    passes: Any,
    problem: VEMProblem,
    floors: tuple,
    params: Params,
    stars: Any,
    n_inner: int,
) -> tuple[Params, Any, Array]:
    """One sweep (E-step, M-step, s-step) over the data of ``passes``: the new
    parameters and stars, and the objective after the E-step. The s-step is
    that of `pollux.core.em`, with the residuals of `_resid`."""
    host = passes.host
    nll, sums, stars, kept = passes.posterior(params, stars, n_inner)
    loss = nll + host(_neg_log_prior)(problem, params)
    new = host(_solve)(problem, params, sums)
    return s_steps_with(passes, problem, floors, new, kept), stars, loss


def _extrapolated_params(p0, p1, p2, star_sq) -> tuple[Params, Array]:
    """SQUAREM's step length over the whole state (the parameters, the same on
    every device, and ``star_sq``, the stars' part) and the extrapolated
    parameters (scatter made non-negative)."""
    r_sq, v_sq = diff_sq(p0, p1, p2)
    alpha = squarem_alpha(r_sq + star_sq[0], v_sq + star_sq[1])
    return positive_scatter(squarem_step(p0, p1, p2, alpha)), alpha


def _accepted(loss_ext: Array, loss1: Array) -> Array:
    return jnp.isfinite(loss_ext) & (loss_ext <= loss1)


def squarem_sweeps(sweep: Any, extrapolate: Any, x0: Any) -> tuple[tuple, tuple]:
    """SQUAREM's three sweeps one after the other: ``x1 = sweep(x0)``, ``x2 =
    sweep(x1)``, ``x3 = sweep(extrapolate(x0, x1, x2))``; returns ``(x1, x2, x3)``
    and the objective of each sweep. The passes' own method may run them
    otherwise (`InMemoryV.squarem_sweeps`: one traced sweep in a loop)."""
    x1, loss0 = sweep(x0)
    x2, loss1 = sweep(x1)
    x3, loss_ext = sweep(extrapolate(x0, x1, x2))
    return (x1, x2, x3), (loss0, loss1, loss_ext)


def squarem_cycle_with(
    passes: Any,
    problem: VEMProblem,
    floors: tuple,
    params: Params,
    stars: Any,
    n_inner: int,
) -> tuple[Params, Any, Array]:
    """Two sweeps and a squared extrapolation of the whole state (SQUAREM, as in
    `pollux.core.em`), then a sweep from the extrapolated state, kept when the
    objective after its E-step is no worse than after the second sweep's.

    Stars whose extrapolated precision is not positive definite keep the second
    sweep's posterior; the objective never increases.
    """
    host = passes.host

    def sweep(x):
        p, t, loss = sweep_with(passes, problem, floors, *x, n_inner)
        return (p, t), loss

    def extrapolate(x0, x1, x2):
        (p0, t0), (p1, t1), (p2, t2) = x0, x1, x2
        star_sq = passes.star_sq(t0, t1, t2)
        p_ext, alpha = host(_extrapolated_params)(p0, p1, p2, star_sq)
        return p_ext, passes.extrapolate(t0, t1, t2, alpha)

    (_, x2, x3), (loss0, loss1, loss_ext) = passes.squarem_sweeps(
        sweep, extrapolate, (params, stars)
    )
    ok = host(_accepted)(loss_ext, loss1)
    new_params, new_stars = passes.select(ok, x3, x2)
    return new_params, new_stars, loss0


def _in_memory(iteration: Any) -> Any:
    """``iteration`` (`sweep_with` or `squarem_cycle_with`) over the blocks of a
    problem, on a `VState`."""

    def run(
        problem: VEMProblem, floors: tuple, state: VState, n_inner: int
    ) -> tuple[VState, Array]:
        params, stars, loss = iteration(
            InMemoryV(problem), problem, floors, state.params, state[1:], n_inner
        )
        return VState(params, *stars), loss

    return run


_sweep = _in_memory(sweep_with)
_squarem_cycle = _in_memory(squarem_cycle_with)


@partial(jax.jit, static_argnames=("n_steps", "n_inner", "accelerate"))
def vem_chunk(
    problem: VEMProblem,
    state: VState,
    prev_loss: Array,
    threshold: Array,
    max_steps: Array,
    n_steps: int,
    n_inner: int,
    accelerate: bool = False,
) -> tuple[VState, Float[Array, " n_steps"], Array, Array]:
    """Up to ``min(max_steps, n_steps)`` sweeps (or SQUAREM cycles) in one compiled
    loop; stops once one changes the objective by at most ``threshold``. Same
    returns as `em_chunk` (state, objective of each, number run, converged)."""
    accelerate = accelerate and problem.fixed_latents is None
    iteration = _squarem_cycle if accelerate else _sweep
    floors = scatter_floors(problem)
    return run_until_settled(
        lambda st: iteration(problem, floors, st, n_inner),
        state,
        prev_loss,
        threshold,
        max_steps,
        n_steps,
    )


def row_covs(problem: VEMProblem, params: Params, sums) -> tuple[Array, ...]:
    """Each output's row covariances: the inverse normal matrices of the M-step
    (zero where fixed)."""
    out = []
    for G, p in zip(_normal_matrices(problem, sums), params, strict=True):
        if G is None:
            d, mo = p[THETA].shape
            out.append(jnp.zeros((d, mo, mo), p[THETA].dtype))
        else:
            out.append(ridge_inverse(G))
    return tuple(out)


def final_with(
    passes: Any, problem: VEMProblem, params: Params, stars: Any, n_inner: int
) -> tuple[Any, Array, tuple[Array, ...]]:
    """E-step at the final parameters over the data of ``passes``: the stars,
    the objective and the row covariances (`row_covs`)."""
    host = passes.host
    nll, sums, stars, _ = passes.posterior(params, stars, n_inner)
    loss = nll + host(_neg_log_prior)(problem, params)
    return stars, loss, host(row_covs)(problem, params, sums)


@partial(jax.jit, static_argnames=("n_inner",))
def vem_final(
    problem: VEMProblem, state: VState, n_inner: int
) -> tuple[VState, Array, tuple[Array, ...]]:
    """E-step at the final parameters: the state, the objective, and each output's
    row covariances (`row_covs`)."""
    stars, loss, covs = final_with(
        InMemoryV(problem), problem, state.params, state[1:], n_inner
    )
    return VState(state.params, *stars), loss, covs
