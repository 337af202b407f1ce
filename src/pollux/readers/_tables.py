"""Label tables (allStar-like FITS, CSV, ECSV) into numeric arrays."""

from __future__ import annotations

import csv
import dataclasses
import gzip
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..io.checks import real_array, unique_names
from ._common import MAX_VALUE, ReaderError, ReaderSource, as_path, one_line, require

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


def _open_text(path: Path, newline: str | None = None) -> Any:
    """``path`` (gzipped if it ends in ``.gz``) opened as UTF-8 text, bad bytes
    replaced (astropy, reading next, refuses them)."""
    if path.suffix.lower() == ".gz":
        return gzip.open(
            path, "rt", newline=newline, encoding="utf-8", errors="replace"
        )
    return open(path, newline=newline, encoding="utf-8", errors="replace")


def _csv_header(path: Path, src: ReaderSource) -> tuple[list[str], int]:
    """The names of a CSV file's header row, as written (astropy renames a
    repeated name ``name_1``), and its number of data rows; a row with another
    number of fields than the header (astropy fills a short row with missing
    values) is refused."""
    header: list[str] | None = None
    n_rows = 0
    try:
        with _open_text(path, newline="") as f:
            reader = csv.reader(f, strict=True)
            for row in reader:
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue  # a blank line
                if header is None:
                    header = [name.strip() for name in row]
                    continue
                if len(row) != len(header):
                    raise src.error(
                        f"line {reader.line_num}",
                        f"has {len(row)} field(s) but the header row names "
                        f"{len(header)} columns",
                        "give every row one value per column (empty for missing)",
                    )
                n_rows += 1
    except (ReaderError, TimeoutError):
        raise
    except Exception as err:  # csv.Error, a damaged gzip stream, ...
        raise src.error(
            None, f"is not valid CSV ({one_line(err)})", "fix the file"
        ) from None
    return header or [], n_rows


def _ecsv_header(path: Path, src: ReaderSource) -> list[str]:
    """The names of an ECSV file's header row (its first line not a comment)."""
    delimiter = " "
    try:
        with _open_text(path) as f:
            for line in f:
                text = line.strip()
                if text.startswith("#"):
                    if text.replace(" ", "") in ("#delimiter:','", '#delimiter:","'):
                        delimiter = ","
                    continue
                if text:
                    row = next(
                        csv.reader([text], delimiter=delimiter, skipinitialspace=True)
                    )
                    return [name.strip() for name in row]
    except (ReaderError, TimeoutError):
        raise
    except Exception as err:  # csv.Error, a damaged gzip stream, ...
        raise src.error(
            None, f"is not valid ECSV ({one_line(err)})", "fix the file"
        ) from None
    return []


def _no_repeats(names: list[str], src: ReaderSource) -> None:
    seen: set[str] = set()
    for name in names:
        if name and name in seen:
            raise src.error(
                f"column {name!r}",
                "appears twice in the header row (the table reader would rename "
                f"the second {name + '_1'!r}, so which one is meant is not known)",
                "give every column its own name",
            )
        seen.add(name)


def _column(
    table: Any, name: str, src: ReaderSource, *, errors: bool = False
) -> np.ndarray:
    """Column ``name`` as float64: masked entries, NaN and sentinels -> NaN.

    Refuses what is not real numbers (text, bool, complex), values beyond
    ``±MAX_VALUE``, and (label values, not ``errors``) infinite values."""
    item = f"column {name!r}"
    try:
        col = table[name]
        raw = np.asarray(np.ma.getdata(col))
        mask = np.asarray(np.ma.getmaskarray(col))
    except Exception as err:
        raise src.error(
            item, f"cannot be read as numbers ({one_line(err)})", "store numbers"
        ) from None
    require(
        raw.dtype.kind in "iufc" and raw.dtype.names is None,
        src.call,
        src.path,
        f"column {name!r} is not numeric (dtype {raw.dtype})",
    )
    require(
        raw.ndim == 1,
        src.call,
        src.path,
        f"column {name!r} has shape {raw.shape}; expected one value per row",
    )
    data = np.array(real_array(raw, src, item), dtype=np.float64)
    if mask.shape == data.shape:
        data[mask] = np.nan
    real_array(data, src, item, limit=MAX_VALUE)
    if not errors and np.any(np.isinf(data)):
        raise src.error(
            item,
            f"holds {int(np.sum(np.isinf(data)))} infinite value(s)",
            f"mark missing labels with NaN, an empty cell or a value <= {SENTINEL:g}",
        )
    data[data <= SENTINEL] = np.nan
    return data


def _ids(table: Any, name: str, src: ReaderSource) -> tuple[str, ...]:
    """Column ``name`` as identifiers: text (UTF-8) or integers, none empty."""
    item = f"column {name!r}"
    col = table[name]
    try:
        raw = np.asarray(np.ma.getdata(col))
        mask = np.asarray(np.ma.getmaskarray(col))
    except Exception as err:
        raise src.error(
            item, f"cannot be read as identifiers ({one_line(err)})"
        ) from None
    if raw.ndim != 1 or raw.dtype.kind not in "iuSUOf" or raw.dtype.names:
        raise src.error(
            item,
            f"holds values of dtype {raw.dtype} and shape {raw.shape}; identifiers "
            "are one text or integer per row",
            "name the column of identifiers",
        )
    if mask.shape == raw.shape and np.any(mask):
        raise src.error(
            item,
            f"is empty in {int(mask.sum())} row(s) (e.g. row {int(np.argmax(mask))})",
            "give every row an identifier",
        )
    out = []
    for row, x in enumerate(raw.tolist()):
        if isinstance(x, bytes):
            try:
                x = x.decode()
            except UnicodeDecodeError:
                raise src.error(
                    item,
                    f"holds {x[:20]!r} in row {row}, which is not UTF-8 text",
                    "store the identifiers as UTF-8 text",
                ) from None
        if isinstance(x, float) and not np.isfinite(x):
            x = ""
        if not isinstance(x, (str, int, float)) or isinstance(x, bool):
            raise src.error(
                item,
                f"holds {type(x).__name__} values; identifiers are text or integers",
            )
        x = str(x).strip()
        if not x:
            raise src.error(
                item,
                f"holds an empty or missing identifier in row {row}",
                "give every row an identifier",
            )
        out.append(x)
    return tuple(out)


