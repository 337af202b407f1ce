"""Outputs quadratic in the latents (`QuadraticTransform`) on the fast path against
slow, obvious references: numpyro MAP (BFGS) and a dense numpy ridge regression
with the latents held fixed, NUTS for the latent posterior, Monte Carlo for the
predictive moments, simulated data for the variational EM; refusals and the
`CannonModel`.

Problem sizes are tiny and each compiled fit is shared between tests
(module-scoped fixtures).
"""

from __future__ import annotations

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import numpyro  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
import pytest  # noqa: E402
from numpyro.infer import MCMC, NUTS  # noqa: E402
from scipy import stats  # noqa: E402

import pollux as plx  # noqa: E402
from pollux.data import OutputData, PolluxData  # noqa: E402
from pollux.fit import LatentPosterior  # noqa: E402
from pollux.models.transforms import (  # noqa: E402
    AffineTransform,
    LinearTransform,
    QuadraticTransform,
)

EPS = np.finfo(np.float64).eps
K = 2
M = K * (K + 1) // 2 + K + 1  # quadratic features of K latents: 6


# ----------------------------------------------------------------------------------
# Slow, obvious references
# ----------------------------------------------------------------------------------
def _quadratic(z, Q, A, b):
    """zᵀQ_d z + A_d z + b_d, written out (any Q, symmetric or not)."""
    return np.einsum("ni,dij,nj->nd", z, Q, z) + z @ A.T + b


def _phi(z):
    """The documented features of K = 2 latents: z0², z0 z1, z1², z0, z1, 1."""
    z0, z1 = z[:, 0], z[:, 1]
    return np.stack([z0 * z0, z0 * z1, z1 * z1, z0, z1, np.ones_like(z0)], axis=1)


def _theta(Q, A, b):
    """Feature weights of zᵀQz + Az + b (K = 2) by hand: only Q + Qᵀ acts."""
    return np.stack(
        [Q[:, 0, 0], Q[:, 0, 1] + Q[:, 1, 0], Q[:, 1, 1], A[:, 0], A[:, 1], b], axis=1
    )


def _random_qab(rng, d, q_scale=0.5):
    return (
        q_scale * rng.normal(size=(d, K, K)),
        rng.normal(size=(d, K)),
        rng.normal(size=d),
    )


def _sym(Q):
    Q = np.asarray(Q)
    return 0.5 * (Q + np.swapaxes(Q, -1, -2))


# ----------------------------------------------------------------------------------
# 1. Latents held fixed: EM, numpyro MAP and a dense ridge regression agree
# ----------------------------------------------------------------------------------
N_FIX, D_FIX = 80, 5
# Normal priors, the same for Q_ij and Q_ji (so that the MAP over a full Q, as
# numpyro sees it, and over a symmetric one, as the fit sees it, coincide), with
# non-trivial locations and scales.
Q_LOC, Q_SCALE = 0.2, 1.5
A_LOC, A_SCALE = -0.1, 1.0
B_LOC, B_SCALE = 0.1, 2.0


@pytest.fixture(scope="module")
def fixed_problem():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(N_FIX, K))
    Q, A, b = _random_qab(rng, D_FIX)
    s_true = rng.uniform(0.05, 0.2, size=D_FIX)
    err = rng.uniform(0.05, 0.1, size=(N_FIX, D_FIX))
    y = _quadratic(z, Q, A, b) + rng.normal(size=(N_FIX, D_FIX)) * np.hypot(err, s_true)
    y[rng.uniform(size=y.shape) < 0.1] = np.nan  # missing values
    model = plx.LuxModel(latent_size=K)
    model.register_output(
        "flux",
        QuadraticTransform(
            D_FIX,
            param_priors={
                "Q": dist.Normal(Q_LOC, Q_SCALE),
                "A": dist.Normal(A_LOC, A_SCALE),
                "b": dist.Normal(B_LOC, B_SCALE),
                "s": dist.HalfNormal(1.0).expand((D_FIX,)),
            },
        ),
    )
    data = PolluxData(flux=OutputData(y, err=err))
    return model, data, z, y, err, s_true


