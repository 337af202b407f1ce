"""Variational EM against slow, obvious references: the evidence lower bound and the
M-step's normal matrices from a brute-force Isserlis expansion (loops over stars
and feature pairs), `scipy.stats` log densities, dense per-row ridge solves; and,
for outputs affine in the latents (a quadratic one with ``Q`` held at zero
included), the closed-form EM of `pollux.core.em`, whose posterior is exact."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
import pytest  # noqa: E402
from scipy import stats  # noqa: E402

from pollux.core import em, vem  # noqa: E402
from pollux.core.blocks import make_block  # noqa: E402
from pollux.core.features import theta_from_qab, theta_ridge  # noqa: E402
from pollux.core.posterior import posterior_moments  # noqa: E402
from pollux.core.problem import EMProblem, OutputSpec  # noqa: E402
from pollux.core.vem import THETA, FeatureSpec, VEMProblem, VState  # noqa: E402

EPS = np.finfo(np.float64).eps
# The s-step compares candidates by their objective values, so its result is
# determined only to ~sqrt(eps) relative (the objective is flat to second order at
# a maximiser), and two equal computations in another order can drift by that.
S_TOL = 10 * np.sqrt(EPS)
N, K = 24, 2
Q_SCALE, A_SCALE, B_SCALE = 0.5, 1.0, 2.0  # Normal prior scales
N_INNER = 3
N_STEPS = 400  # the static buffer length of every compiled loop here


# ----------------------------------------------------------------------------------
# References
# ----------------------------------------------------------------------------------
def _pairs(k):
    """Documented order of φ as index pairs into z̃ = (z, 1): z_i z_j (i ≤ j, row
    by row), z_i, 1."""
    quad = [(i, j) for i in range(k) for j in range(i, k)]
    return [*quad, *[(i, k) for i in range(k)], (k, k)]


def _phi(z):
    zt = np.c_[z, np.ones(len(z))]
    return np.stack([zt[:, a] * zt[:, b] for a, b in _pairs(z.shape[1])], axis=1)


INDEX = {  # positions in φ of the features of each kind (k = 2: 3 + 2 + 1)
    "quadratic": np.arange(6),
    "affine": np.arange(3, 6),
    "linear": np.arange(3, 5),
}


def _feature_moments(mean, cov):
    """E[φ] and E[φφᵀ] under N(mean, cov), by Isserlis' theorem term by term on
    z̃ = (z, 1) ~ N((mean, 1), cov ⊕ 0)."""
    k = len(mean)
    m = np.r_[mean, 1.0]
    S = np.zeros((k + 1, k + 1))
    S[:k, :k] = cov
    pairs = _pairs(k)
    E1 = np.array([m[a] * m[b] + S[a, b] for a, b in pairs])
    E2 = np.zeros((len(pairs), len(pairs)))
    for (i, (a, b)), (j, (c, d)) in itertools.product(enumerate(pairs), repeat=2):
        idx = (a, b, c, d)
        total = np.prod(m[list(idx)])
        for p, q in itertools.combinations(range(4), 2):  # one pair contracted
            rest = [idx[r] for r in range(4) if r not in (p, q)]
            total += S[idx[p], idx[q]] * m[rest[0]] * m[rest[1]]
        total += S[a, b] * S[c, d] + S[a, c] * S[b, d] + S[a, d] * S[b, c]
        E2[i, j] = total
    return E1, E2


def _named(kind, theta):
    """Q (symmetric), A, b of feature weights: θ_ii = Q_ii, θ_ij = 2 Q_ij."""
    if kind == "linear":
        return {"A": theta}
    if kind == "affine":
        return {"A": theta[:, :K], "b": theta[:, K]}
    d = theta.shape[0]
    Q = np.zeros((d, K, K))
    for col, (i, j) in enumerate(_pairs(K)[: K * (K + 1) // 2]):
        Q[:, i, j] = Q[:, j, i] = theta[:, col] if i == j else theta[:, col] / 2
    p = K * (K + 1) // 2
    return {"Q": Q, "A": theta[:, p : p + K], "b": theta[:, p + K]}


def _dense_neg_log_prior(case, params):
    scales = {"Q": Q_SCALE, "A": A_SCALE, "b": B_SCALE}
    total = 0.0
    for (kind, spec), p in zip(case.kinds, params, strict=True):
        if spec.free:
            for name, value in _named(kind, np.asarray(p[THETA])).items():
                total -= stats.norm.logpdf(value, 0.0, scales[name]).sum()
        if spec.has_s and spec.s_free:
            total -= stats.halfnorm.logpdf(np.asarray(p["s"]), scale=1.0).sum()
    return total


def _lam(case, params):
    """Per-entry precisions of each output, 0 where missing."""
    out = []
    for (y, err), (_, spec), p in zip(case.arrays, case.kinds, params, strict=True):
        s2 = np.square(np.asarray(p["s"])) if spec.has_s else 0.0
        m = ~np.isnan(y) & np.isfinite(err)
        out.append(np.where(m, 1.0 / np.where(m, err**2 + s2, 1.0), 0.0))
    return out


def _dense_neg_elbo(case, params, mean, cov):
    """-Σ_n 𝓛_n: E_q[-log p(y_n | z)] from the feature moments, plus KL(q ‖ N(0, I))."""
    total = 0.0
    lams = _lam(case, params)
    for n in range(N):
        E1, E2 = _feature_moments(mean[n], cov[n])
        C = E2 - np.outer(E1, E1)
        for (y, _), (kind, _), p, lam in zip(
            case.arrays, case.kinds, params, lams, strict=True
        ):
            idx = INDEX[kind]
            theta = np.asarray(p[THETA])
            for d in np.flatnonzero(lam[n] > 0):
                w = theta[d]
                e = (y[n, d] - w @ E1[idx]) ** 2 + w @ C[np.ix_(idx, idx)] @ w
                total += 0.5 * lam[n, d] * e + 0.5 * np.log(2 * np.pi / lam[n, d])
        _, logdet = np.linalg.slogdet(cov[n])
        total += 0.5 * (np.trace(cov[n]) + mean[n] @ mean[n] - K - logdet)
    return total


def _dense_normal_matrices(case, params, mean, cov):
    """G_d = Σ_n λ_nd E[φφᵀ]_n + diag(prec_d) of each free output, by loops."""
    lams = _lam(case, params)
    moments = [_feature_moments(mean[n], cov[n])[1] for n in range(N)]
    out = []
    for (kind, spec), lam, ridge in zip(case.kinds, lams, case.ridges, strict=True):
        if not spec.free:
            out.append(None)
            continue
        idx = INDEX[kind]
        G = np.stack([np.diag(np.asarray(ridge[1])[d]) for d in range(lam.shape[1])])
        for n in range(N):
            G += lam[n][:, None, None] * moments[n][np.ix_(idx, idx)][None]
        out.append(G)
    return out


# ----------------------------------------------------------------------------------
# Problems
# ----------------------------------------------------------------------------------
_theta_ridge = jax.jit(theta_ridge)  # one program, not many eager operations


def _ridge(kind, d):
    A = (jnp.zeros((d, K)), jnp.full((d, K), A_SCALE**-2))
    b = (jnp.zeros(d), jnp.full(d, B_SCALE**-2))
    if kind == "quadratic":
        Q = (jnp.zeros((d, K, K)), jnp.full((d, K, K), Q_SCALE**-2))
        return _theta_ridge(Q, A, b)
    if kind == "affine":
        return tuple(
            jnp.concatenate([a, c[:, None]], 1) for a, c in zip(A, b, strict=True)
        )
    return A


def _priors(kind, d, spec):
    pr = {"A": dist.Normal(0.0, A_SCALE).expand((d, K))}
    if kind != "linear":
        pr["b"] = dist.Normal(0.0, B_SCALE).expand((d,))
    if kind == "quadratic":
        pr["Q"] = dist.Normal(0.0, Q_SCALE).expand((d, K, K))
    if spec.has_s:
        pr["s"] = dist.HalfNormal(1.0)
    return pr


def _case(outputs, seed=0, fixed_latents=False):
    """``outputs``: (kind, spec, rows, true Q scale) of each output. Simulated from
    the true weights; starts at those weights shrunk and perturbed, unit scatter,
    and q = N(z_true + noise, I/4)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(N, K))
    phi = _phi(z)
    arrays, blocks, priors, ridges, params, kinds = [], [], [], [], [], []
    for kind, spec, d, q_scale in outputs:
        Q = q_scale * rng.normal(size=(d, K, K))
        Q = (Q + np.swapaxes(Q, 1, 2)) / 2
        theta_q = np.asarray(
            theta_from_qab(
                jnp.asarray(Q), jnp.asarray(rng.normal(size=(d, K))), rng.normal(size=d)
            )
        )
        theta = theta_q[:, INDEX[kind]] if kind != "quadratic" else theta_q
        err = rng.uniform(0.1, 0.3, size=(N, d))
        y = phi[:, INDEX[kind]] @ theta.T + np.hypot(err, 0.15) * rng.normal(
            size=(N, d)
        )
        y[rng.random((N, d)) < 0.15] = np.nan
        arrays.append((y, err))
        blocks.append(make_block(y, err))
        priors.append(_priors(kind, d, spec))
        ridges.append(_ridge(kind, d) if spec.free else None)
        start = (
            theta if not spec.free else 0.8 * theta + 0.1 * rng.normal(size=theta.shape)
        )
        p = {THETA: jnp.asarray(start)}
        if spec.has_s:
            p["s"] = jnp.ones(d) if spec.s_kind == "vector" else jnp.ones(())
        params.append(p)
        kinds.append((kind, spec))
    problem = VEMProblem(
        specs=tuple(spec for _, spec in kinds),
        k=K,
        blocks=tuple(blocks),
        priors=tuple(priors),
        ridges=tuple(ridges),
        fixed_latents=jnp.asarray(z) if fixed_latents else None,
    )
    mean = z + 0.3 * rng.normal(size=z.shape)
    state = VState(
        tuple(params), jnp.asarray(mean), jnp.broadcast_to(4.0 * jnp.eye(K), (N, K, K))
    )
    return SimpleNamespace(
        problem=problem,
        state=state,
        arrays=arrays,
        kinds=kinds,
        ridges=ridges,
        z=z,
    )


