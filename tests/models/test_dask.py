"""Data held in Dask arrays: fits, posteriors and predictions equal the in-memory
ones, on Dask's local scheduler and on a `LocalCluster` of worker processes, with
a worker killed half-way through a fit or during labelling; checkpoints of a fit
resume where a killed fit stopped. Quadratic outputs (the variational EM, whose
workers keep their stars' posteriors) too.

Tolerances: the Dask path sums the same float64 terms per Dask chunk and then over
chunks (in memory: per kernel chunk), from the same PCA start. Through 12 plain EM
sweeps this moves the objective and the predictions by ≲ 1e-8 relatively (seen:
≤ 1e-9); the issue asks for 1e-6. The variational EM amplifies rounding more
(SQUAREM's step length is a ratio of norms summed in another order): after 20
sweeps or 8 SQUAREM cycles, seen ≤ 1.5e-8 relative in the objective and ≤ 2e-7
absolute in predicted labels of order one.
"""

from __future__ import annotations

import jax

jax.config.update("jax_enable_x64", True)

import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import dask.array as da  # noqa: E402
import numpy as np  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
import pytest  # noqa: E402
from builders import (  # noqa: E402
    CONFIGS,
    big_problem,
    fixed_params_of,
    make_data,
    make_model,
    make_quadratic_model,
)
from distributed import Client, LocalCluster  # noqa: E402

import pollux as plx  # noqa: E402
from pollux.data import OutputData, PolluxData  # noqa: E402
from pollux.fit.backends import _dask  # noqa: E402
from pollux.models.transforms import AffineTransform, QuadraticTransform  # noqa: E402

RTOL = 1e-6
SWEEPS = dict(max_iter=12, tol=0.0, accelerate=False, progress=False)


def _lazy(data: PolluxData, rows: int = 15) -> PolluxData:
    """``data`` as Dask arrays in chunks of ``rows`` stars."""
    return PolluxData(
        **{
            name: OutputData(
                da.from_array(np.asarray(out.data), chunks=(rows, -1)),
                err=da.from_array(np.asarray(out.err), chunks=(rows, -1)),
            )
            for name, out in data.items()
        }
    )


def _gamma_model() -> plx.LuxModel:
    """Scatter priors of both kinds: HalfNormal (bound step) and Gamma (a Newton
    step checked by a third pass over the data)."""
    model = plx.LuxModel(latent_size=2)
    model.register_output(
        "flux", AffineTransform(6, param_priors={"s": dist.HalfNormal(1.0)})
    )
    model.register_output(
        "label", AffineTransform(2, param_priors={"s": dist.Gamma(4.0, 20.0)})
    )
    return model


def _outcome(model, data, fit):
    """The objective and what does not depend on the latents' rotation."""
    post = model.infer_latents(data, fit.params, names=["flux"])
    pred = model.predict(post, fit.params, names=["label"], param_cov=fit.param_cov)
    return (
        np.asarray(fit.losses),
        np.asarray(pred["label"].data),
        np.asarray(pred["label"].err),
    )


def _assert_same(a, b, rtol=RTOL):
    (loss_a, pred_a, err_a), (loss_b, pred_b, err_b) = a, b
    np.testing.assert_allclose(loss_b, loss_a, rtol=rtol)
    scale = np.abs(pred_a).max()
    np.testing.assert_allclose(pred_b, pred_a, rtol=rtol, atol=rtol * scale)
    np.testing.assert_allclose(err_b, err_a, rtol=rtol)


@pytest.fixture(scope="class")
def client():
    """A cluster of two worker processes, the default client while the tests of
    `TestCluster` run (the other tests use Dask's local scheduler)."""
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            worker_dashboard_address=None,
        ) as cluster,
        Client(cluster) as c,
    ):
        yield c


CASES = [(make_model, c) for c in CONFIGS] + [(_gamma_model, None)]


