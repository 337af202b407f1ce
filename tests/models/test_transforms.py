"""Transforms: outputs against hand-computed numpy, shapes and priors."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

import pollux as plx
from pollux.core.features import feature_index, features
from pollux.models.transforms import (
    AffineTransform,
    FunctionTransform,
    LinearTransform,
    OffsetTransform,
    QuadraticTransform,
    TransformSequence,
)

N, K, D = 7, 3, 4


@pytest.fixture
def z(rng):
    return rng.normal(size=(N, K))


@pytest.fixture
def A(rng):
    return rng.normal(size=(D, K))


@pytest.fixture
def b(rng):
    return rng.normal(size=D)


# apply() ------------------------------------------------------------------------


def test_linear_apply(z, A):
    t = LinearTransform(output_size=D)
    out = np.asarray(t.apply(jnp.asarray(z), A=jnp.asarray(A)))
    expected = np.array([[A[d] @ z[n] for d in range(D)] for n in range(N)])
    np.testing.assert_allclose(out, expected, rtol=1e-12)


def test_affine_apply(z, A, b):
    t = AffineTransform(output_size=D)
    out = np.asarray(t.apply(jnp.asarray(z), A=jnp.asarray(A), b=jnp.asarray(b)))
    np.testing.assert_allclose(out, z @ A.T + b, rtol=1e-12)


def test_quadratic_apply(z, A, b, rng):
    Q = rng.normal(size=(D, K, K))
    t = QuadraticTransform(output_size=D)
    out = np.asarray(t.apply(jnp.asarray(z), Q=Q, A=A, b=b))
    expected = np.empty((N, D))
    for n in range(N):
        for d in range(D):
            expected[n, d] = z[n] @ Q[d] @ z[n] + A[d] @ z[n] + b[d]
    np.testing.assert_allclose(out, expected, rtol=1e-10)


def test_offset_apply(rng):
    x = rng.normal(size=(N, D))
    c = rng.normal(size=N)
    t = OffsetTransform(output_size=D)
    np.testing.assert_allclose(
        np.asarray(t.apply(jnp.asarray(x), offset=jnp.asarray(c))), x + c[:, None]
    )


def test_function_apply_vmapped(z, A):
    t = FunctionTransform(
        output_size=D,
        func=lambda zi, w: jnp.tanh(w @ zi),
        param_priors={"w": dist.Normal(0.0, 1.0)},
        param_shapes={"w": ("output_size", "input_size")},
    )
    out = np.asarray(t.apply(jnp.asarray(z), w=jnp.asarray(A)))
    np.testing.assert_allclose(out, np.tanh(z @ A.T), rtol=1e-12)
    assert t.param_shapes(input_size=K) == {"w": (D, K)}


def test_function_apply_batch_and_ignores_scatter(z):
    # vmap=False: func sees the whole batch; 's' is not passed to func
    t = FunctionTransform(
        output_size=K,
        func=lambda zz, c: zz**2 + c,
        param_priors={"c": dist.Normal(0.0, 1.0).expand((K,)), "s": dist.HalfNormal()},
        vmap=False,
    )
    c = np.arange(K, dtype=float)
    out = np.asarray(t.apply(jnp.asarray(z), c=jnp.asarray(c), s=jnp.asarray(0.3)))
    np.testing.assert_allclose(out, z**2 + c)
    # default shape: the prior's own shape
    assert t.param_shapes(input_size=K) == {"c": (K,), "s": ()}


def test_sequence_apply(z, A, b, rng):
    A2 = rng.normal(size=(2, D))
    b2 = rng.normal(size=2)
    seq = TransformSequence(LinearTransform(D), AffineTransform(2))
    assert seq.output_size == 2
    assert seq.param_names == ("0:A", "1:A", "1:b")
    assert seq.param_shapes(input_size=K) == {"0:A": (D, K), "1:A": (2, D), "1:b": (2,)}
    out = np.asarray(seq.apply(jnp.asarray(z), **{"0:A": A, "1:A": A2, "1:b": b2}))
    np.testing.assert_allclose(out, (z @ A.T) @ A2.T + b2, rtol=1e-12)


def test_sequence_with_offset(z, A, rng):
    c = rng.normal(size=N)
    seq = TransformSequence(LinearTransform(D), OffsetTransform(D))
    assert seq.per_star_params() == frozenset({"1:offset"})
    assert seq.param_shapes(K, n_stars=N) == {"0:A": (D, K), "1:offset": (N,)}
    out = np.asarray(seq.apply(jnp.asarray(z), **{"0:A": A, "1:offset": c}))
    np.testing.assert_allclose(out, z @ A.T + c[:, None], rtol=1e-12)


def test_sequence_accepts_a_tuple():
    seq = TransformSequence((LinearTransform(3), AffineTransform(2)))
    assert len(seq.transforms) == 2


# Shapes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "transform, expected",
    [
        (LinearTransform(D), {"A": (D, K)}),
        (AffineTransform(D), {"A": (D, K), "b": (D,)}),
        (QuadraticTransform(D), {"Q": (D, K, K), "A": (D, K), "b": (D,)}),
    ],
)
def test_param_shapes(transform, expected):
    assert transform.param_shapes(input_size=K) == expected
    assert set(transform.param_names) == set(expected)
    assert transform.scatter_prior is None
    assert transform.per_star_params() == frozenset()


def test_offset_param_shapes_are_per_star():
    t = OffsetTransform(D)
    assert t.per_star_params() == frozenset({"offset"})
    assert t.param_shapes(input_size=D, n_stars=11) == {"offset": (11,)}
    prior = t.expanded_priors(input_size=D, n_stars=11)["offset"]
    assert prior.event_shape == (11,)
    # without a number of stars, the per-star shape is not known
    with pytest.raises(ValueError, match="n_stars"):
        t.param_shapes(input_size=D)


def test_offset_input_size_must_match():
    with pytest.raises(ValueError, match="output_size"):
        TransformSequence(LinearTransform(D), OffsetTransform(D + 1))


# Priors -------------------------------------------------------------------------


def test_scalar_priors_expanded_automatically():
    t = AffineTransform(D, param_priors={"A": dist.Normal(0.0, 2.0)})
    pri = t.expanded_priors(input_size=K)
    assert pri["A"].batch_shape == ()
    assert pri["A"].event_shape == (D, K)
    assert pri["b"].event_shape == (D,)
    # the log-density is the sum of the element-wise ones
    A = np.ones((D, K))
    expected = D * K * float(dist.Normal(0.0, 2.0).log_prob(1.0))
    np.testing.assert_allclose(float(pri["A"].log_prob(A)), expected, rtol=1e-12)
    # default priors are unit Normals
    assert isinstance(t.param_priors["b"], dist.Normal)


def test_already_expanded_prior_is_used():
    scale = np.linspace(0.5, 2.0, D * K).reshape(D, K)
    prior = dist.Normal(0.0, scale)  # batch shape (D, K)
    t = LinearTransform(D, param_priors={"A": prior})
    pri = t.expanded_priors(input_size=K)["A"]
    assert pri.event_shape == (D, K)
    A = np.ones((D, K))
    np.testing.assert_allclose(
        float(pri.log_prob(A)), float(prior.log_prob(A).sum()), rtol=1e-12
    )
    t2 = LinearTransform(D, param_priors={"A": dist.Normal(0.0, 1.0).expand((D, K))})
    assert t2.expanded_priors(input_size=K)["A"].event_shape == (D, K)


def test_row_prior_broadcasts():
    # a prior with batch shape (K,) broadcasts over the rows of A
    t = LinearTransform(D, param_priors={"A": dist.Normal(0.0, jnp.ones(K))})
    assert t.expanded_priors(input_size=K)["A"].event_shape == (D, K)


def test_prior_of_wrong_shape_raises():
    t = LinearTransform(D, param_priors={"A": dist.Normal(0.0, 1.0).expand((D + 1, K))})
    with pytest.raises(ValueError, match="LinearTransform: A"):
        t.expanded_priors(input_size=K)


def test_unknown_param_name_raises():
    with pytest.raises(ValueError, match="'B'"):
        LinearTransform(D, param_priors={"B": dist.Normal(0.0, 1.0)})


def test_non_distribution_prior_raises():
    with pytest.raises(TypeError, match="'A'"):
        LinearTransform(D, param_priors={"A": 1.0})


# The extra scatter s ------------------------------------------------------------


def test_scalar_scatter():
    t = LinearTransform(D, param_priors={"s": dist.HalfNormal(1.0)})
    assert t.scatter_prior is not None
    assert t.param_names == ("A",)
    assert t.param_shapes(input_size=K) == {"A": (D, K), "s": ()}
    assert t.expanded_priors(input_size=K)["s"].event_shape == ()


def test_vector_scatter():
    t = LinearTransform(D, param_priors={"s": dist.HalfNormal(5.0).expand((D,))})
    assert t.param_shapes(input_size=K)["s"] == (D,)
    assert t.expanded_priors(input_size=K)["s"].event_shape == (D,)


def test_scatter_on_sequence():
    seq = TransformSequence(
        LinearTransform(D), AffineTransform(2), param_priors={"s": dist.HalfNormal()}
    )
    assert seq.param_shapes(input_size=K)["s"] == ()
    last = TransformSequence(
        LinearTransform(D),
        AffineTransform(2, param_priors={"s": dist.HalfNormal().expand((2,))}),
    )
    assert last.param_shapes(input_size=K)["s"] == (2,)


def test_scatter_only_on_last_member():
    with pytest.raises(ValueError, match="member 0"):
        TransformSequence(
            LinearTransform(D, param_priors={"s": dist.HalfNormal()}),
            AffineTransform(2),
        )


@pytest.mark.parametrize("shape", [(D + 1,), (D, 1), (1, D)])
def test_scatter_bad_shape_raises(shape):
    with pytest.raises(ValueError, match=r"'s'.*shape"):
        LinearTransform(D, param_priors={"s": dist.HalfNormal(1.0).expand(shape)})


@pytest.mark.parametrize(
    "prior", [dist.Normal(0.0, 1.0), dist.Uniform(-1.0, 1.0), dist.Cauchy()]
)
def test_scatter_bad_support_raises(prior):
    with pytest.raises(ValueError, match="non-negative"):
        LinearTransform(D, param_priors={"s": prior})


def test_scatter_bad_support_on_function_transform():
    with pytest.raises(ValueError, match="non-negative"):
        FunctionTransform(
            D,
            func=lambda z, w: w @ z,
            param_priors={"w": dist.Normal(), "s": dist.Normal()},
            param_shapes={"w": ("output_size", "input_size")},
        )


# Constructor checks -------------------------------------------------------------


@pytest.mark.parametrize(
    "size, exc", [(0, ValueError), (2.0, TypeError), (True, TypeError)]
)
def test_bad_output_size(size, exc):
    with pytest.raises(exc, match="output_size"):
        LinearTransform(size)


def test_function_transform_checks():
    with pytest.raises(TypeError, match="func"):
        FunctionTransform(2, func="tanh")
    with pytest.raises(ValueError, match="'v'"):
        FunctionTransform(
            2,
            func=lambda z, w: w @ z,
            param_priors={"w": dist.Normal()},
            param_shapes={"v": (2, 2)},
        )
    with pytest.raises(ValueError, match="'q'"):
        FunctionTransform(2, func=lambda z, w: w @ z, param_priors={"q": dist.Normal()})


# Structure declared by the transforms ------------------------------------------------
@pytest.mark.parametrize(
    "cls, kind, affine",
    [
        (LinearTransform, "linear", True),
        (AffineTransform, "affine", True),
        (QuadraticTransform, "quadratic", False),
    ],
)
def test_feature_weights_round_trip(cls, kind, affine):
    k, d = 3, 4
    rng = np.random.default_rng(0)
    shapes = cls(d).param_shapes(k)
    params = {p: jnp.asarray(rng.normal(size=shape)) for p, shape in shapes.items()}
    if "Q" in params:  # only the symmetric part of Q acts
        params["Q"] = 0.5 * (params["Q"] + params["Q"].transpose(0, 2, 1))
    assert cls.feature_kind == kind and cls.is_affine is affine
    theta = cls.to_features(params)
    back = cls.from_features(theta, k)
    assert set(back) == set(params)
    eps = np.finfo(np.asarray(theta).dtype).eps
    for p in params:
        np.testing.assert_allclose(back[p], params[p], rtol=0, atol=10 * eps)
    # The features reproduce apply: y = θ φ(z) on the features of the kind.
    z = jnp.asarray(rng.normal(size=(5, k)))
    phi = features(z)[:, feature_index(kind, k)]
    np.testing.assert_allclose(
        phi @ theta.T, cls(d).apply(z, **params), rtol=0, atol=100 * eps
    )


def test_a_subclass_of_a_supported_transform_is_fitted_the_same():
    class MyAffine(AffineTransform):
        """A user's affine output (e.g. with a docstring of its own)."""

    obs, _ = plx.datasets.make_simulated_linear_data(
        n_stars=60, n_latents=2, n_labels=2, n_flux=6, rng=1
    )
    data = plx.data.PolluxData(
        flux=plx.data.OutputData(obs["flux"], err=obs["flux_err"]),
        label=plx.data.OutputData(obs["label"], err=obs["label_err"]),
    )
    fits = []
    for cls in (AffineTransform, MyAffine):
        model = plx.LuxModel(latent_size=2)
        model.register_output("flux", cls(output_size=6))
        model.register_output("label", LinearTransform(output_size=2))
        fits.append(model.fit(data, progress=False, max_iter=50))
    np.testing.assert_array_equal(fits[0].losses, fits[1].losses)
    view = MyAffine(6).affine_view()
    assert MyAffine.is_affine and isinstance(view, MyAffine)