QUADRATIC = [
    ("quadratic", FeatureSpec("quadratic", True, "vector", True), 5, 0.4),
    ("affine", FeatureSpec("affine", True, "none", False), 2, 0.0),
]


@pytest.fixture(scope="module")
def quadratic():
    return _case(QUADRATIC)


def _run(case, n, accelerate=False, state=None):
    """``n`` sweeps from ``state`` (default: the case's start) in one compiled loop;
    a threshold of -1: none settles. (Every call passes the same static arguments
    the same way, so that a problem compiles once.)"""
    return vem.vem_chunk(
        case.problem,
        case.state if state is None else state,
        jnp.asarray(jnp.inf),
        jnp.asarray(-1.0),
        jnp.asarray(n),
        N_STEPS,
        N_INNER,
        accelerate,
    )


def _n_obs(case):
    return sum(int(np.sum(b.mask)) for b in case.problem.blocks)


def _sum_tol(case, loss):
    """Rounding of an objective summed over the observed values: ``n·eps``
    relative, the a-priori bound of recursive summation (Higham, §4.2)."""
    n = _n_obs(case)
    return n * EPS * (abs(float(loss)) + n)


# ----------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------
def test_vem_objective_never_increases(quadratic):
    n = 25
    state, losses, n_run, converged = _run(quadratic, n)
    losses = np.asarray(losses)
    assert int(n_run) == n and not bool(converged)
    assert np.all(np.isnan(losses[n:]))
    tol = _sum_tol(quadratic, losses[0])
    assert np.all(np.diff(losses[:n]) <= tol), np.diff(losses[:n]).max()
    assert losses[n - 1] < losses[0] - 0.05 * abs(losses[0])  # and it descends
    assert np.all(np.asarray(state.params[0]["s"]) >= 0)


