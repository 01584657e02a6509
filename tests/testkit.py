"""Builders the model and training tests share: a small synthetic catalogue with text, and a spec document over the tiny
random bert/mpnet/llama encoders. A plain module with a unique name (not conftest) so `from ... import` always
finds this file, whichever other conftest.py pytest has imported first."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

GENRES = ("Action", "Drama", "Comedy")
WORDS = "star war king queen cat dog".split()  # words the tiny tokenizers know


def synthetic_frames(n_users: int = 24, n_items: int = 18, per_user: int = 9,
                     seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(interactions, items): each user sticks to one genre and rates its even items high."""
    rng = np.random.default_rng(seed)
    genre_of = [GENRES[i % 3] for i in range(n_items)]
    rows = []
    for u in range(n_users):
        pool = [i for i in range(n_items) if genre_of[i] == GENRES[u % 3]]
        for t, item in enumerate(rng.choice(pool, size=min(per_user, len(pool)), replace=False)):
            rows.append((f"u{u}", f"i{item}", 1000 + 10 * t, 5.0 if item % 2 == 0 else 2.0))
    interactions = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "rating"])
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(n_items)],
                          "title": [f"{WORDS[i % len(WORDS)]} movie {i}" for i in range(n_items)],
                          "genres": genre_of, "year": [str(1990 + i % 4) for i in range(n_items)]})
    return interactions, items


def shop_files(folder: Path, users: pd.DataFrame | None = None) -> dict:
    """The synthetic shop written as CSV files into `folder` (plus a users table if given): the spec's data
    section that reads them."""
    interactions, items = synthetic_frames()
    interactions.to_csv(folder / "interactions.csv", index=False)
    items.to_csv(folder / "items.csv", index=False)
    data = {"dataset": None, "path": str(folder), "interactions": "interactions.csv", "items": "items.csv"}
    if users is not None:
        users.to_csv(folder / "users.csv", index=False)
        data["users"] = "users.csv"
    return data


def fused_spec(tiny_models: dict[str, Path], *, task: str = "ranking", epochs: int = 3,
               data: dict | None = None, unfrozen: str | None = None) -> dict:
    """A spec document for the three tiny encoders (one optionally fine-tuned above its bottom 2 layers)."""
    encoders = []
    for family in ("bert", "mpnet", "llama"):
        encoder = {"name": family, "source": str(tiny_models[family]), "maxLength": 24,
                   "pooling": "last" if family == "llama" else "mean"}
        encoder.update({"freezeLayers": 2} if family == unfrozen else {"freeze": True})
        encoders.append(encoder)
    document = {"version": "v1", "encoders": encoders, "fusion": {"method": "attention", "dim": 16, "hidden": 16},
                "task": {"type": task, "historyLength": 6, "numNegatives": 8, "useItemIds": True},
                "training": {"epochs": epochs, "batchSize": 8, "learningRate": 1e-2, "encoderLearningRate": 1e-3,
                             "warmupRatio": 0.2, "lrSchedule": "cosine", "earlyStopping": {"patience": 50}}}
    if data is not None:
        document["data"] = data
    return document


def run_json(manifest: Path, *extra: str) -> tuple[int, dict, str]:
    """`fusionrec run MANIFEST --json ...` in process: (exit code, the JSON summary, stderr); a bug re-raises."""
    import json

    from click.testing import CliRunner

    from fusionrec.cli.main import cli

    result = CliRunner().invoke(cli, ["run", str(manifest), "--json", *extra])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, json.loads(result.stdout), result.stderr


def step_statuses(summary: dict) -> dict[str, str]:
    """A run summary's steps as {name: status}."""
    return {step["name"]: step["status"] for step in summary["steps"]}


def shop_csv(folder: Path) -> dict:
    """A 30-user shop as CSV files in `folder`; returns the spec's `data` section that reads them."""
    interactions, items = synthetic_frames(n_users=30, n_items=24, per_user=8)
    interactions.to_csv(folder / "inter.csv", index=False)
    items.to_csv(folder / "items.csv", index=False)
    return {"dataset": None, "path": str(folder), "interactions": "inter.csv", "items": "items.csv"}


def local_serve_cluster(tmp_path_factory, prefix: str):  # noqa: ANN001, ANN201 (a pytest fixture body)
    """One Ray + Serve for a test module (yield from it in a module fixture); the embedding cache is set before Ray
    starts, so replicas inherit it. The folder is short: Ray's socket paths must stay under 107 bytes."""
    import shutil
    import tempfile

    import pytest

    from fusionrec.serving.local import start_local_serve, stop_local_serve

    embeddings = tmp_path_factory.mktemp("embeddings")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FUSIONREC_EMBEDDING_CACHE", str(embeddings))
        workdir = Path(tempfile.mkdtemp(prefix=prefix))
        local = start_local_serve(workdir, num_cpus=4)
        try:
            yield local
        finally:
            stop_local_serve()
            shutil.rmtree(workdir, ignore_errors=True)


def store_events(live: Path, rows: list[tuple[str, str, str]], *, first_timestamp: int) -> None:
    """(user, item, type) events written as one segment, the way the ingress stores them under `<live>/events/`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from fusionrec.data.feedback import EVENT_SCHEMA

    frame = pd.DataFrame([{"event_id": f"e{i}", "user_id": u, "item_id": it, "type": t, "value": 1.0,
                           "timestamp": first_timestamp + i, "request_id": None, "model_version": "v1"}
                          for i, (u, it, t) in enumerate(rows)])
    segment = live / "events" / "r0" / "00000001700000000000-a.parquet"
    segment.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pandas(frame, schema=EVENT_SCHEMA, preserve_index=False), segment)
