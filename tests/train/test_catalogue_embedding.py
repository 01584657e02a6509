"""Catalogue embedding on Ray Data (fusionrec.train.catalogue_embedding): the shard plan and the actor pool's
sizing (fast), then, on a local Ray (slow): the vectors are the in-process path's, they land in the cache the
encoders read, a re-run after a kill embeds only the shards that were never published, and `fusionrec embed`
fills the cache a model built from the same manifest reads."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from fusionrec.compile.parity import OUTPUT_TOLERANCES, max_relative_error
from fusionrec.errors import UserError
from fusionrec.model.encoders import TextEncoder, longest_first
from fusionrec.spec import EncoderSpec
from fusionrec.storage import PUBLISHED_NAME
from fusionrec.train.catalogue_embedding import (
    CatalogueEmbedding,
    embed_catalogue,
    plan_workers,
    shard_plan,
)

from testkit import fused_spec, synthetic_frames
from tiny_models import _WORDS

N_ITEMS = 300
SHARD = 64  # 5 shards, the last one short


def catalogue(n: int = N_ITEMS, seed: int = 0) -> list[str]:
    """Texts of 1 to 40 words the tiny tokenizers know: lengths vary, so batches pad differently."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 40))) for _ in range(n)]


def specs(tiny_models: dict[str, Path]) -> list[EncoderSpec]:
    return [EncoderSpec(name="bert", source=str(tiny_models["bert"]), pooling="mean", max_length=64, freeze=True),
            EncoderSpec(name="llama", source=str(tiny_models["llama"]), pooling="last", max_length=64, freeze=True)]


# --- the plan (no Ray) ---------------------------------------------------------------------------------------------


def test_shards_cut_the_longest_first_order_at_batch_multiples():
    texts = catalogue()
    shards = shard_plan(texts, SHARD)
    assert [s.name for s in shards] == ["items-0000000-0000064", "items-0000064-0000128", "items-0000128-0000192",
                                        "items-0000192-0000256", "items-0000256-0000300"]
    assert np.concatenate([s.rows for s in shards]).tolist() == longest_first(texts)
    assert shard_plan(texts, SHARD)[2].rows.tolist() == shards[2].rows.tolist()  # deterministic


@pytest.mark.parametrize("size", [0, 100, 65])
def test_a_shard_size_off_the_batch_size_is_refused(size):
    with pytest.raises(UserError, match="multiple of the LM batch size 64"):
        shard_plan(catalogue(), size)


def test_cpu_actors_share_every_core_and_gpu_actors_take_one_gpu_each():
    assert plan_workers({"CPU": 8}) == plan_workers({"CPU": 8}, 8)  # default: one actor per core
    cpu = plan_workers({"CPU": 8}, 2)
    assert (cpu.count, cpu.threads, cpu.cpus, cpu.gpus) == (2, 4, 4, 0)
    assert plan_workers({"CPU": 16}, 2, node_cpus=[4, 4, 4, 4]).threads == 4  # each actor fits on a node
    assert plan_workers({"CPU": 16}, 3, node_cpus=[8, 8]).threads == 4  # 5 threads would fit only 2 actors
    gpu = plan_workers({"CPU": 16, "GPU": 4})
    assert (gpu.count, gpu.gpus, gpu.cpus) == (4, 1, 1)
    with pytest.raises(UserError, match="--workers"):
        plan_workers({"CPU": 2}, 0)


# --- on a local Ray --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):

    from fusionrec.train.local_ray import start_local, stop

    connection = start_local(tmp_path_factory.mktemp("ray"), num_cpus=2)
    yield connection
    stop(connection)


