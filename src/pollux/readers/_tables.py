"""Label tables (allStar-like FITS, CSV, ECSV) into numeric arrays."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from ._common import as_path, require

__all__ = ["SENTINEL", "LabelTable", "read_table"]

#: Values at or below this are "no measurement" sentinels (APOGEE uses -9999, -9999.99).
SENTINEL = -9999.0

_FORMATS = {".csv": "ascii.csv", ".ecsv": "ascii.ecsv"}


@dataclasses.dataclass(frozen=True, eq=False)
class LabelTable:
    """Numeric label columns of a table, one row per star.

    Parameters
    ----------
    ids
        One identifier per row.
    values
        ``(N, L)`` float64 labels; NaN where missing.
    err
        ``(N, L)`` float64 one-sigma errors (NaN where missing), or None.
    columns
        The ``L`` column names.
    """

    ids: tuple[str, ...]
    values: np.ndarray
    err: np.ndarray | None
    columns: tuple[str, ...]

    def __len__(self) -> int:
        return self.values.shape[0]


def _column(table: Any, name: str, call: str, path: Any) -> np.ndarray:
    col = table[name]
    data = (
        np.ma.getdata(col).astype(np.float64)
        if np.issubdtype(col.dtype, np.number)
        else None
    )
    require(
        data is not None,
        call,
        path,
        f"column {name!r} is not numeric (dtype {col.dtype})",
    )
    require(
        data.ndim == 1,
        call,
        path,
        f"column {name!r} has shape {data.shape}; expected one value per row",
    )
    data = np.array(data)
    data[np.ma.getmaskarray(col)] = np.nan
    data[data <= SENTINEL] = np.nan
    return data


def _resolve(
    names: Sequence[str], available: list[str], arg: str, path: Any
) -> list[str]:
    """Exact column names, else a unique case-insensitive match; missing -> error."""
    lower: dict[str, list[str]] = {}
    for a in available:
        lower.setdefault(a.lower(), []).append(a)
    out, missing = [], []
    for name in names:
        if name in available:
            out.append(name)
        elif len(lower.get(name.lower(), [])) == 1:
            out.append(lower[name.lower()][0])
        else:
            missing.append(name)
    require(
        not missing,
        f"read_table({arg}=...)",
        path,
        f"has no column(s) {missing}; available: {available}",
    )
    return out


def read_table(
    path: Any,
    columns: Sequence[str],
    *,
    err_columns: Sequence[str] | None = None,
    id_column: str | None = None,
) -> LabelTable:
    """Read label columns (and their errors) from a FITS, CSV or ECSV table.

    Read with astropy's ``Table.read`` (FITS binary tables such as allStar, CSV by
    the ``.csv`` suffix, ECSV by ``.ecsv``, other names as astropy guesses). Column
    names match exactly, else case-insensitively. Masked entries, NaN and
    sentinels (values <= -9999, as in APOGEE catalogues) become NaN.

    Parameters
    ----------
    path
        The table file.
    columns
        The label columns, in order.
    err_columns
        Their error columns (same length), or None for no errors.
    id_column
        Column of star identifiers; None numbers the rows ``"0"``, ``"1"``, ...

    Returns
    -------
    LabelTable

    Raises
    ------
    ValueError
        On missing columns (listing the available ones), non-numeric columns,
        negative errors, or a file astropy cannot read.

    Examples
    --------
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "labels.csv")
    >>> _ = open(path, "w").write("id,teff,logg\\na,4500,-9999\\nb,5000,3.1\\n")
    >>> t = read_table(path, ["teff", "logg"], id_column="id")
    >>> t.ids, t.values.tolist()
    (('a', 'b'), [[4500.0, nan], [5000.0, 3.1]])
    """
    from astropy.table import Table

    call = "read_table(path=...)"
    p = as_path(path, call)
    if isinstance(columns, str):
        columns = [columns]
    columns = list(columns)
    if not columns:
        raise ValueError("read_table(columns=...): no columns given")
    if err_columns is not None:
        err_columns = (
            [err_columns] if isinstance(err_columns, str) else list(err_columns)
        )
        if len(err_columns) != len(columns):
            msg = f"read_table(err_columns=...): expected {len(columns)} names (one per column), got {len(err_columns)}"
            raise ValueError(msg)
    suffixes = [s.lower() for s in p.suffixes]
    fmt = _FORMATS.get(suffixes[-1]) if suffixes else None
    try:
        table = Table.read(p, format=fmt) if fmt else Table.read(p)
    except Exception as err:
        msg = f"{call}: file '{p}' could not be read as a table: {err}"
        raise ValueError(msg) from err
    require(len(table) > 0, call, p, "has no rows")
    available = list(table.colnames)
    cols = _resolve(columns, available, "columns", p)
    values = np.column_stack([_column(table, c, call, p) for c in cols])
    err = None
    if err_columns is not None:
        ecols = _resolve(err_columns, available, "err_columns", p)
        err = np.column_stack([_column(table, c, call, p) for c in ecols])
        n_neg = int(np.sum(err < 0))
        require(n_neg == 0, call, p, f"has {n_neg} negative errors in {ecols}")
    if id_column is None:
        ids = tuple(str(i) for i in range(len(table)))
    else:
        (idc,) = _resolve([id_column], available, "id_column", p)
        ids = tuple(
            x.decode().strip() if isinstance(x, bytes) else str(x).strip()
            for x in table[idc].tolist()
        )
    return LabelTable(ids=ids, values=values, err=err, columns=tuple(cols))
