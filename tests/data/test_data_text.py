"""Item text: a missing field drops its whole clause, unknown fields are named, coverage is measured."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fusionrec.data.schema import ITEM, Dataset
from fusionrec.data.text import DEFAULT_TEMPLATE, ItemTextTemplate, field_coverage, text_coverage, with_item_text
from fusionrec.errors import UserError


@pytest.fixture
def items() -> pd.DataFrame:
    return pd.DataFrame({
        ITEM: ["1", "2", "3", "4", "5"],
        "title": ["Toy Story", "Heat", "  ", None, "Casino"],
        "genres": ["Animation, Comedy", None, "Drama", None, ""],
        "year": [1995.0, np.nan, 2001.0, np.nan, 1995.0],
    })


def test_missing_fields_drop_their_clause(items):
    texts = ItemTextTemplate(DEFAULT_TEMPLATE).render(items)
    assert list(texts) == [
        "Toy Story. Genres: Animation, Comedy. Year: 1995",  # a float year prints without ".0"
        "Heat",
        "Genres: Drama. Year: 2001",  # a blank title counts as missing
        "",  # nothing known: no text at all, not the template's bare words
        "Casino. Year: 1995",
    ]
    assert not any("nan" in t or "None" in t for t in texts)


def test_coverage(items):
    texts = ItemTextTemplate(DEFAULT_TEMPLATE).render(items)
    assert text_coverage(texts) == pytest.approx(0.8)
    assert field_coverage(items, ("title", "genres", "year")) == {"title": 0.6, "genres": 0.4, "year": 0.6}


def test_unknown_field_names_it_and_lists_available(items):
    with pytest.raises(UserError) as info:
        ItemTextTemplate("{title}. By {director}").render(items)
    message = str(info.value)
    assert "{director}" in message and "title, genres, year" in message


def test_clause_with_two_fields_needs_both_and_format_specs_apply():
    frame = pd.DataFrame({ITEM: ["a", "b"], "name": ["Lamp", "Desk"], "price": [9.5, None], "cur": ["EUR", "EUR"]})
    texts = ItemTextTemplate("{name}. Price: {price:.2f} {cur}").render(frame)
    assert list(texts) == ["Lamp. Price: 9.50 EUR", "Desk"]


def test_list_values_are_joined_and_literal_clauses_kept():
    frame = pd.DataFrame({ITEM: ["a"], "tags": [["red", "wool"]]})
    assert ItemTextTemplate("Tags: {tags}. Handmade").render(frame).iloc[0] == "Tags: red, wool. Handmade"


@pytest.mark.parametrize("template", ["", "no fields at all", "{title[0]}", "{0}", "{title"])
def test_bad_templates_are_user_errors(template):
    with pytest.raises(UserError):
        ItemTextTemplate(template)


def test_with_item_text_skips_id_only_catalogues():
    inter = pd.DataFrame({"user_id": ["u"], "item_id": ["a"], "timestamp": [1]})
    bare = Dataset("d", inter, pd.DataFrame({ITEM: ["a"]}))
    assert "text" not in with_item_text(bare).items.columns
    rich = Dataset("d", inter, pd.DataFrame({ITEM: ["a"], "title": ["A"]}))
    assert with_item_text(rich, "{title}").items["text"].tolist() == ["A"]
