"""Prepared datasets: validated once, written as Parquet, read back in milliseconds by every later run.

`prepare_*` reads the raw files (with every check in the readers), renders item text with the template,
writes `interactions.parquet`, `items.parquet`, `users.parquet` and `card.json` atomically into
`$FUSIONREC_DATA_HOME/<name>/`, and returns a data card: the numbers a user should look at before training.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fusionrec.data.datasets import ML100K, Located, atomic_directory, data_home, locate_ml100k
from fusionrec.data.readers import clean_placeholders, read_atomic, read_files, read_movielens
from fusionrec.data.schema import RATING, TIME, USER, Dataset
from fusionrec.data.splits import leave_one_out, random_split
from fusionrec.data.text import DEFAULT_TEMPLATE, TEXT, ItemTextTemplate, field_coverage, text_coverage, with_item_text
from fusionrec.errors import UserError
from fusionrec.progress import progress
from fusionrec.spec import ColumnMapping

log = logging.getLogger(__name__)

FILES = {"interactions": "interactions.parquet", "items": "items.parquet", "users": "users.parquet"}
CARD_FILE = "card.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass
class DataCard:
    """What a dataset holds, and the sizes the evaluation protocol will see."""

    name: str
    users: int
    items: int
    interactions: int
    density: float
    text_coverage: float
    field_coverage: dict[str, float]
    template: str
    interactions_per_user: dict[str, float]
    time_range: dict[str, str]
    rating: dict[str, float] | None
    leave_one_out: dict[str, int]
    random_split: dict[str, int] | None
    location: str | None = None
    source: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def render(self) -> str:
        per_user = self.interactions_per_user
        lines = [
            f"dataset        {self.name}" + (f"  ({self.source})" if self.source else ""),
            f"users          {self.users:,}",
            f"items          {self.items:,}",
            f"interactions   {self.interactions:,}",
            f"density        {self.density:.4%}",
            f"text coverage  {self.text_coverage:.2%} of items  (template {self.template!r})",
        ]
        if self.field_coverage:
            lines.append("field coverage " + ", ".join(f"{k} {v:.1%}" for k, v in self.field_coverage.items()))
        lines += [
            f"per user       min {per_user['min']:g}, median {per_user['median']:g}, max {per_user['max']:g}",
            f"time range     {self.time_range['first']} .. {self.time_range['last']}",
        ]
        if self.rating:
            lines.append(f"rating         min {self.rating['min']:g}, mean {self.rating['mean']:.3f}, "
                         f"max {self.rating['max']:g}")
        loo = self.leave_one_out
        lines.append(f"leave-one-out  train {loo['train']:,}, valid {loo['valid']:,}, test {loo['test']:,}"
                     + (f"  ({loo['users_not_evaluated']} users with < 3 interactions: train only)"
                        if loo["users_not_evaluated"] else ""))
        if self.random_split:
            rs = self.random_split
            lines.append(f"random 80/10/10 train {rs['train']:,}, valid {rs['valid']:,}, test {rs['test']:,} "
                         f"(seed {rs['seed']})")
        if self.location:
            lines.append(f"written to     {self.location}")
        return "\n".join(lines)


def _utc(seconds: int) -> str:
    return pd.Timestamp(int(seconds), unit="s", tz="UTC").strftime("%Y-%m-%d %H:%M:%S UTC")


def data_card(dataset: Dataset, template: str = DEFAULT_TEMPLATE) -> DataCard:
    """Compute the card. Text coverage uses the items' `text` column, rendering it when absent."""
    inter = dataset.interactions
    n_users, n_items = dataset.n_users, dataset.n_items
    if TEXT in dataset.items.columns:
        texts = dataset.items[TEXT]
    elif len(dataset.items.columns) > 1:
        texts = ItemTextTemplate(template).render(dataset.items)
    else:
        texts = pd.Series([""] * n_items, dtype=object)
    fields = ItemTextTemplate(template).fields if len(dataset.items.columns) > 1 else ()
    per_user = inter.groupby(USER, sort=False).size().to_numpy()
    split = leave_one_out(dataset)
    random = random_split(dataset) if RATING in inter.columns or "label" in inter.columns else None
    return DataCard(
        name=dataset.name, users=n_users, items=n_items, interactions=len(inter),
        density=len(inter) / (n_users * n_items) if n_users and n_items else 0.0,
        text_coverage=text_coverage(texts), field_coverage=field_coverage(dataset.items, fields),
        template=template,
        interactions_per_user={"min": float(per_user.min()), "median": float(np.median(per_user)),
                               "max": float(per_user.max())} if len(per_user) else {"min": 0, "median": 0, "max": 0},
        time_range={"first": _utc(inter[TIME].min()), "last": _utc(inter[TIME].max())} if len(inter) else
        {"first": "-", "last": "-"},
        rating={"min": float(inter[RATING].min()), "mean": float(inter[RATING].mean()),
                "max": float(inter[RATING].max())} if RATING in inter.columns and len(inter) else None,
        leave_one_out={"train": len(split.train), "valid": len(split.valid), "test": len(split.test),
                       "users_not_evaluated": n_users - len(split.test)},
        random_split={"train": len(random.train), "valid": len(random.valid), "test": len(random.test),
                      "seed": random.seed} if random is not None else None,
    )


