"""Prepared datasets: validated once, written as Parquet, read back in milliseconds by every later run.

`prepare_*` reads the raw files (with every check in the readers), renders item text with the template,
writes `interactions.parquet`, `items.parquet`, `users.parquet` and `card.json` atomically into
`$FUSIONREC_DATA_HOME/<name>/`, and returns a data card: the numbers a user should look at before training.
The card also carries what the Parquet cannot say, e.g. that the source had no timestamps (all 0), which
`check_order` turns into a refusal of the chronological split.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fusionrec.data.datasets import BUILT_INS, Located, atomic_directory, built_in, data_home, locate
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
    timestamps: bool = True  # False: the source had no time column; every timestamp is 0, use data.order none

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
            f"time range     {self.time_range['first']} .. {self.time_range['last']}" if self.timestamps else
            "time range     no timestamps: use data.order none",
        ]
        if self.rating:
            lines.append(f"rating         min {self.rating['min']:g}, mean {self.rating['mean']:.3f}, "
                         f"max {self.rating['max']:g}")
        loo = self.leave_one_out
        lines.append(f"leave-one-out  train {loo['train']:,}, valid {loo['valid']:,}, test {loo['test']:,}"
                     + (f"  ({loo['users_not_evaluated']} users with < 3 interactions: train only)"
                        if loo["users_not_evaluated"] else "")
                     + ("" if self.timestamps else "  (random per-user order)"))
        if self.random_split:
            rs = self.random_split
            lines.append(f"random 80/10/10 train {rs['train']:,}, valid {rs['valid']:,}, test {rs['test']:,} "
                         f"(seed {rs['seed']})")
        if self.location:
            lines.append(f"written to     {self.location}")
        return "\n".join(lines)


def _utc(seconds: int) -> str:
    return pd.Timestamp(int(seconds), unit="s", tz="UTC").strftime("%Y-%m-%d %H:%M:%S UTC")


def data_card(dataset: Dataset, template: str = DEFAULT_TEMPLATE, timestamps: bool = True) -> DataCard:
    """Compute the card. Text coverage uses the items' `text` column, rendering it when absent. Without
    timestamps the leave-one-out sizes are those of the random per-user order (data.order none)."""
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
    split = leave_one_out(dataset, order="time" if timestamps else "none")
    random = random_split(dataset) if RATING in inter.columns or "label" in inter.columns else None
    return DataCard(
        name=dataset.name, users=n_users, items=n_items, interactions=len(inter),
        density=len(inter) / (n_users * n_items) if n_users and n_items else 0.0,
        text_coverage=text_coverage(texts), field_coverage=field_coverage(dataset.items, fields),
        template=template,
        interactions_per_user={"min": float(per_user.min()), "median": float(np.median(per_user)),
                               "max": float(per_user.max())} if len(per_user) else {"min": 0, "median": 0, "max": 0},
        time_range={"first": _utc(inter[TIME].min()), "last": _utc(inter[TIME].max())}
        if len(inter) and timestamps else {"first": "-", "last": "-"},
        rating={"min": float(inter[RATING].min()), "mean": float(inter[RATING].mean()),
                "max": float(inter[RATING].max())} if RATING in inter.columns and len(inter) else None,
        leave_one_out={"train": len(split.train), "valid": len(split.valid), "test": len(split.test),
                       "users_not_evaluated": n_users - len(split.test)},
        random_split={"train": len(random.train), "valid": len(random.valid), "test": len(random.test),
                      "seed": random.seed} if random is not None else None,
        timestamps=timestamps,
    )


def prepared_dir(name: str, root: str | Path | None = None) -> Path:
    if not _NAME.match(name):
        raise UserError(f"dataset name {name!r} must be letters, digits, '.', '_' or '-' (at most 64)", field="name")
    return Path(root).expanduser() if root is not None else data_home() / name


def write_prepared(dataset: Dataset, out: Path, template: str = DEFAULT_TEMPLATE,
                   source: str | None = None, timestamps: bool = True) -> DataCard:
    """Render item text, write the Parquet files and the card into `out` in one atomic rename.

    A dataset without interactions is refused before anything is written: a prepared copy is trusted by every
    later run, so an empty one would be published as if it were data.
    """
    if len(dataset.interactions) == 0:
        raise UserError(f"dataset {dataset.name!r} has no interactions after reading"
                        + (f" {source}" if source else "") + "; nothing was written",
                        field="interactions", fix="pass an interactions file that holds rows")
    dataset = with_item_text(dataset, template)
    card = data_card(dataset, template, timestamps)
    card.location, card.source = str(out), source
    with atomic_directory(out) as staging:
        dataset.interactions.to_parquet(staging / FILES["interactions"], index=False)
        dataset.items.to_parquet(staging / FILES["items"], index=False)
        if dataset.users is not None:
            dataset.users.to_parquet(staging / FILES["users"], index=False)
        (staging / CARD_FILE).write_text(json.dumps(card.to_dict(), indent=2) + "\n", encoding="utf-8")
    log.info("prepared %s into %s", dataset.name, out)
    return card


def read_built_in(name: str, located: Located) -> Dataset:
    """Read a built-in's located raw files; MovieLens placeholders ("unknown") become missing values."""
    if located.format == "movielens":
        return read_movielens(located.folder, name=name)
    dataset = read_atomic(located.folder, name)
    return Dataset(name, dataset.interactions, clean_placeholders(dataset.items), dataset.users)


