"""Progress for the long, silent parts of a run (catalogue embedding, data preparation, compiling).

One helper so every bar obeys the same switch: bars draw on stderr only when it is a terminal and the user
did not ask for quiet (`fusionrec -q` sets `FUSIONREC_QUIET=1`), so logs, CI output and `--json` stay clean.
Work that can take minutes (embedding a catalogue with a 135M-parameter LM on two cores: 9 to 21 minutes was
seen) asks for `lines=True`: without a terminal it then prints a plain line every ~10 s with the count, the
rate and the time left, so a log or a pipe never looks like a hang.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable
from typing import IO, Any, Self, TypeVar

T = TypeVar("T")

LINE_INTERVAL_S = 10.0


def silenced() -> bool:
    """True when the user asked for no progress at all (`fusionrec -q`)."""
    return os.environ.get("FUSIONREC_QUIET") == "1"


def _terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stderr
        return False


def quiet() -> bool:
    """True when progress bars must not draw: `FUSIONREC_QUIET=1`, or stderr is not a terminal."""
    return silenced() or not _terminal()


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class ProgressLines:
    """tqdm's manual interface (`update`, `close`, a context manager) as plain lines on a stream.

    One line when the work starts, then at most one per `interval` seconds (count, percent, rate, ETA), and a
    last line with the total time and rate; nothing is redrawn, so it reads well in a log file.
    """

    def __init__(self, *, desc: str, total: int | None, unit: str = "it", interval: float = LINE_INTERVAL_S,
                 stream: IO[str] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.desc, self.total, self.unit, self.interval = desc, total, unit, interval
        self.n = 0
        self._stream = stream
        self._clock = clock
        self._start = self._last = clock()
        self._closed = False
        self._write(f"{desc}: {total:,} {unit}s" if total is not None else f"{desc}: started")

    def _write(self, line: str) -> None:
        stream = self._stream if self._stream is not None else sys.stderr
        print(line, file=stream, flush=True)

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self._clock()
        if now - self._last >= self.interval and not (self.total is not None and self.n >= self.total):
            self._last = now
            self._write(self._status(now))

    def _status(self, now: float) -> str:
        elapsed = max(now - self._start, 1e-9)
        rate = self.n / elapsed
        if self.total:
            left = (self.total - self.n) / rate if rate > 0 else float("inf")
            eta = _duration(left) if left != float("inf") else "unknown"
            return (f"{self.desc}: {self.n:,}/{self.total:,} {self.unit}s ({self.n / self.total:.0%}), "
                    f"{rate:.1f} {self.unit}s/s, ETA {eta}")
        return f"{self.desc}: {self.n:,} {self.unit}s, {rate:.1f} {self.unit}s/s"

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        elapsed = self._clock() - self._start
        rate = f", {self.n / elapsed:.1f} {self.unit}s/s" if elapsed > 0 else ""
        if self.total is not None and self.n < self.total:  # an error or Ctrl-C ended the work early
            self._write(f"{self.desc}: stopped at {self.n:,}/{self.total:,} {self.unit}s after "
                        f"{_duration(elapsed)}{rate}")
        else:
            self._write(f"{self.desc}: done, {self.n:,} {self.unit}s in {_duration(elapsed)}{rate}")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(iterable: Iterable[T] | None = None, *, desc: str, total: int | None = None, unit: str = "it",
             leave: bool = False, lines: bool = False, **options: Any) -> Any:
    """A tqdm bar over `iterable` (or a manual one when None: call `.update(n)`), disabled when `quiet()`.

    `lines=True` (manual use only) prints ProgressLines instead when stderr is not a terminal, unless silenced.
    """
    if lines and iterable is None and not silenced() and not _terminal():
        return ProgressLines(desc=desc, total=total, unit=unit)
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, unit=unit, leave=leave, disable=quiet(), dynamic_ncols=True,
                **options)
