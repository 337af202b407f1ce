"""One equivalence matrix: back-end × output kind × call, against dense references.

Back-ends
    ``memory``   in memory on one device (the default call);
    ``chunked``  in memory, ``chunk_size=7`` (7 does not divide the 40 stars: the
                 last chunk overlaps the one before);
    ``dask``     the stars in Dask arrays (chunks of 16 stars) on Dask's local
                 scheduler (no `dask.distributed` client);
    ``sharded``  ``devices=2``: two CPU devices, which exist only in a fresh
                 interpreter started with ``XLA_FLAGS``; one subprocess runs every
                 sharded call (beside the in-process ones) and sends the arrays back.
Output kinds (`builders.KINDS`)
    ``linear`` and ``affine`` (both outputs of that kind) on every back-end;
    ``quadratic`` (a quadratic flux, linear labels) in memory only: ``chunk_size``
    and ``devices`` serve affine outputs, and Dask data are read into memory.
Calls and their references
    ``fit``            20 plain EM sweeps (``tol=0``): the reported objective at the
                       returned parameters is `pollux.testing.dense_objective` of
                       them, and every other back-end runs the in-memory iterates
                       (objective, parameters and posterior, sweep by sweep).
                       Quadratic: the latents held fixed, whose objective
                       (−log p(y | z, θ) − log p(θ)) is written out here; the
                       variational objective has no dense reference.
    ``infer_latents``  at fixed parameters: `pollux.testing.dense_posterior`
                       (quadratic: with ``Q = 0``, where the Gauss–Newton and
                       variational steps must give the exact posterior).
    ``predict``        at a fixed Gaussian posterior with ``param_cov``: the exact
                       Gaussian moments of each output's features (Isserlis),
                       written out here (for every kind: z, (z, 1) or the
                       quadratic features).

Tolerances, float64 throughout. Two exact computations done differently agree to
``100 · eps · scale``: ``scale`` is the magnitude of what is summed (each term is
rounded to about ``eps`` of itself), times the condition number where the result is
the solution of a linear system (the posterior: Cholesky of the precision in
pollux, a dense solve of Cov(y) here); 100 is the margin (the errors seen are 1/45
to 1/10⁴ of the tolerance). Other back-ends of the same 20 EM sweeps add the same
terms in other orders, which the EM map amplifies: `builders.RTOL_FIT` (as in
test_chunked).
"""

from __future__ import annotations

import jax

jax.config.update("jax_enable_x64", True)

import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import dask.array as da  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from builders import (  # noqa: E402
    D1,
    D2,
    KINDS,
    RTOL_FIT,
    K,
    N,
    fixed_posterior,
    kind_model,
    kind_param_cov,
    kind_params,
    make_data,
)

from pollux.data import OutputData, PolluxData  # noqa: E402
from pollux.fit import LatentPosterior  # noqa: E402
from pollux.testing import (  # noqa: E402
    affine_rows,
    dense_objective,
    dense_posterior,
    neg_log_prior,
    observed,
)

EPS = np.finfo(np.float64).eps
SWEEPS = {"max_iter": 20, "tol": 0.0, "accelerate": False, "progress": False}
CHUNK = 7  # stars per chunk of the chunked back-end
ROWS = 16  # stars per Dask chunk
N_DEVICES = 2

BACKENDS = ("memory", "chunked", "dask", "sharded")
#: `FitResult.stats["backend"]` of each back-end.
BACKEND_NAMES = {
    "memory": "local",
    "chunked": "local",
    "dask": "dask",
    "sharded": "sharded",
}
CELLS = [(b, k) for b in BACKENDS for k in ("linear", "affine")] + [
    ("memory", "quadratic")
]
#: Without the linear fits of the chunked and Dask back-ends: each compiles its own
#: programs (~5 s); their passes differ from the affine ones only by the missing
#: offset, and test_chunked and test_dask fit a linear output on them.
FIT_CELLS = [c for c in CELLS if c not in {("chunked", "linear"), ("dask", "linear")}]


