"""Data: readers for MovieLens, RecBole atomic files and a shop's CSV/Parquet, item text, splits, sampling.

`load_dataset(spec.data)` is the one entry point the trainer, the evaluator and the CLI use.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from fusionrec.data import prepare
from fusionrec.data.datasets import BUILT_INS, locate
from fusionrec.data.prepare import load_prepared
from fusionrec.data.readers import read_files
from fusionrec.data.remote import local_data
from fusionrec.data.schema import ITEM, LABEL, RATING, TIME, USER, Dataset, Vocab
from fusionrec.data.text import DEFAULT_TEMPLATE, ItemTextTemplate, text_coverage, with_item_text
from fusionrec.spec import DataSpec

log = logging.getLogger(__name__)

__all__ = [
    "BUILT_INS", "ITEM", "LABEL", "RATING", "TIME", "USER", "Dataset", "ItemTextTemplate", "Vocab", "files_name",
    "keep_first_users", "load_dataset", "load_prepared", "read_files", "text_coverage",
]


def _named(name: str, order: str) -> Dataset:
    """A dataset prepared under the data home; a built-in is prepared when missing."""
    if prepare.is_prepared(name):
        prepare.check_order(prepare.prepared_dir(name), order)
        return prepare.load_prepared(name)
    if name in BUILT_INS:
        return prepare.prepare_built_in(name)[0]
    raise prepare.not_prepared(name)


def files_name(spec: DataSpec) -> str:
    """The name a dataset read from explicit files reports under: `dataset` when it names one of the shop's own
    (not a built-in: `ml-100k` is the field's default, which the API server fills in), else the prepared folder's
    name when the files are a prepared copy, else the interactions file's stem (its folder's name for a generic
    `interactions.*`)."""
    if spec.dataset and spec.dataset not in BUILT_INS:
        return spec.dataset
    base = Path(spec.path) if spec.path else Path()
    if prepare.is_prepared_folder(base):
        return prepare.prepared_name(base)
    file = base / str(spec.interactions)
    stem = file.stem
    if stem.lower() == "interactions":
        stem = file.resolve().parent.name
    return stem or "custom"


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

    Explicit files win over the dataset's name. `spec.path` may be a prepared folder (read as prepared, under
    its card's name) or a built-in's raw files (read directly); in object storage (s3://, gs://) it is read from
    its local copy (`fusionrec.data.remote`). Otherwise `spec.dataset` names a dataset
    prepared in the data home; a built-in (ml-100k, ml-1m) is prepared first (found or fetched) when missing.
    A dataset prepared without timestamps is refused with `order: time` (its split would follow file order).
    A prepared dataset keeps the template it was prepared with unless the spec sets `item_text_template`: a
    shop's items rarely have the default template's genres and year, and `prepare --template` already chose.
    (The field is nullable with no default, so a manifest reads the same on the CLI and from the API server.)
    """
    spec = local_data(spec)  # a data.path in object storage is read from its local copy
    prepared: Path | None = None
    if spec.interactions:
        base = Path(spec.path) if spec.path else Path()  # relative file names are taken inside spec.path
        items, users = (str(base / f) if f else None for f in (spec.items, spec.users))
        folder = (base / spec.interactions).parent  # a prepared copy's interactions.parquet, however it is named
        if prepare.is_prepared_folder(folder):
            prepare.check_order(folder, spec.order)
            prepared = folder
        dataset = read_files(str(base / spec.interactions), items, users, format=spec.format,
                             delimiter=spec.delimiter, encoding=spec.encoding, columns=spec.columns,
                             name=files_name(spec), escapechar=spec.escapechar)
    elif spec.path and prepare.is_prepared_folder(spec.path):
        prepare.check_order(spec.path, spec.order)
        prepared = Path(spec.path)
        dataset = prepare.load_prepared(prepare.prepared_name(spec.path), spec.path)
    elif spec.path:
        if spec.dataset not in BUILT_INS:
            raise prepare.not_a_prepared_path(spec.path, spec.dataset)
        dataset = prepare.read_built_in(str(spec.dataset), locate(str(spec.dataset), spec.path))
    else:
        dataset = _named(str(spec.dataset), spec.order)
        prepared = prepare.prepared_dir(str(spec.dataset))
    if spec.max_users is not None:
        dataset = keep_first_users(dataset, spec.max_users)
    return with_item_text(dataset, _template(spec, prepared))


def _template(spec: DataSpec, prepared: Path | None) -> str:
    """The spec's item text template when it sets one, else the prepared card's (else the default)."""
    if spec.item_text_template is not None:
        return spec.item_text_template
    if prepared is not None:
        template = prepare.read_card(prepared).get("template")
        if isinstance(template, str) and template:
            return template
    return DEFAULT_TEMPLATE
