"""Progress bars for the long, silent parts of a run (catalogue embedding, data preparation, compiling).

One helper so every bar obeys the same switch: bars draw on stderr only when it is a terminal and the user
did not ask for quiet (`fusionrec -q` sets `FUSIONREC_QUIET=1`), so logs, CI output and `--json` stay clean.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any, TypeVar

T = TypeVar("T")


def quiet() -> bool:
    """True when progress bars must not draw: `FUSIONREC_QUIET=1`, or stderr is not a terminal."""
    if os.environ.get("FUSIONREC_QUIET") == "1":
        return True
    try:
        return not sys.stderr.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stderr
        return True


def progress(iterable: Iterable[T] | None = None, *, desc: str, total: int | None = None, unit: str = "it",
             leave: bool = False, **options: Any) -> Any:
    """A tqdm bar over `iterable` (or a manual one when None: call `.update(n)`), disabled when `quiet()`."""
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, unit=unit, leave=leave, disable=quiet(), dynamic_ncols=True,
                **options)