def _resolve(
    names: Sequence[str], available: list[str], arg: str, path: Any
) -> list[str]:
    """Exact column names, else a unique case-insensitive match; missing or
    ambiguous -> error."""
    lower: dict[str, list[str]] = {}
    for a in available:
        lower.setdefault(a.lower(), []).append(a)
    out, missing = [], []
    for name in names:
        if name in available:
            out.append(name)
        elif len(lower.get(name.lower(), [])) == 1:
            out.append(lower[name.lower()][0])
        elif lower.get(name.lower()):
            require(
                False,
                f"read_table({arg}=...)",
                path,
                f"has columns {lower[name.lower()]}, which all match {name!r} but "
                "for case; name one exactly",
            )
        else:
            missing.append(name)
    require(
        not missing,
        f"read_table({arg}=...)",
        path,
        f"has no column(s) {missing}; available: {available}",
    )
    return out


def _names(value: Any, arg: str) -> list[str]:
    """A caller's list of column names: strings, none twice (case-insensitively)."""
    names = [value] if isinstance(value, str) else value
    try:
        names = list(names)
    except TypeError:
        msg = f"read_table({arg}=...): expected a list of column names, got {type(value).__name__}"
        raise TypeError(msg) from None
    return list(unique_names(names, None, arg, call="read_table"))


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
    sentinels (values <= -9999, as in APOGEE catalogues) become NaN; an infinite
    error is kept (no information).

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
    ValueError, TypeError
        On missing or ambiguous columns (listing the available ones); argument
        lists that repeat a name (case aside) or use one column as a label, an
        error and the identifiers at once; a CSV/ECSV header row that repeats a
        column name (astropy would rename it); CSV rows of another number of
        fields than the header; non-numeric, bool or complex columns; label
        values that are infinite or beyond ±1e30 (`MAX_VALUE`); negative
        errors; missing or empty identifiers; or a file astropy cannot read.
        A problem with the file is a ``ReaderError`` (a
        `pollux.io.checks.FileError`) naming the file and the column.

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
    columns = _names(columns, "columns")
    if not columns:
        raise ValueError("read_table(columns=...): no columns given")
    if err_columns is not None:
        err_columns = _names(err_columns, "err_columns")
        if len(err_columns) != len(columns):
            msg = f"read_table(err_columns=...): expected {len(columns)} names (one per column), got {len(err_columns)}"
            raise ValueError(msg)
        labels = {c.lower() for c in columns}
        both = [c for c in err_columns if c.lower() in labels]
        if both:
            msg = (
                f"read_table(err_columns=...): {both[0]!r} is also a label column "
                "(columns=); give each label its own error column"
            )
            raise ValueError(msg)
    if id_column is not None:
        if not isinstance(id_column, str) or not id_column.strip():
            msg = (
                f"read_table(id_column=...): expected a column name, got {id_column!r}"
            )
            raise TypeError(msg)
        for arg, names in (("columns", columns), ("err_columns", err_columns or [])):
            if id_column.lower() in {c.lower() for c in names}:
                msg = (
                    f"read_table(id_column=...): {id_column!r} is also in {arg}=; "
                    "the identifiers need a column of their own"
                )
                raise ValueError(msg)
    src = ReaderSource(call, p)
    suffixes = [s.lower() for s in p.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    fmt = _FORMATS.get(suffixes[-1]) if suffixes else None
    n_rows = None
    if fmt == "ascii.csv" and p.is_file():
        header, n_rows = _csv_header(p, src)
        _no_repeats(header, src)
    elif fmt == "ascii.ecsv" and p.is_file():
        _no_repeats(_ecsv_header(p, src), src)
    try:
        table = Table.read(p, format=fmt) if fmt else Table.read(p)
    except TimeoutError:  # a watchdog's, not damage of the file
        raise
    except Exception as err:
        msg = (
            f"{call}: file '{p}' could not be read as a table (FITS, or CSV/ECSV "
            f"named .csv/.ecsv): {one_line(err, 300)}"
        )
        raise ReaderError(msg) from err
    require(len(table) > 0, call, p, "has no rows")
    if n_rows is not None and len(table) != n_rows:
        raise src.error(
            None,
            f"holds {n_rows} data rows but only {len(table)} could be read (an "
            "unclosed quote?)",
            "fix the file",
        )
    available = list(table.colnames)
    cols = _resolve(columns, available, "columns", p)
    values = np.column_stack([_column(table, c, src) for c in cols])
    err = None
    if err_columns is not None:
        ecols = _resolve(err_columns, available, "err_columns", p)
        err = np.column_stack([_column(table, c, src, errors=True) for c in ecols])
        n_neg = int(np.sum(err < 0))
        require(n_neg == 0, call, p, f"has {n_neg} negative errors in {ecols}")
    if id_column is None:
        ids = tuple(str(i) for i in range(len(table)))
    else:
        (idc,) = _resolve([id_column], available, "id_column", p)
        ids = _ids(table, idc, src)
    return LabelTable(ids=ids, values=values, err=err, columns=tuple(cols))