def _ids(cells):
    return [f"{b}-{k}" for b, k in cells]


# ----------------------------------------------------------------------------------
# Dense references
# ----------------------------------------------------------------------------------
def _pairs(out: str) -> list[tuple[int, int]]:
    """Each feature of an output of kind ``out`` as a product z̃_a z̃_b of the
    extended latents z̃ = (z_0, …, z_{K-1}, 1), in pollux's documented order:
    z (linear); z, 1 (affine); z_i z_j (i <= j), z, 1 (quadratic)."""
    one = [(i, K) for i in range(K)]
    if out == "linear":
        return one
    if out == "affine":
        return [*one, (K, K)]
    return [(i, j) for i in range(K) for j in range(i, K)] + [*one, (K, K)]


def _weights(out: str, p) -> np.ndarray:
    """The weights θ (D, M) of ``_pairs(out)`` (only Q + Qᵀ acts on z_i z_j)."""
    cols = []
    if out == "quadratic":
        Q = np.asarray(p["Q"])
        for i in range(K):
            for j in range(i, K):
                cols.append(Q[:, i, i] if i == j else Q[:, i, j] + Q[:, j, i])
    A = np.asarray(p["A"])
    cols += [A[:, i] for i in range(K)]
    if out != "linear":
        cols.append(np.asarray(p["b"]))
    return np.stack(cols, axis=1)


def _feature_moments(mean, cov, pairs):
    """E[φ] (N, M) and E[φ φᵀ] (N, M, M) of the features ``pairs`` under
    z ~ N(mean, cov): second and fourth moments of z̃ = (z, 1) by Isserlis."""
    n = len(mean)
    m = np.concatenate([np.asarray(mean), np.ones((n, 1))], axis=1)
    S = np.zeros((n, K + 1, K + 1))
    S[:, :K, :K] = np.asarray(cov)
    M2 = np.einsum("na,nb->nab", m, m) + S
    ein = np.einsum
    M4 = (
        ein("na,nb,nc,nd->nabcd", m, m, m, m)
        + ein("nab,nc,nd->nabcd", S, m, m)
        + ein("nac,nb,nd->nabcd", S, m, m)
        + ein("nad,nb,nc->nabcd", S, m, m)
        + ein("nbc,na,nd->nabcd", S, m, m)
        + ein("nbd,na,nc->nabcd", S, m, m)
        + ein("ncd,na,nb->nabcd", S, m, m)
        + ein("nab,ncd->nabcd", S, S)
        + ein("nac,nbd->nabcd", S, S)
        + ein("nad,nbc->nabcd", S, S)
    )
    e1 = np.stack([M2[:, a, b] for a, b in pairs], axis=1)
    e2 = np.stack(
        [np.stack([M4[:, a, b, c, d] for c, d in pairs], axis=-1) for a, b in pairs],
        axis=1,
    )
    return e1, e2


def _scatter2(p, d: int) -> np.ndarray:
    return np.broadcast_to(np.square(np.asarray(p.get("s", 0.0), dtype=float)), (d,))


def _dense_predictive(kind: str, params, mean, cov, param_cov):
    """``{output: (mean, var, atol of mean, atol of var)}``: the predictive moments
    of each output, θ·E[φ] and θᵀ Cov[φ] θ + s² + tr(C E[φ φᵀ]), and their
    tolerances (``100 · eps`` of the magnitudes summed)."""
    out = {}
    for name, kind_of in KINDS[kind].items():
        theta = _weights(kind_of, params[name])
        s2 = _scatter2(params[name], theta.shape[0])
        C = np.asarray(param_cov[name])
        e1, e2 = _feature_moments(mean, cov, _pairs(kind_of))
        mu = e1 @ theta.T
        second = np.einsum("dp,npq,dq->nd", theta, e2, theta)
        var = second - mu**2 + s2 + np.einsum("dpq,nqp->nd", C, e2)
        scale_mu = np.abs(e1) @ np.abs(theta).T
        at, ae2 = np.abs(theta), np.abs(e2)
        scale_var = (
            np.einsum("dp,npq,dq->nd", at, ae2, at)
            + scale_mu**2
            + s2
            + np.einsum("dpq,nqp->nd", np.abs(C), ae2)
        )
        out[name] = (mu, var, 100 * EPS * scale_mu, 100 * EPS * scale_var)
    return out


