"""User mistakes (docs/architecture.md, "Bad input"): an immediate ValueError or
TypeError that names the argument, raised by pollux itself (not a JAX/numpyro
traceback from deep inside)."""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

import pollux as plx
from pollux.data import OutputData, PolluxData
from pollux.models.transforms import LinearTransform

QUIET = {"progress_bar": False}
N, K, D, L = 10, 2, 6, 2


PACKAGE_DIR = Path(plx.__file__).resolve().parent


def raised_by_pollux(excinfo) -> bool:
    """The exception comes from pollux's own checks (its innermost frame)."""
    return PACKAGE_DIR in Path(excinfo.traceback[-1].path).resolve().parents


@pytest.fixture
def model():
    m = plx.LuxModel(latent_size=K)
    m.register_output("flux", LinearTransform(D))
    m.register_output("label", LinearTransform(L))
    return m


@pytest.fixture
def data(rng):
    return PolluxData(
        flux=OutputData(rng.normal(size=(N, D)), err=np.full((N, D), 0.1)),
        label=OutputData(rng.normal(size=(N, L)), err=np.full((N, L), 0.1)),
    )


def optimize(model, data, **kw):
    kw.setdefault("svi_run_kwargs", QUIET)
    return model.optimize(data, num_steps=2, rng_key=0, **kw)


# Data containers ------------------------------------------------------------------


def test_err_shape_mismatch():
    with pytest.raises(
        ValueError, match=r"OutputData\(err=\.\.\.\).*\(5, 3\).*\(5, 4\)"
    ) as e:
        OutputData(np.ones((5, 4)), err=np.ones((5, 3)))
    assert raised_by_pollux(e)


def test_negative_error():
    err = np.full((5, 4), 0.1)
    err[2, 1] = -0.1
    with pytest.raises(ValueError, match=r"OutputData\(err=\.\.\.\).*negative") as e:
        OutputData(np.ones((5, 4)), err=err)
    assert raised_by_pollux(e)


def test_nan_error():
    err = np.full((5, 4), 0.1)
    err[0, 0] = np.nan
    with pytest.raises(ValueError, match=r"OutputData\(err=\.\.\.\).*NaN") as e:
        OutputData(np.ones((5, 4)), err=err)
    assert raised_by_pollux(e)


def test_nan_data_with_finite_error_is_missing_not_an_error():
    x = np.ones((5, 4))
    x[1, 1] = np.nan
    out = OutputData(x, err=np.full((5, 4), 0.1))
    assert np.isnan(np.asarray(out.data)[1, 1])


@pytest.mark.parametrize("value", [np.inf, -np.inf])
def test_infinite_data(value):
    x = np.ones((5, 4))
    x[3, 2] = value
    with pytest.raises(
        ValueError, match=r"OutputData\(data=\.\.\.\).*1 value\(s\) are infinite"
    ) as e:
        OutputData(x, err=np.full((5, 4), 0.1))
    assert raised_by_pollux(e)


def test_non_numeric_data():
    with pytest.raises(TypeError, match=r"OutputData\(data=\.\.\.\)"):
        OutputData(np.array([["a", "b"]]))


def test_outputs_of_different_lengths():
    with pytest.raises(
        ValueError, match=r"same number of stars.*'flux': 10.*'label': 9"
    ) as e:
        PolluxData(flux=OutputData(np.ones((10, 3))), label=OutputData(np.ones((9, 2))))
    assert raised_by_pollux(e)


# LuxModel construction ---------------------------------------------------------------


@pytest.mark.parametrize(
    "latent_size, exc",
    [
        (0, ValueError),
        (-3, ValueError),
        (2.0, TypeError),
        ("8", TypeError),
        (None, TypeError),
        (True, TypeError),
    ],
)
def test_bad_latent_size(latent_size, exc):
    with pytest.raises(exc, match=r"LuxModel\(latent_size=\.\.\.\)"):
        plx.LuxModel(latent_size=latent_size)


def test_duplicate_register_output(model):
    with pytest.raises(
        ValueError, match=r"register_output.*'flux'.*already registered"
    ):
        model.register_output("flux", LinearTransform(D))
    assert isinstance(model.outputs["flux"], LinearTransform)  # unchanged


# optimize --------------------------------------------------------------------------