@pytest.fixture(scope="module")
def fixed_fit(fixed_problem):
    model, data, z, *_ = fixed_problem
    return model.fit(
        data, fixed_params={"latents": z}, max_iter=500, tol=0.0, progress=False
    )


def _dense_objective(params, z, y, err, with_s_prior=True):
    """−log likelihood − log prior (scipy densities, every element of a full Q)."""
    p = {k: np.asarray(v) for k, v in params.items()}
    pred = _quadratic(z, p["Q"], p["A"], p["b"])
    obs = ~np.isnan(y)
    sd = np.sqrt(err**2 + p["s"] ** 2)
    nll = -np.sum(stats.norm.logpdf(y[obs], pred[obs], sd[obs]))
    nlp = -(
        np.sum(stats.norm.logpdf(p["Q"], Q_LOC, Q_SCALE))
        + np.sum(stats.norm.logpdf(p["A"], A_LOC, A_SCALE))
        + np.sum(stats.norm.logpdf(p["b"], B_LOC, B_SCALE))
    )
    if with_s_prior:
        nlp -= np.sum(stats.halfnorm.logpdf(p["s"], scale=1.0))
    return nll + nlp


def test_fixed_latents_fit_reports_the_dense_objective(fixed_problem, fixed_fit):
    _, _, z, y, err, _ = fixed_problem
    result = fixed_fit
    assert result.converged
    assert np.all(np.diff(result.losses) <= 1e-10 * np.abs(result.losses[:-1]))
    params = result.params["flux"]
    # Q comes back symmetric; the latents are passed through.
    np.testing.assert_array_equal(params["Q"], np.swapaxes(params["Q"], 1, 2))
    np.testing.assert_array_equal(result.params["latents"], z)
    # Sums of ~400 log densities of size O(1–10) in float64: ~1e-13 relative.
    np.testing.assert_allclose(
        float(result.losses[-1]), _dense_objective(params, z, y, err), rtol=1e-10
    )


def test_fixed_latents_fit_matches_optimize(fixed_problem, fixed_fit):
    model, data, z, y, err, _ = fixed_problem
    result = fixed_fit
    # BFGS to a gradient inf-norm of 1e-9 in numpyro's unconstrained coordinates
    # (Q, A, b and log s). Each SVI step is one BFGS run from the previous end
    # point; jax's BFGS often stops on a failed line search (status 3) well short
    # of gtol, and the rounding of the loss differs between processes, so the
    # number of restarts before one converges varies (5–9 seen). Once one has,
    # the rest start at a gradient below gtol and return at once: 40 restarts,
    # and the last five losses must agree (a converged reference).
    params, svi = model.optimize(
        data,
        num_steps=40,
        rng_key=jax.random.PRNGKey(0),
        optimizer=numpyro.optim.Minimize(method="BFGS", options={"gtol": 1e-9}),
        fixed_params={"latents": z},
        svi_run_kwargs={"progress_bar": False},
    )
    tail = np.asarray(svi.losses[-5:])
    assert np.ptp(tail) < 1e-12 * np.abs(tail).max(), f"BFGS did not converge: {tail}"
    opt = params["flux"]
    Q_opt = np.asarray(opt["Q"])
    # The antisymmetric part of Q is seen only by the prior, whose curvature along
    # it is 2/Q_SCALE² ≈ 0.9: a gradient of ≤ 1e-9 leaves it ≲ 1e-9 (1e-7 is a
    # margin of 100 for the BFGS end point).
    assert np.abs(Q_opt - np.swapaxes(Q_opt, 1, 2)).max() < 1e-7
    fit_obj = _dense_objective(result.params["flux"], z, y, err)
    opt_obj = _dense_objective(opt, z, y, err)
    # Both reach the same optimum of the same objective: a gradient g leaves the
    # objective ≲ g²/(2·curvature) above it (≲ 1e-17 here); 1e-8 allows for the
    # rounding of objectives of size ~100 (1e-14) and of the fit's own convergence.
    assert abs(opt_obj - fit_obj) < 1e-8
    # ... and report it as the same quantity (svi: −log joint of the delta guide).
    assert abs(float(svi.losses[-1]) - float(result.losses[-1])) < 1e-8
    # Parameters: within g/curvature of the optimum, the curvature ≳ 1 along every
    # direction (the prior alone gives ≥ 0.25; the data ≫ that) → ≲ 1e-8; 1e-7
    # leaves a margin of 10.
    for name, fitted, found in [
        ("Q", result.params["flux"]["Q"], _sym(Q_opt)),
        ("A", result.params["flux"]["A"], opt["A"]),
        ("b", result.params["flux"]["b"], opt["b"]),
        ("s", result.params["flux"]["s"], opt["s"]),
    ]:
        np.testing.assert_allclose(found, fitted, rtol=1e-7, atol=1e-7, err_msg=name)


