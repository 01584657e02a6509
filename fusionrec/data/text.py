"""Item text from a template over item fields, e.g. "{title}. Genres: {genres}. Year: {year}".

Catalogues are patchy: some items lack a year, a description, or everything but a title. A clause (the
template split on ". ") whose field is missing, NaN or empty is dropped whole, so a text never reads
"Year: nan" or "Genres: ." and an encoder is not taught that "nan" means something.

A field is a column name as the file spells it, `{Book-Title}` or `{Book Title}` included: Python's format
syntax reads everything up to `.`, `[`, `!`, `:` or `}` as the name, so only a column whose name holds `.`,
`[`, `]`, `{`, `}`, `!` or `:`, or is all digits (a positional index), needs `--map NAME=COLUMN` first.
List values (RecBole token sequences, Parquet list columns) are joined with LIST_JOIN: "Action, Comedy".
"""

from __future__ import annotations

import logging
import re
import string
from dataclasses import dataclass
from typing import Any

import pandas as pd

from fusionrec.data.schema import ITEM, Dataset
from fusionrec.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "{title}. Genres: {genres}. Year: {year}"
TEXT = "text"
CLAUSE_SEPARATOR = ". "
LIST_JOIN = ", "
# What Python's format syntax cannot take as a name: attribute / index access, conversion, spec, braces.
_NOT_IN_NAME = re.compile(r"[.\[\]{}!:]")


def _is_missing(value: Any) -> bool:
    if isinstance(value, str):
        return not value.strip()
    if pd.api.types.is_scalar(value):
        return bool(pd.isna(value))  # None, NaN (any float width), pd.NA, NaT
    try:
        return len(value) == 0  # lists, and numpy arrays from Parquet list columns
    except TypeError:
        return False


def _display(value: Any, has_format_spec: bool) -> Any:
    """Whole floats print without ".0" (a year read from a column with gaps is 1995.0); lists print "a, b"."""
    if isinstance(value, str):
        return value.strip()
    if not has_format_spec and isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, (list, tuple)) or hasattr(value, "tolist"):
        items = value.tolist() if hasattr(value, "tolist") else value
        if isinstance(items, list):
            return LIST_JOIN.join(str(v) for v in items)
    return value


def _check_name(name: str) -> None:
    """Refuse a field Python's format would not look up as a column name: `{a.b}` is an attribute, `{a[0]}` an
    index, `{}` and `{0}` positional arguments."""
    if not name.strip() or name.isdigit() or _NOT_IN_NAME.search(name):
        shown = f"{{{name}}}"
        raise UserError(f"template field {shown} is not a column name Python's format syntax can look up "
                        f"(a name is any text without . [ ] {{ }} ! : that is not all digits)",
                        field="data.itemTextTemplate",
                        fix="rename the column on reading, e.g. --map price_usd='price.usd' (data.columns.rename), "
                            "and write {price_usd}")


@dataclass(frozen=True)
class _Clause:
    text: str
    fields: tuple[str, ...]
    formatted: frozenset[str]  # fields with a format spec such as {rating:.1f}


class ItemTextTemplate:
    """A Python format template over item fields; a clause whose field is missing is dropped.

    An item whose every field-bearing clause is dropped gets "" (no text), not the template's literal words.
    """

    def __init__(self, template: str) -> None:
        if not template or not template.strip():
            raise UserError("the item text template is empty", field="data.itemTextTemplate",
                            fix=f"use e.g. {DEFAULT_TEMPLATE!r}")
        self.template = template
        self._clauses = [self._parse(part) for part in template.split(CLAUSE_SEPARATOR)]
        if not self.fields:
            raise UserError(f"the item text template {template!r} names no field", field="data.itemTextTemplate",
                            fix=f"write fields in braces, e.g. {DEFAULT_TEMPLATE!r}")

    @staticmethod
    def _parse(part: str) -> _Clause:
        fields, formatted = [], set()
        try:
            pieces = list(string.Formatter().parse(part))
        except ValueError as exc:
            raise UserError(f"cannot parse the item text template clause {part!r}: {exc}",
                            field="data.itemTextTemplate",
                            fix="fields are written {name}; literal braces as {{ }}") from None
        for _, name, spec, conversion in pieces:
            if name is None:
                continue
            _check_name(name)
            fields.append(name)
            if spec or conversion:
                formatted.add(name)
        return _Clause(part, tuple(fields), frozenset(formatted))

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(f for c in self._clauses for f in c.fields))

    def check_fields(self, available: list[str] | pd.Index) -> None:
        """Raise a UserError naming the first template field the items do not have."""
        have = [str(c) for c in available]
        for name in self.fields:
            if name not in have:
                shown = ", ".join(c for c in have if c not in (ITEM, TEXT)) or "(none: the items have only ids)"
                raise UserError(f"the item text template uses field {{{name}}}, which the items do not have; "
                                f"available fields: {shown}", field="data.itemTextTemplate",
                                fix="change the template (--template / spec.data.itemTextTemplate) or add the column")

    def render_one(self, item: dict[str, Any]) -> str:
        kept = []
        any_field_kept = False
        for clause in self._clauses:
            if not clause.fields:
                kept.append(clause.text)
                continue
            values = {name: item.get(name) for name in clause.fields}
            if any(_is_missing(v) for v in values.values()):
                continue
            shown = {name: _display(v, name in clause.formatted) for name, v in values.items()}
            try:
                kept.append(clause.text.format_map(shown))
            except (ValueError, TypeError) as exc:
                raise UserError(f"template clause {clause.text!r} cannot format item {item.get(ITEM)!r} "
                                f"({exc}); values: {shown}", field="data.itemTextTemplate") from None
            any_field_kept = True
        return CLAUSE_SEPARATOR.join(kept).strip() if any_field_kept else ""

    def render(self, items: pd.DataFrame) -> pd.Series:
        """One text per item row ("" when the item has none of the template's fields), aligned with `items`."""
        self.check_fields(items.columns)
        records = items[list(self.fields)].to_dict("records")
        return pd.Series([self.render_one(r) for r in records], index=items.index, dtype=str, name=TEXT)


def text_coverage(texts: pd.Series) -> float:
    """Fraction of items with a non-empty text (1.0 for an empty catalogue)."""
    if len(texts) == 0:
        return 1.0
    return float((texts.fillna("").astype(str).str.strip() != "").mean())


def field_coverage(items: pd.DataFrame, fields: tuple[str, ...]) -> dict[str, float]:
    """Per template field, the fraction of items where it is present: shows which field thins the text."""
    if len(items) == 0:
        return {f: 1.0 for f in fields}
    return {f: float(1.0 - items[f].map(_is_missing).mean()) for f in fields if f in items.columns}


def with_item_text(dataset: Dataset, template: str = DEFAULT_TEMPLATE) -> Dataset:
    """The dataset with a `text` column on its items. Items with only an id get no text (logged), since a
    template cannot be checked against fields that do not exist."""
    features = [c for c in dataset.items.columns if c not in (ITEM, TEXT)]
    if not features:
        log.warning("%s: items have no fields besides item_id, so they get no text", dataset.name)
        return dataset
    renderer = ItemTextTemplate(template)
    items = dataset.items.copy()
    items[TEXT] = renderer.render(items)
    empty = int((items[TEXT] == "").sum())
    if empty:
        log.info("%s: %d of %d items have no text (every template field missing)", dataset.name, empty, len(items))
    return Dataset(name=dataset.name, interactions=dataset.interactions, items=items, users=dataset.users,
                   template=template)
