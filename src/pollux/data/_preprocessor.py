"""Preprocessors: invertible per-dimension maps between physical and model units."""

from __future__ import annotations

import abc
import warnings

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

__all__ = ["AbstractPreprocessor", "NullPreprocessor", "ShiftScalePreprocessor"]


class AbstractPreprocessor(eqx.Module):
    """Interface of a preprocessor: values and their errors, forwards and back."""

    @abc.abstractmethod
    def transform(self, x: ArrayLike) -> Array:
        """Physical units -> model units."""

    @abc.abstractmethod
    def inverse_transform(self, x: ArrayLike) -> Array:
        """Model units -> physical units."""

    @abc.abstractmethod
    def transform_err(self, err: ArrayLike) -> Array:
        """Uncertainties in physical units -> model units."""

    @abc.abstractmethod
    def inverse_transform_err(self, err: ArrayLike) -> Array:
        """Uncertainties in model units -> physical units."""


class NullPreprocessor(AbstractPreprocessor):
    """The identity: data already in model units.

    Examples
    --------
    >>> float(NullPreprocessor().transform(2.0))
    2.0
    """

    def transform(self, x: ArrayLike) -> Array:
        return jnp.asarray(x)

    def inverse_transform(self, x: ArrayLike) -> Array:
        return jnp.asarray(x)

    def transform_err(self, err: ArrayLike) -> Array:
        return jnp.asarray(err)

    def inverse_transform_err(self, err: ArrayLike) -> Array:
        return jnp.asarray(err)


def _check_scale(scale: np.ndarray, call: str) -> None:
    bad = ~np.isfinite(scale) | (scale <= 0)
    if np.any(bad):
        cols = np.flatnonzero(bad.ravel())[:10].tolist()
        msg = (
            f"{call}: column(s) {cols} have zero or undefined spread (constant, or "
            "no finite values), so they cannot be scaled. Drop those columns or "
            "build ShiftScalePreprocessor(loc, scale) with an explicit scale."
        )
        raise ValueError(msg)


def _as_stat_input(x: ArrayLike, call: str) -> np.ndarray:
    arr = np.asarray(x, dtype=float)
    if arr.ndim == 0:
        msg = f"{call}: x must be an array of values, got a scalar"
        raise ValueError(msg)
    if np.isinf(arr).any():
        msg = f"{call}: x contains infinite values; mark missing values with NaN"
        raise ValueError(msg)
    return arr


class ShiftScalePreprocessor(AbstractPreprocessor):
    r"""Shift and scale each dimension: :math:`x' = (x - \mathrm{loc}) / \mathrm{scale}`.

    Parameters
    ----------
    loc, scale
        Arrays broadcastable against the data (one value per output dimension).
        ``scale`` must be positive and finite.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([[1.0, 10.0], [3.0, 30.0], [np.nan, 20.0]])
    >>> pre = ShiftScalePreprocessor.from_data(x)
    >>> np.asarray(pre.loc).tolist()
    [2.0, 20.0]
    >>> np.allclose(pre.inverse_transform(pre.transform(x))[:2], x[:2])
    True
    """

    loc: Float[Array, ...]
    scale: Float[Array, ...]

    def __init__(self, loc: ArrayLike, scale: ArrayLike):
        scale_np = np.asarray(scale, dtype=float)
        _check_scale(scale_np, "ShiftScalePreprocessor(scale=...)")
        loc_np = np.asarray(loc, dtype=float)
        if not np.all(np.isfinite(loc_np)):
            msg = "ShiftScalePreprocessor(loc=...): loc must be finite"
            raise ValueError(msg)
        self.loc = jnp.asarray(loc_np)
        self.scale = jnp.asarray(scale_np)

    @classmethod
    def from_data(cls, x: ArrayLike, axis: int = 0) -> ShiftScalePreprocessor:
        """Shift by the mean and scale by the standard deviation along ``axis``.

        Missing values (NaN) are ignored.
        """
        arr = _as_stat_input(x, "ShiftScalePreprocessor.from_data")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
            loc = np.nanmean(arr, axis=axis)
            # on values scaled to at most 1, so that squares neither under- nor
            # overflow; a constant column (max == min) has no spread at all
            top = np.nanmax(np.abs(arr), axis=axis, keepdims=True)
            top = np.where(np.isfinite(top) & (top > 0), top, 1.0)
            scale = np.nanstd(arr / top, axis=axis) * np.squeeze(top, axis)
            flat = np.nanmax(arr, axis=axis) == np.nanmin(arr, axis=axis)
            scale = np.where(flat, 0.0, scale)
        _check_scale(np.asarray(scale), "ShiftScalePreprocessor.from_data")
        return cls(loc, scale)

    @classmethod
    def from_data_percentiles(
        cls, x: ArrayLike, low: float = 16.0, high: float = 84.0, axis: int = 0
    ) -> ShiftScalePreprocessor:
        """Shift by the median, scale by half the ``low``-``high`` percentile range.

        Robust to outliers; for Gaussian data the default (16, 84) recovers the
        standard deviation. Missing values (NaN) are ignored.
        """
        if not 0 <= low < high <= 100:
            msg = (
                "ShiftScalePreprocessor.from_data_percentiles: need "
                f"0 <= low < high <= 100, got low={low}, high={high}"
            )
            raise ValueError(msg)
        arr = _as_stat_input(x, "ShiftScalePreprocessor.from_data_percentiles")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
            loc = np.nanmedian(arr, axis=axis)
            lo, hi = np.nanpercentile(arr, [low, high], axis=axis)
        scale = 0.5 * (hi - lo)
        _check_scale(np.asarray(scale), "ShiftScalePreprocessor.from_data_percentiles")
        return cls(loc, scale)

    def transform(self, x: ArrayLike) -> Array:
        return (jnp.asarray(x) - self.loc) / self.scale

    def inverse_transform(self, x: ArrayLike) -> Array:
        return jnp.asarray(x) * self.scale + self.loc

    def transform_err(self, err: ArrayLike) -> Array:
        return jnp.asarray(err) / self.scale

    def inverse_transform_err(self, err: ArrayLike) -> Array:
        return jnp.asarray(err) * self.scale