def in_process(spec: EncoderSpec, texts: list[str], threads: int) -> np.ndarray:
    """The path the item tower takes (a frozen encoder's `pooled_texts`), on `threads` torch threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return TextEncoder(spec, 8).eval().pooled_texts(texts, 64).numpy()
    finally:
        torch.set_num_threads(previous)


def cached_rows(result: CatalogueEmbedding, name: str) -> np.ndarray:
    run = next(r for r in result.encoders if r.encoder == name)
    return np.load(run.cache_file)


@pytest.mark.ray
@pytest.mark.parametrize("workers", [1, 2])
def test_the_vectors_are_the_in_process_paths_and_land_in_the_encoders_cache(ray_cluster, tiny_models, tmp_path,
                                                                             workers):
    texts = catalogue()
    result = embed_catalogue(specs(tiny_models), texts, cache_dir=tmp_path / "cache", workers=workers,
                             shard_size=SHARD)
    assert [r.encoder for r in result.encoders] == ["bert", "llama"]
    for run in result.encoders:
        assert (run.workers, run.threads) == (workers, 2 // workers)
        assert sorted(run.computed) == [s.name for s in shard_plan(texts, SHARD)] and not run.reused
    for spec in specs(tiny_models):
        expected = in_process(spec, texts, threads=2 // workers)
        # the same batches on as many threads: the very same bits
        np.testing.assert_array_equal(cached_rows(result, spec.name), expected)
        # and within the fp32 parity gate of the in-process path on every core
        assert max_relative_error(in_process(spec, texts, threads=2), cached_rows(result, spec.name)) \
            <= OUTPUT_TOLERANCES["fp32"]
        # the encoders read them from their own cache: no LM pass
        reader = TextEncoder(spec, 8, embedding_cache_dir=tmp_path / "cache").eval()
        np.testing.assert_array_equal(reader.pooled_texts(texts, 64).numpy(), expected)
        assert reader.cache_stats["computed"] == 0 and reader.cache_stats["disk_hits"] == 1


@pytest.mark.ray
def test_a_rerun_after_a_kill_embeds_only_the_shards_never_published(ray_cluster, tiny_models, tmp_path):
    texts = catalogue()
    spec = specs(tiny_models)[:1]
    first = embed_catalogue(spec, texts, cache_dir=tmp_path / "cache", workers=2, shard_size=SHARD)
    run = first.encoders[0]
    expected = np.load(run.cache_file)
    shards = Path(run.shards_uri)
    names = [s.name for s in shard_plan(texts, SHARD)]
    # What a kill leaves: no cache file, two shards that never finished (one of them half uploaded, without its
    # PUBLISHED marker), a staging prefix of an interrupted upload, and the shards published before the kill.
    Path(run.cache_file).unlink()
    shutil.rmtree(shards / names[1])
    (shards / names[3] / PUBLISHED_NAME).unlink()
    (shards / f".tmp-{names[1]}-0123456789ab").mkdir()
    kept = {name: (shards / name / PUBLISHED_NAME).stat().st_mtime_ns for name in names if name not in
            (names[1], names[3])}

    second = embed_catalogue(spec, texts, cache_dir=tmp_path / "cache", workers=2, shard_size=SHARD).encoders[0]

    assert sorted(second.computed) == [names[1], names[3]]
    assert sorted(second.reused) == sorted(kept)
    assert second.items_computed == 2 * SHARD
    assert {name: (shards / name / PUBLISHED_NAME).stat().st_mtime_ns for name in kept} == kept  # not rewritten
    np.testing.assert_array_equal(np.load(second.cache_file), expected)

    third = embed_catalogue(spec, texts, cache_dir=tmp_path / "cache", workers=2, shard_size=SHARD).encoders[0]
    assert third.cached and not third.computed and not third.reused  # the cache file is there: nothing to do


@pytest.mark.ray
def test_another_catalogue_never_reuses_these_shards(ray_cluster, tiny_models, tmp_path):
    spec = specs(tiny_models)[:1]
    first = embed_catalogue(spec, catalogue(), cache_dir=tmp_path / "cache", workers=1, shard_size=SHARD)
    changed = catalogue()
    changed[7] += " star"
    second = embed_catalogue(spec, changed, cache_dir=tmp_path / "cache", workers=1, shard_size=SHARD)
    assert second.encoders[0].shards_uri != first.encoders[0].shards_uri
    assert len(second.encoders[0].computed) == 5 and not second.encoders[0].reused


@pytest.mark.ray
def test_fusionrec_embed_fills_the_cache_the_manifests_model_reads(ray_cluster, tiny_models, tmp_path):
    from fusionrec.cli.main import cli
    from fusionrec.data import load_dataset
    from fusionrec.model.fused import FusedRecommender
    from fusionrec.protocol import make_split
    from fusionrec.spec import load_manifest

    interactions, items = synthetic_frames(n_users=60, n_items=200, per_user=9)
    interactions.to_csv(tmp_path / "interactions.csv", index=False)
    items.to_csv(tmp_path / "items.csv", index=False)
    data = {"dataset": None, "path": str(tmp_path), "interactions": "interactions.csv", "items": "items.csv"}
    document = {"apiVersion": "fusionrec.io/v1alpha1", "kind": "FusionRecommender", "metadata": {"name": "shop"},
                "spec": fused_spec(tiny_models, data=data, unfrozen="mpnet")}
    manifest = tmp_path / "shop.yaml"
    manifest.write_text(json.dumps(document))  # JSON is YAML

    result = CliRunner().invoke(cli, ["embed", str(manifest), "--cache", str(tmp_path / "cache"), "--workers", "2",
                                      "--shard-size", "64", "--json"])

    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [r["encoder"] for r in report["encoders"]] == ["bert", "llama"]
    assert report["skipped"] == ["mpnet"]  # fine-tuned: its pooled rows change while training
    spec = load_manifest(manifest).spec
    dataset = load_dataset(spec.data)
    split = make_split(dataset, spec.task.type, spec.data.order)
    assert report["items"] == split.vocab.n_items > 64
    model = FusedRecommender.from_spec(spec, dataset, split, embedding_cache_dir=tmp_path / "cache")
    frozen = [e for e in model.text_encoders() if e.frozen]
    assert [e.spec.name for e in frozen] == ["bert", "llama"]
    assert all(e.cache_stats["computed"] == 0 and e.cache_stats["disk_hits"] == 1 for e in frozen)


# --- before Ray Train's ranks start ----------------------------------------------------------------------------


def shop_spec(tiny_models: dict[str, Path], folder: Path, n_items: int):
    from fusionrec.spec import FusionRecommenderSpec

    interactions, items = synthetic_frames(n_users=60, n_items=n_items, per_user=9)
    interactions.to_csv(folder / "interactions.csv", index=False)
    items.to_csv(folder / "items.csv", index=False)
    data = {"dataset": None, "path": str(folder), "interactions": "interactions.csv", "items": "items.csv"}
    return FusionRecommenderSpec.model_validate(fused_spec(tiny_models, data=data))


def test_the_training_job_leaves_small_catalogues_and_remote_clusters_to_the_ranks(tiny_models, tmp_path):
    from fusionrec.train.catalogue_embedding import RAY_DATA_MIN_ITEMS, embed_before_training

    spec = shop_spec(tiny_models, tmp_path, n_items=30)
    assert embed_before_training(spec, tmp_path / "cache", remote=False) is None  # 30 < RAY_DATA_MIN_ITEMS
    assert embed_before_training(spec, tmp_path / "cache", remote=True) is None
    assert not (tmp_path / "cache").exists()
    assert RAY_DATA_MIN_ITEMS >= 500


@pytest.mark.ray
def test_the_training_job_embeds_a_big_catalogue_once_before_the_ranks(ray_cluster, tiny_models, tmp_path,
                                                                       monkeypatch):
    from fusionrec.train import catalogue_embedding

    monkeypatch.setattr(catalogue_embedding, "RAY_DATA_MIN_ITEMS", 100)
    spec = shop_spec(tiny_models, tmp_path, n_items=150)
    spec = spec.model_copy(update={"encoders": spec.encoders[:1]})
    result = catalogue_embedding.embed_before_training(spec, tmp_path / "cache", remote=False)
    assert result is not None and result.items >= 100
    assert [r.encoder for r in result.encoders] == ["bert"] and result.encoders[0].computed
    assert Path(result.encoders[0].cache_file).is_file()


@pytest.mark.ray
def test_a_worker_whose_model_differs_from_the_drivers_is_refused(ray_cluster, tiny_models, tmp_path, monkeypatch):
    """The rows are cached under the driver's key: an actor that loaded other weights (another node's model
    files) must not publish any. Only the driver is patched here; the actors load the model as it is."""
    keyed = TextEncoder.catalogue_key
    monkeypatch.setattr(TextEncoder, "catalogue_key",
                        lambda self, texts: keyed(self, texts) if texts else "0" * 64)
    with pytest.raises(UserError, match="differs from the driver's"):
        embed_catalogue(specs(tiny_models)[:1], catalogue(), cache_dir=tmp_path / "cache", workers=1,
                        shard_size=SHARD)
    assert not list((tmp_path / "cache").rglob("*.npy"))  # no shard, no cache file
