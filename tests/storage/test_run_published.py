"""`fusionrec run` with spec.storage.uri on the loopback S3 server (issue 21, deliverable 1): the run builds in a
local work folder, publishes the version after compile, and serves it from its published URI; re-running does not
rebuild a published version (not even from an empty work folder, which is a fresh machine), a manifest whose
training changed under the same version is refused, a second version rolls out from its URI, and a version whose
upload never finished is never served. Storage problems exit 2 naming spec.storage.uri before any work.

The slow tests share one local Ray + Serve started with the server's credentials in its environment, as a pod
would have them from its Secret; the runner reuses it (and leaves the application up)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest
import yaml

from fusionrec import storage
from fusionrec.artifact import load_artifact
from fusionrec.runner.local_serve import Version, app_args
from fusionrec.runner.publishing import BUILD_NAME, work_root
from fusionrec.runner.run import interrupted_line
from fusionrec.runner.steps import StepResult
from fusionrec.runner.summary import RunReport
from fusionrec.spec import ServingSpec

from testkit import run_json as run
from testkit import shop_csv
from testkit import step_statuses as steps

BUCKET = "fusionrec-run-test"


def manifest_document(models: dict[str, Path], data: dict, uri: str, *, version: str = "v1",
                      learning_rate: float = 1e-3) -> dict:
    """One tiny frozen encoder, one epoch, the torch compile backend, Pop as the baseline, a two-step canary."""
    return {
        "apiVersion": "fusionrec.io/v1alpha1", "kind": "FusionRecommender", "metadata": {"name": "shop-recs"},
        "spec": {
            "version": version,
            "encoders": [{"name": "bert", "source": str(models["bert"]), "maxLength": 16, "freeze": True}],
            "fusion": {"method": "attention", "dim": 16, "hidden": 16},
            "task": {"type": "ranking", "historyLength": 6, "numNegatives": 8},
            "data": data,
            "training": {"epochs": 1, "batchSize": 16, "learningRate": learning_rate},
            "compile": {"backend": "torch", "precision": "fp32"},
            "serving": {"minReplicas": 1, "maxReplicas": 1, "resources": {"cpu": "0.5"}},
            "rollout": {"steps": [50, 100], "analysis": {"maxErrorRate": 0.0, "maxP99LatencyMs": 10_000.0}},
            "evaluation": {"baselines": ["pop"]},
            "storage": {"uri": uri},
        },
    }


def write_manifest(folder: Path, document: dict, name: str) -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return shop_csv(tmp_path_factory.mktemp("shop"))


# --- without a server ------------------------------------------------------------------------------------------


def test_no_credentials_exits_2_naming_storage_uri_before_any_work(tiny_models, shop, no_cloud_env, tmp_path,
                                                                    monkeypatch):
    monkeypatch.setenv("FUSIONREC_CACHE", str(tmp_path / "cache"))
    manifest = write_manifest(tmp_path, manifest_document(tiny_models, shop, "s3://some-bucket/runs"), "v1.yaml")
    code, summary, stderr = run(manifest, "--no-serve")
    assert code == 2, stderr
    assert "spec.storage.uri: s3://some-bucket/runs: no S3 credentials in the environment" in stderr
    assert "fix: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in stderr
    assert summary["steps"] == [] and not (tmp_path / "cache").exists()  # nothing read, built or created
    code, _, stderr = run(manifest, "--no-serve", "--output", "pvc://claim/runs")
    assert code == 2 and "--output: URI 'pvc://claim/runs'" in stderr and "not a storage location" in stderr


def test_the_work_folder_is_one_per_uri_under_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FUSIONREC_CACHE", str(tmp_path))
    first = work_root("s3://models/shop")
    assert first.parent == tmp_path / "runs" and first.name.startswith("s3-models-") and first.is_dir()
    assert work_root("s3://models/shop") == first and work_root("s3://models/other") != first
    assert work_root("s3://models/shop", str(tmp_path / "w")) == tmp_path / "w"


def test_published_versions_are_served_by_uri_and_an_unpublished_run_says_so(tmp_path):
    args = app_args("shop-recs", [Version("v1", tmp_path / "v1", "s3://b/runs/v1"), Version("v2", tmp_path / "v2")],
                    {"v1": 100, "v2": 0}, ServingSpec())
    assert [v.artifact for v in args.versions] == ["s3://b/runs/v1", str(tmp_path / "v2")]
    report = RunReport(name="shop-recs", version="v3", artifact="/cache/runs/x/v3", storage="s3://b/runs",
                       steps=[StepResult("train", "ran", 9.0), StepResult("publish", "failed", 1.0)])
    assert interrupted_line(report) == "interrupted: nothing published to s3://b/runs for version v3; run again " \
                                       "(finished steps are reused)"
    report.published = "s3://b/runs/v3"
    assert "nothing published" not in interrupted_line(report)


# --- against the loopback S3 server ---------------------------------------------------------------------------


@pytest.mark.storage
def test_a_missing_bucket_or_a_wrong_secret_exits_2_before_any_work(tiny_models, shop, s3_env, tmp_path,
                                                                     monkeypatch):
    monkeypatch.setenv("FUSIONREC_CACHE", str(tmp_path / "cache"))
    manifest = write_manifest(tmp_path, manifest_document(tiny_models, shop, "s3://no-such-bucket-here/runs"),
                              "v1.yaml")
    code, summary, stderr = run(manifest, "--no-serve")
    assert code == 2 and summary["steps"] == [], stderr
    assert "spec.storage.uri: s3://no-such-bucket-here/runs" in stderr and "bucket 'no-such-bucket-here' does not " \
                                                                        "exist" in stderr
    secret = "not-the-secret-" + uuid.uuid4().hex
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    code, summary, stderr = run(manifest, "--no-serve", "--output", "s3://fusionrec-test/runs")
    assert code == 2 and summary["steps"] == [] and "--output" in stderr, stderr
    assert secret not in stderr + json.dumps(summary) and s3_env["AWS_ACCESS_KEY_ID"] not in stderr


def _create_bucket(env: dict[str, str], bucket: str) -> None:
    from pyarrow import fs

    s3 = fs.S3FileSystem(access_key=env["AWS_ACCESS_KEY_ID"], secret_key=env["AWS_SECRET_ACCESS_KEY"],
                         region=env["AWS_REGION"], endpoint_override=env["AWS_ENDPOINT_URL_S3"].split("://", 1)[1],
                         scheme="http", allow_bucket_creation=True)
    s3.create_dir(bucket)


@pytest.fixture(scope="module")
def cluster(s3_server, tmp_path_factory):
    """One Ray + Serve for the module, started with the server's credentials and the caches in its environment
    (replicas inherit them, as a pod's containers get them from its Secret)."""
    pytest.importorskip("ray.serve")
    from fusionrec.serving.local import start_local_serve, stop_local_serve

    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        for var in [name for name in os.environ if name.startswith("AWS_")]:  # nothing but the loopback server
            patch.delenv(var)
        for var, value in s3_server.items():
            patch.setenv(var, value)
        _create_bucket(s3_server, BUCKET)
        patch.setenv("FUSIONREC_CACHE", str(cache))
        patch.delenv("FUSIONREC_ARTIFACT_CACHE", raising=False)
        patch.setenv("FUSIONREC_EMBEDDING_CACHE", str(cache / "embeddings"))
        workdir = Path(tempfile.mkdtemp(prefix="frs-"))  # short: Ray's socket paths must stay under 107 bytes
        local = start_local_serve(workdir, num_cpus=4)
        try:
            yield {"serve": local, "cache": cache, "env": s3_server}
        finally:
            stop_local_serve()
            shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def runs(cluster, tiny_models, shop, tmp_path_factory):
    """The module's storage URI, manifests folder, and the first run (v1) through the CLI."""
    folder = tmp_path_factory.mktemp("manifests")
    uri = f"s3://{BUCKET}/run-{uuid.uuid4().hex[:10]}"
    manifest = write_manifest(folder, manifest_document(tiny_models, shop, uri), "v1.yaml")
    return {"uri": uri, "folder": folder, "v1": manifest, "first": run(manifest)}


@pytest.mark.storage
@pytest.mark.ray
def test_the_first_run_publishes_after_compile_and_serves_from_the_published_uri(runs, cluster):
    uri = runs["uri"]
    code, summary, stderr = runs["first"]
    assert code == 0, stderr
    assert list(steps(summary)) == ["prepare", "train", "baseline:pop", "evaluate", "compile", "publish", "fetch",
                                    "serve", "sample"]  # published after compile, served after the fetch
    assert set(steps(summary).values()) == {"ran"}
    assert summary["published"] == summary["artifact"] == f"{uri}/v1" and storage.list_published(uri) == ["v1"]
    assert summary["served_version"] == "v1" and summary["sample"]["model_version"] == "v1"
    assert summary["latency"]["failed"] == 0

    work = work_root(uri)
    assert work.is_relative_to(cluster["cache"] / "runs") and (work / "v1").is_dir()  # built locally
    state = json.loads((work / ".fusionrec" / "served-shop-recs.json").read_text())
    assert state == {"current": "v1", "artifact": f"{uri}/v1", "rollouts": []}  # what the replicas were given
    fetched = [p for p in (cluster["cache"] / "artifacts").glob("*/v1") if p.is_dir()]
    assert len(fetched) == 1
    published = load_artifact(fetched[0])  # the verified copy the replicas load: compiled and evaluated
    assert {"compile.json", "comparison.json", BUILD_NAME, "model.safetensors"} <= set(published.files)
    assert "latency.json" not in published.files  # published versions are immutable: it went to the local build
    assert "latency.json" in load_artifact(work / "v1").files
    build = json.loads((fetched[0] / BUILD_NAME).read_text())
    assert build["version"] == "v1" and build["train"] == next(s["key"] for s in summary["steps"]
                                                               if s["name"] == "train")

    # The credentials appear in no output and in no file the run wrote.
    secrets = [cluster["env"]["AWS_SECRET_ACCESS_KEY"], cluster["env"]["AWS_ACCESS_KEY_ID"]]
    assert not any(s in stderr + json.dumps(summary) for s in secrets)
    for path in [*work.rglob("*"), *fetched[0].rglob("*")]:
        if path.is_file() and path.stat().st_size < 5_000_000:
            data = path.read_bytes()
            assert not any(s.encode() in data for s in secrets), path


@pytest.mark.storage
@pytest.mark.ray
def test_the_same_manifest_again_builds_nothing_and_no_cache_cannot_rebuild_it(runs):
    assert runs["first"][0] == 0
    code, summary, stderr = run(runs["v1"], "--no-serve")
    assert code == 0, stderr
    assert {name: status for name, status in steps(summary).items() if name != "prepare"} == {
        "train": "cached", "evaluate": "cached", "compile": "cached", "publish": "cached"}
    assert summary["quality"] == runs["first"][1]["quality"]  # read back from the published comparison.json
    code, summary, stderr = run(runs["v1"], "--no-serve", "--no-cache")
    assert code == 2 and summary["steps"] == [] and "--no-cache" in stderr and "already published" in stderr


@pytest.mark.storage
@pytest.mark.ray
def test_an_empty_work_folder_serves_the_published_version_without_training(runs, tmp_path):
    """A fresh machine: no local build, no step cache. Nothing is trained; the replicas can only have loaded the
    version from its published URI."""
    assert runs["first"][0] == 0
    fresh = tmp_path / "fresh"
    code, summary, stderr = run(runs["v1"], "--work-dir", str(fresh))
    assert code == 0, stderr
    assert steps(summary)["train"] == "cached" and "published at" in next(
        s["detail"] for s in summary["steps"] if s["name"] == "train")
    assert steps(summary)["serve"] == "ran" and summary["sample"]["model_version"] == "v1"
    assert not (fresh / "v1").exists() and not (fresh / "_training").exists()  # nothing built here


@pytest.mark.storage
@pytest.mark.ray
def test_changed_training_under_a_published_version_is_refused(runs, tiny_models, shop):
    assert runs["first"][0] == 0
    document = manifest_document(tiny_models, shop, runs["uri"], learning_rate=5e-3)
    code, summary, stderr = run(write_manifest(runs["folder"], document, "v1-changed.yaml"), "--no-serve")
    assert code == 2, stderr
    assert "already published" in stderr and "other training inputs" in stderr and "bump spec.version" in stderr
    assert "train" not in steps(summary)


@pytest.mark.storage
@pytest.mark.ray
def test_a_new_version_rolls_out_from_its_published_uri(runs, tiny_models, shop):
    assert runs["first"][0] == 0
    document = manifest_document(tiny_models, shop, runs["uri"], version="v2", learning_rate=3e-3)
    code, summary, stderr = run(write_manifest(runs["folder"], document, "v2.yaml"))
    assert code == 0, stderr
    assert steps(summary)["train"] == "ran" and steps(summary)["publish"] == "ran"
    assert summary["rollout"]["outcome"] == "Promoted" and summary["served_version"] == "v2"
    assert storage.list_published(runs["uri"]) == ["v1", "v2"]
    state = json.loads((work_root(runs["uri"]) / ".fusionrec" / "served-shop-recs.json").read_text())
    assert state["current"] == "v2" and state["artifact"] == f"{runs['uri']}/v2"


@pytest.mark.storage
@pytest.mark.ray
def test_a_version_whose_upload_never_finished_is_never_served(runs, tiny_models, shop, monkeypatch):
    assert runs["first"][0] == 0
    document = manifest_document(tiny_models, shop, runs["uri"], version="v3", learning_rate=2e-3)
    manifest = write_manifest(runs["folder"], document, "v3.yaml")

    def lost_connection(*_args, **_kwargs):
        raise storage.StorageError("writing the marker: connection reset")

    with monkeypatch.context() as patch:
        patch.setattr(storage, "_write_marker", lost_connection)  # every object uploaded, the marker never
        code, summary, stderr = run(manifest)
    assert code == 1 and "error: object storage: writing the marker" in stderr, stderr
    assert steps(summary)["publish"] == "failed" and not {"fetch", "serve", "sample"} & set(steps(summary))
    version = storage.resolve(f"{runs['uri']}/v3")
    assert version.filesystem.get_file_info(version.child("model.safetensors").path).size > 0  # half there
    assert not storage.is_published(version) and "v3" not in storage.list_published(runs["uri"])
    state = json.loads((work_root(runs["uri"]) / ".fusionrec" / "served-shop-recs.json").read_text())
    assert state["current"] != "v3"

    # Running again does not take the half-uploaded prefix for a version: it publishes from the cached build.
    code, summary, stderr = run(manifest, "--no-serve")
    assert code == 0, stderr
    assert steps(summary)["train"] == "cached" and steps(summary)["publish"] == "ran"
    assert storage.is_published(version)
    assert load_artifact(storage.fetch_folder(version.uri, runs["folder"] / "check")).version == "v3"