def test_fixed_latents_and_scatter_fit_is_a_dense_ridge_regression(fixed_problem):
    """With z and s fixed, the fit is one weighted ridge regression per pixel on the
    explicit features: (Φᵀ Λ_d Φ + T) θ_d = Φᵀ Λ_d y_d + T m."""
    model, data, z, y, err, s_true = fixed_problem
    result = model.fit(
        data,
        fixed_params={"latents": z, "flux": {"s": s_true}},
        max_iter=5,
        tol=0.0,
        progress=False,
    )
    Phi = _phi(z)
    # The prior on the weights of symmetric Q: θ_ii = Q_ii ~ N(l, σ); for i < j,
    # θ_ij = Q_ij + Q_ji = 2 Q_ij with both entries ~ N(l, σ): −log p =
    # 2 (θ/2 − l)²/(2σ²) = (θ − 2l)²/(4σ²), precision 1/(2σ²) about 2l.
    q_prec = 1 / Q_SCALE**2
    loc = np.array([Q_LOC, 2 * Q_LOC, Q_LOC, A_LOC, A_LOC, B_LOC])
    prec = np.array(
        [q_prec, q_prec / 2, q_prec, 1 / A_SCALE**2, 1 / A_SCALE**2, 1 / B_SCALE**2]
    )
    thetas, conds = [], []
    for d in range(D_FIX):
        obs = ~np.isnan(y[:, d])
        lam = 1 / (err[obs, d] ** 2 + s_true[d] ** 2)
        X = Phi[obs]
        G = X.T @ (lam[:, None] * X) + np.diag(prec)
        c = X.T @ (lam * y[obs, d]) + prec * loc
        thetas.append(np.linalg.solve(G, c))
        conds.append(np.linalg.cond(G))
    theta = np.array(thetas)
    fitted = result.params["flux"]
    got = _theta(*(np.asarray(fitted[k]) for k in "QAb"))
    # Two backward-stable solves of the same SPD system: each errs by ~cond·eps
    # relative (cond ≲ 1e3 here, ~1e-13); 100·cond·eps leaves a margin of 100.
    tol = 100 * max(conds) * EPS
    assert tol < 1e-8
    np.testing.assert_allclose(got, theta, rtol=tol, atol=tol)
    np.testing.assert_array_equal(fitted["s"], s_true)
    # The reported objective: no prior on the fixed s.
    np.testing.assert_allclose(
        float(result.losses[-1]),
        _dense_objective(fitted, z, y, err, with_s_prior=False),
        rtol=1e-10,
    )