def prepared_dir(name: str, root: str | Path | None = None) -> Path:
    if not _NAME.match(name):
        raise UserError(f"dataset name {name!r} must be letters, digits, '.', '_' or '-' (at most 64)", field="name")
    return Path(root).expanduser() if root is not None else data_home() / name


def write_prepared(dataset: Dataset, out: Path, template: str = DEFAULT_TEMPLATE,
                   source: str | None = None) -> DataCard:
    """Render item text, write the Parquet files and the card into `out` in one atomic rename.

    A dataset without interactions is refused before anything is written: a prepared copy is trusted by every
    later run, so an empty one would be published as if it were data.
    """
    if len(dataset.interactions) == 0:
        raise UserError(f"dataset {dataset.name!r} has no interactions after reading"
                        + (f" {source}" if source else "") + "; nothing was written",
                        field="interactions", fix="pass an interactions file that holds rows")
    dataset = with_item_text(dataset, template)
    card = data_card(dataset, template)
    card.location, card.source = str(out), source
    with atomic_directory(out) as staging:
        dataset.interactions.to_parquet(staging / FILES["interactions"], index=False)
        dataset.items.to_parquet(staging / FILES["items"], index=False)
        if dataset.users is not None:
            dataset.users.to_parquet(staging / FILES["users"], index=False)
        (staging / CARD_FILE).write_text(json.dumps(card.to_dict(), indent=2) + "\n", encoding="utf-8")
    log.info("prepared %s into %s", dataset.name, out)
    return card


def read_ml100k(located: Located) -> Dataset:
    """Read the located raw files; MovieLens placeholders ("unknown") become missing values."""
    if located.format == "movielens":
        return read_movielens(located.folder, name=ML100K)
    dataset = read_atomic(located.folder, ML100K)
    return Dataset(ML100K, dataset.interactions, clean_placeholders(dataset.items), dataset.users)


def prepare_ml100k(path: str | Path | None = None, out: str | Path | None = None,
                   template: str = DEFAULT_TEMPLATE, download: bool = True) -> tuple[Dataset, DataCard]:
    """Locate (or fetch) MovieLens-100K, validate it and write it prepared."""
    with progress(desc=f"preparing {ML100K}", total=3, unit="stage") as bar:
        located = locate_ml100k(path, download=download)
        log.info("MovieLens-100K found (%s): %s", located.origin, located.folder)
        bar.update()
        dataset = read_ml100k(located)
        bar.update()
        card = write_prepared(dataset, prepared_dir(ML100K, out), template,
                              source=f"{located.origin}: {located.folder}")
        bar.update()
    return load_prepared(ML100K, out), card


def prepare_files(interactions: str | Path, items: str | Path | None = None, users: str | Path | None = None, *,
                  name: str = "custom", out: str | Path | None = None, format: str = "auto", delimiter: str = ",",
                  encoding: str = "utf-8", columns: ColumnMapping | None = None,
                  template: str = DEFAULT_TEMPLATE, escapechar: str | None = None) -> tuple[Dataset, DataCard]:
    """Prepare a shop's own export (CSV, Parquet, atomic or MovieLens files)."""
    target = prepared_dir(name, out)
    with progress(desc=f"preparing {name}", total=2, unit="stage") as bar:
        dataset = read_files(interactions, items, users, format=format, delimiter=delimiter, encoding=encoding,
                             columns=columns, name=name, escapechar=escapechar)
        bar.update()
        card = write_prepared(dataset, target, template, source=str(interactions))
        bar.update()
    return load_prepared(name, out), card


def is_prepared(name: str, root: str | Path | None = None) -> bool:
    folder = prepared_dir(name, root)
    return all((folder / f).is_file() for k, f in FILES.items() if k != "users")


def load_prepared(name: str, root: str | Path | None = None) -> Dataset:
    """Read a prepared dataset back (Parquet only: no parsing or validation to repeat)."""
    folder = prepared_dir(name, root)
    missing = [f for k, f in FILES.items() if k != "users" and not (folder / f).is_file()]
    if missing:
        raise UserError(f"dataset {name!r} is not prepared in {folder} (missing {', '.join(missing)})",
                        field="dataset", fix=f"run `fusionrec data prepare {name}`")
    users_file = folder / FILES["users"]
    return Dataset(
        name=name,
        interactions=pd.read_parquet(folder / FILES["interactions"]),
        items=pd.read_parquet(folder / FILES["items"]),
        users=pd.read_parquet(users_file) if users_file.is_file() else None,
    )

