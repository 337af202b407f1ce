"""pollux.datasets.make_simulated_linear_data."""

from __future__ import annotations

import numpy as np
import pytest

from pollux.datasets import make_simulated_linear_data


def test_shapes_and_keys():
    obs, truth = make_simulated_linear_data(
        n_stars=30, n_latents=4, n_labels=3, n_flux=12, rng=0
    )
    assert set(obs) == {"label", "label_err", "flux", "flux_err"}
    assert set(truth) == {"label", "flux", "A", "B", "latents"}
    assert obs["label"].shape == obs["label_err"].shape == (30, 3)
    assert obs["flux"].shape == obs["flux_err"].shape == (30, 12)
    assert truth["latents"].shape == (30, 4)
    assert truth["A"].shape == (3, 4)
    assert truth["B"].shape == (12, 4)
    assert truth["label"].shape == (30, 3)
    assert truth["flux"].shape == (30, 12)


def test_truth_is_linear_in_the_latents():
    obs, truth = make_simulated_linear_data(50, 3, 2, 8, rng=1)
    z = truth["latents"]
    np.testing.assert_allclose(truth["label"], z @ truth["A"].T, rtol=1e-12)
    np.testing.assert_allclose(truth["flux"], z @ truth["B"].T, rtol=1e-12)
    # observations scatter around the truth by about the reported errors
    for name in ("label", "flux"):
        pull = (obs[name] - truth[name]) / obs[f"{name}_err"]
        assert 0.7 < pull.std() < 1.3
        assert abs(pull.mean()) < 0.3


def test_given_matrices_are_used():
    A = np.zeros((2, 3))
    A[0, 0] = A[1, 1] = 1.0
    B = np.arange(15.0).reshape(5, 3) / 10
    _, truth = make_simulated_linear_data(40, 3, 2, 5, A=A, B=B, rng=2)
    np.testing.assert_array_equal(truth["A"], A)
    np.testing.assert_array_equal(truth["B"], B)
    np.testing.assert_allclose(truth["label"], truth["latents"][:, :2], rtol=1e-12)
    np.testing.assert_allclose(truth["flux"], truth["latents"] @ B.T, rtol=1e-12)
    # a list works as well as an array
    _, truth2 = make_simulated_linear_data(40, 3, 2, 5, A=A.tolist(), rng=2)
    np.testing.assert_array_equal(truth2["A"], A)


def test_errors_in_range():
    obs, _ = make_simulated_linear_data(500, 2, 2, 20, rng=3)
    for name in ("label_err", "flux_err"):
        err = obs[name]
        assert err.min() >= 0.01
        assert err.max() <= 0.1
        # spread over the whole range, not a constant
        assert err.min() < 0.015
        assert err.max() > 0.095


def test_latents_are_unit_normal():
    _, truth = make_simulated_linear_data(4000, 3, 1, 1, rng=4)
    z = truth["latents"]
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=0.06)
    np.testing.assert_allclose(np.cov(z.T), np.eye(3), atol=0.08)


def test_rng_reproducible():
    a_obs, a_truth = make_simulated_linear_data(20, 2, 2, 6, rng=42)
    b_obs, b_truth = make_simulated_linear_data(20, 2, 2, 6, rng=42)
    c_obs, c_truth = make_simulated_linear_data(
        20, 2, 2, 6, rng=np.random.default_rng(42)
    )
    for key in a_obs:
        np.testing.assert_array_equal(a_obs[key], b_obs[key])
        np.testing.assert_array_equal(a_obs[key], c_obs[key])
    for key in a_truth:
        np.testing.assert_array_equal(a_truth[key], b_truth[key])
        np.testing.assert_array_equal(a_truth[key], c_truth[key])
    d_obs, _ = make_simulated_linear_data(20, 2, 2, 6, rng=43)
    assert not np.array_equal(a_obs["flux"], d_obs["flux"])


def test_generator_state_advances():
    gen = np.random.default_rng(0)
    first, _ = make_simulated_linear_data(10, 2, 2, 4, rng=gen)
    second, _ = make_simulated_linear_data(10, 2, 2, 4, rng=gen)
    assert not np.array_equal(first["flux"], second["flux"])


@pytest.mark.parametrize("shape", [(3, 2), (2, 4), (2,), (2, 3, 1)])
def test_bad_A_shape(shape):
    with pytest.raises(ValueError, match=r"A=\.\.\.\): expected shape \(2, 3\)"):
        make_simulated_linear_data(10, 3, 2, 5, A=np.ones(shape))


def test_bad_B_shape():
    with pytest.raises(ValueError, match=r"B=\.\.\.\): expected shape \(5, 3\)"):
        make_simulated_linear_data(10, 3, 2, 5, B=np.ones((3, 5)))


@pytest.mark.parametrize("arg", ["n_stars", "n_latents", "n_labels", "n_flux"])
@pytest.mark.parametrize(
    "value, exc", [(0, ValueError), (-1, ValueError), (2.5, TypeError)]
)
def test_bad_sizes(arg, value, exc):
    sizes = {"n_stars": 10, "n_latents": 2, "n_labels": 2, "n_flux": 4}
    sizes[arg] = value
    with pytest.raises(exc, match=rf"{arg}=\.\.\."):
        make_simulated_linear_data(**sizes)


def test_bad_rng():
    with pytest.raises(TypeError, match="rng"):
        make_simulated_linear_data(10, 2, 2, 4, rng="seed")