def prepare_built_in(name: str, path: str | Path | None = None, out: str | Path | None = None,
                     template: str = DEFAULT_TEMPLATE, download: bool = True) -> tuple[Dataset, DataCard]:
    """Locate (or fetch) a built-in dataset (`fusionrec.data.datasets.BUILT_INS`), validate it and write it
    prepared."""
    title = built_in(name).title
    with progress(desc=f"preparing {name}", total=3, unit="stage") as bar:
        located = locate(name, path, download=download)
        log.info("%s found (%s): %s", title, located.origin, located.folder)
        bar.update()
        dataset = read_built_in(name, located)
        bar.update()
        card = write_prepared(dataset, prepared_dir(name, out), template,
                              source=f"{located.origin}: {located.folder}")
        bar.update()
    return load_prepared(name, out), card


def prepare_files(interactions: str | Path, items: str | Path | None = None, users: str | Path | None = None, *,
                  name: str = "custom", out: str | Path | None = None, format: str = "auto", delimiter: str = ",",
                  encoding: str = "utf-8", columns: ColumnMapping | None = None,
                  template: str = DEFAULT_TEMPLATE, escapechar: str | None = None,
                  timestamps: bool = True) -> tuple[Dataset, DataCard]:
    """Prepare a shop's own export (CSV, Parquet, atomic or MovieLens files); `timestamps=False` for one
    without a time column (recorded in the card, so a chronological split is refused later)."""
    target = prepared_dir(name, out)
    with progress(desc=f"preparing {name}", total=2, unit="stage") as bar:
        dataset = read_files(interactions, items, users, format=format, delimiter=delimiter, encoding=encoding,
                             columns=columns, name=name, escapechar=escapechar, timestamps=timestamps)
        bar.update()
        card = write_prepared(dataset, target, template, source=str(interactions), timestamps=timestamps)
        bar.update()
    return load_prepared(name, out), card


def is_prepared(name: str, root: str | Path | None = None) -> bool:
    return is_prepared_folder(prepared_dir(name, root))


def is_prepared_folder(folder: str | Path) -> bool:
    """Whether a folder holds a prepared dataset: its card and the Parquet files every dataset has."""
    folder = Path(folder)
    return all((folder / f).is_file() for k, f in FILES.items() if k != "users")


def read_card(folder: str | Path) -> dict:
    """A prepared folder's card.json, {} when there is none or it is unreadable (a copy from before cards, or
    one written by hand: the Parquet files are the data, the card only describes them)."""
    try:
        card = json.loads((Path(folder) / CARD_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return card if isinstance(card, dict) else {}


def prepared_name(folder: str | Path) -> str:
    """A prepared folder's dataset name: the card's, else the folder's (`--out` may name the folder otherwise)."""
    name = read_card(folder).get("name")
    return name if isinstance(name, str) and _NAME.match(name) else Path(folder).resolve().name


def not_prepared(name: str) -> UserError:
    """The error for `data.dataset: NAME` that is neither prepared nor a built-in (the loader and the runner's
    cache key raise the same one)."""
    return UserError(f"dataset {name!r} is not prepared (no {prepared_dir(name)}) and is not a built-in "
                     f"({', '.join(BUILT_INS)})", field="spec.data.dataset",
                     fix=f"fusionrec data prepare {name} --interactions FILE --items FILE")


def not_a_prepared_path(path: str | Path, dataset: str | None) -> UserError:
    """The error for `data.path` that is not a prepared folder while `data.dataset` is no built-in whose raw
    files it could hold."""
    return UserError(f"{path} is not a prepared dataset (card.json, interactions.parquet and items.parquet) and "
                     f"{dataset!r} is not a built-in whose raw files it could hold", field="spec.data.path",
                     fix="give the folder `fusionrec data prepare` wrote, or name its files in data.interactions "
                         "and data.items")


def check_order(folder: str | Path, order: str, field: str = "spec.data.order") -> None:
    """Refuse `order: time` on a dataset prepared without timestamps: every timestamp is 0, so the chronological
    split would silently follow the file's row order instead of time."""
    if order == "time" and read_card(folder).get("timestamps") is False:
        raise UserError(f"dataset {prepared_name(folder)!r} was prepared without timestamps (all 0), so there is no "
                        "time order to split by", field=field, fix="data.order: none")


def load_prepared(name: str, root: str | Path | None = None) -> Dataset:
    """Read a prepared dataset back (Parquet only: no parsing or validation to repeat). `root` is the folder
    itself (as `--out` named it), else `$FUSIONREC_DATA_HOME/<name>`."""
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

