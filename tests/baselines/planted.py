"""Tiny synthetic datasets with a planted signal, built in memory for the baseline tests."""

from __future__ import annotations

import numpy as np
import pandas as pd

from fusionrec.data.schema import Dataset

GENRES = ("Action", "Drama")


def _frames(rows: list[tuple[str, str, int, float]], n_users: int, n_items: int,
            genre_of_item: list[str], gender_of_user: list[str], name: str) -> Dataset:
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "rating"])
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(n_items)],
                          "title": [f"Movie {i}" for i in range(n_items)],
                          "year": [str(1990 + i % 5) for i in range(n_items)],
                          "genres": genre_of_item})
    users = pd.DataFrame({"user_id": [f"u{u}" for u in range(n_users)],
                          "age": [str(20 + u % 3) for u in range(n_users)],
                          "gender": gender_of_user,
                          "occupation": ["student" if u % 2 else "writer" for u in range(n_users)],
                          "zip_code": [f"{10000 + u % 4}" for u in range(n_users)]})
    return Dataset(name, inter, items, users)


def clustered(n_users: int = 60, n_items: int = 40, per_user: int = 12, seed: int = 0) -> Dataset:
    """Two user groups, each consuming only its own half of the catalogue: collaborative signal only."""
    rng = np.random.default_rng(seed)
    half = n_items // 2
    rows = []
    for u in range(n_users):
        pool = np.arange(half) + (half if u % 2 else 0)
        for t, item in enumerate(rng.choice(pool, size=per_user, replace=False)):
            rows.append((f"u{u}", f"i{item}", 1000 + t, 5.0))
    genres = [GENRES[0] if i < half else GENRES[1] for i in range(n_items)]
    return _frames(rows, n_users, n_items, genres, ["M" if u % 2 else "F" for u in range(n_users)], "clustered")


def skewed_popularity(n_users: int = 80, n_items: int = 50, per_user: int = 8, seed: int = 0) -> Dataset:
    """Everyone draws items from the same steep Zipf distribution: popularity is the whole signal."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, n_items + 1) ** 1.5
    weights /= weights.sum()
    rows = []
    for u in range(n_users):
        for t, item in enumerate(rng.choice(n_items, size=per_user, replace=False, p=weights)):
            rows.append((f"u{u}", f"i{item}", 1000 + t, 5.0))
    return _frames(rows, n_users, n_items, [GENRES[i % 2] for i in range(n_items)],
                   ["M" if u % 2 else "F" for u in range(n_users)], "skewed")


def ctr(kind: str, n_users: int = 120, n_items: int = 60, per_user: int = 25, seed: int = 0) -> Dataset:
    """Ratings whose label (rating >= 4) follows a planted rule.

    kind "item_quality": half of the items are good (a main effect, which LR can learn).
    kind "gender_genre": men like Action and women Drama, every item and user is liked half of the time
        (a pure interaction: LR sees no main effect, FM can model it).
    """
    rng = np.random.default_rng(seed)
    gender = ["M" if u % 2 else "F" for u in range(n_users)]
    genre = [GENRES[i % 2] for i in range(n_items)]
    rows = []
    for u in range(n_users):
        for t, item in enumerate(rng.choice(n_items, size=per_user, replace=False)):
            if kind == "item_quality":
                liked = item % 4 < 2
            elif kind == "gender_genre":
                liked = (gender[u] == "M") == (genre[item] == "Action")
            else:
                raise ValueError(f"unknown kind {kind!r}")
            if rng.random() < 0.1:
                liked = not liked  # label noise
            rows.append((f"u{u}", f"i{item}", 1000 + t, 5.0 if liked else 2.0))
    return _frames(rows, n_users, n_items, genre, gender, kind)
