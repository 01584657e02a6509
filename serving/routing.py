"""Weighted, sticky traffic split between model versions.

A user must see one version for the length of a canary step, or their recommendations flicker between two
models and the canary's metrics mix with the stable one's. Each request key (the user id, or the history
when there is no id) hashes to a bucket 0..99, and each version owns a contiguous range of buckets in the
order the versions are listed. When the last-listed version (the candidate) grows from 10 to 50, buckets
90..99 stay with it: users already on the candidate stay there as its share grows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence

BUCKETS = 100


def check_weights(weights: Iterable[tuple[str, int]]) -> dict[str, int]:
    """The one check of a traffic split, wherever it is written (the app's args, the operator's live split, the
    router's `reconfigure`): at least one version, none twice, integer percents >= 0 summing to 100.

    Returns {version: weight} in the given order; raises ValueError naming what is wrong.
    """
    pairs = list(weights)
    if not pairs:
        raise ValueError("a traffic split needs at least one version")
    names = [version for version, _ in pairs]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"versions repeat: {repeated}")
    split = dict(pairs)
    bad = {v: w for v, w in pairs if not isinstance(w, int) or isinstance(w, bool) or w < 0}
    if bad:
        raise ValueError(f"weights must be non-negative integers, got {bad}")
    if sum(split.values()) != BUCKETS:
        raise ValueError(f"version weights must sum to {BUCKETS}, got {split} (sum {sum(split.values())})")
    return split


def request_key(user_id: str | None, history: Sequence[str] | None) -> str:
    """What a request sticks by: its user id, else its history (so retries of one request agree)."""
    if user_id is not None:
        return "u:" + user_id
    return "h:" + "\x1f".join(history or ())


def bucket_of(key: str) -> int:
    """A stable bucket in [0, 100) (not Python's `hash`, which is salted per process). `surrogatepass`: the
    schema refuses lone surrogates, but a key that still carried one must be routed, not crash the router."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


class TrafficSplit:
    """Versions and their integer weights (percent, summing to 100; 0 keeps a version deployed but idle).

    Args:
        weights: version -> weight, in listing order.
    """

    def __init__(self, weights: Mapping[str, int]) -> None:
        self.weights = check_weights(weights.items())
        self._owner: list[str] = []  # bucket -> version
        for version, weight in self.weights.items():
            self._owner += [version] * weight

    def pick(self, key: str) -> str:
        """The version that serves this key."""
        return self._owner[bucket_of(key)]

    @property
    def versions(self) -> list[str]:
        return list(self.weights)

    @property
    def live(self) -> list[str]:
        """Versions that receive traffic (weight > 0)."""
        return [v for v, w in self.weights.items() if w > 0]
