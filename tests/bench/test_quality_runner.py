"""bench/quality.py's runner: the protocol's default rows, and `--jobs 2` giving exactly `--jobs 1`'s numbers
(each run seeds itself, so its process and queue position must not matter)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

_SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "quality.py"
_spec = importlib.util.spec_from_file_location("_fusionrec_bench_quality", _SCRIPT)
bench = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = bench  # its dataclasses look their module up while the class is built
_spec.loader.exec_module(bench)


def test_ablations_are_out_of_the_default_run_but_every_target_group_is_in() -> None:
    protocol = {e.group for e in bench.EXPERIMENTS if not e.ablation}
    assert protocol == {"single", "fused", "hybrid", "ctr"}
    assert {e.name for e in bench.EXPERIMENTS if e.ablation} >= {"hybrid-gating", "ctr-hybrid-attention"}


def test_fingerprint_ignores_the_ablation_flag() -> None:
    """Moving a row between the protocol and the ablations must not invalidate its stored runs."""
    row = bench.EXPERIMENTS[0]
    flipped = bench.Experiment(**{**row.__dict__, "ablation": not row.ablation})
    assert flipped.fingerprint() == row.fingerprint()


def _run(out: Path, jobs: int) -> list[tuple]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}
    subprocess.run([sys.executable, str(_SCRIPT), "--only", "pop,lr,bpr", "--max-users", "40", "--seeds",
                    "2020,2021", "--jobs", str(jobs), "--out", str(out)], check=True, env=env,
                   capture_output=True, timeout=600)
    runs = json.loads(out.with_suffix(".json").read_text())["runs"]
    return sorted((r["baseline"], r["seed"], json.dumps(r["valid"], sort_keys=True),
                   json.dumps(r["test"], sort_keys=True)) for r in runs)


@pytest.mark.integration
def test_parallel_runs_give_the_sequential_numbers(tmp_path: Path) -> None:
    sequential = _run(tmp_path / "one", jobs=1)
    parallel = _run(tmp_path / "two", jobs=2)
    assert len(sequential) == 6
    assert parallel == sequential


def _script(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}
    return subprocess.run([sys.executable, str(_SCRIPT), "--max-users", "40", *args], env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.integration
def test_merge_brings_in_runs_made_elsewhere_and_refuses_other_settings(tmp_path: Path) -> None:
    here, elsewhere, other = tmp_path / "here", tmp_path / "elsewhere", tmp_path / "other"
    assert _script("--only", "pop", "--seeds", "2020", "--out", str(here)).returncode == 0
    assert _script("--only", "pop", "--seeds", "2020,2021", "--out", str(elsewhere)).returncode == 0
    merged = _script("--only", "pop", "--seeds", "2020", "--out", str(here), "--merge",
                     str(elsewhere.with_suffix(".json")))
    assert merged.returncode == 0, merged.stderr
    payload = json.loads(here.with_suffix(".json").read_text())
    # 2020 was already here (kept, not doubled); 2021 came from elsewhere, with the command that made it
    assert sorted((r["baseline"], r["seed"]) for r in payload["runs"]) == [("pop", 2020), ("pop", 2021)]
    assert any("--out " + str(elsewhere) in c for c in payload["commands"])
    assert payload["commands"][-1].startswith("python bench/quality.py --max-users 40 --only pop")
    assert "2021" in here.with_suffix(".md").read_text()

    assert _script("--only", "pop", "--seeds", "2020", "--out", str(other), "--max-users", "50").returncode == 0
    refused = _script("--only", "pop", "--seeds", "2020", "--out", str(here), "--merge",
                      str(other.with_suffix(".json")))
    assert refused.returncode == 2
    assert "settings differ" in refused.stderr
    assert len(json.loads(here.with_suffix(".json").read_text())["runs"]) == 2  # nothing written