def test_vem_final_objective_and_row_covariances_match_dense_references(quadratic):
    state, _, _, _ = _run(quadratic, 10)
    final, loss, row_covs = vem.vem_final(quadratic.problem, state, N_INNER)
    mean = np.asarray(final.mean)
    cov = np.linalg.inv(np.asarray(final.prec))
    dense = _dense_neg_elbo(quadratic, final.params, mean, cov)
    dense += _dense_neg_log_prior(quadratic, final.params)
    # cond(prec) ≲ 10 here: the inverses add nothing beyond the sums' rounding
    assert abs(float(loss) - dense) <= _sum_tol(quadratic, dense), (float(loss), dense)
    # the E-step at the final parameters only raises the bound of each star
    before = _dense_neg_elbo(
        quadratic, state.params, np.asarray(state.mean), np.linalg.inv(state.prec)
    ) + _dense_neg_log_prior(quadratic, state.params)
    assert dense <= before + _sum_tol(quadratic, dense)
    for G, rc, (kind, _) in zip(
        _dense_normal_matrices(quadratic, final.params, mean, cov),
        row_covs,
        quadratic.kinds,
        strict=True,
    ):
        expected = np.linalg.inv(G)
        assert (
            rc.shape
            == expected.shape
            == (G.shape[0], len(INDEX[kind]), len(INDEX[kind]))
        )
        cond = np.linalg.cond(G).max()
        np.testing.assert_allclose(
            rc, expected, rtol=0, atol=100 * EPS * cond * np.abs(expected).max()
        )