@pytest.mark.parametrize(("make", "config"), CASES, ids=[*CONFIGS, "gamma_prior"])
def test_local_scheduler_matches_memory(make, config):
    model = make() if config is None else make(*CONFIGS[config])
    fixed = None if config is None else fixed_params_of(config)
    data = make_data()
    ref = model.fit(data, fixed_params=fixed, **SWEEPS)
    lazy = _lazy(data)
    fit = model.fit(lazy, fixed_params=fixed, **SWEEPS)
    assert fit.n_iter == ref.n_iter == SWEEPS["max_iter"]
    _assert_same(_outcome(model, data, ref), _outcome(model, data, fit))
    # The same start: the posteriors agree too, star by star.
    scale = np.abs(ref.posterior.mean).max()
    np.testing.assert_allclose(
        fit.posterior.mean, ref.posterior.mean, rtol=RTOL, atol=RTOL * scale
    )
    np.testing.assert_allclose(
        fit.posterior.cov, ref.posterior.cov, rtol=RTOL, atol=RTOL
    )
    # Posteriors and predictions of Dask data are Dask arrays, chunked like it.
    post = model.infer_latents(lazy, fit.params, names=["flux"])
    assert isinstance(post.mean, da.Array) and post.mean.chunks[0] == (15, 15, 10)
    pred = model.predict(post, fit.params, names=["label"], param_cov=fit.param_cov)
    assert isinstance(pred["label"].data, da.Array)
    memory = _outcome(model, data, fit)
    np.testing.assert_allclose(pred["label"].data.compute(), memory[1], rtol=1e-12)
    np.testing.assert_allclose(pred["label"].err.compute(), memory[2], rtol=1e-12)


