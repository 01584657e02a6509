"""Readers that turn files into a `fusionrec.data.schema.Dataset`, refusing bad rows with file, line and field.

- `read_atomic`: RecBole atomic files (`.inter`, `.item`, `.user`).
- `read_movielens`: GroupLens MovieLens-100K (`u.data`, `u.item`, `u.user`).
- `read_table`: a shop's CSV/Parquet export with a ColumnMapping.
- `read_files`: any of the above, chosen by format or guessed from the files.
"""

from fusionrec.data.readers.atomic import AtomicFiles, read_atomic
from fusionrec.data.readers.dispatch import read_files
from fusionrec.data.readers.movielens import clean_placeholders, read_movielens
from fusionrec.data.readers.tabular import detect_format, read_table

__all__ = ["AtomicFiles", "clean_placeholders", "detect_format", "read_atomic", "read_files", "read_movielens",
           "read_table"]