# ----------------------------------------------------------------------------------
# 2. Latent posterior of fixed parameters against NUTS
# ----------------------------------------------------------------------------------
def test_infer_latents_matches_nuts():
    """Four stars, ten pixels of a known quadratic, noise 0.3: the posterior of each
    star's latents is nearly Gaussian, but skewed by the curvature."""
    d, n_stars, sigma = 10, 4, 0.3
    rng = np.random.default_rng(7)
    Q, A, b = _random_qab(rng, d)
    z = rng.normal(size=(n_stars, K))
    y = _quadratic(z, Q, A, b) + sigma * rng.normal(size=(n_stars, d))
    model = plx.LuxModel(latent_size=K)
    model.register_output("flux", QuadraticTransform(d))
    params = {"flux": {"Q": Q, "A": A, "b": b}}
    post = model.infer_latents(
        PolluxData(flux=OutputData(y, err=np.full_like(y, sigma))), params
    )
    assert post.multimodal is not None
    assert not np.any(np.asarray(post.multimodal))

    def numpyro_model(y):
        zz = numpyro.sample("z", dist.Normal(0.0, 1.0).expand((n_stars, K)).to_event(2))
        mu = jnp.einsum("ni,dij,nj->nd", zz, Q, zz) + zz @ A.T + b
        numpyro.sample("y", dist.Normal(mu, sigma).to_event(2), obs=y)

    mcmc = MCMC(
        NUTS(numpyro_model, dense_mass=True),
        num_warmup=2000,
        num_samples=4000,
        num_chains=1,
        progress_bar=False,
    )
    mcmc.run(jax.random.PRNGKey(0), jnp.asarray(y))
    samples = np.asarray(mcmc.get_samples()["z"])
    nuts_mean, nuts_std = samples.mean(0), samples.std(0)
    skew = (((samples - nuts_mean) / nuts_std) ** 3).mean(0)
    # The test has power: the curvature visibly skews some posteriors (the Monte-
    # Carlo error of a skewness is ~sqrt(6/n_eff) ≈ 0.05).
    assert np.abs(skew).max() > 0.2, skew
    vi_mean = np.asarray(post.mean)
    vi_std = np.sqrt(np.diagonal(np.asarray(post.cov), axis1=1, axis2=2))
    # Within 10% of the posterior standard deviation: the Monte-Carlo errors of
    # NUTS (≈ 1/sqrt(n_eff) ≈ 2%) plus the bias of a Gaussian approximation to a
    # mildly skewed posterior (≈ 3% here).
    assert np.all(np.abs(vi_mean - nuts_mean) < 0.1 * nuts_std), (
        vi_mean - nuts_mean
    ) / nuts_std
    assert np.all(np.abs(vi_std - nuts_std) < 0.1 * nuts_std), (
        vi_std - nuts_std
    ) / nuts_std


# ----------------------------------------------------------------------------------
# 3. Variational EM on simulated quadratic data
# ----------------------------------------------------------------------------------
N_TRAIN, N_TEST, D_SIM, D_LAB = 300, 200, 20, 2


@pytest.fixture(scope="module")
def simulated():
    rng = np.random.default_rng(0)
    n = N_TRAIN + N_TEST
    z = rng.normal(size=(n, K))
    Q, A, b = _random_qab(rng, D_SIM)
    W = rng.normal(size=(D_LAB, K))
    err = rng.uniform(0.05, 0.1, size=(n, D_SIM))
    flux = _quadratic(z, Q, A, b) + rng.normal(size=(n, D_SIM)) * np.hypot(err, 0.05)
    label = z @ W.T
    label_err = np.full((n, D_LAB), 0.05)
    data = PolluxData(
        flux=OutputData(flux, err=err),
        label=OutputData(
            label + label_err * rng.normal(size=label.shape), err=label_err
        ),
    )
    return data[:N_TRAIN], data[N_TRAIN:], label[N_TRAIN:]


def _sim_model(flux_transform) -> plx.LuxModel:
    model = plx.LuxModel(latent_size=K)
    model.register_output(
        "flux",
        flux_transform(
            D_SIM, param_priors={"s": dist.HalfNormal(1.0).expand((D_SIM,))}
        ),
    )
    model.register_output("label", LinearTransform(D_LAB))
    return model


