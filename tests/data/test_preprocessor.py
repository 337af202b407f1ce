"""Preprocessors: statistics from data, and exact round trips."""

from __future__ import annotations

import numpy as np
import pytest

from pollux.data import NullPreprocessor, ShiftScalePreprocessor

# float64 comparisons here check means, standard deviations and percentiles of
# <= 20,000 values and elementwise maps: pairwise sums err by ~eps·log2(n), about
# 3e-15 relative; 1e-12 holds on any CPU.
RTOL = 1e-12


@pytest.fixture
def x(rng):
    return rng.normal(loc=[1.0, -5.0, 100.0], scale=[0.5, 2.0, 30.0], size=(200, 3))


def test_from_data_is_mean_and_std(x):
    pre = ShiftScalePreprocessor.from_data(x)
    np.testing.assert_allclose(pre.loc, x.mean(axis=0), rtol=RTOL)
    np.testing.assert_allclose(pre.scale, x.std(axis=0), rtol=RTOL)
    z = np.asarray(pre.transform(x))
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-10)
    np.testing.assert_allclose(z.std(axis=0), 1.0, rtol=1e-10)


def test_from_data_ignores_nan(x):
    x_nan = x.copy()
    x_nan[::3, 0] = np.nan
    x_nan[5, 2] = np.nan
    pre = ShiftScalePreprocessor.from_data(x_nan)
    keep0 = ~np.isnan(x_nan[:, 0])
    assert np.isfinite(np.asarray(pre.loc)).all()
    np.testing.assert_allclose(pre.loc[0], x[keep0, 0].mean(), rtol=RTOL)
    np.testing.assert_allclose(pre.scale[0], x[keep0, 0].std(), rtol=RTOL)
    np.testing.assert_allclose(pre.loc[1], x[:, 1].mean(), rtol=RTOL)
    np.testing.assert_allclose(pre.loc[2], np.delete(x[:, 2], 5).mean(), rtol=RTOL)
    # NaN stays NaN (missing) after the transform; nothing else is touched
    z = np.asarray(pre.transform(x_nan))
    np.testing.assert_array_equal(np.isnan(z), np.isnan(x_nan))


def test_from_data_percentiles_is_median_and_half_range(x):
    pre = ShiftScalePreprocessor.from_data_percentiles(x)
    lo, hi = np.percentile(x, [16, 84], axis=0)
    np.testing.assert_allclose(pre.loc, np.median(x, axis=0), rtol=RTOL)
    np.testing.assert_allclose(pre.scale, 0.5 * (hi - lo), rtol=RTOL)


def test_from_data_percentiles_custom_range_and_nan(x):
    x_nan = x.copy()
    x_nan[:50, 1] = np.nan
    pre = ShiftScalePreprocessor.from_data_percentiles(x_nan, low=5.0, high=95.0)
    lo, hi = np.percentile(x[50:, 1], [5, 95])
    np.testing.assert_allclose(pre.loc[1], np.median(x[50:, 1]), rtol=RTOL)
    np.testing.assert_allclose(pre.scale[1], 0.5 * (hi - lo), rtol=RTOL)


def test_from_data_percentiles_is_robust_to_outliers(x):
    x_out = x.copy()
    x_out[0, 2] = 1e9
    robust = ShiftScalePreprocessor.from_data_percentiles(x_out)
    plain = ShiftScalePreprocessor.from_data(x_out)
    assert abs(float(robust.scale[2]) - 30.0) < 10.0
    assert float(plain.scale[2]) > 1e6


def test_percentiles_recover_gaussian_sigma(rng):
    x = rng.normal(3.0, 2.0, size=(20000, 1))
    pre = ShiftScalePreprocessor.from_data_percentiles(x)
    np.testing.assert_allclose(pre.scale, [2.0], rtol=0.03)
    np.testing.assert_allclose(pre.loc, [3.0], atol=0.05)


