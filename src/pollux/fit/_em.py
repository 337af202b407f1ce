r"""Closed-form EM for outputs affine in the latents (heteroscedastic factor analysis).

One iteration, for parameters :math:`\theta = \{W_o, b_o, s_o\}`:

1. **E-step** — the exact Gaussian posterior :math:`(\mu_n, \Sigma_n)` of every star's
   latents (`latent_posterior`), which also yields the objective
   :math:`-\log p(y\mid\theta) - \log p(\theta)` at the current :math:`\theta`.
2. **M-step** for :math:`(W_o, b_o)` — for each output dimension :math:`d` a ridge
   solve with the expected sufficient statistics
   :math:`\sum_n \lambda_{nd} E[\tilde z_n \tilde z_n^\top]` (a :math:`(D{\times}N)
   \cdot (N{\times}K^2)` product) and :math:`\sum_n \lambda_{nd} y_{nd} E[\tilde z_n]`,
   :math:`\tilde z = (z, 1)`; a Normal(m, τ) prior adds :math:`1/τ^2` to the diagonal.
3. **s-step** — each extra scatter maximises, on :math:`t = s^2 \ge 0`,
   :math:`\sum_n m_{nd}[-\tfrac12\log(\sigma_{nd}^2+t) - \tfrac12 e_{nd}/(\sigma_{nd}^2+t)]
   + \log p(\sqrt t)` with :math:`e_{nd} = (y_{nd}-W_d\mu_n-b_d)^2 + W_d^\top\Sigma_n W_d`,
   by a Newton step kept only where it improves it, else the (monotone) EM update
   that treats the extra scatter as a latent offset.

Every step maximises the expected complete-data log posterior given the previous
steps, so the objective never increases (generalised EM).
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from jaxtyping import Array, Float

from ._blocks import Block, gaussian_loglike
from ._posterior import PosteriorStats, latent_posterior, outer_rows, precisions

__all__ = ["OutputSpec", "em_chunk", "ridge_from_prior", "s_step"]


class OutputSpec(NamedTuple):
    """Static description of one output on the closed-form path."""

    has_b: bool
    A_free: bool
    b_free: bool
    s_kind: str  # "none", "scalar" or "vector"
    s_free: bool


def ridge_from_prior(
    prior: dist.Distribution, shape: tuple[int, ...], where: str
) -> tuple[Array, Array]:
    """``(loc, precision)`` arrays of ``shape`` for a Normal or flat prior.

    Raises a `ValueError` naming ``where`` for any other prior.
    """
    base = prior
    while isinstance(base, (dist.Independent, dist.ExpandedDistribution)):
        base = base.base_dist
    if isinstance(base, dist.Normal):
        loc = jnp.broadcast_to(base.loc, shape)
        prec = jnp.broadcast_to(1.0 / jnp.square(base.scale), shape)
        return loc, prec
    if isinstance(base, dist.ImproperUniform) and base.support is dist.constraints.real:
        return jnp.zeros(shape), jnp.zeros(shape)
    msg = (
        f"{where}: the closed-form fit supports Normal or ImproperUniform(real) "
        f"priors on transform parameters, got {type(base).__name__}. Use "
        "LuxModel.optimize (numpyro MAP) for this prior."
    )
    raise ValueError(msg)


def second_moments(
    mean: Float[Array, "n k"], cov: Float[Array, "n k k"] | None, with_one: bool
) -> tuple[Float[Array, "n kt"], Float[Array, "n kt kt"]]:
    """``E[z̃]`` and ``E[z̃ z̃ᵀ]`` with ``z̃ = (z, 1)`` when ``with_one``."""
    second = mean[:, :, None] * mean[:, None, :]
    if cov is not None:
        second = second + cov
    if not with_one:
        return mean, second
    n = mean.shape[0]
    ones = jnp.ones((n, 1), mean.dtype)
    first = jnp.concatenate([mean, ones], axis=1)
    top = jnp.concatenate([second, mean[:, :, None]], axis=2)
    bottom = jnp.concatenate([mean, ones], axis=1)[:, None, :]
    return first, jnp.concatenate([top, bottom], axis=1)


def _ridge_solve(G: Array, c: Array) -> Array:
    """Batched SPD solve ``G x = c`` (``c``: vectors or matrices), with a negligible
    jitter for rows that no data constrain."""
    k = G.shape[-1]
    scale = jnp.trace(G, axis1=-2, axis2=-1)[:, None, None] / k
    jitter = jnp.finfo(G.dtype).eps * (scale + 1.0) * jnp.eye(k, dtype=G.dtype)
    L = jnp.linalg.cholesky(G + jitter)
    vectors = c.ndim == G.ndim - 1
    x = jax.scipy.linalg.cho_solve((L, True), c[..., None] if vectors else c)
    return x[..., 0] if vectors else x


def _normal_equations(
    spec: OutputSpec,
    block: Block,
    lam: Float[Array, "n d"],
    mean: Float[Array, "n k"],
    cov: Float[Array, "n k k"] | None,
    b: Float[Array, " d"],
    ridge: dict[str, tuple[Array, Array]],
) -> tuple[Array, Array]:
    """``(G, c)`` of the row-wise ridge solves ``G_d w̃_d = c_d`` for free ``A``
    (and ``b`` when it is free); ``G_d⁻¹`` is the conditional covariance of row d."""
    n = mean.shape[0]
    d = lam.shape[1]
    solve_b = spec.has_b and spec.b_free
    first, second = second_moments(mean, cov, with_one=solve_b)
    kt = first.shape[1]
    y = block.y if solve_b else jnp.where(block.mask, block.y - b, 0.0)
    G = (lam.T @ second.reshape(n, kt * kt)).reshape(d, kt, kt)
    c = (lam * y).T @ first
    A_loc, A_prec = ridge["A"]
    if solve_b:
        b_loc, b_prec = ridge["b"]
        prec = jnp.concatenate([A_prec, b_prec[:, None]], axis=1)
        loc = jnp.concatenate([A_loc, b_loc[:, None]], axis=1)
    else:
        prec, loc = A_prec, A_loc
    return G + jax.vmap(jnp.diag)(prec), c + prec * loc


def m_step_affine(
    spec: OutputSpec,
    block: Block,
    lam: Float[Array, "n d"],
    mean: Float[Array, "n k"],
    cov: Float[Array, "n k k"] | None,
    W: Float[Array, "d k"],
    b: Float[Array, " d"],
    ridge: dict[str, tuple[Array, Array]],
) -> tuple[Array, Array]:
    """Maximise the expected log posterior over ``W`` and/or ``b`` (others fixed)."""
    k = mean.shape[1]
    solve_b = spec.has_b and spec.b_free
    if spec.A_free:
        sol = _ridge_solve(*_normal_equations(spec, block, lam, mean, cov, b, ridge))
        return (sol[:, :k], sol[:, k]) if solve_b else (sol, b)
    if solve_b:
        b_loc, b_prec = ridge["b"]
        r = jnp.where(block.mask, block.y - mean @ W.T, 0.0)
        b = (jnp.sum(lam * r, axis=0) + b_prec * b_loc) / (
            jnp.sum(lam, axis=0) + b_prec
        )
    return W, b


@partial(jax.jit, static_argnames=("spec",))
def row_covariances(
    spec: OutputSpec,
    block: Block,
    params: dict[str, Array],
    mean: Float[Array, "n k"],
    cov: Float[Array, "n k k"] | None,
    ridge: dict[str, tuple[Array, Array]],
) -> Float[Array, "d kt kt"]:
    """Covariance of each row ``(W_d, b_d)`` of the free parameters given the latent
    posterior (zero for fixed ones): the inverse of the M-step's normal matrix.

    Shape ``(d, k+1, k+1)`` when the output has an offset ``b``, else ``(d, k, k)``.
    """
    k = mean.shape[1]
    d = params["A"].shape[0]
    kt = k + 1 if spec.has_b else k
    lam = precisions(block, _s2(spec, params))
    out = jnp.zeros((d, kt, kt), mean.dtype)
    if spec.A_free:
        G, _ = _normal_equations(spec, block, lam, mean, cov, params["b"], ridge)
        m = G.shape[-1]
        C = _ridge_solve(G, jnp.broadcast_to(jnp.eye(m, dtype=G.dtype), G.shape))
        return out.at[:, :m, :m].set(C)
    if spec.has_b and spec.b_free:
        b_prec = ridge["b"][1]
        return out.at[:, k, k].set(1.0 / (jnp.sum(lam, axis=0) + b_prec))
    return out


def _expected_sq_resid(
    block: Block,
    mean: Float[Array, "n k"],
    cov: Float[Array, "n k k"] | None,
    W: Float[Array, "d k"],
    b: Float[Array, " d"],
) -> Float[Array, "n d"]:
    r = jnp.where(block.mask, block.y - mean @ W.T - b, 0.0)
    e = r**2
    if cov is not None:
        n = mean.shape[0]
        e = e + cov.reshape(n, -1) @ outer_rows(W).T
    return jnp.where(block.mask, e, 0.0)


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


def _neg_log_prior(
    specs: tuple[OutputSpec, ...], params: tuple[dict, ...], priors: tuple[dict, ...]
) -> Array:
    total = jnp.zeros(())
    for spec, p, pr in zip(specs, params, priors, strict=True):
        free = [("A", spec.A_free), ("b", spec.has_b and spec.b_free)]
        free.append(("s", spec.s_kind != "none" and spec.s_free))
        for name, is_free in free:
            if is_free:
                total = total - jnp.sum(pr[name].log_prob(p[name]))
    return total


def _s2(spec: OutputSpec, p: dict) -> Array:
    return jnp.square(p["s"]) if spec.s_kind != "none" else jnp.zeros(())


def evaluate(
    specs: tuple[OutputSpec, ...],
    params: tuple[dict, ...],
    blocks: tuple[Block, ...],
    fixed_latents: Array | None,
) -> tuple[PosteriorStats, Array]:
    """Latent posterior (or the fixed latents) and the data term of the objective."""
    if fixed_latents is None:
        post = latent_posterior(
            blocks,
            tuple(p["A"] for p in params),
            tuple(p["b"] for p in params),
            tuple(_s2(spec, p) for spec, p in zip(specs, params, strict=True)),
        )
        return post, post.neg_log_marginal
    nll = jnp.zeros(())
    for spec, p, block in zip(specs, params, blocks, strict=True):
        pred = fixed_latents @ p["A"].T + p["b"]
        s = p["s"] if spec.s_kind != "none" else None
        nll = nll - gaussian_loglike(block, pred, s)
    return PosteriorStats(fixed_latents, None, nll), nll


def _update_output(spec, block, lam, mean, cov, p, priors, ridge):
    """New ``(W, b)`` for weights ``lam``, then the s-step, for one output."""
    W, b = m_step_affine(spec, block, lam, mean, cov, p["A"], p["b"], ridge)
    q = dict(p, A=W, b=b)
    if spec.s_kind != "none" and spec.s_free:
        e = _expected_sq_resid(block, mean, cov, W, b)
        q["s"] = s_step(block, e, p["s"], priors["s"], scalar=spec.s_kind == "scalar")
    return q


def _m_steps(specs, params, post, blocks, priors, ridges):
    """M-step for ``(W, b)`` then the s-step, for every output."""
    return tuple(
        _update_output(
            spec,
            block,
            precisions(block, _s2(spec, p)),
            post.mean,
            post.cov,
            p,
            pr,
            ridge,
        )
        for spec, p, block, pr, ridge in zip(
            specs, params, blocks, priors, ridges, strict=True
        )
    )


def _objective(specs, params, blocks, priors, fixed_latents):
    post, nll = evaluate(specs, params, blocks, fixed_latents)
    return post, nll + _neg_log_prior(specs, params, priors)


def em_iteration(specs, params, blocks, priors, ridges, fixed_latents):
    """One EM sweep: returns the new parameters and the objective at the old ones."""
    post, loss = _objective(specs, params, blocks, priors, fixed_latents)
    return _m_steps(specs, params, post, blocks, priors, ridges), loss


def _squarem_cycle(specs, params, blocks, priors, ridges, fixed_latents):
    """EM steps with a squared extrapolation (SQUAREM, Varadhan & Roland 2008).

    From ``p0``: ``p1 = M(p0)``, ``p2 = M(p1)``, ``r = p1 - p0``, ``v = p2 - 2 p1 + p0``
    and ``p' = p0 - 2αr + α²v`` with ``α = -|r|/|v|`` (at most -1). The cycle ends
    at ``M(p')`` when the objective at ``p'`` is no worse than at ``p1``, else at
    ``p2`` (plain EM); either way the objective never increases.
    """
    step = partial(
        em_iteration,
        specs,
        blocks=blocks,
        priors=priors,
        ridges=ridges,
        fixed_latents=fixed_latents,
    )
    p1, loss0 = step(params=params)
    p2, loss1 = step(params=p1)
    r = jax.tree.map(jnp.subtract, p1, params)
    v = jax.tree.map(lambda a, b_, c: a - 2 * b_ + c, p2, p1, params)
    norm = lambda t: jnp.sqrt(sum(jnp.sum(x**2) for x in jax.tree.leaves(t)))
    r_norm, v_norm = norm(r), norm(v)
    alpha = jnp.where(v_norm > 0, -r_norm / jnp.where(v_norm > 0, v_norm, 1.0), -1.0)
    alpha = jnp.minimum(alpha, -1.0)
    extrap = jax.tree.map(
        lambda p0, ri, vi: p0 - 2 * alpha * ri + alpha**2 * vi, params, r, v
    )
    extrap = tuple(dict(q, s=jnp.abs(q["s"])) if "s" in q else q for q in extrap)
    post_ext, loss_ext = _objective(specs, extrap, blocks, priors, fixed_latents)
    ok = jnp.isfinite(loss_ext) & (loss_ext <= loss1)
    from_ext = _m_steps(specs, extrap, post_ext, blocks, priors, ridges)
    # Both candidates are computed and one selected: a lax.cond here (nested in
    # em_chunk's while_loop) was seen to deadlock XLA:CPU now and then (jax 0.10.2).
    new = jax.tree.map(lambda a, b_: jnp.where(ok, a, b_), from_ext, p2)
    return new, loss0


@partial(jax.jit, static_argnames=("specs", "n_steps", "accelerate"))
def em_chunk(
    specs: tuple[OutputSpec, ...],
    params: tuple[dict, ...],
    blocks: tuple[Block, ...],
    priors: tuple[dict, ...],
    ridges: tuple[dict, ...],
    fixed_latents: Array | None,
    prev_loss: Array,
    threshold: Array,
    max_steps: Array,
    n_steps: int,
    accelerate: bool = False,
) -> tuple[tuple[dict, ...], Array, Array, Array]:
    """Up to ``min(max_steps, n_steps)`` EM iterations (or SQUAREM cycles) in one
    compiled loop (``n_steps`` is the static buffer length).

    Stops early once an iteration changes the objective by at most ``threshold``.
    Returns the parameters, the objective at the start of each iteration (NaN past
    the last), the number of iterations run and whether it converged.
    """
    iteration = _squarem_cycle if accelerate else em_iteration
    losses0 = jnp.full((n_steps,), jnp.nan, dtype=prev_loss.dtype)

    def cond(state):
        i, _, _, _last, done = state
        return (i < jnp.minimum(max_steps, n_steps)) & ~done

    def body(state):
        i, p, losses, last, _ = state
        new, loss = iteration(specs, p, blocks, priors, ridges, fixed_latents)
        done = jnp.abs(last - loss) <= threshold
        return i + 1, new, losses.at[i].set(loss), loss, done

    init = (0, params, losses0, prev_loss, jnp.asarray(False))
    n, params, losses, _, done = jax.lax.while_loop(cond, body, init)
    return params, losses, n, done


@partial(jax.jit, static_argnames=("specs",))
def final_state(
    specs: tuple[OutputSpec, ...],
    params: tuple[dict, ...],
    blocks: tuple[Block, ...],
    priors: tuple[dict, ...],
    fixed_latents: Array | None,
) -> tuple[PosteriorStats, Array]:
    """Posterior and objective at the final parameters."""
    return _objective(specs, params, blocks, priors, fixed_latents)


@partial(jax.jit, static_argnames=("specs",))
def initialize(
    specs: tuple[OutputSpec, ...],
    params: tuple[dict, ...],
    blocks: tuple[Block, ...],
    priors: tuple[dict, ...],
    ridges: tuple[dict, ...],
    latents: Float[Array, "n k"],
) -> tuple[dict, ...]:
    """Start values of every output whose ``A`` is free: an unweighted regression
    on the given latents, then the scatter that its residuals call for."""
    return tuple(
        _update_output(
            spec, block, block.mask.astype(block.y.dtype), latents, None, p, pr, ridge
        )
        if spec.A_free
        else p
        for spec, block, p, pr, ridge in zip(
            specs, blocks, params, priors, ridges, strict=True
        )
    )
