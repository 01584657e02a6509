"""Data: readers for MovieLens, RecBole atomic files and a shop's CSV/Parquet, item text, splits, sampling.

`load_dataset(spec.data)` is the one entry point the trainer, the evaluator and the CLI use.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from fusionrec.data import prepare
from fusionrec.data.prepare import load_prepared
from fusionrec.data.readers import read_files
from fusionrec.data.schema import ITEM, LABEL, RATING, TIME, USER, Dataset, Vocab
from fusionrec.data.text import ItemTextTemplate, text_coverage, with_item_text
from fusionrec.errors import UserError
from fusionrec.spec import DataSpec

log = logging.getLogger(__name__)

__all__ = [
    "ITEM", "LABEL", "RATING", "TIME", "USER", "Dataset", "ItemTextTemplate", "Vocab", "keep_first_users",
    "load_dataset", "load_prepared", "read_files", "text_coverage",
]


def keep_first_users(dataset: Dataset, max_users: int) -> Dataset:
    """Only the first `max_users` users in file order, with all their interactions; the catalogue is kept whole
    so full ranking still covers every item. The number of dropped interactions is logged."""
    order = pd.unique(dataset.interactions[USER])
    if len(order) <= max_users:
        return dataset
    kept = set(order[:max_users])
    mask = dataset.interactions[USER].isin(kept)
    log.info("%s: max_users=%d keeps %d of %d interactions (%d users dropped)", dataset.name, max_users,
             int(mask.sum()), len(mask), len(order) - max_users)
    users = dataset.users[dataset.users[USER].isin(kept)].reset_index(drop=True) if dataset.users is not None else None
    return Dataset(dataset.name, dataset.interactions[mask].reset_index(drop=True), dataset.items, users)


def load_dataset(spec: DataSpec) -> Dataset:
    """The dataset a spec describes, with item `text` rendered from `spec.item_text_template`.

    Explicit files win over the built-in name. Built-in ml-100k is read from its prepared Parquet copy,
    prepared first (found or fetched) when there is none; `spec.path` reads a given copy directly.
    """
    if spec.interactions:
        base = Path(spec.path) if spec.path else Path()  # relative file names are taken inside spec.path
        items, users = (str(base / f) if f else None for f in (spec.items, spec.users))
        dataset = read_files(str(base / spec.interactions), items, users, format=spec.format,
                             delimiter=spec.delimiter, encoding=spec.encoding, columns=spec.columns,
                             name=Path(spec.interactions).stem or "custom", escapechar=spec.escapechar)
    elif spec.dataset == "ml-100k":
        if spec.path:
            dataset = prepare.read_ml100k(prepare.locate_ml100k(spec.path))
        elif prepare.is_prepared("ml-100k"):
            dataset = prepare.load_prepared("ml-100k")
        else:
            dataset, _ = prepare.prepare_ml100k()
    else:
        raise UserError(f"unknown dataset {spec.dataset!r}", field="data.dataset")
    if spec.max_users is not None:
        dataset = keep_first_users(dataset, spec.max_users)
    return with_item_text(dataset, spec.item_text_template)
