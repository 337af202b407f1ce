"""Property tests of `OutputData`, `PolluxData` and `ShiftScalePreprocessor`.

The contract (DESIGN §6): bad input gets a ValueError/TypeError naming the
argument, never another exception and never a silent NaN. NaN data (with a
finite error) means "missing", an infinite error also marks a value missing,
infinite data is refused, negative or NaN errors are refused.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pollux.data import (
    NullPreprocessor,
    OutputData,
    PolluxData,
    ShiftScalePreprocessor,
)

# Deterministic (derandomize, no example database) and sized so the whole file
# runs in well under a minute on two cores.
SETTINGS = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

EPS = np.finfo(np.float64).eps  # 2.2e-16, the float64 unit round-off is EPS / 2
TINY = np.finfo(np.float64).smallest_subnormal

# Round-trip tolerances. ``x -> (x - loc) / scale -> y * scale + loc`` with
# |x|, |loc| <= M (loc is a mean of the column, so |loc| <= M up to rounding):
#   fl(x - loc)   errs by <= u·|x - loc| <= 2uM          (u = EPS / 2)
#   fl(d / scale) and fl(y * scale) each add a relative u -> <= 2u·2M = 4uM
#   fl(z + loc)   adds <= u·(|x| + tiny) ~ uM
# so |x' - x| <= 7uM = 3.5·EPS·M. We allow 8·EPS·M per column (one extra rounding
# if XLA turns the division into a multiplication by a reciprocal, plus margin).
# The error map ``e -> e / scale -> * scale`` is two (at most three) relative
# roundings: |e' - e| <= 3u·|e|, and we allow 4·EPS·|e|.
DATA_ATOL_PER_MAGNITUDE = 8 * EPS
ERR_RTOL = 4 * EPS


def _assert_round_trip(back, original, *, err: bool = False):
    """``back`` equals ``original`` up to the tolerances derived above."""
    back = np.asarray(back, dtype=float)
    original = np.asarray(original, dtype=float)
    assert back.shape == original.shape
    np.testing.assert_array_equal(np.isnan(back), np.isnan(original))
    np.testing.assert_array_equal(np.isinf(back), np.isinf(original))
    if err:
        finite = np.isfinite(original)
        np.testing.assert_allclose(
            back[finite], original[finite], rtol=ERR_RTOL, atol=0
        )
        return
    magnitude = np.nanmax(np.abs(original), axis=0, initial=0.0)
    tol = DATA_ATOL_PER_MAGNITUDE * magnitude + 4 * TINY
    deviation = np.where(np.isnan(original), 0.0, np.abs(back - original))
    assert np.all(deviation <= tol), (deviation.max(axis=0), tol)


def _as_column_matrix(arr: np.ndarray) -> np.ndarray:
    """What OutputData stores: 1D input becomes a single column."""
    return arr[:, None] if arr.ndim == 1 else arr


# Strategies ---------------------------------------------------------------------

# Any float64, including NaN, +-inf, huge values and subnormals.
any_float = st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True)
# Errors: mostly good values, but NaN, inf, negatives, zero and subnormals appear too.
any_err = st.one_of(
    st.floats(min_value=0.0, max_value=1e300),
    st.sampled_from([0.0, -0.0, np.inf, np.nan, -1.0, -np.inf, 5e-324]),
    any_float,
)
# Shapes of 0-3 dimensions, weighted towards the valid 1-2.
small_shapes = st.one_of(
    hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
    hnp.array_shapes(min_dims=1, max_dims=2, min_side=0, max_side=4),
    hnp.array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=4),
)

# Finite values whose statistics neither overflow nor underflow: 0 or
# 1e-100 <= |x| <= 1e100. Squared deviations then lie between ~1e-232 and ~4e200.
well_scaled = st.one_of(
    st.just(0.0),
    st.floats(min_value=1e-100, max_value=1e100),
    st.floats(min_value=-1e100, max_value=-1e-100),
)
# Errors in the same window (or 0, or inf = missing), so e / scale neither
# overflows nor underflows into subnormals (which would lose relative precision).
positive_err = st.one_of(
    st.sampled_from([0.0, np.inf]),
    st.floats(min_value=1e-100, max_value=1e100),
)


@st.composite
def data_and_err(draw):
    """A data array (float/int dtype, 0-3 D) with an error array or None.

    The error array usually has the data's shape, sometimes a different one.
    """
    dtype = draw(
        st.sampled_from([np.float64, np.float32, np.float16, np.int64, np.int32])
    )
    shape = draw(small_shapes)
    # Default elements of a dtype cover NaN, +-inf, extremes and subnormals.
    data = draw(hnp.arrays(dtype, shape))
    kind = draw(st.sampled_from(["none", "same", "same", "same", "other"]))
    if kind == "none":
        return data, None
    err_shape = shape if kind == "same" else draw(small_shapes)
    err_dtype = draw(st.sampled_from([np.float64, np.float32, np.int64]))
    if err_dtype is np.float64:
        err = draw(hnp.arrays(err_dtype, err_shape, elements=any_err))
    else:
        err = draw(hnp.arrays(err_dtype, err_shape))
    return data, err


@st.composite
def well_scaled_matrix(draw, min_rows=2, max_rows=12, max_cols=4, nan=True):
    """Finite (n, d) float64 data, every column with >= 2 distinct finite values,
    with NaN (missing) entries sprinkled in when ``nan``."""
    n = draw(st.integers(min_rows, max_rows))
    d = draw(st.integers(1, max_cols))
    x = draw(hnp.arrays(np.float64, (n, d), elements=well_scaled))
    if nan:
        missing = draw(hnp.arrays(bool, (n, d)))
        x = np.where(missing, np.nan, x)
    for j in range(d):
        finite = x[np.isfinite(x[:, j]), j]
        assume(finite.size >= 2 and finite.min() < finite.max())
    return x


def err_like(x):
    return hnp.arrays(np.float64, x.shape, elements=positive_err)


# 1. Construction: build faithfully, or refuse with a named ValueError/TypeError --


@settings(SETTINGS, max_examples=100)
@given(pair=data_and_err())
def test_output_data_builds_faithfully_or_refuses_by_name(pair):
    data, err = pair
    # The contract, computed independently of the implementation.
    expect_ok = data.ndim in (1, 2)
    if expect_ok:
        expect_ok = not np.isinf(data).any()
    if expect_ok and err is not None:
        expect_ok = (
            err.ndim in (1, 2)
            and _as_column_matrix(err).shape == _as_column_matrix(data).shape
            and not np.isnan(err).any()
            and not (err < 0).any()
        )
    try:
        out = OutputData(data, err)
    except (ValueError, TypeError) as exc:
        assert "OutputData(" in str(exc)
        assert not expect_ok, f"refused valid input: {exc}"
        return
    assert expect_ok, "accepted invalid input"
    stored = np.asarray(out.data)
    assert np.issubdtype(stored.dtype, np.floating)
    expected = _as_column_matrix(data).astype(stored.dtype)
    assert stored.shape == expected.shape
    np.testing.assert_array_equal(stored, expected)  # NaN positions preserved too
    assert not np.isinf(stored).any()
    assert out.shape == expected.shape
    assert len(out) == expected.shape[0]
    assert out.size == expected.shape[1]
    assert isinstance(out.preprocessor, NullPreprocessor)
    assert out.preprocessed is False
    if err is None:
        assert out.err is None
    else:
        stored_err = np.asarray(out.err)
        np.testing.assert_array_equal(
            stored_err, _as_column_matrix(err).astype(stored_err.dtype)
        )
        assert not np.isnan(stored_err).any()
        assert not (stored_err < 0).any()


@SETTINGS
@given(
    n=st.integers(1, 6),
    value=st.floats(min_value=-1e6, max_value=1e6),
    error=st.floats(min_value=0.0, max_value=1e6),
)
def test_nan_data_with_finite_error_and_infinite_error_mean_missing(n, value, error):
    data = np.full((n, 2), value)
    data[0, 0] = np.nan
    err = np.full((n, 2), error)
    err[-1, 1] = np.inf
    out = OutputData(data, err)
    assert np.isnan(np.asarray(out.data)[0, 0])
    assert np.isinf(np.asarray(out.err)[-1, 1])


@SETTINGS
@given(
    n=st.integers(1, 6),
    bad=st.sampled_from([np.inf, -np.inf]),
    where=st.sampled_from(["data", "err_nan", "err_negative"]),
)
def test_infinite_data_and_nan_or_negative_errors_are_refused(n, bad, where):
    data = np.ones((n, 3))
    err = np.full((n, 3), 0.1)
    if where == "data":
        data[n - 1, 1] = bad
        arg = "data"
    elif where == "err_nan":
        err[0, 2] = np.nan
        arg = "err"
    else:
        err[0, 0] = -0.5
        arg = "err"
    with pytest.raises(ValueError, match=rf"OutputData\({arg}="):
        OutputData(data, err)


# 2. Non-numeric input: TypeError naming the argument -----------------------------

non_numeric = st.one_of(
    st.text(max_size=5),
    st.binary(max_size=5),
    st.dictionaries(st.text(max_size=3), st.floats(), max_size=3),
    st.lists(st.text(max_size=3), min_size=1, max_size=4),
    st.lists(st.one_of(st.none(), st.text(max_size=2)), min_size=1, max_size=4),
    st.builds(lambda xs: np.array(xs, dtype=object), st.lists(st.floats(), max_size=4)),
    st.builds(lambda xs: np.array(xs, dtype=bool), st.lists(st.booleans(), max_size=4)),
    st.builds(
        lambda xs: np.array(xs, dtype=complex), st.lists(st.floats(), max_size=4)
    ),
    st.sets(st.integers(), max_size=3),
    st.builds(object),
)


@SETTINGS
@given(value=st.one_of(st.none(), non_numeric))
def test_non_numeric_data_is_type_error(value):
    with pytest.raises(TypeError, match=r"OutputData\(data="):
        OutputData(value)


@SETTINGS
@given(value=non_numeric)
def test_non_numeric_err_is_type_error(value):
    with pytest.raises(TypeError, match=r"OutputData\(err="):
        OutputData(np.ones(3), err=value)


@SETTINGS
@given(value=st.one_of(st.integers(), st.text(max_size=3), st.just(np.ones(2))))
def test_non_preprocessor_is_type_error(value):
    with pytest.raises(TypeError, match=r"OutputData\(preprocessor="):
        OutputData(np.ones((2, 2)), preprocessor=value)


def test_ragged_list_is_refused_by_name():
    with pytest.raises((ValueError, TypeError), match=r"OutputData\(data="):
        OutputData([[1.0, 2.0], [3.0]])


def test_long_double_input_is_accepted_or_refused_by_name():
    data = np.ones(3, dtype=np.longdouble)
    try:
        out = OutputData(data, err=np.full(3, 0.1, dtype=np.longdouble))
    except (ValueError, TypeError) as exc:
        assert "OutputData(" in str(exc)
    else:
        np.testing.assert_array_equal(np.asarray(out.data)[:, 0], 1.0)


# 3. Indexing ----------------------------------------------------------------------


@st.composite
def indexed_arrays(draw):
    """(flux, flux_err, label) for N stars; flux has NaN entries, label no error."""
    n = draw(st.integers(1, 12))
    width = draw(st.integers(1, 3))
    values = st.floats(-1e6, 1e6) | st.just(np.nan)
    flux = draw(hnp.arrays(np.float64, (n, width), elements=values))
    flux_err = draw(err_like(flux))
    label = draw(hnp.arrays(np.float64, n, elements=st.floats(-1e3, 1e3)))
    return flux, flux_err, label


@st.composite
def in_range_index(draw, n):
    """An int, slice, boolean mask or integer array valid for ``n`` rows, and the
    numpy index that selects the same rows (keeping the 2D shape)."""
    kind = draw(st.sampled_from(["int", "np_int", "slice", "mask", "array", "list"]))
    if kind in ("int", "np_int"):
        i = draw(st.integers(-n, n - 1))
        return (i if kind == "int" else np.int64(i)), [i]
    if kind == "slice":
        s = draw(st.slices(n))
        return s, s
    if kind == "mask":
        mask = draw(hnp.arrays(bool, n))
        return mask, mask
    rows = draw(st.lists(st.integers(-n, n - 1), min_size=1, max_size=2 * n))
    if kind == "list":
        return rows, rows
    dtype = draw(st.sampled_from([np.int64, np.int32, np.intp]))
    return np.asarray(rows, dtype=dtype), np.asarray(rows)


@SETTINGS
@given(arrays=indexed_arrays(), data=st.data())
def test_output_data_indexing_matches_numpy(arrays, data):
    flux, flux_err, _ = arrays
    index, np_index = data.draw(in_range_index(len(flux)))
    pre = ShiftScalePreprocessor(0.0, 2.0)
    out = OutputData(flux, err=flux_err, preprocessor=pre)
    sub = out[index]
    assert isinstance(sub, OutputData)
    np.testing.assert_array_equal(np.asarray(sub.data), flux[np_index])
    np.testing.assert_array_equal(np.asarray(sub.err), flux_err[np_index])
    assert sub.preprocessor is pre
    assert sub.preprocessed is out.preprocessed


@SETTINGS
@given(arrays=indexed_arrays(), data=st.data(), preprocessed=st.booleans())
def test_pollux_data_indexing_keeps_outputs_aligned(arrays, data, preprocessed):
    flux, flux_err, label = arrays
    index, np_index = data.draw(in_range_index(len(flux)))
    flux_pre = ShiftScalePreprocessor(1.0, 3.0)
    both = PolluxData(
        flux=OutputData(flux, err=flux_err, preprocessor=flux_pre),
        label=OutputData(label),
    )
    if preprocessed:
        both = both.preprocess()
    sub = both[index]
    assert type(sub) is PolluxData
    assert sub.names == both.names
    expected_rows = np.arange(len(flux))[np_index]
    assert len(sub) == len(expected_rows)
    for name in both:
        whole, part = both[name], sub[name]
        assert len(part) == len(expected_rows)
        assert part.preprocessor is whole.preprocessor
        assert part.preprocessed is whole.preprocessed
        np.testing.assert_array_equal(
            np.asarray(part.data), np.asarray(whole.data)[expected_rows]
        )
        if whole.err is None:
            assert part.err is None
        else:
            np.testing.assert_array_equal(
                np.asarray(part.err), np.asarray(whole.err)[expected_rows]
            )
    assert sub["flux"].preprocessor is flux_pre


@st.composite
def out_of_range_index(draw, n):
    """An int or integer array/list with at least one entry outside [-n, n)."""
    far = st.one_of(st.integers(n, n + 10**6), st.integers(-n - 10**6, -n - 1))
    kind = draw(st.sampled_from(["int", "np_int", "array", "list"]))
    if kind == "int":
        return draw(far)
    if kind == "np_int":
        return np.int64(draw(far))
    rows = draw(st.lists(st.integers(-n, n - 1), max_size=4))
    bad = draw(far)
    rows.insert(draw(st.integers(0, len(rows))), bad)
    return rows if kind == "list" else np.asarray(rows, dtype=np.int64)


@SETTINGS
@given(n=st.integers(1, 10), data=st.data())
def test_out_of_range_index_is_index_error(n, data):
    index = data.draw(out_of_range_index(n))
    out = OutputData(np.arange(2.0 * n).reshape(n, 2))
    with pytest.raises(IndexError, match=r"OutputData\[\.\.\.\]"):
        out[index]
    with pytest.raises(IndexError, match=r"PolluxData\[\.\.\.\]"):
        PolluxData(flux=out)[index]


@SETTINGS
@given(n=st.integers(1, 10), length=st.integers(0, 12))
def test_wrong_length_mask_is_index_error(n, length):
    assume(length != n)
    out = OutputData(np.zeros((n, 1)))
    with pytest.raises(IndexError, match=r"OutputData\[\.\.\.\]"):
        out[np.ones(length, dtype=bool)]


def test_zero_step_slice_is_refused_by_name():
    with pytest.raises((ValueError, IndexError), match=r"OutputData\[\.\.\.\]"):
        OutputData(np.zeros((4, 1)))[::0]


def test_empty_list_index_selects_no_rows():
    out = OutputData(np.zeros((4, 2)))
    assert out[np.array([], dtype=int)].shape == (0, 2)
    assert out[[]].shape == (0, 2)


# 4. ShiftScalePreprocessor round trips ---------------------------------------------


@SETTINGS
@given(x=well_scaled_matrix(), data=st.data())
def test_shift_scale_round_trip(x, data):
    err = data.draw(err_like(x))
    pre = ShiftScalePreprocessor.from_data(x)
    assert np.all(np.isfinite(np.asarray(pre.loc)))
    assert np.all(np.asarray(pre.scale) > 0)
    y = np.asarray(pre.transform(x))
    np.testing.assert_array_equal(np.isnan(y), np.isnan(x))  # missing stays missing
    assert np.all(np.isfinite(y[~np.isnan(x)]))
    _assert_round_trip(pre.inverse_transform(y), x)
    e = np.asarray(pre.transform_err(err))
    assert np.all(e >= 0)
    _assert_round_trip(pre.inverse_transform_err(e), err, err=True)


@st.composite
def matrix_with_bad_columns(draw):
    """(x, bad): finite data where the columns in ``bad`` are constant (an
    integer, so the mean is exact) or all NaN; other columns vary."""
    x = draw(well_scaled_matrix(max_cols=6))
    d = x.shape[1]
    bad = sorted(draw(st.sets(st.integers(0, d - 1), min_size=1)))
    for j in bad:
        if draw(st.booleans()):
            x[:, j] = np.nan
        else:
            value = float(draw(st.integers(-(10**6), 10**6)))
            keep_nan = np.isnan(x[:, j]) & draw(st.booleans())
            x[:, j] = np.where(keep_nan, np.nan, value)
            if np.isnan(x[:, j]).all():
                x[0, j] = value
    return x, bad


@SETTINGS
@given(case=matrix_with_bad_columns())
def test_from_data_names_constant_and_all_nan_columns(case):
    x, bad = case
    with pytest.raises(ValueError, match="from_data") as info:
        ShiftScalePreprocessor.from_data(x)
    assert f"column(s) {bad}" in str(info.value)


@SETTINGS
@given(
    value=st.floats(min_value=-1e100, max_value=1e100, allow_subnormal=False),
    n=st.integers(2, 20),
)
@example(value=0.1, n=3)
def test_from_data_refuses_any_constant_column(value, n):
    x = np.column_stack([np.linspace(0.0, 1.0, n), np.full(n, value)])
    with pytest.raises(ValueError, match=r"column\(s\) \[1\]"):
        ShiftScalePreprocessor.from_data(x)


@pytest.mark.parametrize("column", [[1e-200, 2e-200, 3e-200], [1e200, -1e200, 0.0]])
def test_from_data_scales_extreme_but_varying_columns(column):
    x = np.asarray(column)[:, None]
    pre = ShiftScalePreprocessor.from_data(x)
    np.testing.assert_allclose(np.asarray(pre.scale), np.std(x / x.max()) * x.max())


# 5. PolluxData preprocess/unprocess ------------------------------------------------


@SETTINGS
@given(flux=well_scaled_matrix(max_cols=3), data=st.data())
def test_pollux_data_preprocess_unprocess_round_trip(flux, data):
    flux_err = data.draw(err_like(flux))
    label = data.draw(
        well_scaled_matrix(min_rows=len(flux), max_rows=len(flux), nan=False)
    )
    raw = PolluxData(
        flux=OutputData(
            flux, err=flux_err, preprocessor=ShiftScalePreprocessor.from_data(flux)
        ),
        label=OutputData(label, preprocessor=ShiftScalePreprocessor.from_data(label)),
    )
    pre = raw.preprocess()
    assert all(out.preprocessed for out in pre.values())
    assert all(pre[k].preprocessor is raw[k].preprocessor for k in raw)
    np.testing.assert_array_equal(np.isnan(pre["flux"].data), np.isnan(flux))
    back = pre.unprocess()
    assert not any(out.preprocessed for out in back.values())
    _assert_round_trip(back["flux"].data, flux)
    _assert_round_trip(back["flux"].err, flux_err, err=True)
    _assert_round_trip(back["label"].data, label)
    assert back["label"].err is None
    # The same through unprocess(PolluxData): values and errors converted.
    again = raw.unprocess(pre)
    _assert_round_trip(again["flux"].data, flux)
    _assert_round_trip(again["flux"].err, flux_err, err=True)
    with pytest.raises(ValueError, match="already preprocessed"):
        pre.preprocess()
    with pytest.raises(ValueError, match="not preprocessed"):
        raw.unprocess()


# 6. PolluxData construction --------------------------------------------------------

output_names = st.from_regex(r"[a-z][a-z_]{0,8}", fullmatch=True).filter(
    lambda s: s != "latents"
)


@SETTINGS
@given(
    lengths=st.lists(st.integers(0, 8), min_size=2, max_size=4),
    names=st.lists(output_names, min_size=4, max_size=4, unique=True),
)
def test_pollux_data_requires_equal_lengths(lengths, names):
    outputs = {
        name: OutputData(np.zeros((n, 2)))
        for name, n in zip(names, lengths, strict=False)
    }
    if len(set(lengths)) == 1:
        assert len(PolluxData(**outputs)) == lengths[0]
        return
    with pytest.raises(ValueError, match="same number of stars"):
        PolluxData(**outputs)


@SETTINGS
@given(others=st.lists(output_names, max_size=3, unique=True), n=st.integers(0, 5))
def test_pollux_data_rejects_reserved_name(others, n):
    outputs = {name: OutputData(np.zeros((n, 1))) for name in others}
    outputs["latents"] = OutputData(np.zeros((n, 1)))
    with pytest.raises(ValueError, match="'latents' is a reserved name"):
        PolluxData(**outputs)


@SETTINGS
@given(
    name=output_names,
    value=st.one_of(
        st.none(),
        st.integers(),
        st.text(max_size=3),
        st.lists(st.floats(), max_size=3),
        hnp.arrays(np.float64, hnp.array_shapes(max_dims=2)),
        st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
        st.just(ShiftScalePreprocessor(0.0, 1.0)),
    ),
)
def test_pollux_data_rejects_non_output_data(name, value):
    with pytest.raises(TypeError, match=rf"PolluxData\({name}=\.\.\.\)"):
        PolluxData(**{name: value})


# 7. unprocess(dict) ----------------------------------------------------------------


@SETTINGS
@given(flux=well_scaled_matrix(max_cols=4, nan=False), data=st.data())
def test_unprocess_dict_checks_widths(flux, data):
    n, width = flux.shape
    pre = PolluxData(
        flux=OutputData(flux, preprocessor=ShiftScalePreprocessor.from_data(flux)),
        label=OutputData(np.zeros((n, 1))),
    ).preprocess()
    bad_shape = data.draw(
        hnp.array_shapes(min_dims=0, max_dims=3, max_side=6).filter(
            lambda s: not (len(s) == 2 and s[1] == width)
        )
    )
    with pytest.raises(ValueError, match=r"unprocess\(\): 'flux'") as info:
        pre.unprocess({"flux": np.zeros(bad_shape)})
    assert f"(n_stars, {width})" in str(info.value)
    # The right width converts with the output's own preprocessor.
    values = data.draw(
        hnp.arrays(np.float64, (n, width), elements=st.floats(-1e3, 1e3))
    )
    phys = pre.unprocess({"flux": values})
    assert phys.names == ("flux",)
    np.testing.assert_array_equal(
        np.asarray(phys["flux"].data),
        np.asarray(pre["flux"].preprocessor.inverse_transform(values)),
    )
    assert phys["flux"].err is None


@pytest.mark.parametrize("value", ["abc", [[1.0, 2.0], [3.0]]])
def test_unprocess_dict_non_numeric_value_names_output(value):
    pre = PolluxData(flux=OutputData(np.zeros((2, 2)))).preprocess()
    with pytest.raises((TypeError, ValueError), match="'flux'"):
        pre.unprocess({"flux": value})
