"""OutputData / PolluxData containers."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pollux.data import (
    NullPreprocessor,
    OutputData,
    PolluxData,
    ShiftScalePreprocessor,
)

# float64 comparisons here check elementwise shift-and-scale maps and their
# inverses: a few roundings (eps = 2.2e-16) per value; 1e-12 holds on any CPU.
RTOL = 1e-12


@pytest.fixture
def arrays(rng):
    flux = rng.normal(10.0, 3.0, size=(12, 5))
    flux_err = rng.uniform(0.1, 0.5, size=flux.shape)
    label = rng.normal(size=12) * 100.0 + 4500.0  # one label, as a 1D array
    label_err = np.full(12, 50.0)
    return flux, flux_err, label, label_err


@pytest.fixture
def data(arrays):
    flux, flux_err, label, label_err = arrays
    return PolluxData(
        flux=OutputData(
            flux, err=flux_err, preprocessor=ShiftScalePreprocessor.from_data(flux)
        ),
        label=OutputData(
            label,
            err=label_err,
            preprocessor=ShiftScalePreprocessor.from_data_percentiles(label),
        ),
    )


# OutputData ---------------------------------------------------------------------


def test_output_data_shapes(arrays):
    flux, flux_err, *_ = arrays
    out = OutputData(flux, err=flux_err)
    assert out.shape == (12, 5)
    assert out.size == 5
    assert len(out) == 12
    np.testing.assert_array_equal(np.asarray(out.data), flux)
    np.testing.assert_array_equal(np.asarray(out.err), flux_err)
    assert isinstance(out.preprocessor, NullPreprocessor)
    assert out.preprocessed is False


def test_output_data_1d_becomes_column():
    out = OutputData(np.arange(4.0), err=np.ones(4))
    assert out.shape == (4, 1)
    assert out.err.shape == (4, 1)
    np.testing.assert_array_equal(np.asarray(out.data)[:, 0], np.arange(4.0))


def test_output_data_integer_input_becomes_float():
    out = OutputData(np.arange(6).reshape(3, 2))
    assert np.issubdtype(out.data.dtype, np.floating)
    assert out.err is None


def test_output_data_rejects_3d():
    with pytest.raises(ValueError, match="data"):
        OutputData(np.ones((2, 3, 4)))


@pytest.mark.parametrize(
    "index, expected",
    [
        (3, [3]),
        (-1, [11]),
        (slice(2, 5), [2, 3, 4]),
        (np.array([7, 0, 7]), [7, 0, 7]),
        (np.arange(12) % 4 == 0, [0, 4, 8]),
    ],
)
def test_output_data_indexing(arrays, index, expected):
    flux, flux_err, *_ = arrays
    pre = ShiftScalePreprocessor.from_data(flux)
    out = OutputData(flux, err=flux_err, preprocessor=pre)
    sub = out[index]
    assert isinstance(sub, OutputData)
    assert sub.shape == (len(expected), 5)
    np.testing.assert_array_equal(np.asarray(sub.data), flux[expected])
    np.testing.assert_array_equal(np.asarray(sub.err), flux_err[expected])
    assert sub.preprocessor is pre


def test_output_data_preprocess_round_trip(arrays):
    flux, flux_err, *_ = arrays
    pre = ShiftScalePreprocessor.from_data(flux)
    out = OutputData(flux, err=flux_err, preprocessor=pre)
    p = out.preprocess()
    assert p.preprocessed is True
    np.testing.assert_allclose(p.data, (flux - flux.mean(0)) / flux.std(0))
    np.testing.assert_allclose(p.err, flux_err / flux.std(0))
    back = p.unprocess()
    assert back.preprocessed is False
    np.testing.assert_allclose(back.data, flux, rtol=RTOL)
    np.testing.assert_allclose(back.err, flux_err, rtol=RTOL)


def test_output_data_double_preprocess_raises(arrays):
    out = OutputData(arrays[0])
    with pytest.raises(ValueError, match="already preprocessed"):
        out.preprocess().preprocess()
    with pytest.raises(ValueError, match="not preprocessed"):
        out.unprocess()


def test_output_data_without_err_round_trip(arrays):
    flux = arrays[0]
    out = OutputData(flux, preprocessor=ShiftScalePreprocessor.from_data(flux))
    p = out.preprocess()
    assert p.err is None
    np.testing.assert_allclose(p.unprocess().data, flux, rtol=RTOL)


def test_output_data_nan_is_kept_as_missing():
    x = np.array([[1.0, np.nan], [2.0, 3.0], [4.0, 5.0]])
    out = OutputData(x, err=np.full_like(x, 0.1))
    assert np.isnan(np.asarray(out.data)[0, 1])
    p = OutputData(x, preprocessor=ShiftScalePreprocessor.from_data(x)).preprocess()
    np.testing.assert_array_equal(np.isnan(np.asarray(p.data)), np.isnan(x))


def test_output_data_is_read_only(arrays):
    out = OutputData(arrays[0])
    with pytest.raises(dataclasses.FrozenInstanceError):
        out.data = np.zeros((12, 5))
    with pytest.raises(AttributeError):
        out.err = None


# PolluxData ---------------------------------------------------------------------


def test_pollux_data_basics(data):
    assert len(data) == 12
    assert data.names == ("flux", "label")
    assert list(data) == ["flux", "label"]
    assert list(data.keys()) == ["flux", "label"]
    assert [k for k, _ in data.items()] == ["flux", "label"]
    assert all(isinstance(v, OutputData) for v in data.values())
    assert "flux" in data
    assert "label" in data
    assert "latents" not in data
    assert "spectrum" not in data
    assert data["flux"].shape == (12, 5)
    assert data["label"].shape == (12, 1)  # 1D label became a column
    assert "n_stars=12" in repr(data)


def test_pollux_data_unknown_name_is_key_error(data):
    with pytest.raises(KeyError, match="spectrum"):
        data["spectrum"]


@pytest.mark.parametrize(
    "index, expected",
    [
        (0, [0]),
        (-2, [10]),
        (slice(None, 4), [0, 1, 2, 3]),
        (slice(None, None, 5), [0, 5, 10]),
        (np.array([9, 1]), [9, 1]),
        ([2, 3], [2, 3]),
        (np.arange(12) >= 10, [10, 11]),
    ],
)
def test_pollux_data_indexing(data, arrays, index, expected):
    flux, flux_err, label, label_err = arrays
    sub = data[index]
    assert type(sub) is PolluxData
    assert len(sub) == len(expected)
    assert sub.names == data.names
    np.testing.assert_array_equal(np.asarray(sub["flux"].data), flux[expected])
    np.testing.assert_array_equal(np.asarray(sub["flux"].err), flux_err[expected])
    np.testing.assert_array_equal(np.asarray(sub["label"].data)[:, 0], label[expected])
    np.testing.assert_array_equal(
        np.asarray(sub["label"].err)[:, 0], label_err[expected]
    )
    for name in data:
        assert sub[name].preprocessor is data[name].preprocessor


def test_pollux_data_indexing_keeps_preprocessed_state(data):
    pre = data.preprocess()
    train, test = pre[:8], pre[8:]
    assert len(train) == 8
    assert len(test) == 4
    assert all(out.preprocessed for out in test.values())
    np.testing.assert_allclose(
        test.unprocess()["flux"].data, data["flux"].data[8:], rtol=RTOL
    )


@pytest.mark.parametrize(
    "index, exc",
    [
        (12, IndexError),
        (-13, IndexError),
        (np.array([0, 12]), IndexError),
        (np.ones(5, dtype=bool), IndexError),
        (1.5, TypeError),
    ],
)
def test_pollux_data_bad_index(data, index, exc):
    with pytest.raises(exc, match=r"PolluxData\[\.\.\.\]"):
        data[index]


def test_pollux_data_preprocess_unprocess_round_trip(data, arrays):
    flux, flux_err, label, label_err = arrays
    pre = data.preprocess()
    np.testing.assert_allclose(
        pre["flux"].data, data["flux"].preprocessor.transform(flux)
    )
    np.testing.assert_allclose(np.asarray(pre["flux"].data).mean(0), 0.0, atol=1e-12)
    back = pre.unprocess()
    np.testing.assert_allclose(back["flux"].data, flux, rtol=RTOL)
    np.testing.assert_allclose(back["flux"].err, flux_err, rtol=RTOL)
    np.testing.assert_allclose(back["label"].data[:, 0], label, rtol=RTOL)
    np.testing.assert_allclose(back["label"].err[:, 0], label_err, rtol=RTOL)


def test_unprocess_dict_of_arrays(data, rng):
    pre = data.preprocess()
    pred = {"label": rng.normal(size=(12, 1)), "flux": rng.normal(size=(12, 5))}
    phys = pre.unprocess(pred)
    assert isinstance(phys, PolluxData)
    lab = data["label"].preprocessor
    np.testing.assert_allclose(
        phys["label"].data, pred["label"] * lab.scale + lab.loc, rtol=RTOL
    )
    assert phys["label"].err is None
    assert phys["label"].preprocessor is lab
    # a subset of the outputs is fine
    only = pre.unprocess({"flux": pred["flux"]})
    assert only.names == ("flux",)


def test_unprocess_pollux_data_converts_errors(data, rng):
    pre = data.preprocess()
    mean = rng.normal(size=(12, 1))
    err = rng.uniform(0.1, 1.0, size=(12, 1))
    pred = PolluxData(label=OutputData(mean, err=err))
    phys = pre.unprocess(pred)
    lab = data["label"].preprocessor
    np.testing.assert_allclose(phys["label"].data, lab.inverse_transform(mean))
    # errors are scaled, not shifted
    np.testing.assert_allclose(phys["label"].err, err * np.asarray(lab.scale))
    np.testing.assert_allclose(phys["label"].err, lab.inverse_transform_err(err))


def test_unprocess_unknown_name_raises(data):
    with pytest.raises(ValueError, match="spectrum"):
        data.preprocess().unprocess({"spectrum": np.zeros((12, 3))})


def test_unprocess_bad_type_raises(data):
    with pytest.raises(TypeError, match="data"):
        data.preprocess().unprocess([np.zeros((12, 3))])


def test_pollux_data_is_read_only(data):
    with pytest.raises(AttributeError):
        data.outputs = {}
    with pytest.raises(AttributeError):
        data.extra = 1
    with pytest.raises(TypeError):
        data["flux"] = data["label"]  # no item assignment either


def test_pollux_data_requires_outputs():
    with pytest.raises(ValueError, match="at least one output"):
        PolluxData()


def test_pollux_data_rejects_raw_arrays():
    with pytest.raises(TypeError, match="flux"):
        PolluxData(flux=np.ones((3, 2)))


def test_pollux_data_rejects_reserved_name():
    with pytest.raises(ValueError, match="latents"):
        PolluxData(latents=OutputData(np.ones((3, 2))))