def test_vem_with_fixed_latents_is_ridge_regression_on_the_features():
    case = _case(QUADRATIC, seed=1, fixed_latents=True)
    _, losses, _, _ = _run(case, 2)
    phi = _phi(case.z)
    params0 = case.state.params
    # the objective at the start: -log p(y | z) + the log prior, with scipy
    dense = _dense_neg_log_prior(case, params0)
    for (y, err), (kind, spec), p in zip(case.arrays, case.kinds, params0, strict=True):
        m = ~np.isnan(y)
        pred = phi[:, INDEX[kind]] @ np.asarray(p[THETA]).T
        s2 = np.square(np.asarray(p["s"])) if spec.has_s else 0.0
        sd = np.sqrt(err**2 + s2) * np.ones_like(y)
        dense -= stats.norm.logpdf(y[m], pred[m], sd[m]).sum()
    assert abs(float(losses[0]) - dense) <= _sum_tol(case, dense)
    assert float(losses[1]) <= float(losses[0]) + _sum_tol(case, dense)
    # one sweep's weights: (Φᵀ Λ Φ + T) θ_d = Φᵀ Λ y_d + T loc, row by row
    one, _, _, _ = _run(case, 1)
    for (y, _), (kind, _), lam, ridge, p in zip(
        case.arrays,
        case.kinds,
        _lam(case, params0),
        case.ridges,
        one.params,
        strict=True,
    ):
        F = phi[:, INDEX[kind]]
        loc, prec = np.asarray(ridge[0]), np.asarray(ridge[1])
        for d in range(y.shape[1]):
            obs = lam[:, d] > 0
            G = F[obs].T @ (lam[obs, d, None] * F[obs]) + np.diag(prec[d])
            c = F[obs].T @ (lam[obs, d] * y[obs, d]) + prec[d] * loc[d]
            w = np.linalg.solve(G, c)
            tol = 100 * EPS * np.linalg.cond(G) * np.abs(w).max()
            np.testing.assert_allclose(p[THETA][d], w, rtol=0, atol=tol)


# The same model two ways: VEM's outputs (a quadratic one with Q held at 0, and a
# free affine one) and EM's OutputSpec of each (`_em_twin`).
AFFINE = [
    ("quadratic", FeatureSpec("quadratic", False, "vector", True), 5, 0.0),
    ("affine", FeatureSpec("affine", True, "none", False), 2, 0.0),
]


def _em_twin(case):
    """The `EMProblem` and parameters of the same affine model."""
    specs, priors, ridges, params = [], [], [], []
    for (kind, fs), pr, ridge, p in zip(
        case.kinds, case.problem.priors, case.ridges, case.state.params, strict=True
    ):
        theta = np.asarray(p[THETA])
        if kind == "quadratic":  # Q = 0: the affine part of the weights
            theta = theta[:, INDEX["affine"]]
        specs.append(OutputSpec(True, fs.free, fs.free, fs.s_kind, fs.s_free))
        q = {"A": jnp.asarray(theta[:, :K]), "b": jnp.asarray(theta[:, K])}
        if fs.has_s:
            q["s"] = p["s"]
        params.append(q)
        priors.append({key: v for key, v in pr.items() if key != "Q"})
        r = {}
        if fs.free:
            r["A"] = (ridge[0][:, :K], ridge[1][:, :K])
            r["b"] = (ridge[0][:, K], ridge[1][:, K])
        ridges.append(r)
    problem = EMProblem(
        specs=tuple(specs),
        blocks=case.problem.blocks,
        priors=tuple(priors),
        ridges=tuple(ridges),
    )
    return problem, tuple(params)


def _as_em(case, vem_params):
    """VEM parameters as EM's (A, b, s), checking that Q stayed exactly zero."""
    out = []
    for (kind, _), p in zip(case.kinds, vem_params, strict=True):
        theta = np.asarray(p[THETA])
        if kind == "quadratic":
            np.testing.assert_array_equal(theta[:, : INDEX["affine"][0]], 0.0)
            theta = theta[:, INDEX["affine"]]
        q = {"A": theta[:, :K], "b": theta[:, K]}
        if "s" in p:
            q["s"] = np.asarray(p["s"])
        out.append(q)
    return tuple(out)


def _max_diff(a, b):
    return max(
        float(np.abs(np.asarray(p[key]) - np.asarray(q[key])).max())
        for p, q in zip(a, b, strict=True)
        for key in p
    )


