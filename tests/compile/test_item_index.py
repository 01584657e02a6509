"""The compile step's item index: exact below compile.index.minItems, an approximate faiss index at or above it,
its recall@10 against exact search recorded and gated, stored under the manifest, and searched by serving with
seen items excluded.

Two kinds of artifact: a synthetic one (4,000 clustered item vectors, users whose vector is the mean of their
history, no model) for the plan, the recall and its floor; and the tiny trained text-tower artifact, compiled for
real, for the round trip through the artifact and serving."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save as save_safetensors

from fusionrec.artifact import ANN_INDEX_NAME, load_artifact, write_artifact
from fusionrec.compile import compile_artifact
from fusionrec.compile.item_index import compile_index, describe_index
from fusionrec.errors import UserError
from fusionrec.retrieval import InnerProductIndex, plan_index
from fusionrec.retrieval.ann import default_nlist
from fusionrec.spec import FusionRecommenderSpec, IndexSpec

faiss = pytest.importorskip("faiss")
torch.set_num_threads(1)

N_ITEMS, DIM, N_USERS = 4000, 16, 300


def _spec(task: str = "ranking") -> FusionRecommenderSpec:
    return FusionRecommenderSpec.model_validate({
        "version": "v1", "encoders": [{"name": "minilm", "source": "./minilm"}],
        "fusion": {"method": "attention", "dim": DIM}, "task": {"type": task}})


def _clustered(rng: np.random.Generator, n: int) -> np.ndarray:
    centres = rng.standard_normal((40, DIM))
    vectors = centres[rng.integers(0, 40, n)] + 0.7 * rng.standard_normal((n, DIM))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A ranking artifact with a 4,000-item catalogue and 300 users' histories (no trained model in it: the
    compile step's index part needs only the item vectors, the histories and a user tower, given by the test)."""
    rng = np.random.default_rng(0)
    catalogue = _clustered(rng, N_ITEMS)
    ids = [f"i{n}" for n in range(N_ITEMS)]
    histories = [[ids[i] for i in rng.choice(N_ITEMS, int(rng.integers(1, 30)), replace=False)]
                 for _ in range(N_USERS)]
    files = {"model.safetensors": save_safetensors({"w": torch.zeros(2)}),
             "item_index.npy": lambda dest: np.save(dest, catalogue),
             "items.parquet": lambda dest: pd.DataFrame({"item_id": ids, "title": ids}).to_parquet(dest),
             "users.parquet": lambda dest: pd.DataFrame({"user_id": [f"u{u}" for u in range(N_USERS)],
                                                         "history": histories}).to_parquet(dest)}
    path = write_artifact(tmp_path_factory.mktemp("synthetic"), "v1", files, spec=_spec())
    return path, catalogue


def _mean_of_history(catalogue: np.ndarray):
    """A user tower: the mean of the history's item vectors (what a pooled tower computes before its layers)."""
    def embed(histories):
        return np.stack([catalogue[h].mean(axis=0) for h in histories])
    return embed


def _quiet(line: str) -> None:
    pass


# --- which index a catalogue gets -------------------------------------------------------------------------------


def test_auto_is_exact_below_min_items_and_ivf_at_it():
    below = plan_index(IndexSpec(min_items=1001), 1000, "ranking")
    assert below.kind == "exact" and "below minItems 1001" in below.reason
    at = plan_index(IndexSpec(min_items=1000), 1000, "ranking")
    assert at.kind == "ivf" and at.params == {"nlist": default_nlist(1000), "nprobe": min(32, default_nlist(1000))}
    assert plan_index(IndexSpec(), 199_999, "ranking").kind == "exact"  # the default threshold
    assert plan_index(IndexSpec(), 1_000_000, "ranking").params == {"nlist": 4000, "nprobe": 32}
    assert plan_index(IndexSpec(kind="hnsw", hnsw_m=16), 50, "ranking").params == {
        "m": 16, "ef_construction": 100, "ef_search": 256}
    assert plan_index(IndexSpec(kind="exact"), 10**7, "ranking").kind == "exact"


def test_a_pointwise_model_is_searched_exactly_and_refuses_an_approximate_kind():
    assert plan_index(IndexSpec(min_items=1), 10**6, "ctr").kind == "exact"
    with pytest.raises(UserError, match="scores every item through its head") as refused:
        plan_index(IndexSpec(kind="hnsw"), 10**6, "rating")
    assert refused.value.field == "compile.index.kind"


