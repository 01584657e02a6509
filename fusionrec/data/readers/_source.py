"""Raw tables: a file read into columns, plus the means to point an error at its exact line.

Readers validate whole columns at once (fast on millions of rows) and only on failure work out which physical
line a bad record sits on, so the message can say `u.data, line 7, field 'rating'` even when blank lines or
quoted multi-line fields make record numbers and line numbers differ.
"""

from __future__ import annotations

import codecs
import csv
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from fusionrec.errors import DataError

log = logging.getLogger(__name__)

Quoting = Literal[0, 1, 2, 3]  # csv.QUOTE_MINIMAL, QUOTE_ALL, QUOTE_NONNUMERIC or QUOTE_NONE, as csv.reader takes

_ENCODING_FIX = "pass the file's encoding, e.g. --encoding latin-1 (or cp1252, utf-16); any Python codec name works"


@dataclass
class RawTable:
    """One file's records. Text files hold str columns ("" where a field is empty); Parquet keeps its types.

    Row r of `frame` is the r-th data record of the file; `line_of(r)` is its 1-based line (header = line 1).
    """

    path: Path
    frame: pd.DataFrame
    is_text: bool
    header: bool = True
    delimiter: str = ","
    encoding: str = "utf-8"
    quoting: Quoting = csv.QUOTE_MINIMAL
    escapechar: str | None = None
    _lines: np.ndarray | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return str(self.path)

    def line_of(self, row: int) -> int | None:
        """1-based physical line where data record `row` starts; None for Parquet (it has rows, not lines)."""
        if not self.is_text:
            return None
        if self._lines is None:
            self._lines = _record_start_lines(self)
        first_data = 1 if self.header else 0
        if self._lines is not None and first_data + row < len(self._lines):
            return int(self._lines[first_data + row])
        return row + 1 + first_data  # a delimiter csv cannot scan: assume one record per line

    def error(self, message: str, row: int | None = None, field: str | None = None,
              fix: str | None = None) -> DataError:
        """A DataError pointing at data record `row` (0-based) of this file."""
        if row is not None and not self.is_text:
            message = f"row {row + 1}: {message}"
            return DataError(message, file=self.name, field=field, fix=fix)
        line = self.line_of(row) if row is not None else None
        return DataError(message, file=self.name, line=line, field=field, fix=fix)

    def require(self, columns: dict[str, str], what: str) -> None:
        """Raise for the first contract field whose column is absent, listing the columns the file has."""
        for contract, column in columns.items():
            if column not in self.frame.columns:
                have = ", ".join(map(str, self.frame.columns)) or "(none)"
                hint = f" (mapped from {contract!r})" if contract != column else ""
                message = f"missing required column {column!r}{hint} in the {what} file; columns present: {have}"
                fix = "rename the column or map it, e.g. --map user_id=customer_id"
                other = self.header_delimiter() if self.is_text and self.header else None
                if other is not None:
                    message += (f". The file was read with delimiter {_shown(self.delimiter)}, but its header line "
                                f"seems to be separated by {_shown(other)}")
                    fix = (f"pass --delimiter {_cli_value(other)} (in a manifest: data.delimiter: "
                           f"{_yaml_value(other)})")
                raise DataError(message, file=self.name, line=1 if self.is_text and self.header else None,
                                field=column, fix=fix)

    def header_delimiter(self) -> str | None:
        """The delimiter the header line seems to use when it is not the one the file was read with.

        A wrong delimiter shows up as "missing column user_id" (the whole header is one column name), which
        sends a user hunting for a column that is there; naming the delimiter points at the real mistake.
        """
        try:
            with self.path.open(encoding=self.encoding, errors="replace", newline="") as handle:
                line = handle.readline().rstrip("\r\n").lstrip("\ufeff")
        except OSError:
            return None
        width = len(self.frame.columns)
        best, best_fields = None, width
        for candidate in DELIMITER_CANDIDATES:
            if candidate in self.delimiter:  # the one used, or a part of it
                continue
            fields = len(line.split(candidate))
            if fields > best_fields:
                best, best_fields = candidate, fields
        return best


# Delimiters a header line is checked for when required columns are missing; "::" is MovieLens-1M's.
DELIMITER_CANDIDATES = ("::", "\t", ";", "|", ",")


def _shown(delimiter: str) -> str:
    return "tab" if delimiter == "\t" else repr(delimiter)