def _em_chunk(problem, params, n):
    return em.em_chunk(
        problem,
        params,
        jnp.asarray(jnp.inf),
        jnp.asarray(-1.0),  # never settles: n sweeps
        jnp.asarray(n),
        n_steps=N_STEPS,
    )


def test_affine_vem_follows_the_closed_form_em():
    """With outputs affine in the latents the bound is the exact evidence and one
    natural-gradient step with ρ = 1 reaches the exact posterior, so each VEM sweep
    is an EM sweep: the same objective and parameters sweep by sweep, and EM's
    fixed point is VEM's."""
    case = _case(AFFINE, seed=2)
    problem, params = _em_twin(case)
    n = 6
    state, losses, _, _ = _run(case, n)
    p_em, losses_em, _, _ = _em_chunk(problem, params, n)
    losses, losses_em = np.asarray(losses[:n]), np.asarray(losses_em[:n])
    # the same objective at the start (the exact evidence, q exact)
    assert abs(losses[0] - losses_em[0]) <= _sum_tol(case, losses_em[0])
    # the same sweeps, but for the s-steps' near ties
    np.testing.assert_allclose(losses, losses_em, rtol=S_TOL)
    assert _max_diff(_as_em(case, state.params), p_em) <= S_TOL * 10

    # the first E-step gives EM's exact posterior at the start parameters
    one, _, _, _ = _run(case, 1)
    Ws = tuple(p["A"] for p in params)
    bs = tuple(p["b"] for p in params)
    s2s = tuple(spec.scatter2(p) for spec, p in zip(problem.specs, params, strict=True))
    mean, cov = posterior_moments(problem.blocks, Ws, bs, s2s)
    tol = 100 * EPS * np.linalg.cond(np.asarray(one.prec)).max()
    np.testing.assert_allclose(one.mean, mean, rtol=0, atol=tol * np.abs(mean).max())
    np.testing.assert_allclose(np.linalg.inv(one.prec), cov, rtol=0, atol=tol)

    # EM's fixed point: a VEM sweep (from any q) moves it no more than EM's own
    # sweep does, up to the sweeps' agreement
    settled, losses_em, _, _ = _em_chunk(problem, params, N_STEPS)
    assert abs(float(losses_em[-1] - losses_em[-2])) <= _sum_tol(case, losses_em[-1])
    again, _, _, _ = _em_chunk(problem, settled, 1)
    start = VState(
        tuple(
            {THETA: p[THETA], **({"s": q["s"]} if "s" in q else {})}
            for p, q in zip(_vem_params(case, settled), settled, strict=True)
        ),
        jnp.zeros((N, K)),
        jnp.broadcast_to(jnp.eye(K), (N, K, K)),
    )
    moved, losses, _, _ = _run(case, 1, state=start)
    step_em = _max_diff(again, settled)
    step_vem = _max_diff(_as_em(case, moved.params), settled)
    assert step_vem <= step_em + S_TOL, (step_vem, step_em)
    assert abs(float(losses[0]) - float(losses_em[-1])) <= _sum_tol(case, losses[0])


def _vem_params(case, em_params):
    """EM's (A, b) as VEM feature weights (zero Q for the quadratic output)."""
    out = []
    for (kind, _), q in zip(case.kinds, em_params, strict=True):
        theta = np.c_[np.asarray(q["A"]), np.asarray(q["b"])]
        if kind == "quadratic":
            theta = np.c_[np.zeros((len(theta), INDEX["affine"][0])), theta]
        out.append({THETA: jnp.asarray(theta)})
    return out


def test_named_params():
    rng = np.random.default_rng(5)
    d = 3
    Q = rng.normal(size=(d, K, K))
    Q = (Q + np.swapaxes(Q, 1, 2)) / 2
    A, b = rng.normal(size=(d, K)), rng.normal(size=d)
    theta = theta_from_qab(jnp.asarray(Q), jnp.asarray(A), jnp.asarray(b))
    named = vem.named_params("quadratic", theta, K)
    np.testing.assert_allclose(named["Q"], Q, rtol=2 * EPS)
    np.testing.assert_array_equal(named["A"], A)
    np.testing.assert_array_equal(named["b"], b)
    ref = _named("quadratic", np.asarray(theta))
    np.testing.assert_allclose(named["Q"], ref["Q"], rtol=2 * EPS)
    aff = vem.named_params("affine", jnp.asarray(np.c_[A, b]), K)
    np.testing.assert_array_equal(aff["A"], A)
    np.testing.assert_array_equal(aff["b"], b)
    lin = vem.named_params("linear", jnp.asarray(A), K)
    assert list(lin) == ["A"]
    np.testing.assert_array_equal(lin["A"], A)