def _affine_conditioning(model, data, params) -> np.ndarray:
    """Per star, the larger condition number of the two systems the posterior is
    solved with: Cov(y) = W Wᵀ + V (dense) and the precision I + Wᵀ V⁻¹ W."""
    conds = np.ones(len(data))
    rows = {
        name: (observed(data, name), affine_rows(params, name))
        for name in model.outputs
    }
    for n in range(len(data)):
        Ws, vs = [], []
        for (_, var, mask), (W, _, s2) in rows.values():
            Ws.append(W[mask[n]])
            vs.append(var[n, mask[n]] + s2[mask[n]])
        W, v = np.concatenate(Ws), np.concatenate(vs)
        if v.size:
            P = np.eye(K) + W.T @ (W / v[:, None])
            conds[n] = max(np.linalg.cond(P), np.linalg.cond(W @ W.T + np.diag(v)))
    return conds


def _prior_scale(model, params) -> float:
    """Σ |log p| over every prior term (each rounded to ~eps of itself)."""
    total = 0.0
    for name, t in model.outputs.items():
        for pname, prior in t.expanded_priors(model.latent_size, None).items():
            total += float(
                np.abs(prior.log_prob(np.asarray(params[name][pname]))).sum()
            )
    return total


def _objective_atol(model, data, params) -> float:
    """``100 · eps · scale`` of the objective at ``params``: per observed value
    |log 2πv| + 2 λ (y - b)² (the Woodbury sums whose difference is the data term;
    the K x K log-determinants and hᵀP⁻¹h ≤ Σ λ (y - b)² come from a backward-stable
    Cholesky factor), plus the prior terms."""
    scale = _prior_scale(model, params)
    for name in model.outputs:
        y, var, mask = observed(data, name)
        _, b, s2 = affine_rows(params, name)
        v = var + s2
        scale += np.sum((np.abs(np.log(2 * np.pi * v)) + 2 * (y - b) ** 2 / v)[mask])
    return float(100 * EPS * scale)


def _quadratic_objective(model, data, params, z) -> tuple[float, float]:
    """−log p(y | z, θ) − log p(θ) at fixed latents ``z`` for `kind_model`
    ("quadratic"), written out, and ``100 · eps`` of the magnitudes summed (per
    value |log 2πv| and λ (y² + f²), as a sum of squares expanded in the fit's
    normal equations would be)."""
    total, scale = neg_log_prior(model, params, None), _prior_scale(model, params)
    for name, kind_of in KINDS["quadratic"].items():
        y, var, mask = observed(data, name)
        theta = _weights(kind_of, params[name])
        e1, _ = _feature_moments(z, np.zeros((len(z), K, K)), _pairs(kind_of))
        f = e1 @ theta.T
        v = var + _scatter2(params[name], theta.shape[0])
        total += np.sum((0.5 * np.log(2 * np.pi * v) + (y - f) ** 2 / (2 * v))[mask])
        scale += np.sum((np.abs(np.log(2 * np.pi * v)) + (y**2 + f**2) / v)[mask])
    return float(total), float(100 * EPS * scale)


# ----------------------------------------------------------------------------------
# Back-ends
# ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data() -> PolluxData:
    return make_data()


def _lazy(data: PolluxData) -> PolluxData:
    """``data`` in Dask arrays of ``ROWS`` stars per chunk."""
    from distributed import default_client

    with pytest.raises(ValueError, match="No clients found"):
        default_client()  # else the Dask calls would run on its workers
    return PolluxData(
        **{
            name: OutputData(
                da.from_array(np.asarray(out.data), chunks=(ROWS, -1)),
                err=da.from_array(np.asarray(out.err), chunks=(ROWS, -1)),
            )
            for name, out in data.items()
        }
    )