@pytest.mark.parametrize(
    "factory",
    [ShiftScalePreprocessor.from_data, ShiftScalePreprocessor.from_data_percentiles],
)
def test_constant_column_raises(x, factory):
    x = x.copy()
    x[:, 1] = 7.0
    with pytest.raises(ValueError, match=r"column\(s\) \[1\]"):
        factory(x)


@pytest.mark.parametrize(
    "factory",
    [ShiftScalePreprocessor.from_data, ShiftScalePreprocessor.from_data_percentiles],
)
def test_all_nan_column_raises(x, factory):
    x = x.copy()
    x[:, 2] = np.nan
    with pytest.raises(ValueError, match=r"column\(s\) \[2\]"):
        factory(x)


def test_infinite_input_raises(x):
    x = x.copy()
    x[3, 0] = np.inf
    with pytest.raises(ValueError, match="infinite"):
        ShiftScalePreprocessor.from_data(x)


def test_bad_percentile_range_raises(x):
    with pytest.raises(ValueError, match="low"):
        ShiftScalePreprocessor.from_data_percentiles(x, low=84.0, high=16.0)


@pytest.mark.parametrize("scale", [0.0, -1.0, np.inf, np.nan])
def test_explicit_bad_scale_raises(scale):
    with pytest.raises(ValueError, match="scale"):
        ShiftScalePreprocessor(loc=[0.0, 1.0], scale=[1.0, scale])


def test_explicit_loc_scale_transform_by_hand():
    pre = ShiftScalePreprocessor(loc=[1.0, 10.0], scale=[2.0, 5.0])
    x = np.array([[3.0, 0.0], [1.0, 20.0]])
    np.testing.assert_allclose(pre.transform(x), [[1.0, -2.0], [0.0, 2.0]])
    np.testing.assert_allclose(pre.transform_err([[2.0, 5.0]]), [[1.0, 1.0]])
    np.testing.assert_allclose(pre.inverse_transform([[1.0, -2.0]]), [[3.0, 0.0]])
    np.testing.assert_allclose(pre.inverse_transform_err([[0.5, 2.0]]), [[1.0, 10.0]])


def test_round_trips(x, rng):
    pre = ShiftScalePreprocessor.from_data(x)
    np.testing.assert_allclose(pre.inverse_transform(pre.transform(x)), x, rtol=RTOL)
    z = rng.normal(size=x.shape)
    np.testing.assert_allclose(pre.transform(pre.inverse_transform(z)), z, atol=1e-12)
    err = rng.uniform(0.1, 1.0, size=x.shape)
    np.testing.assert_allclose(
        pre.inverse_transform_err(pre.transform_err(err)), err, rtol=RTOL
    )
    np.testing.assert_allclose(
        pre.transform_err(pre.inverse_transform_err(err)), err, rtol=RTOL
    )


def test_errors_scale_but_do_not_shift(x):
    pre = ShiftScalePreprocessor.from_data(x)
    err = np.ones_like(x)
    np.testing.assert_allclose(
        pre.transform_err(err), err / np.asarray(pre.scale), rtol=RTOL
    )
    # an error of zero stays zero (it is not shifted by loc)
    np.testing.assert_array_equal(pre.transform_err(np.zeros_like(x)), 0.0)


def test_vector_s_maps_per_dimension(x):
    # a per-dimension scatter (shape (n_dim,)) broadcasts against the scale
    pre = ShiftScalePreprocessor.from_data(x)
    s = np.array([1.0, 2.0, 3.0])
    np.testing.assert_allclose(
        pre.inverse_transform_err(s), s * np.asarray(pre.scale), rtol=RTOL
    )


def test_null_preprocessor_is_identity(rng):
    pre = NullPreprocessor()
    x = rng.normal(size=(5, 2))
    for f in (
        pre.transform,
        pre.inverse_transform,
        pre.transform_err,
        pre.inverse_transform_err,
    ):
        np.testing.assert_array_equal(np.asarray(f(x)), x)
