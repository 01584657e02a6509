"""`--map NAME=COLUMN` / `data.columns.rename` for columns outside the contract: item and user features.

Raw exports name their columns as their tool does (`Book-Title`, `Book-Author`); renaming on reading lets the
default template, `task.userFeatures` and the CTR features use the usual names without rewriting the file.
"""

from __future__ import annotations

import pandas as pd

from fusionrec.data.schema import ITEM, USER, Dataset
from fusionrec.errors import UserError
from fusionrec.spec import ColumnRename

_FIELD = "data.columns.rename"
_RESERVED = (ITEM, USER, "text")


def _columns(frame: pd.DataFrame | None, key: str) -> list[str]:
    return [] if frame is None else [str(c) for c in frame.columns if c != key]


def apply_renames(dataset: Dataset, renames: list[ColumnRename]) -> Dataset:
    """The dataset with each renamed item/user column under its new name.

    Refuses, naming the mapping, a column that neither file has, a new name that is reserved or already a
    column, and a column renamed twice.
    """
    if not renames:
        return dataset
    items, users = dataset.items.copy(), None if dataset.users is None else dataset.users.copy()
    seen: set[str] = set()
    for rename in renames:
        shown = f"--map {rename.name}={rename.column}"
        if rename.name in _RESERVED:
            raise UserError(f"{shown}: {rename.name!r} is reserved", field=_FIELD,
                            fix="map ids with --map user_id=COLUMN / --map item_id=COLUMN; pick another name")
        if rename.column in seen:
            raise UserError(f"{shown}: column {rename.column!r} is renamed twice", field=_FIELD,
                            fix="rename each column once")
        seen.add(rename.column)
        found = False
        for frame, key in ((items, ITEM), (users, USER)):
            if frame is None or rename.column not in frame.columns or rename.column == key:
                continue
            if rename.name in frame.columns and rename.name != rename.column:
                raise UserError(f"{shown}: the file already has a column {rename.name!r}", field=_FIELD,
                                fix="pick another name, or leave the column's name as it is")
            frame.rename(columns={rename.column: rename.name}, inplace=True)
            found = True
        if not found:
            have = ", ".join(_columns(items, ITEM) + _columns(users, USER)) or "(none)"
            raise UserError(f"{shown}: no column {rename.column!r} in the items or users file; their columns: "
                            f"{have}", field=_FIELD,
                            fix="spell the column as the file's header does (the contract's own fields, e.g. "
                                "rating, are mapped the same way: --map rating=COLUMN)")
    return Dataset(dataset.name, dataset.interactions, items, users)