@pytest.fixture(scope="module")
def vem_fit(simulated):
    train, *_ = simulated
    model = _sim_model(QuadraticTransform)
    return model, model.fit(train, progress=False)


def _check_losses(result):
    losses = np.asarray(result.losses)
    assert np.all(np.isfinite(losses))
    # Every sweep raises the bound, each step kept only where it does: the
    # objective never increases, up to float64 rounding of sums of size |loss|
    # (~1e-16 · |loss| per term, 1e-10 · |loss| is generous).
    assert np.all(np.diff(losses) <= 1e-10 * np.abs(losses[:-1])), np.diff(losses)
    assert losses[-1] < losses[0]


def test_vem_losses_never_increase_accelerated(vem_fit):
    _, result = vem_fit
    assert result.converged
    assert result.settings["accelerate"] is True
    _check_losses(result)


def test_vem_losses_never_increase_plain(simulated):
    train, *_ = simulated
    result = _sim_model(QuadraticTransform).fit(train, progress=False, accelerate=False)
    assert result.converged
    _check_losses(result)


def test_vem_param_cov_is_the_inverse_normal_matrix(vem_fit, simulated):
    """param_cov of the quadratic output: (D, M, M), the inverse of
    Σ_n λ_nd E[φ_n φ_nᵀ] + prior precision under the returned posterior."""
    _, result = vem_fit
    train, *_ = simulated
    C = np.asarray(result.param_cov["flux"])
    assert C.shape == (D_SIM, M, M)
    assert np.asarray(result.param_cov["label"]).shape == (D_LAB, K, K)
    mean, cov = np.asarray(result.posterior.mean), np.asarray(result.posterior.cov)
    # E[φφᵀ] exactly: fourth moments of z̃ = (z, 1) by Isserlis (see below).
    second = _expected_outer_phi(mean, cov)
    s = np.asarray(result.params["flux"]["s"])
    lam = 1 / (np.asarray(train["flux"].err) ** 2 + s**2)
    # Default Normal(0, 1) priors on Q, A, b: precision 1 on θ_ii, ½ on θ_ij
    # (i < j), 1 on A and b (see the dense ridge test above).
    prec = np.array([1.0, 0.5, 1.0, 1.0, 1.0, 1.0])
    G = np.einsum("nd,nab->dab", lam, second) + np.eye(M) * prec
    expected = np.linalg.inv(G)
    # Inverses of SPD matrices of condition ≲ 1e4: ~cond·eps relative; the
    # jittered Cholesky in the fit adds ~eps·cond as well.
    np.testing.assert_allclose(C, expected, rtol=1e-9, atol=1e-9 * np.abs(C).max())


def _expected_outer_phi(mean, cov):
    """E[φ φᵀ] under N(mean, cov) for K = 2, from the recursive Isserlis rule on
    z̃ = (z0, z1, 1) (mean (μ, 1), covariance Σ ⊕ 0)."""
    pairs = [(0, 0), (0, 1), (1, 1), (0, 2), (1, 2), (2, 2)]

    def moment(idx, m, S):
        if not idx:
            return 1.0
        first, rest = idx[0], idx[1:]
        total = m[first] * moment(rest, m, S)
        for pos, j in enumerate(rest):
            total += S[first, j] * moment(rest[:pos] + rest[pos + 1 :], m, S)
        return total

    out = np.zeros((len(mean), M, M))
    for n in range(len(mean)):
        m = np.append(mean[n], 1.0)
        S = np.zeros((3, 3))
        S[:2, :2] = cov[n]
        for p, (a, b) in enumerate(pairs):
            for q, (c, d) in enumerate(pairs[p:], start=p):
                out[n, p, q] = out[n, q, p] = moment((a, b, c, d), m, S)
    return out


