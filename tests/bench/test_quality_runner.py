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