def _tree(params) -> dict:
    return {
        name: np.asarray(v)
        if name == "latents"
        else {k: np.asarray(x) for k, x in v.items()}
        for name, v in params.items()
    }


def _n_shards(x) -> int:
    """Devices holding the array ``x`` (a host array: 1)."""
    return len(x.sharding.device_set) if isinstance(x, jax.Array) else 1


def _infer_params(kind: str):
    """The parameters of the `infer_latents` cells (quadratic: ``Q = 0``)."""
    return kind_params(kind, q_scale=0.0 if kind == "quadratic" else 0.3)


def _run(call: str, backend: str, kind: str, data: PolluxData) -> dict:
    """One in-process cell, as plain arrays."""
    model = kind_model(kind)
    kw = {"chunk_size": CHUNK} if backend == "chunked" else {}
    on = _lazy(data) if backend == "dask" else data
    if call == "fit":
        fixed = {"latents": fixed_posterior().mean} if kind == "quadratic" else None
        fit = model.fit(on, fixed_params=fixed, **SWEEPS, **kw)
        return {
            "losses": np.asarray(fit.losses),
            "params": _tree(fit.params),
            "posterior": (
                np.asarray(fit.posterior.mean),
                np.asarray(fit.posterior.cov),
            ),
            "backend": fit.stats.get("backend"),
            "shards": _n_shards(fit.posterior.mean),
        }
    if call == "infer_latents":
        post = model.infer_latents(on, _infer_params(kind), **kw)
        return {
            "mean": np.asarray(post.mean),
            "cov": np.asarray(post.cov),
            "lazy": isinstance(post.mean, da.Array),
            "shards": _n_shards(post.mean),
        }
    given = fixed_posterior()
    if backend == "dask":
        mean, cov = np.asarray(given.mean), np.asarray(given.cov)
        given = LatentPosterior(
            da.from_array(mean, chunks=(ROWS, -1)),
            da.from_array(cov, chunks=(ROWS, -1, -1)),
        )
    pred = model.predict(given, kind_params(kind), param_cov=kind_param_cov(kind), **kw)
    return {
        "outputs": {
            n: (np.asarray(pred[n].data), np.asarray(pred[n].err)) for n in pred.names
        },
        "lazy": all(isinstance(pred[n].data, da.Array) for n in pred.names),
    }


SHARDED = r"""
import json, sys
import jax
jax.config.update("jax_enable_x64", True)
sys.path.insert(0, sys.argv[1])
import numpy as np
from builders import (
    fixed_posterior, kind_model, kind_param_cov, kind_params, make_data,
)

sweeps, n_devices = json.loads(sys.argv[3]), int(sys.argv[4])
assert jax.device_count() == n_devices, jax.devices()
data, arrays, meta = make_data(), {}, {}
for kind in ("linear", "affine"):
    model = kind_model(kind)
    fit = model.fit(data, devices=n_devices, **sweeps)
    post = model.infer_latents(data, kind_params(kind), devices=n_devices)
    pred = model.predict(
        fixed_posterior(), kind_params(kind), param_cov=kind_param_cov(kind),
        devices=n_devices,
    )
    arrays[f"{kind}/losses"] = fit.losses
    for name, p in fit.params.items():
        for key, value in (p.items() if name != "latents" else [("", p)]):
            arrays[f"{kind}/params/{name}/{key}"] = value
    arrays[f"{kind}/fit_mean"] = fit.posterior.mean
    arrays[f"{kind}/fit_cov"] = fit.posterior.cov
    arrays[f"{kind}/mean"] = post.mean
    arrays[f"{kind}/cov"] = post.cov
    for name in pred.names:
        arrays[f"{kind}/pred/{name}/data"] = pred[name].data
        arrays[f"{kind}/pred/{name}/err"] = pred[name].err
    meta[kind] = {
        "fit": len(fit.posterior.mean.sharding.device_set),
        "infer": len(post.mean.sharding.device_set),
        "backend": fit.stats.get("backend"),
    }
np.savez(sys.argv[2], **{k: np.asarray(v) for k, v in arrays.items()})
print("RESULT" + json.dumps(meta))
"""
SHARDED_TIMEOUT = 300