class TestCluster:
    def test_matches_memory_and_moves_only_sums(self, client):
        model, data = _gamma_model(), make_data()
        in_memory = model.fit(data, **SWEEPS)
        ref = _outcome(model, data, in_memory)
        fit = model.fit(_lazy(data, rows=7), **SWEEPS)  # 6 chunks on 2 workers
        _assert_same(ref, _outcome(model, data, fit))
        assert fit.stats["backend"] == "dask" and fit.stats["workers"] == 2
        assert in_memory.stats == {"backend": "local", "devices": 1}
        # Per pass: the parameters to each worker, one set of sums from each (the
        # chunks are summed where they are); never the data (40 × 8 × 2 floats).
        per_pass = fit.stats["bytes_received"] / fit.stats["passes"]
        stats_size = 8 * sum(d * (2 + 2 + 1) ** 2 for d in (6, 2))  # generous bound
        assert per_pass <= 2 * stats_size

    def test_quadratic_squarem_fit_on_two_workers_matches_memory(self, client):
        model, data, ref, fit = _quadratic_fits(False, True)
        _assert_same_quadratic(model, data, ref, fit)
        assert fit.stats["workers"] == 2
        # Per pass: one set of sums from each worker, never the spectra; the
        # M-step sums are the largest (per output: D × (T + M) for M features
        # and T packed pairs; K = 2: M = 6, T = 21).
        per_pass = fit.stats["bytes_received"] / fit.stats["passes"]
        assert per_pass <= 2 * 8 * sum(d * (21 + 6 + 2) for d in (6, 2))
        assert per_pass < np.asarray(data["flux"].data).nbytes

    @pytest.mark.parametrize("kind", ["affine", "quadratic"])
    def test_fit_survives_a_killed_worker(self, client, monkeypatch, kind):
        # Killed three quarters into the passes. Quadratic: the lost chunks'
        # posteriors are recomputed from their lineage (the passes before).
        if kind == "affine":
            model, settings = make_model(*CONFIGS["scatter"]), dict(SWEEPS, max_iter=30)
        else:
            model = make_quadratic_model()
            settings = dict(SWEEPS, max_iter=10, accelerate=True)
        data = make_data()
        lazy = _lazy(data, rows=7)
        passes = {"run": 0}
        run = _dask.Runner.run

        def counted(self, *args, **kwargs):  # the passes of this fit, as they run
            passes["run"] += 1
            return run(self, *args, **kwargs)

        monkeypatch.setattr(_dask.Runner, "run", counted)
        undisturbed = _outcome(model, data, model.fit(lazy, **settings))
        # (the quadratic fit's passes come after its affine start's)
        total = passes["run"]
        kill_at, passes["run"] = total * 3 // 4, 0
        pids = client.run(os.getpid)
        victim = sorted(pids)[0]
        killed = {}

        def kill_half_way():
            while passes["run"] < kill_at:
                time.sleep(0.005)
            killed["at"] = passes["run"]
            os.kill(pids[victim], signal.SIGKILL)

        killer = threading.Thread(target=kill_half_way, daemon=True)
        killer.start()
        fit = model.fit(lazy, **settings)
        killer.join(timeout=60)
        assert killed and killed["at"] < total == passes["run"]  # during the fit
        assert pids[victim] not in client.run(os.getpid).values()  # it did die
        # Dask recomputed the lost chunks (in the same groups, now on the other
        # worker): the same sums up to rounding (seen: 3e-10 relative after 30 sweeps).
        _assert_same(undisturbed, _outcome(model, data, fit))

    def test_labelling_survives_a_killed_worker(self, client):
        from distributed import as_completed, wait

        model, data = make_model(*CONFIGS["scatter"]), make_data()
        fit = model.fit(data, **SWEEPS)
        _, labels, errs = _outcome(model, data, fit)
        post = model.infer_latents(_lazy(data, rows=7), fit.params, names=["flux"])
        pred = model.predict(
            post, fit.params, names=["label"], param_cov=fit.param_cov
        )["label"]
        parts = client.compute(
            [*pred.data.to_delayed().ravel(), *pred.err.to_delayed().ravel()]
        )
        # Kill the worker holding the first finished chunk: its results are lost
        # and Dask recomputes them from the data on the other worker.
        first = next(as_completed(parts))
        holder = next(iter(client.who_has([first])[first.key]))
        pid = client.run(os.getpid, workers=[holder])[holder]
        os.kill(pid, signal.SIGKILL)
        wait(parts, timeout=120)
        got = client.gather(parts)
        assert pid not in client.run(os.getpid).values()  # it did die
        half = len(parts) // 2
        for part, want in [(got[:half], labels), (got[half:], errs)]:
            np.testing.assert_allclose(
                np.concatenate(part), want, rtol=1e-12, atol=1e-12 * np.abs(want).max()
            )


# ----------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------
def test_checkpoint_resume_continues_the_same_iterations(tmp_path):
    model, data = make_model(*CONFIGS["scatter"]), make_data()
    path = tmp_path / "fit.npz"
    whole = model.fit(data, **dict(SWEEPS, max_iter=15))
    first = model.fit(data, checkpoint=path, checkpoint_every=4, **SWEEPS)
    assert first.n_iter == 12 and path.exists()
    resumed = model.fit(data, checkpoint=path, **dict(SWEEPS, max_iter=15))
    assert resumed.n_iter == 15
    np.testing.assert_array_equal(resumed.losses, whole.losses)
    np.testing.assert_array_equal(
        resumed.params["flux"]["A"], whole.params["flux"]["A"]
    )
    # A finished fit's file: called again, it returns at once with the same result.
    again = model.fit(data, checkpoint=path, **dict(SWEEPS, max_iter=15))
    np.testing.assert_array_equal(again.losses, whole.losses)


def test_checkpoint_resume_on_dask_data(tmp_path):
    model, data = make_model(*CONFIGS["scatter"]), make_data()
    lazy, path = _lazy(data), tmp_path / "fit.npz"
    whole = model.fit(lazy, **SWEEPS)
    model.fit(lazy, checkpoint=path, checkpoint_every=3, **dict(SWEEPS, max_iter=5))
    resumed = model.fit(lazy, checkpoint=path, **SWEEPS)
    np.testing.assert_allclose(resumed.losses, whole.losses, rtol=1e-12)


