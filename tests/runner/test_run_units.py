"""`fusionrec run` without Ray: bad input exits 2 naming the field, the step cache's keys and records, the
canary's request routing, the merged-encoder spec and the quality table."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from fusionrec.cli.main import cli
from fusionrec.protocol import quality_table
from fusionrec.runner.build import train_parts
from fusionrec.runner.cache import FolderHasher, Record, StepCache, step_key
from fusionrec.runner.inputs import trained_parts, with_merged_encoder
from fusionrec.runner.local_rollout import MIN_CANDIDATE_REQUESTS, keyed_requests
from fusionrec.runner.local_serve import Version
from fusionrec.runner.steps import Done, RunContext, run_step
from fusionrec.serving.routing import TrafficSplit, request_key
from fusionrec.spec import FusionRecommenderSpec, Manifest
from fusionrec.train.candidates import single_encoder_spec

from runkit import manifest_document, write_manifest


def invoke(*args: str):
    return CliRunner().invoke(cli, ["run", *args])


# --- exit code 2 for bad input ----------------------------------------------------------------------------


def test_bad_manifest_field_exits_2_naming_it(tiny_models, shop, tmp_path):
    document = manifest_document(tiny_models, shop, tmp_path / "runs")
    document["spec"]["training"]["epochs"] = 0
    document["spec"]["serving"]["maxBatchSise"] = 8  # misspelt
    result = invoke(str(write_manifest(tmp_path, document)), "--no-serve")
    assert result.exit_code == 2, result.output
    assert "spec.training.epochs" in result.stderr and "greater than or equal to 1" in result.stderr
    assert "spec.serving.maxBatchSise: unknown field" in result.stderr
    assert not (tmp_path / "runs").exists(), "nothing may be written for an invalid manifest"


def test_baseline_that_does_not_suit_the_task_exits_2(tiny_models, shop, tmp_path):
    document = manifest_document(tiny_models, shop, tmp_path / "runs", baselines=["lr"])
    result = invoke(str(write_manifest(tmp_path, document)), "--no-serve")
    assert result.exit_code == 2, result.output
    assert "spec.evaluation.baselines" in result.stderr and "'lr' is a ctr model" in result.stderr


def test_missing_data_file_and_remote_output_exit_2(tiny_models, shop, tmp_path):
    document = manifest_document(tiny_models, {**shop, "interactions": "nope.csv"}, tmp_path / "runs")
    result = invoke(str(write_manifest(tmp_path, document)), "--no-serve", "--json")
    assert result.exit_code == 2 and "nope.csv does not exist" in result.stderr
    summary = json.loads(result.stdout)  # --json still prints the summary of a failed run
    assert summary["steps"] == [] and "nope.csv" in summary["error"]
    result = invoke(str(write_manifest(tmp_path, manifest_document(tiny_models, shop, tmp_path))),
                    "--output", "ftp://host/runs", "--no-serve")
    assert result.exit_code == 2 and "not a storage location" in result.stderr


def test_serving_without_auth_off_loopback_exits_2_before_any_work(tiny_models, shop, tmp_path):
    """Issue 17, item 6: `--no-auth` (or serving.auth.disabled) on a non-loopback host is refused, naming the
    option and the fix, before data is prepared or Ray is started."""
    document = manifest_document(tiny_models, shop, tmp_path / "runs")
    result = invoke(str(write_manifest(tmp_path, document)), "--host", "0.0.0.0", "--no-auth")
    assert result.exit_code == 2, result.output
    assert "--no-auth" in result.stderr and "--host 127.0.0.1" in result.stderr
    document["spec"]["serving"]["auth"] = {"disabled": True}
    result = invoke(str(write_manifest(tmp_path, document)), "--host", "0.0.0.0")
    assert result.exit_code == 2 and "serving.auth.disabled" in result.stderr
    assert not (tmp_path / "runs" / "v1").exists()


def test_the_runs_own_requests_carry_the_generated_token(tiny_models, shop, tmp_path, monkeypatch):
    from fusionrec.runner import Runner, RunOptions
    from fusionrec.runner.local_serve import app_args, bearer_headers
    from fusionrec.serving.config import parse_args
    from fusionrec.serving.local_auth import read_token

    monkeypatch.setenv("FUSIONREC_CONFIG_DIR", str(tmp_path / "config"))
    manifest = Manifest.model_validate(manifest_document(tiny_models, shop, tmp_path / "runs"))
    said: list[str] = []
    serving = Runner(manifest, RunOptions(), say=said.append)._local_serving()
    token = read_token()
    assert token and serving.auth.token_file == str(tmp_path / "config" / "serving-token")
    assert bearer_headers(serving) == {"Authorization": f"Bearer {token}"}
    args = parse_args(app_args("shop-recs", [Version("v1", tmp_path)], {"v1": 100}, serving))
    assert args.serving.auth.token_file == serving.auth.token_file  # the app requires what the client sends
    assert any(str(tmp_path / "config") in line for line in said) and not any(token in line for line in said)
    opened = Runner(manifest, RunOptions(no_auth=True), say=said.append)._local_serving()
    assert opened.auth.disabled and bearer_headers(opened) == {} and "warning: auth is off" in said[-1]


def test_missing_manifest_exits_2(tmp_path):
    result = invoke(str(tmp_path / "absent.yaml"))
    assert result.exit_code == 2 and "does not exist" in result.stderr


# --- keys and records -------------------------------------------------------------------------------------


def _spec(tiny_models, shop, tmp_path, **changes) -> FusionRecommenderSpec:
    document = manifest_document(tiny_models, shop, tmp_path)
    for section, values in changes.items():
        document["spec"][section].update(values)
    return FusionRecommenderSpec.model_validate(document["spec"])


def test_train_key_follows_training_fields_not_serving_or_version(tiny_models, shop, tmp_path):
    sources = {"bert": "hash-b", "llama": "hash-l"}

    def key(spec: FusionRecommenderSpec, sources=sources) -> str:
        return step_key("train", trained_parts(spec, sources), {"data": "d"})

    base = _spec(tiny_models, shop, tmp_path)
    assert key(base) == key(_spec(tiny_models, shop, tmp_path, serving={"maxBatchSize": 8},
                                  rollout={"steps": [100]}))
    assert key(base) == key(base.model_copy(update={"version": "v9"}))
    assert key(base) != key(_spec(tiny_models, shop, tmp_path, training={"learningRate": 0.5}))
    assert key(base) != key(base, {"bert": "other-weights", "llama": "hash-l"})
    moved = base.model_copy(update={"encoders": [e.model_copy(update={"source": "/elsewhere"})
                                                 for e in base.encoders]})
    assert key(base) == key(moved), "the key depends on the models' content, not their paths"
    alone = single_encoder_spec(base, base.encoders[0])
    assert [e.name for e in alone.encoders] == ["bert"] and alone.fusion == base.fusion
    assert alone.training == base.training

    # The train step's key: `select: best` (which may ship a single) retrains; the default keeps old keys.
    def train_key(spec: FusionRecommenderSpec) -> str:
        return step_key("train", train_parts(spec, sources), {"data": "d"})

    assert train_key(base) == key(base)
    best = _spec(tiny_models, shop, tmp_path, evaluation={"select": "best"})
    assert train_key(best) != train_key(base)
    assert train_key(single_encoder_spec(best, best.encoders[0])) == key(single_encoder_spec(best, best.encoders[0]))


def test_cache_records_are_checked(tmp_path):
    cache = StepCache(tmp_path)
    cache.store(Record("baseline:pop", "k1", {"test": {"hr@10": 0.5}}, 1.5))
    assert cache.load("baseline:pop", "k1").output == {"test": {"hr@10": 0.5}}
    assert cache.load("baseline:pop", "k2") is None
    path = cache.path("baseline:pop", "k1")
    document = json.loads(path.read_text())
    document["output"]["test"]["hr@10"] = 0.9  # edited by hand: no longer what the step produced
    path.write_text(json.dumps(document))
    assert cache.load("baseline:pop", "k1") is None
    assert StepCache(tmp_path, enabled=False).load("baseline:pop", "k1") is None


def test_folder_hash_follows_content_not_location(tmp_path):
    hasher = FolderHasher(tmp_path / "memo.json")
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text('{"a": 1}')
    (folder / "weights.bin").write_bytes(b"\x00" * 64)
    first = hasher.folder(folder)
    moved = tmp_path / "moved"
    folder.rename(moved)
    assert hasher.folder(moved) == first
    time.sleep(0.01)
    (moved / "weights.bin").write_bytes(b"\x01" * 64)  # same size, new content (and a new mtime)
    assert hasher.folder(moved) != first
    hasher.save()
    assert FolderHasher(tmp_path / "memo.json").folder(moved) == hasher.folder(moved)


def test_a_step_whose_output_is_gone_runs_again(tiny_models, shop, tmp_path):
    manifest = Manifest.model_validate(manifest_document(tiny_models, shop, tmp_path))
    ctx = RunContext(manifest, tmp_path, StepCache(tmp_path), FolderHasher(None), tmp_path / "emb", lambda _: None)
    out = tmp_path / "out.txt"
    calls = []

    def work() -> Done:
        calls.append(1)
        out.write_text("result")
        return Done({"path": str(out)})

    def verify(record: Record) -> bool:
        return Path(record.output["path"]).is_file()

    for _ in range(2):
        run_step(ctx, "demo", "key-1", work, verify)
    assert len(calls) == 1 and [s.status for s in ctx.steps] == ["ran", "cached"]
    out.unlink()
    run_step(ctx, "demo", "key-1", work, verify)
    assert len(calls) == 2 and ctx.steps[-1].status == "ran"
    with pytest.raises(RuntimeError):
        run_step(ctx, "demo", "key-2", lambda: (_ for _ in ()).throw(RuntimeError("boom")))
    assert ctx.steps[-1].status == "failed" and "boom" in ctx.steps[-1].detail


def test_merge_step_is_cached_and_puts_the_merged_model_in_place(tiny_models, shop, tmp_path):
    from fusionrec.runner import build

    document = manifest_document(tiny_models, shop, tmp_path)
    document["spec"]["merge"] = {"method": "linear", "name": "bert",
                                 "models": [{"source": "bert", "weight": 1.0},
                                            {"source": str(tiny_models["bert"]), "weight": 1.0}]}
    manifest = Manifest.model_validate(document)
    ctx = RunContext(manifest, tmp_path, StepCache(tmp_path), FolderHasher(None), tmp_path / "emb", lambda _: None)
    folder, digest = build.merge(ctx)
    assert (folder / "model.safetensors").is_file() and (folder / "merge_report.json").is_file()
    assert build.merge(ctx) == (folder, digest) and [s.status for s in ctx.steps] == ["ran", "cached"]
    trained = with_merged_encoder(manifest.spec, folder)
    assert [(e.name, e.source) for e in trained.encoders] == [("bert", str(folder)),
                                                                ("llama", str(tiny_models["llama"]))]
    elsewhere = manifest.spec.model_copy(update={"merge": manifest.spec.merge.model_copy(update={"name": "soup"})})
    added = with_merged_encoder(elsewhere, folder).encoders
    assert [e.name for e in added] == ["bert", "llama", "soup"] and added[2].pooling == "mean"


# --- the canary's traffic -----------------------------------------------------------------------------------


def test_check_requests_land_on_the_version_the_router_picks(tmp_path):
    pd.DataFrame({"user_id": ["u1", "u2"]}).to_parquet(tmp_path / "users.parquet")
    pd.DataFrame({"item_id": [f"i{i}" for i in range(40)]}).to_parquet(tmp_path / "items.parquet")
    candidate = Version("v2", tmp_path)
    weights = {"v1": 90, "v2": 10}
    requests = keyed_requests(weights, candidate, 40, seed=0)
    split = TrafficSplit(weights)
    assert all(split.pick(request_key(None, body["history"])) == version for version, body in requests)
    on_candidate = sum(version == "v2" for version, _ in requests)
    assert on_candidate >= MIN_CANDIDATE_REQUESTS and len(requests) == 40
    assert len({tuple(body["history"]) for _, body in requests}) == len(requests), "distinct requests"
    at_zero = keyed_requests({"v1": 100, "v2": 0}, candidate, 10, seed=0)
    assert {version for version, _ in at_zero} == {"v1"}


def test_quality_table_lists_fused_singles_and_baselines():
    comparison = {"task": "ranking", "split": "leave-one-out", "seed": 7, "shipped": "fused-attention", "rows": [
        {"model": "fused-attention", "group": "fused", "valid": {"ndcg@10": 0.2}, "seconds": 3.0,
         "setup_seconds": 2.25, "train_seconds": 0.75, "test": {"hr@10": 0.4, "ndcg@10": 0.25, "mrr@10": 0.2}},
        {"model": "bert", "group": "single", "valid": {"ndcg@10": 0.1}, "seconds": 1.0,
         "setup_seconds": 0.5, "train_seconds": 0.5, "test": {"hr@10": 0.3, "ndcg@10": 0.15, "mrr@10": 0.1}},
        {"model": "pop", "group": "baseline", "valid": {}, "seconds": 0.0,  # a row from before the time split
         "test": {"hr@10": 0.1, "ndcg@10": 0.05, "mrr@10": 0.02}}]}
    lines = quality_table(comparison).splitlines()
    assert lines[0] == "quality (ranking, leave-one-out, seed 7):"
    assert lines[1].split()[:4] == ["model", "group", "valid", "ndcg@10"]
    assert lines[1].split()[-4:] == ["setup", "s", "train", "s"]
    assert lines[2].split() == ["fused-attention", "(shipped)", "fused", "0.2000", "0.4000", "0.2500", "0.2000",
                                "2.2", "0.8"]
    assert lines[3].split()[-2:] == ["0.5", "0.5"]
    assert lines[4].split()[2] == "-" and lines[4].split()[-2:] == ["-", "-"]


def test_a_busy_port_is_a_user_error_naming_the_option():
    import socket

    from fusionrec.errors import UserError
    from fusionrec.runner.local_serve import check_port_free

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(UserError) as caught:
            check_port_free("127.0.0.1", taken.getsockname()[1])
    assert caught.value.field == "--port" and "--port 0" in caught.value.fix


def test_local_rollout_with_analysis_disabled_steps_without_checking(monkeypatch):
    """spec.rollout.analysis.enabled: false means the same locally as on a cluster: no check, time alone."""
    from pathlib import Path

    from fusionrec.runner import local_rollout
    from fusionrec.runner.local_serve import Version
    from fusionrec.spec import RolloutSpec

    def no_check(*_a, **_k):
        raise AssertionError("analysis is disabled: the loopback check must not run")

    monkeypatch.setattr(local_rollout, "check", no_check)
    monkeypatch.setattr(local_rollout, "wait_for_routing", lambda *_a, **_k: True)
    applied: list[dict[str, int]] = []
    spec = RolloutSpec.model_validate({"steps": [10, 50, 100], "analysis": {"enabled": False}})
    result = local_rollout.rollout(None, applied.append, Version("v1", Path("a")), Version("v2", Path("b")),
                                   spec, lambda _line: None)
    assert result.outcome == "Promoted"
    assert [w["v2"] for w in applied] == [10, 50, 100]
    assert all("not gated" in step["message"] for step in result.steps)
