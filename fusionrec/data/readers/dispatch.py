"""One call for any supported set of files: picks the reader from `format` or from the interactions file."""

from __future__ import annotations

from pathlib import Path

from fusionrec.data.readers.atomic import read_atomic
from fusionrec.data.readers.movielens import read_movielens
from fusionrec.data.readers.rename import apply_renames
from fusionrec.data.readers.tabular import detect_format, read_table
from fusionrec.data.schema import Dataset
from fusionrec.errors import UserError
from fusionrec.spec import ColumnMapping


def read_files(interactions: str | Path, items: str | Path | None = None, users: str | Path | None = None, *,
               format: str = "auto", delimiter: str = ",", encoding: str = "utf-8",
               columns: ColumnMapping | None = None, name: str = "custom",
               escapechar: str | None = None, timestamps: bool = True) -> Dataset:
    """Read a dataset from explicit files (or a folder of atomic / MovieLens files).

    `format` "auto" guesses from the interactions path: extension, then contents. MovieLens files are
    latin-1 whatever the default encoding says, unless another encoding is given. `columns.rename` renames
    item/user columns whatever the format. `timestamps=False`: the interactions have no time column (every row
    gets timestamp 0); MovieLens files always have one.
    """
    dataset = _read(interactions, items, users, format=format, delimiter=delimiter, encoding=encoding,
                    columns=columns, name=name, escapechar=escapechar, timestamps=timestamps)
    return apply_renames(dataset, columns.rename if columns is not None else [])


def _read(interactions: str | Path, items: str | Path | None, users: str | Path | None, *, format: str,
          delimiter: str, encoding: str, columns: ColumnMapping | None, name: str,
          escapechar: str | None, timestamps: bool) -> Dataset:
    kind = detect_format(interactions) if format == "auto" else format
    if kind == "atomic":
        if Path(interactions).is_dir():
            return read_atomic(interactions, columns=columns, encoding=encoding, dataset_name=name,
                               timestamps=timestamps)
        return read_atomic(inter=interactions, item=items, user=users, columns=columns, encoding=encoding,
                           dataset_name=name, timestamps=timestamps)
    if kind == "movielens":
        if not timestamps:
            raise UserError("MovieLens files always have a timestamp column; drop `--map timestamp=`",
                            field="--map")
        folder = Path(interactions) if Path(interactions).is_dir() else Path(interactions).parent
        if any(f is not None and Path(f).parent != folder for f in (items, users)):
            raise UserError("MovieLens files are read from one folder (u.data, u.item, u.user)", field="items")
        return read_movielens(folder, name=name, encoding="latin-1" if encoding == "utf-8" else encoding)
    return read_table(interactions, items, users, format=kind, delimiter=delimiter, encoding=encoding,
                      columns=columns, name=name, escapechar=escapechar, timestamps=timestamps)
