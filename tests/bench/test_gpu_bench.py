"""bench/gpu_bench.py on CPU with tiny models: the GPU bench gets one short run on a lent machine, so the code
it runs (the product's model build, graph, TorchRuntime, report, budget and failure handling) is exercised
here, where a Python error costs nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LABELS = {"eager fp32", "cudagraphs bf16", "cudagraphs fp16", "eager bf16", "cudagraphs fp32", "onnxruntime fp32",
          "torch.compile max-autotune-no-cudagraphs bf16"}  # the default modes, as the table names them


def _run(out: Path, *flags: str) -> subprocess.CompletedProcess:
    """The script as gpu.sh runs it (its own process: it installs a SIGALRM deadline), tiny and on CPU."""
    env = {k: v for k, v in os.environ.items() if k != "OUT"} | {"HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "bench/gpu_bench.py", "--device", "cpu", "--tiny", "--threads", "1",
                           "--out", str(out), *flags],
                          check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def _table(markdown: str) -> dict[str, list[str]]:
    """mode label -> the row's cells after the label."""
    rows = [line.split("|")[1:-1] for line in markdown.splitlines() if line.startswith("| ")]
    return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows[1:]}  # rows[0]: the header


def _modes(out: Path) -> dict[str, dict]:
    return {m["mode"]: m for m in json.loads((out / "gpu-bench.json").read_text())["modes"]}


@pytest.mark.slow
def test_tiny_cpu_run_times_the_eager_modes_and_gives_a_reason_for_every_other(tmp_path):
    proc = _run(tmp_path, "--repeats", "3", "--warmup", "1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    markdown = (tmp_path / "gpu-bench.md").read_text()
    assert markdown in proc.stdout  # the table is printed too
    table = _table(markdown)
    assert set(table) == LABELS
    for label, cells in table.items():
        ms = cells[:2]  # batch 1, batch 4
        if label.startswith("eager"):
            assert all(float(c) > 0 for c in ms), (label, cells)
        else:
            assert ms == ["-", "-"] and cells[-1].startswith("skipped: "), (label, cells)
    assert "CUDA" in table["cudagraphs bf16"][-1] and "CUDA" in table["cudagraphs fp32"][-1]
    modes = _modes(tmp_path)
    assert [b["batch"] for b in modes["eager:bf16"]["batches"]] == [1, 4]
    assert all(b["rel_err"] == 0 for b in modes["eager:fp32"]["batches"])
    # bf16 weights change the vectors a little, never a lot: a cast that did nothing or broke the model fails
    assert all(0 < b["rel_err"] < 0.05 for b in modes["eager:bf16"]["batches"])
    assert all(b["first_call_s"] is not None and b["median_ms"] >= b["min_ms"] > 0
               for b in modes["eager:bf16"]["batches"])


@pytest.mark.slow
def test_a_failing_mode_is_reported_and_the_next_mode_still_runs(tmp_path):
    proc = _run(tmp_path, "--batches", "2", "--repeats", "1", "--warmup", "0",
                "--modes", "eager:fp32,no-such-mode:fp32,eager:bf16")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    modes = _modes(tmp_path)
    assert modes["no-such-mode:fp32"]["status"] == "failed"
    assert "no-such-mode" in modes["no-such-mode:fp32"]["reason"]
    assert modes["eager:bf16"]["status"] == "ok" and modes["eager:bf16"]["batches"][0]["median_ms"] > 0


@pytest.mark.slow
def test_modes_that_do_not_fit_the_budget_are_skipped_but_the_reference_runs(tmp_path):
    proc = _run(tmp_path, "--batches", "2", "--repeats", "1", "--warmup", "0", "--modes", "eager:fp32,eager:bf16",
                "--budget", "0")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    modes = _modes(tmp_path)
    assert modes["eager:fp32"]["status"] == "ok" and modes["eager:fp32"]["batches"][0]["median_ms"] > 0
    assert modes["eager:bf16"]["status"] == "skipped" and modes["eager:bf16"]["reason"].startswith("budget")
