"""Catalogue embedding with its shards on the loopback S3 server: each finished shard is a published version
(manifest, marker), and another machine given the same output (an empty local cache) assembles the very same
rows without embedding anything. The Ray actors get the server's credentials from their environment, as pods
would, never through the job's arguments."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fusionrec.spec import EncoderSpec
from fusionrec.storage import list_published
from fusionrec.train.catalogue_embedding import embed_catalogue, shard_plan

pytestmark = [pytest.mark.storage, pytest.mark.ray]


@pytest.fixture(scope="module")
def ray_with_s3_env(s3_server, tmp_path_factory):
    """A local Ray whose processes inherit the server's credentials (set only while it starts)."""

    from fusionrec.train.local_ray import start_local, stop

    with pytest.MonkeyPatch.context() as patch:
        for var, value in s3_server.items():
            patch.setenv(var, value)
        connection = start_local(tmp_path_factory.mktemp("ray"), num_cpus=2)
    yield connection
    stop(connection)


def test_shards_published_to_s3_round_trip_into_another_machines_cache(ray_with_s3_env, s3_root, tiny_models,
                                                                        tmp_path):
    texts = [" ".join(["star", "war", "king", "queen", "cat", "dog"][: 1 + i % 6] * (1 + i % 5))
             for i in range(200)]
    spec = [EncoderSpec(name="llama", source=str(tiny_models["llama"]), pooling="last", max_length=64, freeze=True)]
    output = f"{s3_root}/embeddings"

    here = embed_catalogue(spec, texts, cache_dir=tmp_path / "here", output=output, workers=2,
                           shard_size=64).encoders[0]

    names = [s.name for s in shard_plan(texts, 64)]
    assert here.shards_uri.startswith(f"{output}/llama-")
    assert list_published(here.shards_uri) == names
    assert sorted(here.computed) == names
    elsewhere = embed_catalogue(spec, texts, cache_dir=tmp_path / "elsewhere", output=output, workers=2,
                                shard_size=64).encoders[0]
    assert not elsewhere.computed and sorted(elsewhere.reused) == names
    assert Path(elsewhere.cache_file).name == Path(here.cache_file).name
    np.testing.assert_array_equal(np.load(elsewhere.cache_file), np.load(here.cache_file))
