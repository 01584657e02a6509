"""`fusionrec run` end to end on a real local Ray (one for the module, loopback only; the runner reuses a Ray
its process already runs, and leaves the application up, so the tests can query it after each run):

- a first run trains, evaluates, compiles, serves and answers over HTTP;
- the same manifest again skips every step;
- a new version with a changed training field retrains and rolls out through the canary (weights recorded);
- a version that fails its canary check (an impossible p99 limit) is rolled back, exit code 3;
- `evaluation.select: best` ships the candidate that validates best, and the evaluate step reuses the training
  job's candidates instead of fitting the singles again.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

pytest.importorskip("ray.serve")

from fusionrec.artifact import load_artifact
from fusionrec.serving.local_auth import read_token

from runkit import manifest_document, write_manifest
from testkit import local_serve_cluster
from testkit import run_json as run
from testkit import step_statuses as steps

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    yield from local_serve_cluster(tmp_path_factory, "frr-")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("workspace")


def ask(url: str, user: str) -> dict:
    """A recommendation with the token `fusionrec run` generated (auth is on by default)."""
    response = httpx.post(f"{url}/v1/recommend", json={"user_id": user, "k": 5}, timeout=60.0,
                          headers={"Authorization": f"Bearer {read_token()}"})
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module")
def first_run(cluster, tiny_models, shop, workspace):
    manifest = write_manifest(workspace, manifest_document(tiny_models, shop, workspace / "runs"))
    return manifest, run(manifest)


@pytest.fixture(scope="module")
def second_version(first_run, tiny_models, shop, workspace):
    """v2: a changed training field (learning rate), rolled out against the served v1."""
    document = manifest_document(tiny_models, shop, workspace / "runs", version="v2", learning_rate=3e-3)
    return run(write_manifest(workspace, document))


def test_first_run_trains_evaluates_compiles_and_serves_over_http(first_run, cluster, workspace):
    _, (code, summary, stderr) = first_run
    assert code == 0, stderr
    assert steps(summary) == {"prepare": "ran", "train": "ran", "single:bert": "ran", "single:llama": "ran",
                              "baseline:pop": "ran", "evaluate": "ran", "compile": "ran", "serve": "ran",
                              "sample": "ran"}
    assert summary["endpoint"] == cluster.url and summary["served_version"] == "v1"
    sample = summary["sample"]
    assert sample["model_version"] == "v1" and len(sample["items"]) == 5 and sample["items"][0]["title"]
    answer = ask(cluster.url, "u3")  # the application is still up: this Ray belongs to the test
    # Auth is on although the manifest names no token: the run generated one (issue 17, item 6).
    assert "serving-token" in stderr and read_token() not in stderr + json.dumps(summary)
    refused = httpx.post(f"{cluster.url}/v1/recommend", json={"user_id": "u3", "k": 5}, timeout=60.0)
    assert refused.status_code == 401
    assert answer["model_version"] == "v1" and len(answer["items"]) == 5
    artifact = load_artifact(workspace / "runs" / "v1")  # every added file is in a valid manifest
    comparison = json.loads((artifact.path / "comparison.json").read_text())
    assert [(r["model"], r["group"]) for r in comparison["rows"]] == [
        ("fused-attention", "fused"), ("bert", "single"), ("llama", "single"), ("pop", "baseline")]
    assert comparison["task"] == "ranking" and all("ndcg@10" in r["test"] for r in comparison["rows"])
    assert comparison["select"] == "fused" and comparison["shipped"] == "fused-attention"
    assert isinstance(comparison["fused_beats_members"], bool)
    for row in comparison["rows"][:3]:  # fused and singles: setup (building) apart from training
        assert row["setup_seconds"] >= 0 and row["train_seconds"] > 0
    latency = json.loads((artifact.path / "latency.json").read_text())
    assert latency["requests"] == 50 == len(latency["latencies_ms"]) and latency["endpoint"] == "/v1/recommend"
    assert {"encoder.onnx", "compile.json"} & set(artifact.files) == {"compile.json"}  # torch backend: no ONNX


def test_same_manifest_again_skips_every_step(first_run):
    manifest, (first_code, first, _) = first_run
    assert first_code == 0
    code, summary, _ = run(manifest, "--no-serve")
    assert code == 0 and set(steps(summary).values()) == {"cached"}
    assert list(steps(summary)) == ["prepare", "train", "single:bert", "single:llama", "baseline:pop", "evaluate",
                                    "compile"]
    assert summary["quality"] == first["quality"] and summary["endpoint"] is None


def test_new_version_with_changed_training_retrains_and_rolls_out(second_version, first_run, cluster, workspace):
    _, (_, first, _) = first_run
    code, summary, stderr = second_version
    assert code == 0, stderr
    status = steps(summary)
    assert status["train"] == "ran" and status["single:bert"] == "ran", "a training field changed"
    assert status["prepare"] == "cached" and status["baseline:pop"] == "cached", "the data did not change"
    keys = {s["name"]: s["key"] for s in summary["steps"]}
    assert keys["train"] != {s["name"]: s["key"] for s in first["steps"]}["train"]
    rollout = summary["rollout"]
    assert (rollout["from"], rollout["to"], rollout["outcome"]) == ("v1", "v2", "Promoted")
    assert [step["weights"] for step in rollout["steps"]] == [{"v1": 50, "v2": 50}]
    assert rollout["steps"][0]["verdict"] == "Pass" and rollout["steps"][0]["candidate_requests"] >= 10
    assert rollout["final_weights"] == {"v1": 0, "v2": 100}
    assert ask(cluster.url, "u3")["model_version"] == "v2"
    served = json.loads((workspace / "runs" / ".fusionrec" / "served-shop-recs.json").read_text())
    assert served["current"] == "v2"


def test_failing_new_version_is_rolled_back(second_version, tiny_models, shop, cluster, workspace):
    assert second_version[0] == 0
    # Same training as v2 (only the version and the rollout's limit differ), so its weights are reused; no
    # replica can answer within a microsecond, so the first canary step fails.
    document = manifest_document(tiny_models, shop, workspace / "runs", version="v3", learning_rate=3e-3,
                                 max_p99_ms=0.001)
    code, summary, stderr = run(write_manifest(workspace, document))
    assert code == 3, stderr
    status = steps(summary)
    assert status["train"] == "cached" and "same training as v2" in stderr
    assert status["rollout"] == "failed" and status["sample"] == "ran"
    rollout = summary["rollout"]
    assert rollout["outcome"] == "RolledBack" and rollout["final_weights"] == {"v2": 100, "v3": 0}
    assert rollout["steps"][0]["verdict"] == "Fail" and "maxP99LatencyMs" in rollout["steps"][0]["message"]
    assert summary["served_version"] == "v2" and ask(cluster.url, "u5")["model_version"] == "v2"
    served = json.loads((workspace / "runs" / ".fusionrec" / "served-shop-recs.json").read_text())
    assert served["current"] == "v2" and served["rollouts"][-1]["outcome"] == "RolledBack"


def test_select_best_ships_the_best_candidate_without_fitting_singles_twice(first_run, tiny_models, shop,
                                                                            workspace):
    document = manifest_document(tiny_models, shop, workspace / "runs", version="v4")
    document["spec"]["evaluation"]["select"] = "best"
    code, summary, stderr = run(write_manifest(workspace, document), "--no-serve")
    assert code == 0, stderr
    status = steps(summary)
    assert status["train"] == "ran", "select: best is part of the train step's key"
    assert not any(name.startswith("single:") for name in status), "the job's candidates are reused"
    comparison = summary["quality"]
    assert comparison["select"] == "best"
    rows = comparison["rows"]
    assert [(r["model"], r["group"]) for r in rows] == [
        ("fused-attention", "fused"), ("bert", "single"), ("llama", "single"), ("pop", "baseline")]
    best = max(rows[:3], key=lambda r: r["valid"]["ndcg@10"])
    assert comparison["shipped"] == best["model"]
    assert comparison["fused_beats_members"] == (best["model"] == "fused-attention")
    artifact = load_artifact(workspace / "runs" / "v4")
    expected = ["bert", "llama"] if best["group"] == "fused" else [best["model"]]
    assert [e.name for e in artifact.spec.encoders] == expected
    assert artifact.metrics["selection"]["shipped"] == best["model"]
    assert artifact.metrics["valid"] == pytest.approx(best["valid"])
