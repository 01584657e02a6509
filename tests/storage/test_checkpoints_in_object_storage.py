"""`training.storagePath: s3://...`: Ray Train writes its checkpoints to the loopback S3 server through the
filesystem fusionrec.storage resolves (endpoint and credentials from the environment), a worker group restarted
after a lost worker restores from there, and the driver restores the selected checkpoint from there to write the
artifact. Bad storage settings fail in preflight, before Ray starts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from pyarrow import fs
from safetensors.torch import load

from fusionrec import storage
from fusionrec.artifact import load_artifact
from fusionrec.errors import UserError
from fusionrec.spec import Manifest
from fusionrec.train.distributed import preflight, ray_storage, train_distributed

from testkit import fused_spec, shop_files

torch.set_num_threads(1)


def manifest(tiny_models: dict[str, Path], folder: Path, storage_path: str, *, epochs: int = 3) -> Manifest:
    document = fused_spec(tiny_models, epochs=epochs, data=shop_files(folder))
    document["training"].update(workers=1, storagePath=storage_path, warmupRatio=0.0, lrSchedule="constant")
    return Manifest.model_validate({"metadata": {"name": "shop"}, "spec": document})


def objects(uri: str) -> list[str]:
    location = storage.resolve(uri)
    infos = location.filesystem.get_file_info(fs.FileSelector(location.path, recursive=True, allow_not_found=True))
    return sorted(i.path[len(location.path) + 1:] for i in infos if i.type == fs.FileType.File)


def read_object(uri: str) -> bytes:
    location = storage.resolve(uri)
    with location.filesystem.open_input_stream(location.path) as stream:
        return bytes(stream.read())


@pytest.mark.storage
@pytest.mark.ray
def test_checkpoints_are_written_to_s3_and_a_lost_worker_resumes_from_them(tiny_models, s3_root, tmp_path):
    checkpoints = f"{s3_root}/checkpoints"
    marker = str(tmp_path / "drill-fired")

    def fail_once(rank: int, epoch: int, samples: int) -> None:
        """The worker fails once in epoch 2: the new worker group must restore epoch 1's checkpoint from S3."""
        if epoch == 2 and samples > 0 and not os.path.exists(marker):
            Path(marker).write_text("failed once\n")
            raise RuntimeError("failure drill: the worker fails at epoch 2")

    result = train_distributed(manifest(tiny_models, tmp_path, checkpoints), tmp_path / "runs",
                               embeddings=tmp_path / "embeddings", before_batch=fail_once)

    assert Path(marker).exists()
    assert result.last_metrics["resumed_after"] == 1  # restored from the checkpoint of epoch 1, in S3
    assert [row["epoch"] for row in result.history] == [1, 2, 3]
    stored = objects(checkpoints)
    assert result.best_checkpoint is not None and result.best_checkpoint.startswith(f"{checkpoints}/shop-v1-")
    run = result.best_checkpoint[len(checkpoints) + 1:].rsplit("/", 1)[0]
    kept = sorted({name.split("/")[1] for name in stored if name.startswith(f"{run}/epoch-")})
    assert kept[-1] == "epoch-0003" and len(kept) <= 2, stored  # Ray's best and the latest
    assert f"{result.best_checkpoint[len(checkpoints) + 1:]}/model.safetensors" in stored
    # No checkpoint went to the local default storage (<output>/_training/<run>/epoch-*).
    assert not list((tmp_path / "runs" / "_training").glob("*/epoch-*"))

    # The driver restored the latest checkpoint from S3: the artifact holds the best weights it carries.
    best = load(read_object(f"{checkpoints}/{run}/epoch-0003/best.safetensors"))
    weights = load_artifact(result.artifact).load_state_dict()
    for key, value in best.items():
        torch.testing.assert_close(weights[key], value, rtol=0, atol=0)


def test_storage_path_uris_reach_ray_as_the_storage_filesystem(no_cloud_env, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "example-secret-0123456789")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    path, filesystem = ray_storage("s3://bucket/ckpt")
    assert path == "bucket/ckpt" and isinstance(filesystem, fs.S3FileSystem)
    assert ray_storage("/tmp/ckpt") == ("/tmp/ckpt", None)


def test_storage_path_without_credentials_fails_in_preflight(tiny_models, no_cloud_env, tmp_path):
    with pytest.raises(UserError, match="no S3 credentials") as missing:
        preflight(manifest(tiny_models, tmp_path, "s3://bucket/checkpoints"), tmp_path / "runs")
    assert missing.value.field == "spec.training.storagePath" and "AWS_ACCESS_KEY_ID" in str(missing.value)


@pytest.mark.storage
def test_storage_path_in_a_missing_bucket_fails_in_preflight(tiny_models, s3_env, tmp_path):
    with pytest.raises(UserError, match="bucket 'no-such-ckpt-bucket' does not exist") as missing:
        preflight(manifest(tiny_models, tmp_path, "s3://no-such-ckpt-bucket/ckpt"), tmp_path / "runs")
    assert missing.value.field == "spec.training.storagePath"