KILLED = r"""
import sys
import jax
jax.config.update("jax_enable_x64", True)
sys.path.insert(0, sys.argv[1])
from builders import CONFIGS, make_model
from builders import big_problem
model, data = make_model(*CONFIGS["scatter"]), big_problem()
model.fit(data, checkpoint=sys.argv[2], checkpoint_every=2, max_iter=100_000,
          tol=0.0, accelerate=False, progress=False)
"""


def test_killed_fit_resumes_from_its_checkpoint(tmp_path):
    path = tmp_path / "fit.npz"
    here = str(Path(__file__).parent)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen([sys.executable, "-c", KILLED, here, str(path)], env=env)
    try:
        deadline = time.monotonic() + 240
        n_saved = 0
        while n_saved < 6:
            assert proc.poll() is None, "the fit ended before it was killed"
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.05)
            if path.exists():
                try:
                    n_saved = int(np.load(path)["n_iter"])
                except (OSError, ValueError, KeyError):
                    n_saved = 0  # being replaced
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    n_saved = int(np.load(path)["n_iter"])
    model, data = make_model(*CONFIGS["scatter"]), big_problem()
    total = n_saved + 20
    settings = dict(SWEEPS, max_iter=total)
    resumed = model.fit(data, checkpoint=path, **settings)
    whole = model.fit(data, **settings)
    assert resumed.n_iter == whole.n_iter == total
    # The killed process ran the same programs on the same inputs (another
    # process: equal up to rounding).
    np.testing.assert_allclose(resumed.losses, whole.losses, rtol=1e-10)
    np.testing.assert_allclose(
        resumed.params["flux"]["A"], whole.params["flux"]["A"], rtol=1e-8, atol=1e-10
    )


# ----------------------------------------------------------------------------------
# Refusals
# ----------------------------------------------------------------------------------
def test_bad_checkpoint_arguments(tmp_path):
    model, data = make_model(*CONFIGS["scatter"]), make_data()
    with pytest.raises(TypeError, match=r"fit\(checkpoint=\.\.\.\): expected a file"):
        model.fit(data, checkpoint=3, progress=False)
    with pytest.raises(ValueError, match=r"checkpoint_every"):
        model.fit(data, checkpoint=tmp_path / "a.npz", checkpoint_every=0)
    path = tmp_path / "b.npz"
    model.fit(data, checkpoint=path, **dict(SWEEPS, max_iter=2))
    with pytest.raises(ValueError, match="written by a different fit"):
        model.fit(data[:30], checkpoint=path, **SWEEPS)
    quad = plx.LuxModel(latent_size=2)
    quad.register_output("flux", QuadraticTransform(6))
    quad.register_output("label", AffineTransform(2))
    with pytest.raises(ValueError, match="affine outputs only"):
        quad.fit(data, checkpoint=tmp_path / "c.npz", progress=False)
    # Another fit: other fixed values, another prior, fewer iterations than saved.
    with pytest.raises(ValueError, match="written by a different fit"):
        model.fit(
            data,
            fixed_params={"label": {"s": np.float64(0.3)}},
            checkpoint=path,
            **SWEEPS,
        )
    other = make_model("scalar", "scalar")  # a scalar flux scatter: another prior
    with pytest.raises(ValueError, match="written by a different fit"):
        other.fit(data, checkpoint=path, **SWEEPS)
    with pytest.raises(ValueError, match="holds 2 iterations, more than max_iter=1"):
        model.fit(data, checkpoint=path, **dict(SWEEPS, max_iter=1))
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="cannot be read"):
        model.fit(data, checkpoint=tmp_path / "junk.npz", **SWEEPS)