@pytest.fixture(scope="module", autouse=True)
def _sharded_process(request, tmp_path_factory):
    """The sharded cells' subprocess, started with the module's first test when any
    sharded cell is selected, so that it runs beside the in-process cells (on the
    second core) rather than after them; the `sharded` fixture waits for it.
    (`conftest.run_fresh` runs the same way, but in the foreground.)"""
    wanted = any(
        item.module is request.module
        and getattr(item, "callspec", None) is not None
        and item.callspec.params.get("backend") == "sharded"
        for item in request.session.items
    )
    if not wanted:
        yield None
        return
    where = tmp_path_factory.mktemp("sharded")
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={N_DEVICES}",
    }
    args = (str(Path(__file__).parent), str(where / "arrays.npz"))
    args += (json.dumps(SWEEPS), str(N_DEVICES))
    with open(where / "log.txt", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", SHARDED, *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
    try:
        yield proc, where, time.monotonic()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def sharded(_sharded_process) -> dict:
    """Every sharded cell (``devices=2``), from the subprocess."""
    assert _sharded_process is not None, "no sharded cell selected"
    proc, where, started = _sharded_process
    try:
        proc.wait(timeout=max(1.0, SHARDED_TIMEOUT - (time.monotonic() - started)))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        log = (where / "log.txt").read_text()[-3000:]
        pytest.fail(f"the sharded calls did not finish in {SHARDED_TIMEOUT} s:\n{log}")
    log = (where / "log.txt").read_text()
    assert proc.returncode == 0, log[-3000:]
    lines = [ln for ln in log.splitlines() if ln.startswith("RESULT")]
    assert lines, log[-3000:]
    meta = json.loads(lines[-1][len("RESULT") :])
    a = dict(np.load(where / "arrays.npz"))
    cells = {}
    for kind in ("linear", "affine"):
        params: dict = {}
        for key, value in a.items():
            k, what, *rest = key.split("/")
            if k == kind and what == "params":
                name, pname = rest
                if name == "latents":
                    params[name] = value
                else:
                    params.setdefault(name, {})[pname] = value
        outputs = KINDS[kind]
        cells["fit", kind] = {
            "losses": a[f"{kind}/losses"],
            "params": params,
            "posterior": (a[f"{kind}/fit_mean"], a[f"{kind}/fit_cov"]),
            "backend": meta[kind]["backend"],
            "shards": meta[kind]["fit"],
        }
        cells["infer_latents", kind] = {
            "mean": a[f"{kind}/mean"],
            "cov": a[f"{kind}/cov"],
            "lazy": False,
            "shards": meta[kind]["infer"],
        }
        cells["predict", kind] = {
            "outputs": {
                n: (a[f"{kind}/pred/{n}/data"], a[f"{kind}/pred/{n}/err"])
                for n in outputs
            },
            "lazy": False,
        }
    return cells


@pytest.fixture(scope="module")
def cell(request, data):
    """``cell(call, backend, kind)``: each cell run once (on first use) and shared
    by the tests that read it."""
    cache: dict = {}

    def get(call: str, backend: str, kind: str) -> dict:
        if backend == "sharded":
            return request.getfixturevalue("sharded")[call, kind]
        if (call, backend, kind) not in cache:
            cache[call, backend, kind] = _run(call, backend, kind, data)
        return cache[call, backend, kind]

    return get


def _assert_within(got, want, atol, what: str) -> None:
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    err = np.abs(got - want)
    worst = float(np.max(err / atol))
    assert np.all(err <= atol), f"{what}: off by up to {worst:.3g} x the tolerance"


# ----------------------------------------------------------------------------------
# fit
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("backend", "kind"), FIT_CELLS, ids=_ids(FIT_CELLS))
def test_fit(cell, data, backend, kind):
    fit = cell("fit", backend, kind)
    model, params, losses = kind_model(kind), fit["params"], fit["losses"]
    # tol=0 stops early only when a sweep changes nothing (the quadratic fit with
    # fixed latents does: a ridge regression once s has settled).
    assert 1 <= len(losses) - 1 <= SWEEPS["max_iter"]
    if kind != "quadratic":
        assert len(losses) == SWEEPS["max_iter"] + 1
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert fit["backend"] == BACKEND_NAMES[backend]
    assert fit["shards"] == (N_DEVICES if backend == "sharded" else 1)
    if kind == "quadratic":  # the latents held fixed
        z = fixed_posterior().mean
        np.testing.assert_array_equal(params["latents"], z)
        expected, atol = _quadratic_objective(model, data, params, z)
        assert abs(float(losses[-1]) - expected) <= atol, (losses[-1], expected, atol)
        return
    atol = _objective_atol(model, data, params)
    expected = dense_objective(model, data, params)
    assert abs(float(losses[-1]) - expected) <= atol, (losses[-1], expected, atol)
    if backend == "memory":
        return
    # The in-memory iterates, sweep by sweep.
    ref = cell("fit", "memory", kind)
    np.testing.assert_allclose(losses, ref["losses"], rtol=RTOL_FIT)
    for name in model.outputs:
        assert sorted(params[name]) == sorted(ref["params"][name])
        for key, value in ref["params"][name].items():
            np.testing.assert_allclose(
                params[name][key], value, rtol=RTOL_FIT, atol=1e-9, err_msg=key
            )
    for got, want in zip(fit["posterior"], ref["posterior"], strict=True):
        np.testing.assert_allclose(got, want, rtol=RTOL_FIT, atol=1e-9)