def test_vem_flux_only_labels_beat_an_affine_flux_model(vem_fit, simulated):
    model, result = vem_fit
    train, test, true_label = simulated
    post = model.infer_latents(test, result.params, names=["flux"])
    assert post.mean.shape == (N_TEST, K)
    pred = model.predict(post, result.params, names=["label"], param_cov=None)
    pred_cov = model.predict(
        post, result.params, names=["label"], param_cov=result.param_cov
    )
    mu = np.asarray(pred["label"].data)
    rmse = np.sqrt(np.mean((mu - true_label) ** 2, axis=0))

    affine = _sim_model(AffineTransform)
    a_result = affine.fit(train, progress=False)
    a_post = affine.infer_latents(test, a_result.params, names=["flux"])
    a_mu = np.asarray(
        affine.predict(a_post, a_result.params, names=["label"])["label"].data
    )
    a_rmse = np.sqrt(np.mean((a_mu - true_label) ** 2, axis=0))
    # The flux is strongly quadratic (|Q| ~ 0.5 against errors ~0.1): an affine
    # flux model cannot invert it; the quadratic one should do several times
    # better (about 6x on this seed).
    assert np.all(rmse < 0.5 * a_rmse), (rmse, a_rmse)

    # Calibration of the flux-only predictions against the true (noise-free)
    # labels, with the fitted parameters' uncertainty: 200 stars give a std of the
    # z-scores to ±5%, and the variational posterior and shared parameter errors
    # (the same for all test stars) add some more; a broken variance (e.g. the
    # latent covariance left out, or counted twice) is far outside.
    z_cov = (np.asarray(pred_cov["label"].data) - true_label) / np.asarray(
        pred_cov["label"].err
    )
    assert np.all(np.isfinite(z_cov))
    std = z_cov.std(axis=0)
    assert np.all((std > 0.75) & (std < 1.4)), std
    # param_cov only adds variance: every error grows, the means do not move.
    np.testing.assert_allclose(pred_cov["label"].data, pred["label"].data, rtol=1e-12)
    assert np.all(np.asarray(pred_cov["label"].err) > np.asarray(pred["label"].err))
    flux = model.predict(post, result.params, names=["flux"])
    flux_cov = model.predict(
        post, result.params, names=["flux"], param_cov=result.param_cov
    )
    assert np.all(np.asarray(flux_cov["flux"].err) > np.asarray(flux["flux"].err))