def test_checkpoint_of_a_converged_fit_goes_on_with_a_smaller_tol(tmp_path):
    model, data = make_model(*CONFIGS["scatter"]), make_data()
    path = tmp_path / "fit.npz"
    loose = model.fit(data, checkpoint=path, tol=1e-3, progress=False)
    assert loose.converged
    again = model.fit(data, checkpoint=path, tol=1e-3, progress=False)
    assert again.n_iter == loose.n_iter  # converged: nothing more to run
    tight = model.fit(data, checkpoint=path, tol=1e-9, progress=False)
    assert tight.converged and tight.n_iter > loose.n_iter
    assert tight.losses[-1] < loose.losses[-1]


def test_fits_on_devices_read_dask_data_into_memory():
    model, data = make_model(*CONFIGS["scatter"]), make_data()
    ref = model.fit(data, **SWEEPS)
    np.testing.assert_array_equal(
        model.fit(_lazy(data), devices=1, **SWEEPS).losses, ref.losses
    )


# ----------------------------------------------------------------------------------
# Quadratic outputs: the variational EM on the chunks
# ----------------------------------------------------------------------------------
QUADRATIC = [(False, False), (True, False), (False, True)]  # fixed latents, SQUAREM


def _quadratic_fits(fixed_latents: bool, accelerate: bool, rows: int = 7):
    """The same variational fit in memory and on Dask chunks of ``rows`` stars:
    20 plain sweeps or 8 SQUAREM cycles."""
    model, data = make_quadratic_model(fixed_latents), make_data()
    z = fixed_params_of("fixed_latents")["latents"]
    kw = dict(
        fixed_params={"latents": z} if fixed_latents else None,
        progress=False,
        accelerate=accelerate,
        max_iter=8 if accelerate else 20,
        tol=0.0,
    )
    return model, data, model.fit(data, **kw), model.fit(_lazy(data, rows), **kw)


def _assert_same_quadratic(model, data, ref, fit):
    assert fit.n_iter == ref.n_iter
    assert fit.stats["backend"] == "dask" and ref.stats["backend"] == "local"
    loss_a, pred_a, err_a = _outcome(model, data, ref)
    loss_b, pred_b, err_b = _outcome(model, data, fit)
    np.testing.assert_allclose(loss_b, loss_a, rtol=RTOL)
    np.testing.assert_allclose(pred_b, pred_a, rtol=RTOL, atol=1e-6)
    np.testing.assert_allclose(err_b, err_a, rtol=RTOL, atol=1e-6)
    np.testing.assert_allclose(
        fit.posterior.mean, ref.posterior.mean, rtol=RTOL, atol=1e-6
    )
    np.testing.assert_allclose(fit.posterior.cov, ref.posterior.cov, atol=1e-6)
    for name in ("flux", "label"):
        for key, value in ref.params[name].items():
            np.testing.assert_allclose(
                fit.params[name][key], value, rtol=RTOL, atol=1e-6
            )


@pytest.mark.parametrize(("fixed_latents", "accelerate"), QUADRATIC)
def test_quadratic_fit_on_the_local_scheduler_matches_memory(fixed_latents, accelerate):
    # Its affine start, a fit of the same Dask data, runs on the Dask path too.
    model, data, ref, fit = _quadratic_fits(fixed_latents, accelerate)
    _assert_same_quadratic(model, data, ref, fit)


def test_bad_dask_data_is_refused():
    model, data = make_model(*CONFIGS["scatter"]), make_data()
    lazy = _lazy(data)
    flux = np.asarray(data["flux"].data).copy()
    flux[33, 2] = np.inf  # in the last chunk: found when it is read
    bad = PolluxData(
        flux=OutputData(da.from_array(flux, chunks=(15, -1)), err=lazy["flux"].err),
        label=lazy["label"],
    )
    with pytest.raises(ValueError, match=r"output 'flux'.*infinite"):
        model.fit(bad, **SWEEPS)
    with pytest.raises(ValueError, match="does not match data shape"):
        OutputData(lazy["flux"].data, err=lazy["label"].err)
    assert lazy["flux"].lazy and not data["flux"].lazy