def _cli_value(delimiter: str) -> str:
    return "tab" if delimiter == "\t" else f"'{delimiter}'"


def _yaml_value(delimiter: str) -> str:
    return '"\\t"' if delimiter == "\t" else f"'{delimiter}'"


def check_encoding(encoding: str, path: Path) -> None:
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise DataError(f"unknown encoding {encoding!r}", file=str(path), field="encoding",
                        fix=_ENCODING_FIX) from None


def check_exists(path: Path, what: str) -> None:
    if not path.is_file():
        raise DataError(f"{what} file does not exist" if not path.exists() else f"{what} path is not a file",
                        file=str(path), fix="check the path (relative paths are taken from the current directory)")


def read_text_table(path: str | Path, *, what: str, delimiter: str = ",", encoding: str = "utf-8",
                    header: bool = True, names: list[str] | None = None,
                    quoting: Quoting = csv.QUOTE_MINIMAL, escapechar: str | None = None) -> RawTable:
    """Read a delimited text file with every field as a string, so no value is reinterpreted or lost.

    `escapechar` (e.g. a backslash) lets a field hold `\\"` inside quotes, as many exporters write it; without
    it such a quote ends the field and the record splits wrongly.
    """
    path = Path(path)
    check_exists(path, what)
    check_encoding(encoding, path)
    engine = "c" if len(delimiter) == 1 else "python"
    try:
        frame = pd.read_csv(
            path, sep=delimiter, encoding=encoding, dtype=str, keep_default_na=False, na_filter=False,
            header=0 if header else None, names=names, quoting=quoting, skip_blank_lines=True,
            index_col=False, engine=engine, escapechar=escapechar,
        )
    except UnicodeDecodeError as exc:
        raise _decode_error(path, encoding, exc) from None
    except pd.errors.EmptyDataError:
        raise DataError("file is empty" + (" (no header line)" if header else ""), file=str(path),
                        line=1) from None
    except (pd.errors.ParserError, ValueError) as exc:
        match = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(exc))
        if match:
            expected, line, saw = match.groups()
            raise DataError(f"expected {expected} fields separated by {delimiter!r}, found {saw}",
                            file=str(path), line=int(line),
                            fix="check the delimiter (--delimiter) and quoting of that line") from None
        raise DataError(f"cannot be parsed as delimited text ({exc})", file=str(path)) from None
    if header:
        frame.columns = [str(c).strip().lstrip("\ufeff") for c in frame.columns]
    return RawTable(path=path, frame=frame, is_text=True, header=header, delimiter=delimiter,
                    encoding=encoding, quoting=quoting, escapechar=escapechar)


def read_parquet_table(path: str | Path, *, what: str) -> RawTable:
    path = Path(path)
    check_exists(path, what)
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a file that is not Parquet
        raise DataError(f"cannot be read as Parquet ({type(exc).__name__}: {exc})", file=str(path),
                        fix="pass --format csv for text files") from None
    return RawTable(path=path, frame=frame.reset_index(drop=True), is_text=False)


def _decode_error(path: Path, encoding: str, exc: UnicodeDecodeError) -> DataError:
    """Find the first line that does not decode; pandas reports a position inside its own buffer."""
    decoder = codecs.getincrementaldecoder(encoding)()
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                decoder.decode(raw)
            except UnicodeDecodeError as bad:
                return DataError(f"byte {raw[bad.start:bad.start + 1]!r} at column {bad.start + 1} cannot be "
                                 f"decoded as {encoding}", file=str(path), line=number, fix=_ENCODING_FIX)
    return DataError(f"cannot be decoded as {encoding}: {exc.reason}", file=str(path), fix=_ENCODING_FIX)


def _record_start_lines(table: RawTable) -> np.ndarray | None:
    """Start line of every non-blank record (header included), scanned the way the csv module parses."""
    if len(table.delimiter) != 1:
        return None
    starts = []
    with table.path.open(encoding=table.encoding, newline="") as handle:
        reader = csv.reader(handle, delimiter=table.delimiter, quoting=table.quoting, escapechar=table.escapechar)
        previous_end = 0
        try:
            for record in reader:
                if record:  # blank lines are skipped by the reader above as well
                    starts.append(previous_end + 1)
                previous_end = reader.line_num
        except csv.Error:
            log.debug("could not rescan %s for line numbers", table.path)
    return np.asarray(starts, dtype=np.int64)