# ----------------------------------------------------------------------------------
# 4. predict against Monte Carlo
# ----------------------------------------------------------------------------------
def test_predict_matches_monte_carlo():
    rng = np.random.default_rng(11)
    d, n_stars, n_mc = 4, 3, 200_000
    Q, A, b = _random_qab(rng, d, q_scale=1.0)  # not symmetric: only Q + Qᵀ acts
    s = rng.uniform(0.05, 0.3, size=d)
    mean = rng.normal(size=(n_stars, K))
    X = rng.normal(size=(n_stars, K, K))
    cov = 0.1 * X @ np.swapaxes(X, 1, 2) + 0.05 * np.eye(K)
    model = plx.LuxModel(latent_size=K)
    model.register_output(
        "flux",
        QuadraticTransform(d, param_priors={"s": dist.HalfNormal(1.0).expand((d,))}),
    )
    params = {"flux": {"Q": Q, "A": A, "b": b, "s": s}}
    posterior = LatentPosterior(jnp.asarray(mean), jnp.asarray(cov))
    # Covariances of the rows θ_d = (feature weights): random SPD, small.
    Y = rng.normal(size=(d, M, M))
    row_cov = 0.01 * Y @ np.swapaxes(Y, 1, 2) / M
    pred = model.predict(posterior, params)
    pred_c = model.predict(posterior, params, param_cov={"flux": row_cov})
    theta = _theta(Q, A, b)
    L_row = np.linalg.cholesky(row_cov)
    for n in range(n_stars):
        z = rng.multivariate_normal(mean[n], cov[n], size=n_mc)
        f = np.asarray(model.predict_outputs(z, params)["flux"])
        # ... and with the rows drawn from N(θ_d, C_d) as well (features by hand).
        th = theta[None] + np.einsum(
            "dab,ndb->nda", L_row, rng.normal(size=(n_mc, d, M))
        )
        f_c = np.einsum("nm,ndm->nd", _phi(z), th)
        for got, samples in ((pred, f), (pred_c, f_c)):
            mc_mean, mc_var = samples.mean(0), samples.var(0)
            se_mean = samples.std(0) / np.sqrt(n_mc)
            se_var = ((samples - mc_mean) ** 2).std(0) / np.sqrt(n_mc)
            # 5 Monte-Carlo standard errors: exceeded with probability 6e-7 per
            # value (fixed seed: deterministic).
            mu = np.asarray(got["flux"].data)[n]
            var = np.asarray(got["flux"].err)[n] ** 2 - s**2
            assert np.all(np.abs(mu - mc_mean) < 5 * se_mean), (mu, mc_mean, se_mean)
            assert np.all(np.abs(var - mc_var) < 5 * se_var), (var, mc_var, se_var)
        # The quadratic term matters here (the test has power): the variance of
        # the linearised prediction (J Σ Jᵀ at the mean) is off by ≫ 5 SE.
        J = A + np.einsum("dij,j->di", Q + np.swapaxes(Q, 1, 2), mean[n])
        lin_var = np.einsum("di,ij,dj->d", J, cov[n], J)
        assert np.any(np.abs(lin_var - f.var(0)) > 20 * se_var)


# ----------------------------------------------------------------------------------
# 5. Two modes: an output even in the latents
# ----------------------------------------------------------------------------------
def test_infer_latents_flags_bimodal_stars():
    rng = np.random.default_rng(3)
    d, sigma = 8, 0.05
    Q, A, b = _random_qab(rng, d, q_scale=1.0)
    Q = _sym(Q)
    z = np.array([[2.0, 1.5], [-1.0, 2.0], [1.5, -1.5]])
    noise = sigma * rng.normal(size=(len(z), d))
    model = plx.LuxModel(latent_size=K)
    model.register_output("flux", QuadraticTransform(d))
    # y = zᵀQz is even: z and −z fit equally well, and the prior cannot tell them
    # apart. An output dominated by its affine part has a single mode.
    even = {"flux": {"Q": Q, "A": np.zeros_like(A), "b": np.zeros_like(b)}}
    affine = {"flux": {"Q": 0.05 * Q, "A": 3 * A, "b": b}}
    flags, means = {}, {}
    for key, params in (("even", even), ("affine", affine)):
        y = np.asarray(model.predict_outputs(z, params)["flux"]) + noise
        data = PolluxData(flux=OutputData(y, err=np.full_like(y, sigma)))
        post = model.infer_latents(data, params)
        flags[key] = np.asarray(post.multimodal)
        means[key] = np.asarray(post.mean)
    assert np.all(flags["even"]), flags["even"]
    assert not np.any(flags["affine"]), flags["affine"]
    # Each posterior describes one of the two modes, ±z (to ~10 posterior sds).
    err_even = np.minimum(
        np.abs(means["even"] - z).max(1), np.abs(means["even"] + z).max(1)
    )
    assert np.all(err_even < 0.1), means["even"]
    np.testing.assert_allclose(means["affine"], z, atol=0.05)


# ----------------------------------------------------------------------------------
# 6. Refusals
# ----------------------------------------------------------------------------------
def test_fit_refuses_partly_fixed_quadratic_output(fixed_problem):
    model, data, z, *_ = fixed_problem
    Q = np.zeros((D_FIX, K, K))
    with pytest.raises(ValueError, match=r"fixed_params\['flux'\].*\['Q', 'A', 'b'\]"):
        model.fit(data, fixed_params={"flux": {"Q": Q}}, progress=False)
    with pytest.raises(ValueError, match=r"fixed_params\['flux'\].*got \['Q', 'b'\]"):
        model.fit(
            data,
            fixed_params={"latents": z, "flux": {"Q": Q, "b": np.zeros(D_FIX)}},
            progress=False,
        )


