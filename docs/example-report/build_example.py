"""Builds the artifact behind docs/example-report/ and reports it: every number in the example is measured
here, on the machine that runs this script, nothing is copied in.

1. Train the manifest's fused model (MiniLM-L6 + SmolLM2-135M, frozen, attention fusion) with
   `fusionrec.train.job.train_and_evaluate`, and the same spec with each encoder alone.
2. Fit the popularity, BPR and SASRec baselines (`fusionrec.train.evaluate.run_baseline`) on the same
   leave-one-out split, with the same seed.
3. Time `VersionEngine.recommend` in process (no HTTP): each request names a different user, so each one
   runs the user tower (no cache hit) and a top-10 over the catalogue.
4. Add comparison.json and latency.json to the artifact (`fusionrec.artifact.add_files`) and write the
   report with `fusionrec.report.write_report`.

    nice python docs/example-report/build_example.py --manifest /tmp/fusionrec-example/movielens-small.yaml \\
        --root /tmp/fusionrec-example --out docs/example-report

Finished trainings are reused on a re-run (delete --root to start over).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from fusionrec.artifact import add_files, load_artifact
from fusionrec.data import load_dataset
from fusionrec.data.splits import leave_one_out
from fusionrec.model.saved import USERS_NAME
from fusionrec.report import write_report
from fusionrec.serving.engine import VersionEngine
from fusionrec.serving.scorer import VersionScorer
from fusionrec.spec import FusionRecommenderSpec, load_manifest
from fusionrec.train.evaluate import run_baseline
from fusionrec.train.job import train_and_evaluate

log = logging.getLogger("example-report")
BASELINES = ("pop", "bpr", "sasrec")


def train(spec: FusionRecommenderSpec, root: Path) -> Path:
    """The artifact of `spec` under root, trained now unless a finished one is there."""
    path = root / spec.version
    if (path / "MANIFEST.json").is_file():
        log.info("reusing %s", path)
        return path
    return train_and_evaluate(spec, root)


def comparison_rows(fused: Path, singles: dict[str, Path], spec: FusionRecommenderSpec) -> list[dict[str, Any]]:
    def row(model: str, group: str, metrics: dict[str, Any]) -> dict[str, Any]:
        return {"model": model, "group": group, "valid": metrics["valid"], "test": metrics["test"],
                "seconds": round(metrics["seconds"], 1)}

    rows = [row(f"fused {spec.fusion.method} ({' + '.join(e.name for e in spec.encoders)})", "fused",
                load_artifact(fused).metrics)]
    rows += [row(name, "single", load_artifact(path).metrics) for name, path in singles.items()]
    dataset = load_dataset(spec.data)
    split = leave_one_out(dataset)
    for name in BASELINES:
        started = time.perf_counter()
        run = run_baseline(name, dataset, spec.training.seed, split)
        rows.append({"model": name, "group": "baseline", "valid": run.valid, "test": run.test,
                     "seconds": round(time.perf_counter() - started, 1)})
    return rows


def time_recommend(artifact: Path, requests: int) -> dict[str, Any]:
    """Latency of `requests` recommend calls for distinct users, after 5 warm-up calls (not recorded)."""
    scorer = VersionScorer.load(artifact)
    engine = VersionEngine(scorer)
    users = pd.read_parquet(artifact / USERS_NAME)["user_id"].astype(str).tolist()
    if len(users) < requests + 5:
        raise ValueError(f"need {requests + 5} users to time {requests} cache misses, the artifact has {len(users)}")

    async def run() -> list[float]:
        for user in users[-5:]:
            await engine.recommend({"user_id": user, "k": 10})
        latencies = []
        for user in users[:requests]:
            started = time.perf_counter()
            answer = await engine.recommend({"user_id": user, "k": 10, "exclude_seen": True})
            latencies.append((time.perf_counter() - started) * 1000)
            if "error" in answer or len(answer["items"]) != 10:
                raise RuntimeError(f"recommend for {user} failed: {answer}")
        return latencies

    latencies = asyncio.run(run())
    return {"requests": requests, "latencies_ms": [round(v, 4) for v in latencies],
            "endpoint": "VersionEngine.recommend (in process, no HTTP)",
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "what": (f"{requests} recommend calls (k=10, seen items excluded), each for a different user, so "
                     f"every call ran the user tower (no cache hit) and a top-10 over {scorer.n_items} items; "
                     f"one request at a time, {torch.get_num_threads()} torch thread(s), a shared 2-core CPU; "
                     "5 warm-up calls not recorded")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--root", type=Path, required=True, help="Folder for the artifacts (not committed).")
    parser.add_argument("--out", type=Path, default=Path("docs/example-report"))
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(1)

    spec = load_manifest(args.manifest).spec
    fused = train(spec, args.root / "runs")
    singles = {}
    for encoder in spec.encoders:
        alone = spec.model_copy(update={"version": f"{spec.version}-{encoder.name}", "encoders": [encoder]})
        singles[encoder.name] = train(FusionRecommenderSpec.model_validate(alone.model_dump()),
                                      args.root / "singles")
    comparison = {
        "task": spec.task.type, "split": "chronological leave-one-out (design.md section 4), full ranking",
        "source": (f"measured by docs/example-report/build_example.py: every row fitted on the same split with seed "
                   f"{spec.training.seed} (one seed); means over 3 seeds are in bench/results/quality-ml100k.md"),
        "rows": comparison_rows(fused, singles, spec)}
    latency = time_recommend(fused, args.requests)
    add_files(fused, {"comparison.json": json.dumps(comparison, indent=2).encode(),
                      "latency.json": json.dumps(latency).encode()}, replace=True)
    index = write_report(fused, args.out)
    print(f"wrote {index}")


if __name__ == "__main__":
    main()