def test_optimize_non_pollux_data(model, data):
    for bad in ({"flux": np.ones((N, D))}, data["flux"], np.ones((N, D))):
        with pytest.raises(
            TypeError, match=r"optimize\(data=\.\.\.\).*PolluxData"
        ) as e:
            optimize(model, bad)
        assert raised_by_pollux(e)


def test_data_with_none_of_the_outputs(model, rng):
    other = PolluxData(
        spectrum=OutputData(rng.normal(size=(N, D)), err=np.ones((N, D)))
    )
    with pytest.raises(
        ValueError, match=r"data holds none of the model's outputs.*spectrum"
    ) as e:
        optimize(model, other)
    assert raised_by_pollux(e)


def test_unregistered_name_in_names(model, data):
    with pytest.raises(
        ValueError, match=r"optimize\(names=\.\.\.\): 'spectrum' is not a registered"
    ) as e:
        optimize(model, data, names=["flux", "spectrum"])
    assert raised_by_pollux(e)


def test_registered_name_missing_from_data(model, data):
    flux_only = PolluxData(flux=data["flux"])
    with pytest.raises(
        ValueError, match=r"optimize\(names=\.\.\.\): the data has no output 'label'"
    ):
        optimize(model, flux_only, names=["label"])


def test_empty_names(model, data):
    with pytest.raises(ValueError, match=r"names=\.\.\."):
        optimize(model, data, names=[])


def test_unregistered_name_in_fixed_params(model, data):
    with pytest.raises(
        ValueError,
        match=r"optimize\(fixed_params=\.\.\.\): 'spectrum' is not a registered",
    ) as e:
        optimize(model, data, fixed_params={"spectrum": {"A": np.zeros((D, K))}})
    assert raised_by_pollux(e)


@pytest.mark.parametrize("shape", [(D, K + 1), (K, D), (D,), ()])
def test_fixed_params_wrong_shape(model, data, shape):
    with pytest.raises(
        ValueError,
        match=rf"fixed_params\['flux'\]\['A'\]\): expected shape \({D}, {K}\), got",
    ) as e:
        optimize(model, data, fixed_params={"flux": {"A": np.zeros(shape)}})
    assert raised_by_pollux(e)


def test_fixed_latents_wrong_shape(model, data):
    with pytest.raises(ValueError, match=r"fixed_params\['latents'\]\).*3 stars.*10"):
        optimize(model, data, fixed_params={"latents": np.zeros((3, K))})
    with pytest.raises(
        ValueError, match=r"fixed_params\['latents'\]\).*\(n_stars, 2\)"
    ):
        optimize(model, data, fixed_params={"latents": np.zeros((N, K + 1))})


def test_fixed_params_unknown_parameter(model, data):
    with pytest.raises(
        ValueError, match=r"fixed_params\['flux'\]\['b'\]\).*has no parameter 'b'"
    ):
        optimize(model, data, fixed_params={"flux": {"b": np.zeros(D)}})


def test_fixed_params_not_finite(model, data):
    A = np.zeros((D, K))
    A[0, 0] = np.nan
    with pytest.raises(ValueError, match=r"fixed_params\['flux'\]\['A'\]\).*finite"):
        optimize(model, data, fixed_params={"flux": {"A": A}})


def test_fixed_params_not_a_dict(model, data):
    with pytest.raises(TypeError, match=r"fixed_params"):
        optimize(model, data, fixed_params=[("flux", np.zeros((D, K)))])
    with pytest.raises(TypeError, match=r"fixed_params\['flux'\]"):
        optimize(model, data, fixed_params={"flux": np.zeros((D, K))})


def test_output_with_neither_err_nor_s(model, rng):
    no_err = PolluxData(
        flux=OutputData(rng.normal(size=(N, D))),
        label=OutputData(rng.normal(size=(N, L)), err=np.full((N, L), 0.1)),
    )
    with pytest.raises(
        ValueError,
        match=r"output 'flux' has no reported errors and no extra scatter 's'",
    ) as e:
        optimize(model, no_err)
    assert raised_by_pollux(e)


def test_zero_error_without_s(model, rng):
    err = np.full((N, D), 0.1)
    err[4, 4] = 0.0
    zero = PolluxData(flux=OutputData(rng.normal(size=(N, D)), err=err))
    with pytest.raises(
        ValueError, match=r"output 'flux' has observed values with zero error"
    ):
        optimize(model, zero)