def test_fit_refuses_partly_fixed_affine_output_next_to_a_quadratic_one(simulated):
    train, *_ = simulated
    model = plx.LuxModel(latent_size=K)
    model.register_output("flux", QuadraticTransform(D_SIM))
    model.register_output("label", AffineTransform(D_LAB))
    with pytest.raises(ValueError, match=r"fixed_params\['label'\]"):
        model.fit(
            train,
            fixed_params={"label": {"A": np.zeros((D_LAB, K))}},
            progress=False,
        )


# ----------------------------------------------------------------------------------
# 7. CannonModel
# ----------------------------------------------------------------------------------
N_CANNON, D_CANNON = 300, 15


@pytest.fixture(scope="module")
def cannon_data():
    rng = np.random.default_rng(4)
    n = 2 * N_CANNON
    labels = rng.normal(size=(n, K))
    Q, A, b = _random_qab(rng, D_CANNON)
    err = rng.uniform(0.02, 0.05, size=(n, D_CANNON))
    flux = _quadratic(labels, Q, A, b) + err * rng.normal(size=(n, D_CANNON))
    data = PolluxData(
        flux=OutputData(flux, err=err),
        label=OutputData(labels, err=np.full_like(labels, 0.01)),
    )
    return data, labels


def test_cannon_refuses_bad_arguments(cannon_data):
    data, labels = cannon_data
    with pytest.raises(TypeError, match="n_labels"):
        plx.CannonModel(n_labels=2.0, flux_size=D_CANNON)
    with pytest.raises(ValueError, match="n_labels"):
        plx.CannonModel(n_labels=0, flux_size=D_CANNON)
    cannon = plx.CannonModel(n_labels=K, flux_size=D_CANNON)
    only_flux = PolluxData(flux=data["flux"])
    with pytest.raises(ValueError, match="no output 'label'"):
        cannon.fit(only_flux, progress=False)
    bad = labels[:N_CANNON].copy()
    bad[5, 1] = np.nan
    with_nan = PolluxData(
        flux=data["flux"][:N_CANNON],
        label=OutputData(bad, err=np.full_like(bad, 0.01)),
    )
    with pytest.raises(ValueError, match="missing values"):
        cannon.fit(with_nan, progress=False)
    three = plx.CannonModel(n_labels=3, flux_size=D_CANNON)
    with pytest.raises(ValueError, match="n_labels=3"):
        three.fit(data[:N_CANNON], progress=False)
    with pytest.raises(TypeError, match="FitResult"):
        cannon.predict(data[N_CANNON:], {"flux": {}})


def test_cannon_recovers_labels_of_an_exact_quadratic(cannon_data):
    data, labels = cannon_data
    cannon = plx.CannonModel(n_labels=K, flux_size=D_CANNON)
    result = cannon.fit(data[:N_CANNON], progress=False)
    assert result.converged
    np.testing.assert_array_equal(result.params["latents"], labels[:N_CANNON])
    pred = cannon.predict(data[N_CANNON:], result)
    mu, err = np.asarray(pred["label"].data), np.asarray(pred["label"].err)
    truth = labels[N_CANNON:]
    assert np.sqrt(np.mean((mu - truth) ** 2)) < 0.02
    zscores = (mu - truth) / err
    # 300 test stars: the std of the z-scores is known to ±4%; the training error
    # of the 6 weights per pixel from 300 stars adds ~1%.
    std = zscores.std(axis=0)
    assert np.all((std > 0.88) & (std < 1.12)), std
    assert np.all(np.abs(zscores.mean(axis=0)) < 0.2), zscores.mean(axis=0)
