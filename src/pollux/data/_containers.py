"""Data containers: one output block (`OutputData`) and a set of them (`PolluxData`)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from .._params import RESERVED
from ._preprocessor import AbstractPreprocessor, NullPreprocessor
from .values import check_values, is_lazy

__all__ = ["OutputData", "PolluxData"]


def _as_2d_float(x: ArrayLike, what: str) -> np.ndarray:
    return _as_2d(_as_numeric(x, what), what)


def _as_2d(x: Any, what: str) -> Any:
    """``x`` (numpy or Dask) with shape (n_stars, n_dim); 1-D as one column."""
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        msg = (
            f"{what} must have shape (n_stars, n_dim) (or (n_stars,) for a single "
            f"dimension), got shape {x.shape}"
        )
        raise ValueError(msg)
    return x


def _as_numeric(x: ArrayLike, what: str) -> np.ndarray:
    """``x`` as a float16/32/64 numpy array, or a TypeError/ValueError naming it."""
    if isinstance(x, (str, bytes)) or x is None:
        msg = f"{what} must be a numeric array, got {type(x).__name__}"
        raise TypeError(msg)
    try:
        arr = np.asarray(x)
    except ValueError as err:  # e.g. a ragged list of lists
        msg = f"{what} must be a rectangular numeric array ({err})"
        raise ValueError(msg) from err
    if arr.dtype == object or not (
        np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
    ):
        msg = f"{what} must be a numeric array, got dtype {arr.dtype}"
        raise TypeError(msg)
    if arr.dtype not in (np.float16, np.float32, np.float64):  # ints, long double
        arr = arr.astype(float)
    return arr


def _lazy_2d(x: Any, what: str) -> Any:
    import dask.array as da

    x = da.asarray(x) if is_lazy(x) else da.from_array(_as_numeric(x, what))
    if x.dtype == object or not (
        np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)
    ):
        msg = f"{what} must be a numeric array, got dtype {x.dtype}"
        raise TypeError(msg)
    if x.dtype not in (np.float16, np.float32, np.float64):
        x = x.astype(float)
    # The dtype the chunks will have as JAX arrays (float64 only with x64 on).
    x = _as_2d(x.astype(jax.dtypes.canonicalize_dtype(x.dtype)), what)
    if any(np.isnan(c) for c in x.shape):
        msg = f"{what}: a Dask array of unknown shape; call compute_chunk_sizes() first"
        raise ValueError(msg)
    return x


def _lazy_arrays(data: Any, err: Any) -> tuple[Any, Any]:
    """Dask values and errors, checked for what their metadata tell (shape,
    dtype); their values are checked (`check_values`) as their chunks are read."""
    arr = _lazy_2d(data, "OutputData(data=...)")
    if err is None:
        return arr, None
    err_arr = _lazy_2d(err, "OutputData(err=...)")
    if err_arr.shape != arr.shape:
        msg = (
            f"OutputData(err=...): shape {err_arr.shape} does not match "
            f"data shape {arr.shape}"
        )
        raise ValueError(msg)
    return arr, err_arr.rechunk(arr.chunks)


class OutputData(eqx.Module):
    """Observations of one output (e.g. flux, labels) for every star, with errors.

    Parameters
    ----------
    data
        Values, shape ``(n_stars, n_dim)`` (or ``(n_stars,)``). A missing value is NaN.
    err
        One-sigma uncertainties of the same shape, or None (the model must then
        learn an extra scatter ``s`` for this output). Errors must be >= 0; an
        infinite error also marks a value as missing.
    preprocessor
        Maps physical units to model units (e.g. `ShiftScalePreprocessor`);
        None means the identity.

    Examples
    --------
    >>> import numpy as np
    >>> out = OutputData(np.ones((3, 2)), err=np.full((3, 2), 0.1))
    >>> out.shape
    (3, 2)
    >>> out[1:].shape
    (2, 2)
    """

    data: Float[Array, "n_stars n_dim"]
    err: Float[Array, "n_stars n_dim"] | None
    preprocessor: AbstractPreprocessor
    preprocessed: bool = eqx.field(static=True)

    def __init__(
        self,
        data: ArrayLike,
        err: ArrayLike | None = None,
        preprocessor: AbstractPreprocessor | None = None,
        *,
        preprocessed: bool = False,
    ):
        if is_lazy(data) or is_lazy(err):
            arr, err_arr = _lazy_arrays(data, err)
        else:
            arr = _as_2d_float(data, "OutputData(data=...)")
            err_arr = None if err is None else _as_2d_float(err, "OutputData(err=...)")
            check_values(arr, err_arr)
            # (device_put: jnp.asarray compiles a small program per shape)
            arr = jax.device_put(arr)
            err_arr = None if err_arr is None else jax.device_put(err_arr)
        if preprocessor is None:
            preprocessor = NullPreprocessor()
        if not isinstance(preprocessor, AbstractPreprocessor):
            msg = (
                "OutputData(preprocessor=...): expected a preprocessor such as "
                f"ShiftScalePreprocessor, got {type(preprocessor).__name__}"
            )
            raise TypeError(msg)
        self.data = arr
        self.err = err_arr
        self.preprocessor = preprocessor
        self.preprocessed = bool(preprocessed)

    @property
    def lazy(self) -> bool:
        """Whether the values are a Dask array (read chunk by chunk when used)."""
        return is_lazy(self.data)

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_stars, n_dim)``."""
        return tuple(self.data.shape)

    @property
    def size(self) -> int:
        """Number of output dimensions ``n_dim``."""
        return int(self.data.shape[1])

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def _replace(self, **changes: Any) -> OutputData:
        """A copy with some fields changed, without re-validating."""
        new = object.__new__(OutputData)
        for field in ("data", "err", "preprocessor", "preprocessed"):
            object.__setattr__(new, field, changes.get(field, getattr(self, field)))
        return new

    def __getitem__(self, index: Any) -> OutputData:
        idx = _normalize_index(index, len(self), "OutputData[...]")
        return self._replace(
            data=self.data[idx], err=None if self.err is None else self.err[idx]
        )

    def preprocess(self) -> OutputData:
        """Values and errors in model units."""
        if self.preprocessed:
            msg = "OutputData.preprocess(): this data is already preprocessed"
            raise ValueError(msg)
        pre = self.preprocessor
        return self._replace(
            data=self._map(pre.transform, self.data),
            err=None if self.err is None else self._map(pre.transform_err, self.err),
            preprocessed=True,
        )

    def unprocess(self) -> OutputData:
        """Values and errors back in physical units."""
        if not self.preprocessed:
            msg = "OutputData.unprocess(): this data is not preprocessed"
            raise ValueError(msg)
        pre = self.preprocessor
        return self._replace(
            data=self._map(pre.inverse_transform, self.data),
            err=(
                None
                if self.err is None
                else self._map(pre.inverse_transform_err, self.err)
            ),
            preprocessed=False,
        )

    @staticmethod
    def _map(f, x):
        """``f(x)``; for a Dask array, ``f`` of each block of whole rows."""
        if not is_lazy(x):
            return f(x)
        x, dtype = x.rechunk({1: -1}), x.dtype
        return x.map_blocks(lambda block: np.asarray(f(block), dtype), dtype=dtype)


