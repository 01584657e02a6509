"""`evaluation.select`: the shipped model never loses to its parts (issue 18).

With `select: best` the training job fits, besides the fused model, each encoder alone (the run's spec with one
encoder: same fusion dim, task, data, seed, split and training) and ships whichever validates best on
`training.earlyStopping.metric`, recording every candidate in metrics.json's "selection". The selection lives in
the training job, not the local runner, so `fusionrec run` and the operator's RayJob (`python -m fusionrec.train`)
ship the same model from the same manifest; the runner only reads the candidates back.

This module builds no model and imports no Ray: the runner keys its steps with `single_encoder_spec` and reads
rows with `candidate_row` before any model is built.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fusionrec.metrics import parse_metric, selection_value
from fusionrec.spec import EncoderSpec, FusionRecommenderSpec

if TYPE_CHECKING:
    from fusionrec.train.evaluate import Evaluated

# What each task is evaluated on, as `fusionrec.train.loop.selection_metric` names it.
NEEDS = {"ranking": "ranks", "ctr": "labels", "rating": "ratings"}
FUSED, SINGLE = "fused", "single"


def single_encoder_spec(spec: FusionRecommenderSpec, encoder: EncoderSpec) -> FusionRecommenderSpec:
    """The same model with one encoder: same fusion dim, task, data and training, so the only difference from
    the fused run is the set of language models."""
    return spec.model_copy(update={"encoders": [encoder], "merge": None}, deep=True)


def fused_name(spec: FusionRecommenderSpec) -> str:
    """The fused model's row name in every comparison ("fused-attention")."""
    return f"fused-{spec.fusion.method}"


def selects_best(spec: FusionRecommenderSpec) -> bool:
    """Whether the job fits the singles and ships the best: `select: best` and at least two encoders (with one
    encoder the "single" is the fused model itself)."""
    return spec.evaluation.select == "best" and len(spec.encoders) >= 2


def shipped_spec(spec: FusionRecommenderSpec, shipped: str | None, group: str | None) -> FusionRecommenderSpec:
    """The spec of the model that shipped: the run's own spec for the fused model (or no selection), else the
    named encoder's single-encoder spec. The group decides, not the name: an encoder may be called
    "fused-attention"."""
    if group != SINGLE:
        return spec
    for encoder in spec.encoders:
        if shipped == encoder.name:
            return single_encoder_spec(spec, encoder)
    raise ValueError(f"the shipped single {shipped!r} is none of the encoders {[e.name for e in spec.encoders]}")


def selection_metric_of(spec: FusionRecommenderSpec) -> tuple[str, bool]:
    """(validation metric that selects, higher is better): `training.earlyStopping.metric` for this task."""
    from fusionrec.train.loop import selection_metric

    metric = selection_metric(spec.training, NEEDS[spec.task.type])
    return metric, parse_metric(metric)[0].higher_is_better


def candidate_row(model: str, group: str, done: Evaluated) -> dict[str, Any]:
    """A candidate as metrics.json's selection and comparison.json's rows record it; `seconds` is the total
    (setup + train), kept for readers that know only that key."""
    return {"model": model, "group": group, "valid": dict(done.fit.best_valid), "test": dict(done.test),
            "best_epoch": done.fit.best_epoch, "seconds": round(done.seconds, 2),
            "setup_seconds": round(done.setup_seconds, 2), "train_seconds": round(done.train_seconds, 2)}


def score(row: Mapping[str, Any], metric: str, higher_is_better: bool) -> float:
    """A row's validation value as a number to maximise (`fusionrec.metrics.selection_value`)."""
    return selection_value(row.get("valid", {}).get(metric), higher_is_better)


def best_index(rows: Sequence[Mapping[str, Any]], metric: str, higher_is_better: bool) -> int:
    """The row that validates best; a tie goes to the earlier row (the fused model comes first)."""
    if not rows:
        raise ValueError("no candidates to select from")
    scores = [score(row, metric, higher_is_better) for row in rows]
    return scores.index(max(scores))


@contextmanager
def worker_threads(spec: FusionRecommenderSpec) -> Iterator[None]:
    """Fit with the torch threads one Ray Train worker of this spec gets (its CPUs), so the time columns compare
    like with like; on a busy machine one thread per fit also beats two fighting for the cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(spec.training.cpus_per_worker)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class Selection:
    """The shipped candidate (its spec, its fitted model's `Evaluated`) and every candidate's row."""

    spec: FusionRecommenderSpec
    done: Evaluated
    shipped: str
    rows: list[dict[str, Any]]
    metric: str
    group: str = FUSED  # of the shipped candidate

    def record(self) -> dict[str, Any]:
        """metrics.json's "selection": what was compared, on which metric, and what shipped (name and group)."""
        return {"select": "best", "metric": self.metric, "shipped": self.shipped, "shipped_group": self.group,
                "candidates": self.rows}


def select_best(spec: FusionRecommenderSpec, fused: Evaluated,
                fit_single: Callable[[FusionRecommenderSpec], Evaluated]) -> Selection:
    """Fit each encoder alone after the fused model (`fit_single` seeds, builds, fits and tests one spec) and
    keep the candidate that validates best. Only the leading model stays in memory: a loser's weights are
    dropped as soon as a better candidate is fitted."""
    metric, higher = selection_metric_of(spec)
    best = Selection(spec, fused, fused_name(spec), [candidate_row(fused_name(spec), FUSED, fused)], metric)
    leading = score(best.rows[0], metric, higher)
    for encoder in spec.encoders:
        alone = single_encoder_spec(spec, encoder)
        with worker_threads(alone):
            done = fit_single(alone)
        row = candidate_row(encoder.name, SINGLE, done)
        best.rows.append(row)
        if score(row, metric, higher) > leading:
            leading = score(row, metric, higher)
            best.spec, best.done, best.shipped, best.group = alone, done, encoder.name, SINGLE
    return best
