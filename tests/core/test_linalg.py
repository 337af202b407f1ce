"""The loop-based batched Cholesky and triangular solves against numpy's LAPACK,
and the guarantee that the compiled EM kernels contain no LAPACK call."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

from pollux import core
from pollux.core import linalg
from pollux.core.blocks import make_block
from pollux.core.problem import EMProblem, OutputSpec

SIZES = [1, 2, 5, 16, 40]


def _spd(rng, batch, m, cond=100.0, dtype=np.float64):
    """Random SPD matrices with eigenvalues spread over [1, cond]."""
    q, _ = np.linalg.qr(rng.normal(size=(batch, m, m)))
    eig = np.geomspace(1.0, cond, m)
    return ((q * eig[None, None, :]) @ np.swapaxes(q, -1, -2)).astype(dtype)


def _tol(dtype, m, cond):
    # Backward-stable factorisations and substitutions: relative errors of
    # O(m · eps · cond) in the results (Higham, ch. 8 and 10); 10x for safety.
    return 10 * m * np.finfo(dtype).eps * cond


@pytest.mark.parametrize("m", SIZES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_cholesky_and_solves_match_lapack(m, dtype):
    rng = np.random.default_rng(m)
    cond = 100.0
    A = _spd(rng, 7, m, cond, dtype)
    B = rng.normal(size=(7, m, 3)).astype(dtype)
    b = rng.normal(size=(7, m)).astype(dtype)
    A64 = A.astype(np.float64)
    L = linalg.cholesky(A)
    assert L.dtype == dtype
    L_ref = np.linalg.cholesky(A64)
    scale = np.sqrt(cond)  # |L| ≤ sqrt(max eigenvalue)
    tol = _tol(dtype, m, cond)
    np.testing.assert_allclose(L, L_ref, atol=tol * scale)
    np.testing.assert_array_equal(np.triu(np.asarray(L), 1), 0.0)
    inv_ref = np.linalg.inv(A64)
    np.testing.assert_allclose(linalg.inverse_from_cholesky(L), inv_ref, atol=tol)
    sol = np.linalg.solve(A64, B)
    np.testing.assert_allclose(
        linalg.cho_solve(L, B), sol, atol=tol * np.abs(sol).max()
    )
    solv = np.linalg.solve(A64, b[..., None])[..., 0]
    np.testing.assert_allclose(
        linalg.cho_solve(L, b), solv, atol=tol * np.abs(solv).max()
    )
    np.testing.assert_allclose(
        linalg.solve_lower(L, B), np.linalg.solve(L_ref, B), atol=tol * 10
    )
    np.testing.assert_allclose(
        linalg.solve_upper_t(L, B),
        np.linalg.solve(np.swapaxes(L_ref, -1, -2), B),
        atol=tol * 10,
    )
    logdet = np.linalg.slogdet(A64)[1]
    np.testing.assert_allclose(
        linalg.logdet_from_cholesky(L),
        logdet,
        atol=tol * max(1.0, np.abs(logdet).max()),
    )


@pytest.mark.parametrize(("m", "batch"), [(28, 1000), (3, 20000)])
def test_map_batch_slices_give_the_whole_batch_result(m, batch):
    """`ridge_solve` and `ridge_inverse` a cache-sized slice at a time (with
    identity rows padding the last slice) equal the solve of the whole batch, to
    the rounding of a backward-stable solve (the slices vectorise differently)."""
    from pollux.core.mstep import ridge_cholesky, ridge_inverse, ridge_solve

    rng = np.random.default_rng(3)
    G = jnp.asarray(_spd(rng, batch, m, cond=50.0))
    c = jnp.asarray(rng.normal(size=(batch, m)))
    size = linalg._CACHE_ENTRIES // (m * m)
    assert batch > size and batch % (1 << (size.bit_length() - 1))  # pads
    L = ridge_cholesky(G)
    whole = linalg.cho_solve(L, c)
    tol = _tol(np.float64, m, 50.0)
    np.testing.assert_allclose(
        ridge_solve(G, c), whole, rtol=0, atol=tol * np.max(np.abs(whole))
    )
    inverse = linalg.inverse_from_cholesky(L)
    np.testing.assert_allclose(
        ridge_inverse(G), inverse, rtol=0, atol=tol * np.max(np.abs(inverse))
    )


def test_cholesky_of_a_matrix_that_is_not_positive_definite_is_nan():
    L = linalg.cholesky(jnp.array([[1.0, 2.0], [2.0, 1.0]]))
    assert np.isnan(np.asarray(L)[1, 1])


def test_cholesky_is_jittable_and_batched_over_leading_axes():
    rng = np.random.default_rng(0)
    A = _spd(rng, 6, 4).reshape(2, 3, 4, 4)
    np.testing.assert_allclose(
        jax.jit(linalg.cholesky)(A), np.linalg.cholesky(A), atol=1e-12
    )


# ----------------------------------------------------------------------------------
# No LAPACK call in the compiled kernels (docs/troubleshooting.md)
# ----------------------------------------------------------------------------------
def _problem(n=30, d=5, k=3):
    rng = np.random.default_rng(0)
    y = rng.normal(size=(n, d))
    y[0, 0] = np.nan
    block = make_block(y, np.full((n, d), 0.1))
    spec = OutputSpec(
        has_b=True, A_free=True, b_free=True, s_kind="vector", s_free=True
    )
    priors = {
        "A": dist.Normal(0.0, 1.0).expand((d, k)).to_event(2),
        "b": dist.Normal(0.0, 1.0).expand((d,)).to_event(1),
        "s": dist.HalfNormal(1.0).expand((d,)).to_event(1),
    }
    ridges = {
        "A": (jnp.zeros((d, k)), jnp.ones((d, k))),
        "b": (jnp.zeros(d), jnp.ones(d)),
    }
    problem = EMProblem(
        specs=(spec,), blocks=(block,), priors=(priors,), ridges=(ridges,)
    )
    params = ({"A": jnp.full((d, k), 0.1), "b": jnp.zeros(d), "s": jnp.ones(d)},)
    return problem, params


def _compiled_texts():
    problem, params = _problem()
    p, block, n, k = params[0], problem.blocks[0], 30, 3
    mean, cov = jnp.zeros((n, k)), jnp.broadcast_to(jnp.eye(k), (n, k, k))
    one = jnp.asarray(1.0)
    lowered = {
        "em_chunk(SQUAREM)": core.em_chunk.lower(
            problem, params, one, one, jnp.asarray(5), n_steps=3, accelerate=True
        ),
        "em_chunk(EM)": core.em_chunk.lower(
            problem, params, one, one, jnp.asarray(5), n_steps=3, accelerate=False
        ),
        "final_state": core.final_state.lower(problem, params),
        "initialize": core.initialize.lower(problem, params, mean),
        "posterior_moments": core.posterior_moments.lower(
            (block,), (p["A"],), (p["b"],), (jnp.square(p["s"]),)
        ),
        "predictive": core.predictive.lower(
            mean, cov, p["A"], p["b"], p["s"] ** 2, None
        ),
    }
    lowered.update(_vem_lowered(block, n, k))
    return {name: low.compile().as_text() for name, low in lowered.items()}


def _vem_lowered(block, n, k):
    """The kernels of the quadratic (variational) path, lowered on a tiny model."""
    import pollux as plx
    from pollux.core import vem
    from pollux.fit.checks import blocks_for
    from pollux.fit.polynomial import (
        posterior_polynomial,
        predictive_polynomial,
        vem_problem,
    )
    from pollux.models.transforms import QuadraticTransform

    d = block.y.shape[1]
    model = plx.LuxModel(latent_size=k)
    prior = {"s": dist.HalfNormal(jnp.ones(d))}
    model.register_output("flux", QuadraticTransform(d, param_priors=prior))
    data = plx.data.PolluxData(
        flux=plx.data.OutputData(np.asarray(block.y), err=np.sqrt(block.err2))
    )
    blocks = blocks_for(model, data, ["flux"], {}, "test")
    problem, params = vem_problem(model, ("flux",), blocks, {}, "test")
    mean, prec = jnp.zeros((n, k)), jnp.broadcast_to(jnp.eye(k), (n, k, k))
    state = vem.VState(params, mean, prec)
    one = jnp.asarray(1.0)
    theta = params[0]["theta"]
    chunk = {
        f"vem_chunk({'SQUAREM' if acc else 'EM'})": vem.vem_chunk.lower(
            problem, state, one, one, jnp.asarray(5), 3, 2, acc
        )
        for acc in (True, False)
    }
    return {
        **chunk,
        "vem_final": vem.vem_final.lower(problem, state, 2),
        "posterior_polynomial": posterior_polynomial.lower(
            blocks, (theta,), (one,), ("quadratic",), k, 3
        ),
        "predictive_polynomial": predictive_polynomial.lower(
            mean, prec, theta, one, None, "quadratic"
        ),
    }


def test_compiled_kernels_make_no_lapack_calls():
    """jaxlib 0.10's batched LAPACK kernels can deadlock XLA:CPU when several run at
    once; pollux's compiled fitting and labelling kernels must not use them."""
    for name, text in _compiled_texts().items():
        calls = {
            line.split("custom_call_target=")[1].split(",")[0]
            for line in text.splitlines()
            if "custom_call_target=" in line
        }
        assert not [c for c in calls if "lapack" in c], (name, calls)