def test_an_nlist_above_the_catalogue_is_refused_by_name():
    with pytest.raises(UserError) as refused:
        plan_index(IndexSpec(kind="ivf", nlist=64), 50, "ranking")
    assert refused.value.field == "compile.index.nlist"


# --- building and measuring it ----------------------------------------------------------------------------------


def test_below_the_threshold_nothing_is_built(synthetic):
    path, catalogue = synthetic
    record, files = compile_index(load_artifact(path), IndexSpec(min_items=N_ITEMS + 1), _mean_of_history(catalogue),
                                  _quiet)
    assert record == {"kind": "exact", "reason": f"kind auto: {N_ITEMS} items, below minItems {N_ITEMS + 1}",
                      "items": N_ITEMS}
    assert files == {}


@pytest.mark.parametrize("settings", [IndexSpec(min_items=N_ITEMS), IndexSpec(kind="hnsw", hnsw_m=16)],
                         ids=["auto-ivf", "hnsw"])
def test_at_the_threshold_an_index_is_built_and_its_recall_recorded(synthetic, settings):
    path, catalogue = synthetic
    lines: list[str] = []
    record, files = compile_index(load_artifact(path), settings, _mean_of_history(catalogue), lines.append)
    kind = "ivf" if settings.kind == "auto" else "hnsw"
    assert record["kind"] == kind and record["file"] == ANN_INDEX_NAME and set(files) == {ANN_INDEX_NAME}
    assert record["items"] == N_ITEMS and record["dim"] == DIM and record["bytes"] == len(files[ANN_INDEX_NAME])
    assert record["recall_queries"] == N_USERS and record["query_source"].startswith("users' vectors")
    assert settings.min_recall <= record["recall@10"] <= 1.0
    assert lines == [describe_index(record)] and f"recall@10 {record['recall@10']:.4f} against exact" in lines[0]
    # the recorded recall is what the stored bytes give, measured independently with faiss and numpy
    index = faiss.deserialize_index(np.frombuffer(files[ANN_INDEX_NAME], dtype=np.uint8))
    assert index.ntotal == N_ITEMS
    users = pd.read_parquet(path / "users.parquet")
    user = _mean_of_history(catalogue)([np.array([int(i[1:]) for i in users["history"][0]])])
    _, found = index.search(user, 10)
    truth = np.argsort(-(catalogue @ user[0]), kind="stable")[:10]
    assert len(np.intersect1d(found[0], truth)) >= 5  # one query: loose; the mean over 300 is checked above


def test_an_index_below_the_recall_floor_is_refused_naming_the_field(synthetic):
    path, catalogue = synthetic
    settings = IndexSpec(kind="ivf", nlist=100, nprobe=1, min_recall=0.99)  # one cluster of 100 searched
    with pytest.raises(UserError, match=r"recall@10 0\.\d+ against exact search, below compile.index.minRecall 0.99"
                       ) as refused:
        compile_index(load_artifact(path), settings, _mean_of_history(catalogue), _quiet)
    assert refused.value.field == "compile.index.minRecall" and "nprobe" in refused.value.fix
    # the same index with every cluster searched is exact, and passes any floor
    record, _ = compile_index(load_artifact(path), IndexSpec(kind="ivf", nlist=100, nprobe=100, min_recall=1.0),
                              _mean_of_history(catalogue), _quiet)
    assert record["recall@10"] == 1.0


def test_without_user_histories_item_vectors_are_the_queries_and_the_record_says_so(tmp_path, synthetic):
    path, catalogue = synthetic
    source = load_artifact(path)
    files = {name: path / name for name in ("model.safetensors", "item_index.npy", "items.parquet")}
    bare = write_artifact(tmp_path, "v1", files, spec=source.spec)

    def no_tower(histories):
        raise AssertionError("no user history: the tower must not run")

    record, _ = compile_index(load_artifact(bare), IndexSpec(kind="hnsw"), no_tower, _quiet)
    assert record["query_source"] == "item vectors (the artifact has no user histories)"
    assert record["recall_queries"] == 1000


