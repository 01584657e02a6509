"""Turning raw columns into the data contract (schema.py), refusing bad values with the line that holds them.

Every check is one vectorised pass; the first offending record is reported together with how many more
share the problem, so a user fixes a whole class of error at once instead of one line per run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import pandas as pd

from fusionrec.data.readers._source import RawTable
from fusionrec.data.schema import ITEM, LABEL, RATING, TIME, USER, Dataset
from fusionrec.spec import ColumnMapping

log = logging.getLogger(__name__)


def _first_bad(table: RawTable, bad: np.ndarray, column: str, describe: Callable[[int], str]) -> None:
    """Raise for the first True in `bad` (a [n_rows] mask); `describe(row)` words the problem."""
    rows = np.flatnonzero(bad)
    if len(rows):
        more = f" ({len(rows) - 1} more rows have the same problem)" if len(rows) > 1 else ""
        raise table.error(describe(int(rows[0])) + more, row=int(rows[0]), field=column)


def _raw_text(series: pd.Series) -> pd.Series:
    """Values as stripped strings, "" for null, without the float artefacts of an integer id read as float."""
    if pd.api.types.is_float_dtype(series):
        values = series.to_numpy(dtype=np.float64)
        integral = np.isfinite(values) & (np.floor(values) == values)
        if integral[~np.isnan(values)].all():
            as_int = pd.Series(values, index=series.index).astype("Int64")
            return as_int.astype(str).where(as_int.notna(), "")
    if pd.api.types.is_string_dtype(series) and not series.isna().any():
        return series.str.strip()  # the common case (text files hold no nulls): no object round trip
    text = series.astype(object).where(series.notna(), "")
    return text.astype(str).str.strip()


def _to_float(text: pd.Series) -> pd.Series:
    """Floats, NaN where a value is not a number. The strict cast is several times faster than to_numeric;
    the forgiving one runs only when some value is bad, to find which."""
    try:
        return text.astype(np.float64)
    except (ValueError, TypeError):
        return pd.to_numeric(text, errors="coerce")


def ids(table: RawTable, column: str, what: str) -> pd.Series:
    """Non-empty string ids; an empty id means a row cannot be attributed to anyone, so it is an error."""
    values = _raw_text(table.frame[column])
    _first_bad(table, (values == "").to_numpy(), column, lambda r: f"empty {what} id")
    return values.astype(str)


def _numbers(table: RawTable, column: str, what: str) -> np.ndarray:
    series = table.frame[column]
    if pd.api.types.is_bool_dtype(series):
        return series.to_numpy(dtype=np.float64)
    if pd.api.types.is_numeric_dtype(series):
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
        _first_bad(table, ~np.isfinite(values), column, lambda r: f"{what} is missing or not finite ({values[r]})")
        return values
    text = _raw_text(series)
    return _checked(table, column, what, text, _to_float(text))


def _checked(table: RawTable, column: str, what: str, text: pd.Series, numeric: pd.Series) -> np.ndarray:
    values = numeric.to_numpy(dtype=np.float64, na_value=np.nan)
    _first_bad(table, ~np.isfinite(values), column,
               lambda r: f"{what} {text.iloc[r]!r} is not a number" if text.iloc[r] else f"{what} is empty")
    return values


def to_seconds(table: RawTable, column: str) -> np.ndarray:
    """Seconds since the epoch as int64. Numbers are taken as seconds (fractions floored); a column with no
    number in it at all is read as dates (ISO 8601 or a Parquet timestamp), converted to UTC seconds."""
    series = table.frame[column]
    if pd.api.types.is_datetime64_any_dtype(series):
        return _datetime_seconds(table, column, pd.to_datetime(series, utc=True))
    if pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
        return np.floor(_numbers(table, column, "timestamp")).astype(np.int64)
    text = _raw_text(series)
    numeric = _to_float(text)
    if numeric.notna().sum() == 0 and (text != "").any():
        dates = pd.to_datetime(text.where(text != "", None), utc=True, errors="coerce", format="ISO8601")
        return _datetime_seconds(table, column, dates, text)
    return np.floor(_checked(table, column, "timestamp", text, numeric)).astype(np.int64)


def _datetime_seconds(table: RawTable, column: str, dates: pd.Series, text: pd.Series | None = None) -> np.ndarray:
    shown = text if text is not None else dates.astype(str)
    _first_bad(table, dates.isna().to_numpy(), column,
               lambda r: f"timestamp {shown.iloc[r]!r} is neither a number of seconds nor an ISO 8601 date")
    seconds = (dates - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
    return seconds.to_numpy(dtype=np.int64)


def ratings(table: RawTable, column: str) -> np.ndarray:
    return _numbers(table, column, "rating").astype(np.float64)


def labels(table: RawTable, column: str) -> np.ndarray:
    values = _numbers(table, column, "label")
    _first_bad(table, ~np.isin(values, (0.0, 1.0)), column, lambda r: f"label must be 0 or 1, got {values[r]:g}")
    return values.astype(np.int8)


def interactions_frame(table: RawTable, mapping: ColumnMapping, timestamps: bool = True) -> pd.DataFrame:
    """The contract's interaction columns, in file order, indexed by record number (for later errors).

    `timestamps=False` (data without any time column): every row gets timestamp 0, so the contract holds and
    nothing downstream invents an order; the prepared card records it, and loading refuses `data.order: time`.
    """
    required = {USER: mapping.user_id, ITEM: mapping.item_id}
    if timestamps:
        required[TIME] = mapping.timestamp
    # A column mapped explicitly must exist; a file already using the contract's name needs no mapping.
    present = set(table.frame.columns)
    for contract, column in ((RATING, mapping.optional_column("rating", present)),
                             (LABEL, mapping.optional_column("label", present))):
        if column is not None:
            required[contract] = column
    table.require(required, "interactions")
    columns = {USER: ids(table, mapping.user_id, "user"), ITEM: ids(table, mapping.item_id, "item"),
               TIME: to_seconds(table, mapping.timestamp) if timestamps else np.zeros(len(table.frame), np.int64)}
    if RATING in required:
        columns[RATING] = ratings(table, required[RATING])
    if LABEL in required:
        columns[LABEL] = labels(table, required[LABEL])
    ignored = [c for c in table.frame.columns if c not in set(required.values())]
    if ignored:
        log.info("%s: ignoring interaction columns not in the data contract: %s", table.name, ", ".join(ignored))
    return pd.DataFrame(columns, index=table.frame.index)


def text_value_frame(table: RawTable, id_column: str, what: str, rename: dict[str, str] | None = None) -> pd.DataFrame:
    """An id column plus every other column as a feature: strings stripped, empty fields as missing."""
    table.require({id_column: id_column}, what)
    frame = pd.DataFrame(index=table.frame.index)
    frame[USER if what == "users" else ITEM] = ids(table, id_column, what.rstrip("s"))
    for column in table.frame.columns:
        if column == id_column:
            continue
        values = table.frame[column]
        if values.dtype == object or pd.api.types.is_string_dtype(values):
            stripped = values.astype(object).where(values.notna(), None)
            values = stripped.map(lambda v: (v.strip() or None) if isinstance(v, str) else v)
        frame[(rename or {}).get(column, column)] = values
    id_field = frame.columns[0]
    duplicated = frame[id_field].duplicated().to_numpy()
    _first_bad(table, duplicated, id_column, lambda r: f"{what.rstrip('s')} id {frame[id_field].iloc[r]!r} "
               f"appears twice (first on an earlier line); each {what.rstrip('s')} needs exactly one row")
    return frame


def assemble(name: str, interactions: pd.DataFrame, inter_table: RawTable, items: pd.DataFrame | None,
             items_file: str | None, users: pd.DataFrame | None, item_column: str) -> Dataset:
    """Cross-check the files and build the Dataset. Without an items file the catalogue is the interacted items.

    A file without interaction rows is refused here, for every format: an empty dataset would otherwise be
    prepared, cached and trained on, failing much later with a message that no longer names the file.
    """
    if len(interactions) == 0:
        what = "a header line but no interaction rows" if inter_table.is_text and inter_table.header else \
            "no interaction rows"
        raise inter_table.error(f"the interactions file holds {what}: there is nothing to train or evaluate on",
                                fix="check the export (its filter or date range may have kept no rows) and pass "
                                    "the file that holds the interactions")
    if items is None:
        catalogue = pd.unique(interactions[ITEM])
        items = pd.DataFrame({ITEM: pd.Series(catalogue, dtype=str)})
        log.info("%s: no items file: the catalogue is the %d interacted items, with no text", name, len(items))
    else:
        unknown = ~interactions[ITEM].isin(items[ITEM]).to_numpy()
        if unknown.any():
            first = int(np.flatnonzero(unknown)[0])
            n_unknown_items = interactions[ITEM][unknown].nunique()
            raise inter_table.error(
                f"item {interactions[ITEM].iloc[first]!r} is not in the items file {items_file} "
                f"({int(unknown.sum())} interactions refer to {n_unknown_items} unknown items)",
                row=first, field=item_column, fix="add the items to the items file or remove those interactions",
            )
    if users is not None:
        missing = ~pd.Series(pd.unique(interactions[USER])).isin(users[USER])
        if missing.any():
            log.warning("%s: %d users with interactions have no row in the users file (their features are "
                        "missing)", name, int(missing.sum()))
    return Dataset(
        name=name,
        interactions=interactions.reset_index(drop=True),
        items=items.reset_index(drop=True),
        users=None if users is None else users.reset_index(drop=True),
    )
