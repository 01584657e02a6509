"""A shop's own export: CSV or Parquet files whose columns are mapped onto the contract by a ColumnMapping.

Each file's format is detected on its own (interactions in CSV with items in Parquet is fine). Item and user
files are keyed by the same id column names as the interactions (the mapping's user_id / item_id).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from fusionrec.data.readers._convert import assemble, interactions_frame, text_value_frame
from fusionrec.data.readers._source import RawTable, check_exists, read_parquet_table, read_text_table
from fusionrec.data.schema import ITEM, USER, Dataset
from fusionrec.errors import UserError
from fusionrec.spec import ColumnMapping

FileFormat = Literal["csv", "parquet", "atomic", "movielens"]
_PARQUET_MAGIC = b"PAR1"


def detect_format(path: str | Path) -> FileFormat:
    """Guess a file's format from its name, then from its first bytes."""
    path = Path(path)
    suffix = path.suffix.lower()
    if path.is_dir():
        if (path / "u.data").is_file():
            return "movielens"
        if any(path.glob("*.inter")):
            return "atomic"
        raise UserError(f"{path} is a folder with neither u.data nor a .inter file", field="path")
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix in (".inter", ".item", ".user"):
        return "atomic"
    if path.name in ("u.data", "u.item", "u.user"):
        return "movielens"
    if suffix in (".csv", ".tsv", ".tab"):
        return "csv"
    check_exists(path, "data")
    with path.open("rb") as handle:
        head = handle.read(4096)
    if head.startswith(_PARQUET_MAGIC):
        return "parquet"
    first_line = head.split(b"\n", 1)[0].decode("latin-1")
    fields = first_line.split("\t")
    if len(fields) > 1 and all(":" in f for f in fields):
        return "atomic"
    return "csv"


def read_any_table(path: str | Path, what: str, *, format: str = "auto", delimiter: str = ",",
                   encoding: str = "utf-8", escapechar: str | None = None) -> RawTable:
    """One CSV or Parquet file as a RawTable; `.tsv` files default to tabs."""
    path = Path(path)
    kind = detect_format(path) if format == "auto" else format
    if kind == "parquet":
        return read_parquet_table(path, what=what)
    if kind != "csv":
        raise UserError(f"{path} looks like a {kind} file; pass --format {kind} and give all its files",
                        field="format")
    if path.suffix.lower() in (".tsv", ".tab") and delimiter == ",":
        delimiter = "\t"
    return read_text_table(path, what=what, delimiter=delimiter, encoding=encoding, escapechar=escapechar)


def read_table(interactions: str | Path, items: str | Path | None = None, users: str | Path | None = None, *,
               format: str = "auto", delimiter: str = ",", encoding: str = "utf-8",
               columns: ColumnMapping | None = None, name: str = "custom", escapechar: str | None = None,
               timestamps: bool = True) -> Dataset:
    """Read a CSV/Parquet export. Columns not in the contract are kept as item/user features; `timestamps=False`:
    the file has no time column (every interaction gets timestamp 0)."""
    mapping = columns or ColumnMapping()
    inter_table = read_any_table(interactions, "interactions", format=format, delimiter=delimiter,
                                 encoding=encoding, escapechar=escapechar)
    inter_frame = interactions_frame(inter_table, mapping, timestamps)
    item_frame = user_frame = None
    if items is not None:
        item_table = read_any_table(items, "items", format=format, delimiter=delimiter, encoding=encoding,
                                    escapechar=escapechar)
        item_frame = text_value_frame(item_table, _id_column(item_table, mapping.item_id, ITEM), "items")
    if users is not None:
        user_table = read_any_table(users, "users", format=format, delimiter=delimiter, encoding=encoding,
                                    escapechar=escapechar)
        user_frame = text_value_frame(user_table, _id_column(user_table, mapping.user_id, USER), "users")
    return assemble(name, inter_frame, inter_table, item_frame, str(items) if items else None, user_frame,
                    mapping.item_id)


def _id_column(table: RawTable, mapped: str, contract: str) -> str:
    """The mapped id column, or the contract's own name when the side file already uses it."""
    if mapped not in table.frame.columns and contract in table.frame.columns:
        return contract
    return mapped  # when absent, text_value_frame raises the missing-column error naming it
