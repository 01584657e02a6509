"""MovieLens as GroupLens ships it: `u.data` (tab-separated user, item, rating, timestamp; no header),
`u.item` (pipe-separated, latin-1: id | "Toy Story (1995)" | release date | video date | IMDb URL | 19 genre
flags) and an optional `u.user` (id | age | gender | occupation | zip code).

The year is cut from the title into its own field, and the genre flags become a "Comedy, Drama" text field,
so raw MovieLens yields the same item fields as RecBole's atomic copy of it.
"""

from __future__ import annotations

import csv
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from fusionrec.data.readers._convert import assemble, interactions_frame, text_value_frame
from fusionrec.data.readers._source import read_text_table
from fusionrec.data.schema import ITEM, Dataset
from fusionrec.spec import ColumnMapping

log = logging.getLogger(__name__)

GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
          "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
          "War", "Western")
_ITEM_FIELDS = ["item_id", "title", "release_date", "video_release_date", "imdb_url", *GENRES]
_USER_FIELDS = ["user_id", "age", "gender", "occupation", "zip_code"]
_TITLE_YEAR = re.compile(r"^(?P<title>.*?)\s*\((?P<year>\d{4})\)\s*$")
# Placeholder values GroupLens and RecBole use for the one item without data (id 267) and genre-less items.
PLACEHOLDERS = frozenset({"unknown", "unkonwn"})


def read_movielens(folder: str | Path, *, name: str = "ml-100k", encoding: str = "latin-1") -> Dataset:
    """Read u.data, u.item and (when present) u.user from a MovieLens-100K style folder."""
    folder = Path(folder)
    inter_table = read_text_table(folder / "u.data", what="interactions", delimiter="\t", header=False,
                                  names=["user_id", "item_id", "rating", "timestamp"], encoding=encoding,
                                  quoting=csv.QUOTE_NONE)
    interactions = interactions_frame(inter_table, ColumnMapping())
    items = _read_items(folder / "u.item", encoding)
    users = None
    if (folder / "u.user").is_file():
        user_table = read_text_table(folder / "u.user", what="users", delimiter="|", header=False,
                                     names=_USER_FIELDS, encoding=encoding, quoting=csv.QUOTE_NONE)
        users = text_value_frame(user_table, "user_id", "users")
    return assemble(name, interactions, inter_table, items, str(folder / "u.item"), users, "item_id")


def _read_items(path: Path, encoding: str) -> pd.DataFrame:
    table = read_text_table(path, what="items", delimiter="|", header=False, names=_ITEM_FIELDS,
                            encoding=encoding, quoting=csv.QUOTE_NONE)
    flags = table.frame[list(GENRES)]
    bad = ~flags.isin(["0", "1"]).to_numpy()
    if bad.any():
        row, col = (int(i[0]) for i in np.nonzero(bad))
        raise table.error(f"genre flag must be 0 or 1, got {flags.iat[row, col]!r} (a u.item line has 24 "
                          f"'|'-separated fields)", row=row, field=GENRES[col])
    frame = text_value_frame(table, "item_id", "items")
    parsed = frame["title"].map(lambda t: _TITLE_YEAR.match(t) if isinstance(t, str) else None)
    release_year = frame["release_date"].map(lambda d: d[-4:] if isinstance(d, str) and d[-4:].isdigit() else None)
    title_year = parsed.map(lambda m: m.group("year") if m else None)
    items = pd.DataFrame({
        ITEM: frame[ITEM],
        "title": [m.group("title") if m else t for m, t in zip(parsed, frame["title"])],
        "year": title_year.where(title_year.notna(), release_year),
        "genres": [", ".join(g for g, f in zip(GENRES, row) if f == "1" and g != "unknown") or None
                   for row in flags.itertuples(index=False)],
        "release_date": frame["release_date"],
        "imdb_url": frame["imdb_url"],
    }, index=frame.index)
    return clean_placeholders(items)


def clean_placeholders(items: pd.DataFrame, fields: tuple[str, ...] = ("title", "year", "genres")) -> pd.DataFrame:
    """Turn MovieLens' "unknown" placeholders into missing values, so item text never says "Year: unkonwn".

    A year that is not four digits is missing too. The count of cleared values is logged.
    """
    items = items.copy()
    cleared = 0
    for field in fields:
        if field not in items.columns:
            continue
        values = items[field]
        blank = values.map(lambda v: isinstance(v, str) and v.strip().lower() in PLACEHOLDERS)
        if field == "year":
            blank |= values.map(lambda v: isinstance(v, str) and not re.fullmatch(r"\d{4}", v.strip()))
        cleared += int(blank.sum())
        items[field] = values.astype(object).where(~blank.to_numpy(dtype=bool), None)
    if cleared:
        log.info("cleared %d placeholder values ('unknown') in item fields %s", cleared, ", ".join(fields))
    return items
