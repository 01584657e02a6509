"""Bad input to `fusionrec train` / `python -m fusionrec.train` fails in seconds with exit code 2 and a message
naming the field, before any Ray starts or any training runs. No cluster is needed here."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from fusionrec.errors import UserError
from fusionrec.spec import TrainingSpec
from fusionrec.train.__main__ import main
from fusionrec.train.distributed import preflight, storage_location
from fusionrec.train.local_ray import (
    check_reachable,
    keep_session_files,
    local_environment,
    ray_temp_dir,
    requested_address,
)


def write_manifest(folder: Path, **training) -> Path:
    document = {"apiVersion": "fusionrec.io/v1alpha1", "kind": "FusionRecommender", "metadata": {"name": "shop"},
                "spec": {"version": "v1", "encoders": [{"name": "bert", "source": "/nonexistent/bert"}],
                         "training": training}}
    path = folder / "manifest.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.fixture(autouse=True)
def no_ray_started(monkeypatch):
    """Any attempt to start or join Ray fails the test: these errors must come first."""
    import ray

    def refuse(*args, **kwargs):
        raise AssertionError("Ray was started before the input was checked")

    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


@pytest.fixture
def tiny_data(tmp_path):
    from testkit import synthetic_frames

    interactions, items = synthetic_frames()
    interactions.to_csv(tmp_path / "interactions.csv", index=False)
    items.to_csv(tmp_path / "items.csv", index=False)
    return {"dataset": None, "path": str(tmp_path), "interactions": "interactions.csv", "items": "items.csv"}


def run(tmp_path: Path, capsys, *extra: str, **training) -> tuple[int, str]:
    code = main(["--manifest", str(write_manifest(tmp_path, **training)), "--output", str(tmp_path / "out"),
                 *extra])
    return code, capsys.readouterr().err


def test_zero_workers_is_a_spec_error(tmp_path, capsys):
    code, err = run(tmp_path, capsys, workers=0)
    assert code == 2
    assert "spec.training.workers" in err and "greater than or equal to 1" in err


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
def test_gpus_on_a_machine_without_any(tmp_path, capsys):
    code, err = run(tmp_path, capsys, workers=2, gpusPerWorker=1)
    assert code == 2
    assert "training.gpusPerWorker" in err and "need 2 GPUs but this machine has 0" in err


def test_an_unreachable_ray_address(tmp_path, capsys):
    code, err = run(tmp_path, capsys, "--address", "127.0.0.1:1")
    assert code == 2
    assert "--address" in err and "cannot reach the Ray cluster at '127.0.0.1:1'" in err


def test_an_unreachable_ray_address_from_the_environment(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "ray://127.0.0.1:1")
    code, err = run(tmp_path, capsys)
    assert code == 2 and "cannot reach the Ray cluster at 'ray://127.0.0.1:1'" in err


def test_an_unwritable_storage_path(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, err = run(tmp_path, capsys, storagePath=str(blocker / "checkpoints"))
    assert code == 2
    assert "training.storagePath" in err and "is not writable" in err


def test_a_missing_data_file_fails_before_ray(tmp_path, capsys):
    path = write_manifest(tmp_path)
    document = yaml.safe_load(path.read_text())
    document["spec"]["data"] = {"dataset": None, "path": str(tmp_path), "interactions": "missing.csv"}
    path.write_text(yaml.safe_dump(document))
    assert main(["--manifest", str(path), "--output", str(tmp_path / "out")]) == 2
    assert "missing.csv" in capsys.readouterr().err


def test_a_missing_encoder_source_fails_before_ray(tmp_path, capsys, tiny_data):
    path = write_manifest(tmp_path)
    document = yaml.safe_load(path.read_text())
    document["spec"]["data"] = tiny_data
    path.write_text(yaml.safe_dump(document))
    assert main(["--manifest", str(path), "--output", str(tmp_path / "out")]) == 2
    assert "/nonexistent/bert" in capsys.readouterr().err


def test_a_worker_user_error_is_raised_as_itself():
    from ray.train.v2._internal.exceptions import UserExceptionWithTraceback
    from ray.train.v2.api.exceptions import WorkerGroupError

    from fusionrec.train.distributed import _worker_failure

    def Wrapped(exc):  # how Ray Train hands a worker's exception back to the driver
        return UserExceptionWithTraceback(exc, traceback_str="Traceback ...")

    original = UserError("the loss became nan at epoch 2", field="training.learningRate")
    found = _worker_failure(WorkerGroupError("failed", {1: Wrapped(original)}))
    assert found is original
    assert _worker_failure(WorkerGroupError("failed", {0: Wrapped(RuntimeError("bug"))})) is None


def test_an_existing_version_is_refused_before_training(tmp_path):
    (tmp_path / "out" / "v1").mkdir(parents=True)
    with pytest.raises(UserError, match="version 'v1' already exists"):
        preflight(write_manifest(tmp_path), tmp_path / "out")
    assert preflight(write_manifest(tmp_path), tmp_path / "out", overwrite=True).spec.version == "v1"


def test_storage_uris_pass_through_and_local_paths_default_under_the_output(tmp_path, monkeypatch):
    from fusionrec.train import distributed

    checked: list[tuple[str, str]] = []  # credentials and bucket (tests/storage/test_checkpoints_in_object_storage.py)
    monkeypatch.setattr(distributed, "_reachable_bucket", lambda uri, field: checked.append((uri, field)))
    assert storage_location(TrainingSpec(storage_path="s3://bucket/ckpt/"), tmp_path) == "s3://bucket/ckpt"
    assert checked == [("s3://bucket/ckpt/", "spec.training.storagePath")]
    assert storage_location(TrainingSpec(), tmp_path) == str((tmp_path / "_training").resolve())
    local = storage_location(TrainingSpec(storage_path=f"file://{tmp_path}/ckpt"), tmp_path / "out")
    assert local == str(tmp_path / "ckpt") and Path(local).is_dir()


def test_address_resolution_and_checks(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "head:6379")
    assert requested_address(None) == "head:6379"
    assert requested_address("local") is None and requested_address("10.0.0.1:6379") == "10.0.0.1:6379"
    monkeypatch.delenv("RAY_ADDRESS")
    assert requested_address(None) is None
    with pytest.raises(UserError, match="is not host:port"):
        check_reachable("just-a-name")
    check_reachable("auto")  # left to Ray


def test_local_ray_keeps_its_files_and_token_to_itself(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    env = local_environment(tmp_path)
    assert env["TMPDIR"] == str(tmp_path) and env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"
    assert len(env["RAY_AUTH_TOKEN"]) == 64  # token auth stays on, nothing written to ~/.ray
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert "RAY_AUTH_TOKEN" not in local_environment(tmp_path)
    assert ray_temp_dir(Path("/r")) == Path("/r/ray")
    deep = ray_temp_dir(tmp_path / ("x" * 80))
    assert len(str(deep)) < 60 and deep.is_dir()  # Unix socket paths stay short
    keep_session_files(deep, tmp_path / ("x" * 80))
    assert not deep.exists()


def test_a_short_session_folder_moves_under_the_run_when_ray_stops(tmp_path):
    """Without this, every run whose folder is deeper than ~40 characters left a folder in /tmp for good."""
    run_dir = tmp_path / ("run" * 20)
    short = ray_temp_dir(run_dir)
    assert not short.is_relative_to(tmp_path)
    session = short / "session_2026-12-07_01-00-00_1_1"
    (session / "logs").mkdir(parents=True)
    (session / "logs" / "raylet.out").write_text("why it failed\n")
    (short / "session_latest").symlink_to(session)
    listener = socket.socket(socket.AF_UNIX)
    (session / "sockets").mkdir()
    listener.bind(str(session / "sockets" / "raylet"))
    try:
        keep_session_files(short, run_dir)
    finally:
        listener.close()
    assert not short.exists()
    kept = run_dir / "ray" / session.name
    assert (kept / "logs" / "raylet.out").read_text() == "why it failed\n"
    assert not (kept / "sockets" / "raylet").exists() and not (run_dir / "ray" / "session_latest").exists()


def test_a_session_folder_already_under_the_run_stays_as_it_is(tmp_path):
    here = tmp_path / "ray"
    here.mkdir()
    (here / "log.txt").write_text("x")
    keep_session_files(here, tmp_path)
    assert (here / "log.txt").read_text() == "x"


def test_the_click_command_maps_errors_to_exit_2(tmp_path, monkeypatch):
    from fusionrec.cli.main import cli
    from fusionrec.cli.train_cmd import train

    monkeypatch.setitem(cli.commands, "train", train)  # whether or not main.py registers it yet
    result = CliRunner().invoke(cli, ["train", str(write_manifest(tmp_path, workers=0)), "--output",
                                      str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "spec.training.workers" in result.output


@pytest.mark.slow
def test_the_module_entry_point_exits_2(tmp_path):
    """`python -m fusionrec.train` exactly as the operator's RayJob runs it."""
    manifest = write_manifest(tmp_path, workers=1)
    done = subprocess.run([sys.executable, "-m", "fusionrec.train", "--manifest", str(manifest), "--output",
                           str(tmp_path / "out"), "--address", "127.0.0.1:1"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2, done.stderr
    assert "cannot reach the Ray cluster" in done.stderr


def test_local_ray_workers_run_at_normal_priority_unless_the_user_says_otherwise(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_worker_niceness", raising=False)
    assert local_environment(tmp_path)["RAY_worker_niceness"] == "0"  # Ray's default is nice 15
    monkeypatch.setenv("RAY_worker_niceness", "10")
    assert "RAY_worker_niceness" not in local_environment(tmp_path)  # the exported value reaches Ray as it is
