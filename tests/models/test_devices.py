"""Stars sharded over several JAX devices (``devices=``) give the one-device results.

Several CPU devices exist only in a fresh interpreter started with
``XLA_FLAGS=--xla_force_host_platform_device_count=4``; the comparison runs there.
Tolerance: the devices sum their shares of every sum over stars and then add the
partial sums, a different order of the same float64 additions; through 20 plain EM
sweeps this moves the objective and the predictions by ≲ 1e-7 relatively (the
EM map amplifies rounding by about the condition number of the normal
equations, as in test_chunked). The issue asks for 1e-6.
"""

from __future__ import annotations

import jax

jax.config.update("jax_enable_x64", True)

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from builders import (  # noqa: E402
    CONFIGS,
    make_data,
    make_model,
    make_quadratic_model,
)

RTOL = 1e-6

SCRIPT = r"""
import json, sys
import jax
jax.config.update("jax_enable_x64", True)
sys.path.insert(0, sys.argv[1])
import numpy as np
from builders import CONFIGS, make_data, fixed_params_of, make_model, make_quadratic_model

assert jax.device_count() == 4, jax.devices()
CASES = [(c, False) for c in CONFIGS] + [("scatter", True), ("fixed_latents", True)]
out = {}
for config, accelerate in CASES:
        runs = {}
        for devices in (None, 4, 3):
            model = make_model(*CONFIGS[config])
            data = make_data()
            fit = model.fit(
                data, fixed_params=fixed_params_of(config), progress=False,
                accelerate=accelerate, devices=devices,
                # plain: 20 sweeps; SQUAREM: to convergence (as in test_chunked)
                max_iter=500 if accelerate else 20, tol=1e-9 if accelerate else 0.0,
            )
            post = model.infer_latents(data, fit.params, names=["flux"], devices=devices)
            pred = model.predict(
                post, fit.params, names=["label"], param_cov=fit.param_cov,
                devices=devices,
            )
            runs[devices] = {
                "loss": float(fit.losses[-1]),
                "n_iter": fit.n_iter,
                "pred": np.asarray(pred["label"].data).tolist(),
                "err": np.asarray(pred["label"].err).tolist(),
                "shape": list(post.mean.shape),
                "shards": len(fit.posterior.mean.sharding.device_set),
            }
        out[f"{config}/{accelerate}"] = runs
# Quadratic flux (variational EM): 20 plain sweeps, or 8 SQUAREM cycles
for fixed_latents, accelerate in ((False, False), (True, False), (False, True)):
    runs = {}
    for devices in (None, 4, 3):
        model = make_quadratic_model(fixed_latents)
        data = make_data()
        z = fixed_params_of("fixed_latents")["latents"]
        fit = model.fit(
            data, fixed_params={"latents": z} if fixed_latents else None,
            progress=False, accelerate=accelerate, devices=devices,
            max_iter=8 if accelerate else 20, tol=0.0,
        )
        post = model.infer_latents(data, fit.params, names=["flux"])
        pred = model.predict(post, fit.params, names=["label"], param_cov=fit.param_cov)
        runs[devices] = {
            "loss": float(fit.losses[-1]),
            "n_iter": fit.n_iter,
            "pred": np.asarray(pred["label"].data).tolist(),
            "err": np.asarray(pred["label"].err).tolist(),
            "shape": list(fit.posterior.mean.shape),
            "shards": len(fit.params["latents"].sharding.device_set),
            "stats": fit.stats,
        }
    out[f"quadratic/{fixed_latents}/{accelerate}"] = runs
print("RESULT" + json.dumps(out))
"""


@pytest.fixture(scope="module")
def runs(run_fresh):
    here = str(Path(__file__).parent)
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    return run_fresh(SCRIPT, here, env=env, timeout=900)


@pytest.mark.parametrize("config", list(CONFIGS))
def test_sharded_em_sweeps_equal_one_device(runs, config):
    by_devices = runs[f"{config}/False"]
    one = by_devices["null"]
    for devices in ("4", "3"):
        run = by_devices[devices]
        assert run["shape"] == one["shape"] == [40, 2]
        assert run["n_iter"] == one["n_iter"] == 20
        np.testing.assert_allclose(run["loss"], one["loss"], rtol=RTOL)
        np.testing.assert_allclose(run["pred"], one["pred"], rtol=RTOL, atol=1e-9)
        np.testing.assert_allclose(run["err"], one["err"], rtol=RTOL, atol=1e-9)
    assert by_devices["4"]["shards"] == 4 and one["shards"] == 1


