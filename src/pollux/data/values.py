"""Checks of output values shared by the containers and the fitting layer
(in-memory and Dask arrays alike)."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["check_values", "is_lazy"]


def is_lazy(x: Any) -> bool:
    """Whether ``x`` is a Dask collection (computed chunk by chunk, on demand)."""
    return hasattr(x, "__dask_graph__")


def check_values(
    data: Any,
    err: Any,
    data_name: str = "OutputData(data=...)",
    err_name: str = "OutputData(err=...)",
) -> None:
    """Refuse infinite values, errors of another shape, and NaN or negative
    errors (the names say where they come from in the messages)."""
    if np.isinf(data).any():
        n_inf = int(np.isinf(data).sum())
        msg = (
            f"{data_name}: {n_inf} value(s) are infinite. Mark missing "
            "values with NaN (or give them an infinite error) instead."
        )
        raise ValueError(msg)
    if err is None:
        return
    if err.shape != data.shape:
        msg = f"{err_name}: shape {err.shape} does not match data shape {data.shape}"
        raise ValueError(msg)
    if np.isnan(err).any():
        msg = (
            f"{err_name}: errors contain NaN. For a missing value set "
            "the data to NaN (with any finite error) or the error to inf."
        )
        raise ValueError(msg)
    if (err < 0).any():
        msg = f"{err_name}: errors must be >= 0, found negative values"
        raise ValueError(msg)