# --- the real compile, the artifact and serving ----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_compile_stores_the_index_and_serving_searches_it(text_artifact, fresh_copy, kind):
    from fusionrec.serving.scorer import VersionScorer

    path = fresh_copy(text_artifact)
    settings = IndexSpec(kind="auto", min_items=2) if kind == "ivf" else IndexSpec(kind="hnsw")
    record = compile_artifact(path, backend="torch", precision="fp32", index=settings, report=_quiet)
    entry = record["index"]
    assert entry["kind"] == kind and entry["recall@10"] == 1.0  # 18 items: the index finds every one
    artifact = load_artifact(path)  # the index file is in the manifest and verifies
    assert artifact.ann_index_path == path / ANN_INDEX_NAME
    assert artifact.manifest["files"][ANN_INDEX_NAME]["size"] == entry["bytes"]
    assert json.loads((path / "compile.json").read_text())["index"] == entry

    served = VersionScorer.load(path)
    exact = VersionScorer.load(path, use_index=False)
    assert served.index.backend == f"faiss-{kind}" and exact.index.backend == "numpy"
    assert served.describe()["topk_recall@10"] == 1.0
    n_items = served.n_items
    for user in range(len(served._histories)):
        seen = served.stored_history(user)
        vector = served.user_vectors([seen])[0]
        got = served.recommend(vector, user, 5, exclude=seen)
        want = exact.recommend(vector, user, 5, exclude=seen)
        assert got.positions.tolist() == want.positions.tolist()
        np.testing.assert_allclose(got.scores, want.scores, rtol=1e-5, atol=1e-6)
        assert not set(got.positions.tolist()) & set(seen.tolist())
        everything = served.recommend(vector, user, n_items, exclude=seen)  # over-fetch past the seen items
        assert sorted(everything.positions.tolist()) == sorted(set(range(n_items)) - set(seen.tolist()))


def test_a_tampered_index_fails_verification_and_a_recompile_to_exact_removes_it(text_artifact, fresh_copy):
    path = fresh_copy(text_artifact)
    compile_artifact(path, backend="torch", precision="fp32", index=IndexSpec(kind="hnsw"), report=_quiet)
    stored = (path / ANN_INDEX_NAME).read_bytes()
    (path / ANN_INDEX_NAME).write_bytes(stored[:-1] + bytes([stored[-1] ^ 1]))
    with pytest.raises(UserError, match=f"{ANN_INDEX_NAME}: sha256 does not match") as refused:
        load_artifact(path)
    assert refused.value.field == ANN_INDEX_NAME
    (path / ANN_INDEX_NAME).write_bytes(stored)
    record = compile_artifact(path, backend="torch", precision="fp32", index=IndexSpec(kind="exact"), report=_quiet)
    assert record["index"] == {"kind": "exact", "reason": "kind exact", "items": 18}
    artifact = load_artifact(path)
    assert ANN_INDEX_NAME not in artifact.files and not (path / ANN_INDEX_NAME).exists()
    from fusionrec.serving.scorer import VersionScorer

    assert VersionScorer.load(path).index.backend == "numpy"


def test_a_refused_index_leaves_the_artifact_untouched(text_artifact, fresh_copy, monkeypatch):
    from fusionrec.compile import item_index

    from helpers import snapshot

    path = fresh_copy(text_artifact)
    before = snapshot(path)
    # 18 items are too few for a poor index (a short answer is completed exactly): the measurement stands in
    monkeypatch.setattr(item_index, "recall_at_k", lambda *args, **kwargs: 0.5)
    with pytest.raises(UserError, match="recall@10 0.5000") as refused:
        compile_artifact(path, backend="torch", precision="fp32", index=IndexSpec(kind="hnsw"), report=_quiet)
    assert refused.value.field == "compile.index.minRecall"
    assert snapshot(path) == before


def test_search_many_answers_each_user_as_search_does():
    rng = np.random.default_rng(3)
    catalogue = _clustered(rng, 500)
    users = _clustered(rng, 7)
    exclude = [rng.choice(500, int(rng.integers(0, 40)), replace=False) for _ in range(7)]
    for index in (InnerProductIndex(catalogue, use_faiss=False), InnerProductIndex(catalogue, use_faiss=True)):
        batch = index.search_many(users, 10, exclude)
        for user, seen, (positions, scores) in zip(users, exclude, batch):
            alone = index.search(user, 10, seen)
            assert positions.tolist() == alone[0].tolist() and not set(positions.tolist()) & set(seen.tolist())
            np.testing.assert_allclose(scores, alone[1], rtol=1e-5)