# ----------------------------------------------------------------------------------
# infer_latents
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("backend", "kind"), CELLS, ids=_ids(CELLS))
def test_infer_latents(cell, data, backend, kind):
    got = cell("infer_latents", backend, kind)
    model, params = kind_model(kind), _infer_params(kind)
    # (Q = 0 leaves the affine rows, which is all the dense reference reads.)
    mean, cov = dense_posterior(model, data, params, model.outputs)
    cond = _affine_conditioning(model, data, params)
    assert cond.max() > 10  # the conditioning is not trivial
    # A solve errs by ~cond · eps relative to its solution: means of order one,
    # covariances at most the unit prior.
    tol = 100 * EPS * cond
    _assert_within(got["mean"], mean, tol[:, None] * (1 + np.abs(mean)), "mean")
    _assert_within(got["cov"], cov, tol[:, None, None] * np.ones((1, K, K)), "cov")
    assert got["lazy"] == (backend == "dask")  # Dask in, Dask out
    assert got["shards"] == (N_DEVICES if backend == "sharded" else 1)


# ----------------------------------------------------------------------------------
# predict
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("backend", "kind"), CELLS, ids=_ids(CELLS))
def test_predict(cell, backend, kind):
    got = cell("predict", backend, kind)
    post = fixed_posterior()
    ref = _dense_predictive(
        kind, kind_params(kind), post.mean, post.cov, kind_param_cov(kind)
    )
    assert sorted(got["outputs"]) == sorted(KINDS[kind])
    for name, (mu, err) in got["outputs"].items():
        want_mu, want_var, atol_mu, atol_var = ref[name]
        assert mu.shape == err.shape == (N, {"flux": D1, "label": D2}[name])
        _assert_within(mu, want_mu, atol_mu, f"{name} mean")
        _assert_within(np.square(err), want_var, atol_var, f"{name} variance")
    assert got["lazy"] == (backend == "dask")  # a Dask posterior: Dask out