def test_bad_num_steps(model, data):
    for bad, exc in (
        (0, ValueError),
        (-5, ValueError),
        (2.5, TypeError),
        (True, TypeError),
    ):
        with pytest.raises(exc, match=r"num_steps=\.\.\."):
            model.optimize(data, num_steps=bad, rng_key=0, svi_run_kwargs=QUIET)


def test_bad_rng_key(model, data):
    with pytest.raises(TypeError, match=r"rng_key=\.\.\."):
        model.optimize(data, num_steps=2, rng_key="seed", svi_run_kwargs=QUIET)


def test_bad_latent_prior(model, data):
    with pytest.raises(TypeError, match=r"latent_prior=\.\.\."):
        optimize(model, data, latent_prior="normal")
    with pytest.raises(ValueError, match=r"latent_prior=\.\.\."):
        optimize(model, data, latent_prior=dist.Normal(jnp.zeros(K + 1), 1.0))


def test_bad_svi_run_kwargs(model, data):
    with pytest.raises(TypeError, match=r"svi_run_kwargs=\.\.\."):
        optimize(model, data, svi_run_kwargs=["progress_bar"])


def test_model_without_outputs(data):
    with pytest.raises(ValueError, match="register_output"):
        optimize(plx.LuxModel(latent_size=K), data)


def test_data_width_differs_from_output_size(model, rng):
    wide = PolluxData(
        flux=OutputData(rng.normal(size=(N, D + 1)), err=np.ones((N, D + 1)))
    )
    with pytest.raises(ValueError, match=rf"'flux'.*{D + 1}.*output_size={D}") as e:
        optimize(model, wide)
    assert raised_by_pollux(e)


def test_repeated_name_in_names(model, data):
    # (repeating an output would count its likelihood twice)
    with pytest.raises(ValueError, match=r"optimize\(names=\.\.\.\).*'flux'") as e:
        optimize(model, data, names=["flux", "flux"])
    assert raised_by_pollux(e)


# predict_outputs ------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(N, K + 1), (N, K - 1), (K,), (N, K, 1)])
def test_predict_outputs_latents_wrong_width(model, shape):
    with pytest.raises(
        ValueError,
        match=r"predict_outputs\(latents=\.\.\.\): latents must have shape \(n_stars, 2\)",
    ) as e:
        model.predict_outputs(np.zeros(shape), {"flux": {"A": np.zeros((D, K))}})
    assert raised_by_pollux(e)


def test_predict_outputs_unregistered_name(model):
    with pytest.raises(
        ValueError, match=r"predict_outputs\(names=\.\.\.\): 'spectrum'"
    ):
        model.predict_outputs(
            np.zeros((N, K)), {"flux": {"A": np.zeros((D, K))}}, names=["spectrum"]
        )


def test_predict_outputs_params_wrong_shape(model):
    with pytest.raises(
        ValueError, match=r"predict_outputs\(params\['flux'\]\['A'\]\): expected shape"
    ):
        model.predict_outputs(np.zeros((N, K)), {"flux": {"A": np.zeros((D, K + 1))}})


@pytest.mark.parametrize("flux_transform", ["LinearTransform", "QuadraticTransform"])
def test_params_without_the_declared_scatter(data, flux_transform):
    from pollux.models import transforms

    m = plx.LuxModel(latent_size=K)
    s_prior = {"s": dist.HalfNormal(jnp.ones(D))}
    m.register_output(
        "flux", getattr(transforms, flux_transform)(D, param_priors=s_prior)
    )
    shapes = m.outputs["flux"].param_shapes(K)
    params = {"flux": {p: np.zeros(shapes[p]) for p in m.outputs["flux"].param_names}}
    with pytest.raises(
        ValueError, match=r"infer_latents\(params=\.\.\.\).*'flux'.*'s'"
    ) as e:
        m.infer_latents(data, params, names=["flux"])
    assert raised_by_pollux(e)
    post = plx.LatentPosterior(np.zeros((N, K)), np.broadcast_to(np.eye(K), (N, K, K)))
    with pytest.raises(ValueError, match=r"predict\(params=\.\.\.\).*'flux'.*'s'"):
        m.predict(post, params, names=["flux"])