def _normalize_index(index: Any, n: int, call: str) -> Any:
    """Turn int/slice/index array/boolean mask into an index that keeps 2D shape."""
    if isinstance(index, slice):
        if index.step == 0:
            msg = f"{call}: slice step cannot be zero"
            raise ValueError(msg)
        return index
    if isinstance(index, (int, np.integer)):
        i = int(index)
        if not -n <= i < n:
            msg = f"{call}: index {i} is out of range for {n} stars"
            raise IndexError(msg)
        return np.array([i])
    arr = np.asarray(index)
    if arr.size == 0 and arr.ndim == 1 and arr.dtype != bool:  # [] selects none
        arr = arr.astype(np.intp)
    if arr.dtype == bool:
        if arr.shape != (n,):
            msg = f"{call}: boolean mask must have shape ({n},), got {arr.shape}"
            raise IndexError(msg)
        return np.flatnonzero(arr)
    if np.issubdtype(arr.dtype, np.integer) and arr.ndim == 1:
        if arr.size and (arr.max() >= n or arr.min() < -n):
            msg = f"{call}: index array has entries out of range for {n} stars"
            raise IndexError(msg)
        return arr
    msg = (
        f"{call}: index with an output name, an int, a slice, a 1D integer array or a "
        f"boolean mask; got {type(index).__name__}"
    )
    raise TypeError(msg)


