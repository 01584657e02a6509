"""A per-version circuit breaker: after a version failed to answer, fail fast for a moment instead of waiting.

Why: when a version's only replica dies, Serve queues new requests until a replacement has loaded its model
(a minute or more), so without a bound every request hangs until the client gives up (issue 17: 8.5% of
requests hung 30 s). The router bounds each call by a deadline; once one call missed it (or found no replica),
the breaker answers the next ones at once with 503 + Retry-After, or the popularity fallback, for
`open_s` seconds, then lets calls through again, each bounded by the same deadline, to find out whether a
replica is back. So every request is answered within the deadline, and most within milliseconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Breaker:
    """Open (failing fast) for `open_s` seconds after `trip()`; closed otherwise.

    Args:
        open_s: how long to fail fast after a failure (also what Retry-After says).
        clock: monotonic seconds (tests pass a fake).
    """

    def __init__(self, open_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.open_s = open_s
        self.clock = clock
        self._open_until = 0.0

    def trip(self) -> None:
        """A call failed: fail fast from now for `open_s`."""
        self._open_until = self.clock() + self.open_s

    def reset(self) -> None:
        """A call succeeded: the version answers again."""
        self._open_until = 0.0

    @property
    def is_open(self) -> bool:
        return self.clock() < self._open_until