@pytest.mark.parametrize("config", ["scatter", "fixed_latents"])
def test_sharded_squarem_fit_reaches_the_one_device_optimum(runs, config):
    # SQUAREM accepts an extrapolation or not by comparing two objectives, which
    # rounding can flip: only the converged objective and predictions are compared
    # (tolerances of test_chunked).
    by_devices = runs[f"{config}/True"]
    one = by_devices["null"]
    for devices in ("4", "3"):
        run = by_devices[devices]
        np.testing.assert_allclose(run["loss"], one["loss"], rtol=1e-8)
        np.testing.assert_allclose(run["pred"], one["pred"], atol=1e-5)
        np.testing.assert_allclose(run["err"], one["err"], atol=1e-5)


@pytest.mark.parametrize(
    ("devices", "error", "fragment"),
    [
        (2, ValueError, "JAX sees 1 device"),
        (0, ValueError, "JAX sees 1 device"),
        ("all", TypeError, "number of devices or a list"),
        (True, TypeError, "number of devices or a list"),
        ([], TypeError, "non-empty list of JAX devices"),
        ([jax.devices()[0]] * 2, ValueError, "listed twice"),
    ],
)
def test_bad_devices_are_refused_naming_the_call(devices, error, fragment):
    model = make_model(*CONFIGS["plain"])
    data = make_data()
    with pytest.raises(error, match=r"LuxModel\.fit\(devices=\.\.\.\)") as info:
        model.fit(data, max_iter=1, progress=False, devices=devices)
    assert fragment in str(info.value)
    with pytest.raises(error, match=r"LuxModel\.infer_latents\(devices=\.\.\.\)"):
        model.infer_latents(data, {}, devices=devices)


def test_one_listed_device_is_the_one_device_fit():
    model = make_model(*CONFIGS["scatter"])
    data = make_data()
    kw = {"max_iter": 5, "tol": 0.0, "progress": False, "accelerate": False}
    one = model.fit(data, **kw)
    for devices in ([jax.devices()[0]], np.array(jax.devices()[:1]), np.int64(1)):
        listed = model.fit(data, devices=devices, **kw)
        np.testing.assert_allclose(listed.losses, one.losses, rtol=1e-12)


@pytest.mark.parametrize(
    ("fixed_latents", "accelerate"), [(False, False), (True, False), (False, True)]
)
def test_sharded_quadratic_fit_equals_one_device(runs, fixed_latents, accelerate):
    # The variational EM (affine start, sweeps, final E-step) with every sum over
    # stars completed over the devices, SQUAREM's step length included.
    by_devices = runs[f"quadratic/{fixed_latents}/{accelerate}"]
    one = by_devices["null"]
    # The devices sum over stars in another order. SQUAREM's step length is a
    # ratio of such sums; seen after 8 cycles: 1.1e-8 absolute on labels of
    # order one. Plain sweeps: seen 8.7e-9 after 20 (a label of 0.007 on a 2-core
    # x86 CPU, 2026-12-08; other CPUs gave under 1e-9). Both within 1e-7 of
    # labels of order one, i.e. 1e-7 relative to the predictions' scale.
    atol = 1e-7
    for devices in ("4", "3"):
        run = by_devices[devices]
        assert run["shape"] == one["shape"] == [40, 2]
        assert run["n_iter"] == one["n_iter"] == (8 if accelerate else 20)
        assert run["stats"] == {"backend": "sharded", "devices": int(devices)}
        np.testing.assert_allclose(run["loss"], one["loss"], rtol=RTOL)
        np.testing.assert_allclose(run["pred"], one["pred"], rtol=RTOL, atol=atol)
        np.testing.assert_allclose(run["err"], one["err"], rtol=RTOL, atol=atol)
    assert by_devices["4"]["shards"] == 4 and one["shards"] == 1


def test_quadratic_posteriors_stay_on_one_device():
    model = make_quadratic_model()
    data = make_data()
    fit = model.fit(data, max_iter=2, progress=False)
    with pytest.raises(ValueError, match=r"infer_latents\(devices=\.\.\.\).*one"):
        model.infer_latents(data, fit.params, names=["flux"], devices=1)