class PolluxData(eqx.Module):
    """A read-only set of named outputs observed for the same stars.

    Parameters
    ----------
    **outputs
        ``name=OutputData(...)``, all with the same number of stars.

    Indexing with a name returns that `OutputData`; indexing with an int, slice,
    integer array or boolean mask selects stars and returns a `PolluxData` with the
    same preprocessors. ``len()`` is the number of stars.

    Examples
    --------
    >>> import numpy as np
    >>> from pollux.data import OutputData, PolluxData, ShiftScalePreprocessor
    >>> flux = np.random.default_rng(0).normal(size=(10, 4))
    >>> data = PolluxData(flux=OutputData(
    ...     flux, err=np.full_like(flux, 0.1),
    ...     preprocessor=ShiftScalePreprocessor.from_data(flux)))
    >>> pre = data.preprocess()
    >>> train, test = pre[:6], pre[6:]
    >>> len(train), len(test), list(test)
    (6, 4, ['flux'])
    >>> back = test.unprocess()
    >>> bool(np.allclose(back["flux"].data, flux[6:], atol=1e-5))
    True
    """

    outputs: dict[str, OutputData]

    def __init__(self, **outputs: OutputData):
        if not outputs:
            msg = "PolluxData(): give at least one output, e.g. PolluxData(flux=...)"
            raise ValueError(msg)
        lengths = {}
        for name, out in outputs.items():
            if name in RESERVED:
                msg = f"PolluxData(): {name!r} is a reserved name; rename this output"
                raise ValueError(msg)
            if not isinstance(out, OutputData):
                msg = (
                    f"PolluxData({name}=...): expected an OutputData, got "
                    f"{type(out).__name__}; wrap arrays as OutputData(data, err=...)"
                )
                raise TypeError(msg)
            lengths[name] = len(out)
        if len(set(lengths.values())) > 1:
            msg = (
                "PolluxData(): all outputs must have the same number of stars (rows), "
                f"got {lengths}"
            )
            raise ValueError(msg)
        self.outputs = dict(outputs)

    # Mapping-like access --------------------------------------------------------
    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            try:
                return self.outputs[key]
            except KeyError:
                msg = f"no output named {key!r}; outputs are {list(self.outputs)}"
                raise KeyError(msg) from None
        idx = _normalize_index(key, len(self), "PolluxData[...]")
        return _from_outputs({k: v[idx] for k, v in self.outputs.items()})

    def __len__(self) -> int:
        return len(next(iter(self.outputs.values())))

    def __iter__(self) -> Iterator[str]:
        return iter(self.outputs)

    def __contains__(self, name: object) -> bool:
        return name in self.outputs

    def keys(self):
        return self.outputs.keys()

    def values(self):
        return self.outputs.values()

    def items(self):
        return self.outputs.items()

    @property
    def names(self) -> tuple[str, ...]:
        """Output names, in order."""
        return tuple(self.outputs)

    def __repr__(self) -> str:
        parts = ", ".join(f"{k}={v.shape}" for k, v in self.outputs.items())
        return f"PolluxData(n_stars={len(self)}, {parts})"

    # Units ----------------------------------------------------------------------
    def preprocess(self) -> PolluxData:
        """All outputs in model units (each through its own preprocessor)."""
        return _from_outputs({k: v.preprocess() for k, v in self.outputs.items()})

    def unprocess(
        self, data: PolluxData | Mapping[str, Any] | None = None
    ) -> PolluxData:
        """Map values (and errors) in model units back to physical units.

        Parameters
        ----------
        data
            Model-unit values to convert with this data's preprocessors: a
            `PolluxData` (errors are converted too, e.g. the output of
            `LuxModel.predict`) or a dict ``{name: array}`` (e.g. the output of
            `LuxModel.predict_outputs`). None converts this data itself.
        """
        if data is None:
            return _from_outputs({k: v.unprocess() for k, v in self.outputs.items()})
        if isinstance(data, PolluxData):
            items = dict(data.outputs)
        elif isinstance(data, Mapping):
            items = dict(data)
        else:
            msg = (
                "PolluxData.unprocess(data=...): expected a PolluxData or a dict of "
                f"arrays, got {type(data).__name__}"
            )
            raise TypeError(msg)
        out = {}
        for name, value in items.items():
            if name not in self.outputs:
                msg = (
                    f"PolluxData.unprocess(): {name!r} is not an output of this data "
                    f"(outputs: {list(self.outputs)})"
                )
                raise ValueError(msg)
            pre = self.outputs[name].preprocessor
            if isinstance(value, OutputData):
                values, err = value.data, value.err
            else:
                what = f"PolluxData.unprocess(): {name!r}"
                values, err = jnp.asarray(_as_numeric(value, what)), None
            width = self.outputs[name].size
            if values.ndim != 2 or values.shape[1] != width:
                msg = (
                    f"PolluxData.unprocess(): {name!r} values must have shape "
                    f"(n_stars, {width}), got {tuple(values.shape)}"
                )
                raise ValueError(msg)
            out[name] = OutputData(
                OutputData._map(pre.inverse_transform, values),
                err=None
                if err is None
                else OutputData._map(pre.inverse_transform_err, err),
                preprocessor=pre,
            )
        return PolluxData(**out)


def _from_outputs(outputs: dict[str, OutputData]) -> PolluxData:
    """Build a PolluxData from already-checked outputs."""
    new = object.__new__(PolluxData)
    object.__setattr__(new, "outputs", outputs)
    return new
