"""Bad input fails loudly: the DataError names the file, the 1-based line (header = line 1) and the field."""

from __future__ import annotations

import pytest

from fusionrec.data.readers import read_atomic, read_movielens, read_table
from fusionrec.errors import DataError, UserError
from fusionrec.spec import ColumnMapping

HEADER = "user_id,item_id,rating,timestamp\n"


def _error(call) -> DataError:
    with pytest.raises(DataError) as info:
        call()
    return info.value


@pytest.mark.parametrize("rows, line, field, words", [
    ("u1,i1,4,10\nu1,i2,abc,20\n", 3, "rating", "'abc' is not a number"),
    ("u1,i1,4,10\nu2,i1,4,10\nu1,i2,4,yesterday\n", 4, "timestamp", "'yesterday'"),
    ("u1,i1,4,10\n,i2,4,20\n", 3, "user_id", "empty user id"),
    ("u1,,4,10\n", 2, "item_id", "empty item id"),
    ("u1,i1,4,10\nu1,i1,,20\n", 3, "rating", "rating is empty"),
])
def test_malformed_row_names_file_line_and_field(tmp_path, write, rows, line, field, words):
    path = write(tmp_path / "inter.csv", HEADER + rows)
    error = _error(lambda: read_table(path))
    assert (error.file, error.line, error.field) == (str(path), line, field)
    assert str(path) in str(error) and f"line {line}" in str(error) and words in str(error)


def test_line_numbers_count_blank_and_multiline_quoted_records(tmp_path, write):
    path = write(tmp_path / "inter.csv", HEADER + "u1,i1,4,10\n\n\"u\n2\",i1,4,10\nu3,i1,x,10\n")
    assert _error(lambda: read_table(path)).line == 6


def test_many_bad_rows_reports_the_first_and_counts_the_rest(tmp_path, write):
    path = write(tmp_path / "inter.csv", HEADER + "u1,i1,bad,1\nu1,i2,bad,2\nu1,i3,bad,3\n")
    error = _error(lambda: read_table(path))
    assert error.line == 2 and "2 more rows" in str(error)


def test_interaction_with_unknown_item(tmp_path, write):
    inter = write(tmp_path / "inter.csv", HEADER + "u1,i1,4,10\nu1,i9,4,20\n")
    items = write(tmp_path / "items.csv", "item_id,title\ni1,One\n")
    error = _error(lambda: read_table(inter, items))
    assert (error.file, error.line, error.field) == (str(inter), 3, "item_id")
    assert "'i9' is not in the items file" in str(error)


def test_missing_required_column_lists_what_is_there(tmp_path, write):
    path = write(tmp_path / "inter.csv", "user,item_id,timestamp\nu1,i1,1\n")
    error = _error(lambda: read_table(path))
    assert (error.line, error.field) == (1, "user_id")
    assert "missing required column 'user_id'" in str(error) and "user, item_id, timestamp" in str(error)


def test_mapped_column_missing_names_the_mapping(tmp_path, write):
    path = write(tmp_path / "inter.csv", "user_id,item_id,timestamp\nu1,i1,1\n")
    error = _error(lambda: read_table(path, columns=ColumnMapping(rating="stars")))
    assert error.field == "stars" and "mapped from 'rating'" in str(error)


def test_unknown_encoding(tmp_path, write):
    path = write(tmp_path / "inter.csv", HEADER + "u1,i1,4,10\n")
    error = _error(lambda: read_table(path, encoding="klingon-8"))
    assert error.field == "encoding" and "'klingon-8'" in str(error) and str(path) in str(error)


def test_wrong_encoding_points_at_the_line(tmp_path, write):
    path = write(tmp_path / "items.csv", "item_id,title\ni1,Plain\ni2,Café\n", encoding="latin-1")
    inter = write(tmp_path / "inter.csv", HEADER + "u1,i1,4,10\n")
    error = _error(lambda: read_table(inter, path))
    assert (error.file, error.line) == (str(path), 3) and "utf-8" in str(error) and "--encoding" in str(error)


def test_too_many_fields_on_a_line(tmp_path, write):
    path = write(tmp_path / "inter.csv", HEADER + "u1,i1,4,10\nu1,i2,4,10,surprise\n")
    error = _error(lambda: read_table(path))
    assert error.line == 3 and "expected 4 fields" in str(error)


def test_duplicate_item_rows(tmp_path, write):
    inter = write(tmp_path / "inter.csv", HEADER + "u1,i1,4,10\n")
    items = write(tmp_path / "items.csv", "item_id,title\ni1,One\ni1,Again\n")
    error = _error(lambda: read_table(inter, items))
    assert (error.file, error.line, error.field) == (str(items), 3, "item_id") and "appears twice" in str(error)


def test_label_must_be_binary(tmp_path, write):
    path = write(tmp_path / "inter.csv", "user_id,item_id,timestamp,click\nu1,i1,1,1\nu1,i2,2,7\n")
    error = _error(lambda: read_table(path, columns=ColumnMapping(rating=None, label="click")))
    assert (error.line, error.field) == (3, "click") and "0 or 1" in str(error)


def test_missing_file_and_empty_file(tmp_path, write):
    assert "does not exist" in str(_error(lambda: read_table(tmp_path / "nope.csv")))
    empty = write(tmp_path / "empty.csv", "")
    assert "empty" in str(_error(lambda: read_table(empty)))


def test_atomic_header_without_types(tmp_path, write):
    write(tmp_path / "x.inter", "user_id\titem_id\ttimestamp\nu\ti\t1\n")
    error = _error(lambda: read_atomic(tmp_path, "x"))
    assert (error.line, error.field) == (1, "user_id") and "name:type" in str(error)


def test_atomic_bad_float_feature(tmp_path, write):
    write(tmp_path / "x.inter", "user_id:token\titem_id:token\ttimestamp:float\nu\ti\t1\n")
    write(tmp_path / "x.item", "item_id:token\tprice:float\ni\tcheap\n")
    error = _error(lambda: read_atomic(tmp_path, "x"))
    assert (error.file, error.line, error.field) == (str(tmp_path / "x.item"), 2, "price")


def test_movielens_bad_genre_flag_and_non_numeric_rating(movielens_dir):
    data = movielens_dir / "u.data"
    data.write_text(data.read_text() + "2\t2\tfive\t888550871\n")
    error = _error(lambda: read_movielens(movielens_dir))
    assert (error.file, error.line, error.field) == (str(data), 4, "rating")  # u.data has no header line
    data.write_text("1\t1\t5\t874965758\n")
    item = movielens_dir / "u.item"
    item.write_bytes(item.read_bytes().replace(b"|0|0|0|1|1|1|", b"|0|0|0|1|x|1|", 1))
    error = _error(lambda: read_movielens(movielens_dir))
    assert (error.line, error.field) == (1, "Children's")


def test_atomic_folder_without_dataset(tmp_path):
    with pytest.raises(UserError, match=r"exactly one \.inter"):
        read_atomic(tmp_path)
