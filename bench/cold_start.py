"""Cold-start items (issue 19): the newest items, unseen in training, added live and ranked from their text.

The one thing a language-model recommender can do that an ID model cannot is rank an item nobody has interacted
with yet. This bench shows it on MovieLens-100K:

1. Items are ordered by their first interaction; the newest 20% are the cold items (every interaction with them
   is after the time cut, the first interaction of any of them). Training sees every interaction with the other
   items and none with these: they are absent from it entirely (not in the catalogue, no text, no interaction).
2. Each model trains on that (the quality bench's settings: `bench/quality.py` TRAINING, validation selects the
   epoch). Then the cold items are added the way `PUT /v1/items` adds them to a served version: rendered with the
   version's item text template and embedded by its item tower (`fusionrec.serving.live_items.ItemEmbedder`,
   the code model replicas run), appended to the catalogue.
3. Test cases: per user, the first interaction with a cold item (cold), and the last interaction of any kind
   (overall: when warm, it is the warm split's own test item, never trained on); the history is everything the
   user did before it, as a client would send it (its cold items dropped "before" the live add).
   Ranking is over the full catalogue (warm + cold), the history's items excluded. "overall before" ranks over
   the warm catalogue only (what a served version without live items can do: a cold target is a miss).

Rows: the fused model (MiniLM + MPNet + SmolLM2, attention), each LM alone, and SASRec (item IDs only: it has no
vector for an item it never saw, so it ranks the warm catalogue and can never return a cold item; serving refuses
new items for such a model with 409).

    python bench/cold_start.py [--rows fused-attention,minilm,mpnet,smollm,sasrec] [--seed 2020]

Results: bench/results/cold-start.{json,md} (rows already there are kept, so it can run in pieces).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from fusionrec.baselines.registry import get_baseline
from fusionrec.data import load_dataset
from fusionrec.data.schema import ITEM, TIME, USER, Dataset
from fusionrec.files import atomic_write_json, atomic_write_text
from fusionrec.model.fused import FusedRecommender
from fusionrec.protocol import make_split
from fusionrec.spec import DataSpec
from fusionrec.train.evaluate import baseline_training, fit_and_evaluate

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ (its helpers), never the repository root
from machine import cpu_name  # noqa: E402
from quality import ALL, EXPERIMENTS, EncoderPool  # noqa: E402

log = logging.getLogger("bench.cold_start")

RESULTS = Path(__file__).resolve().parent / "results"
COLD_SHARE = 0.2
K = 10
ROWS = ("fused-attention", "minilm", "mpnet", "smollm", "sasrec")


@dataclass(frozen=True)
class Case:
    """One test interaction after the cut: the user's earlier items (oldest first) and the target item."""

    history: tuple[str, ...]
    target: str


@dataclass(frozen=True)
class ColdSplit:
    warm: Dataset  # interactions before the cut; the catalogue without the cold items
    cold_items: pd.DataFrame  # the cold items' rows (item_id + text fields), as PUT /v1/items would send them
    cut: int  # the first timestamp of any cold item
    cold_cases: list[Case]
    overall_cases: list[Case]


def cold_split(dataset: Dataset, share: float = COLD_SHARE) -> ColdSplit:
    """The newest `share` of items (by first interaction) held out of training entirely; see the docstring."""
    frame = dataset.interactions.reset_index(drop=True)
    frame = frame.assign(_row=np.arange(len(frame)))
    first_seen = frame.groupby(ITEM)[TIME].min().sort_values(kind="stable")
    n_cold = int(round(share * len(first_seen)))
    cold = set(first_seen.index[-n_cold:].astype(str))
    cut = int(first_seen.iloc[-n_cold])
    is_cold = frame[ITEM].astype(str).isin(cold)
    assert not frame.loc[frame[TIME] < cut, ITEM].astype(str).isin(cold).any()  # first seen at or after the cut
    items = dataset.items
    warm_items = items[~items[ITEM].astype(str).isin(cold)].reset_index(drop=True)
    interactions = frame[~is_cold].drop(columns="_row").reset_index(drop=True)
    warm = Dataset(name=f"{dataset.name}-warm", interactions=interactions, items=warm_items, users=dataset.users)
    cold_cases, overall_cases = [], []
    ordered = frame.sort_values([TIME, "_row"], kind="stable")
    for _, rows in ordered.groupby(USER, sort=False):
        ids = rows[ITEM].astype(str).tolist()
        if len(ids) >= 2:  # the last interaction: the warm split's own test item when warm, never trained on
            overall_cases.append(Case(tuple(ids[:-1]), ids[-1]))
        first_cold = next((p for p, item in enumerate(ids) if item in cold), None)
        if first_cold:  # not None and not 0: a history to rank from
            cold_cases.append(Case(tuple(ids[:first_cold]), ids[first_cold]))
    cold_rows = items[items[ITEM].astype(str).isin(cold)].reset_index(drop=True)
    return ColdSplit(warm, cold_rows, cut, cold_cases, overall_cases)


# --- scoring ---------------------------------------------------------------------------------------------------


def ranking_metrics(scores: np.ndarray, target: int | None, exclude: np.ndarray) -> tuple[float, float]:
    """(HR@K, NDCG@K) of one case over a full catalogue's scores; a target the model cannot score is a miss."""
    if target is None:
        return 0.0, 0.0
    scores = scores.astype(np.float64, copy=True)
    target_score = scores[target]
    scores[exclude] = -np.inf
    rank = int((scores > target_score).sum())
    return (1.0, float(1.0 / np.log2(rank + 2))) if rank < K else (0.0, 0.0)


def mean_metrics(pairs: list[tuple[float, float]]) -> dict[str, float]:
    hr, ndcg = (np.array([p[i] for p in pairs]) for i in (0, 1))
    return {f"hr@{K}": float(hr.mean()) if len(hr) else 0.0, f"ndcg@{K}": float(ndcg.mean()) if len(ndcg) else 0.0,
            "cases": len(pairs)}


class FusedScorer:
    """A trained fused model with live items appended, scored like a serving replica: user vectors from the
    history's item vectors (new items' included), dot products over the whole catalogue."""

    def __init__(self, model: FusedRecommender, item_ids: np.ndarray, new_vectors: np.ndarray,
                 new_ids: list[str]) -> None:
        with torch.inference_mode():
            warm = model.catalogue().float().cpu().numpy()
        self.model = model
        self.catalogue = np.concatenate([warm, new_vectors.astype(np.float32)]) if len(new_ids) else warm
        self.position = {str(item): n for n, item in enumerate([*item_ids.tolist(), *new_ids])}
        self.n_warm = len(warm)

    def scores(self, history: tuple[str, ...], warm_only: bool) -> tuple[np.ndarray, np.ndarray]:
        known = [self.position[i] for i in history if i in self.position and
                 (not warm_only or self.position[i] < self.n_warm)]
        catalogue = self.catalogue[:self.n_warm] if warm_only else self.catalogue
        vectors = torch.from_numpy(catalogue[np.asarray(known[-self.model.config.history_length:], dtype=np.int64)])
        with torch.inference_mode():
            user = self.model.user_tower(vectors[None], torch.ones(1, len(vectors), dtype=torch.bool))[0].numpy()
        return catalogue @ user, np.asarray(known, dtype=np.int64)


def evaluate_fused(model: FusedRecommender, split_vocab: np.ndarray, cold: ColdSplit,
                   new_vectors: np.ndarray) -> dict[str, Any]:
    new_ids = cold.cold_items[ITEM].astype(str).tolist()
    scorer = FusedScorer(model, split_vocab, new_vectors, new_ids)
    out: dict[str, Any] = {}
    for name, cases, warm_only in (("cold", cold.cold_cases, False), ("overall_before", cold.overall_cases, True),
                                   ("overall_after", cold.overall_cases, False)):
        pairs = []
        for case in cases:
            scores, seen = scorer.scores(case.history, warm_only)
            target = scorer.position.get(case.target)
            if target is not None and warm_only and target >= scorer.n_warm:
                target = None
            pairs.append(ranking_metrics(scores, target, seen))
        out[name] = mean_metrics(pairs)
    return out


def evaluate_ids_only(model: torch.nn.Module, split_vocab: np.ndarray, cold: ColdSplit) -> dict[str, Any]:
    """SASRec scores the warm catalogue from the history's warm items; a cold item has no ID row, so it is
    never ranked (a cold target is a miss) and the catalogue is the same before and after."""
    position = {str(item): n for n, item in enumerate(split_vocab.tolist())}
    out: dict[str, Any] = {}
    for name, cases in (("cold", cold.cold_cases), ("overall_before", cold.overall_cases),
                        ("overall_after", cold.overall_cases)):
        pairs = []
        for case in cases:
            known = np.asarray([position[i] for i in case.history if i in position], dtype=np.int64)
            if not len(known):
                pairs.append((0.0, 0.0))
                continue
            with torch.inference_mode():
                scores = model.full_sort_predict(torch.zeros(1, dtype=torch.long), [known])[0].float().numpy()
            pairs.append(ranking_metrics(scores[:len(position)], position.get(case.target), known))
        out[name] = mean_metrics(pairs)
    return out


def live_item_vectors(model: FusedRecommender, texts: list[str]) -> np.ndarray:
    """What a model replica computes for PUT /v1/items: the fused text vector of each new item."""
    from fusionrec.serving.live_items import ItemEmbedder

    return ItemEmbedder("torch", items=model.items).embed(texts, [None] * len(texts))


# --- rows --------------------------------------------------------------------------------------------------------


def run_row(name: str, seed: int, cold: ColdSplit, pool: EncoderPool, epochs: int | None = None) -> dict[str, Any]:
    split = make_split(cold.warm, "ranking", "time")
    started = time.perf_counter()
    if name == "sasrec":
        baseline = get_baseline("sasrec")
        training = baseline_training("sasrec", seed, False, interactions=len(cold.warm.interactions), epochs=epochs)
        done = fit_and_evaluate(lambda: baseline.build(cold.warm, split), split, training, device="cpu",
                                log_every=10)
        metrics = evaluate_ids_only(done.model, split.vocab.item_ids, cold)
        kind = "ids"
    else:
        experiment = next(e for e in EXPERIMENTS if e.name == name)
        spec = experiment.spec(seed, epochs)
        encoders = pool.get(experiment.encoders)
        done = fit_and_evaluate(lambda: FusedRecommender.from_spec(spec, cold.warm, split, encoders=encoders),
                                split, spec.training, device="cpu", log_every=5)
        model = done.model
        model.eval()
        texts = cold.cold_items["text"].astype(str).tolist()
        embed_started = time.perf_counter()
        vectors = live_item_vectors(model, texts)
        embed_seconds = time.perf_counter() - embed_started
        metrics = evaluate_fused(model, split.vocab.item_ids, cold, vectors)
        metrics["live_embedding_seconds"] = embed_seconds
        kind = "text"
    metrics.update(name=name, kind=kind, seed=seed, best_epoch=done.fit.best_epoch,
                   warm_test={k: v for k, v in done.test.items() if k.endswith(f"@{K}")},
                   seconds=time.perf_counter() - started)
    log.info("%s: cold %s, overall before %s after %s", name, metrics["cold"], metrics["overall_before"],
             metrics["overall_after"])
    return metrics


def render(payload: dict[str, Any], discussion: str = "") -> str:
    info = payload["split"]
    lines = [
        "# Cold-start items on MovieLens-100K (issue 19)", "",
        "Produced by `" + "`, `".join(payload["commands"]) + "` (bench/cold_start.py; its docstring has the "
        "protocol).", "",
        f"Environment: {payload['environment']}.", "",
        f"Split: the newest {info['cold_items']} of {info['items']} items (by first interaction; "
        f"{COLD_SHARE:.0%}; all their interactions are after timestamp {info['cut']}) are cold; training sees the "
        f"{info['train_interactions']} interactions with the other items and none with them. Test cases: "
        f"{info['cold_cases']} users' first interaction with a cold item (cold), {info['overall_cases']} users' last "
        "interaction (overall). Cold items are added live (rendered, embedded by the version's item tower) before "
        "ranking; `before` ranks over the warm catalogue only.", "",
        f"| model | kind | cold hr@{K} | cold ndcg@{K} | overall ndcg@{K} before | overall ndcg@{K} after | "
        f"overall hr@{K} before | overall hr@{K} after | warm test ndcg@{K} | best epoch | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in payload["rows"]:
        lines.append(
            f"| {row['name']} | {row['kind']} | {row['cold'][f'hr@{K}']:.4f} | {row['cold'][f'ndcg@{K}']:.4f} | "
            f"{row['overall_before'][f'ndcg@{K}']:.4f} | {row['overall_after'][f'ndcg@{K}']:.4f} | "
            f"{row['overall_before'][f'hr@{K}']:.4f} | {row['overall_after'][f'hr@{K}']:.4f} | "
            f"{row['warm_test'].get(f'ndcg@{K}', float('nan')):.4f} | {row['best_epoch']} | {row['seconds']:.0f} |")
    lines += ["", "SASRec (item IDs only) has no vector for an item it never saw: it ranks the warm catalogue, never "
              "returns a cold item (cold HR is 0 by construction), and its catalogue is the same before and after. "
              "A served version that cannot embed text answers PUT /v1/items with 409."]
    if discussion:
        lines += ["", discussion.rstrip()]
    return "\n".join(lines) + "\n"


def kept_discussion(md_path: Path) -> str:
    """A "## Discussion" section written by hand into the .md is kept when the table is written again."""
    text = md_path.read_text() if md_path.is_file() else ""
    return text[text.index("## Discussion"):] if "## Discussion" in text else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--epochs", type=int, help="override every row's epochs (smoke tests; not for results)")
    parser.add_argument("--out", default=str(RESULTS / "cold-start"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    os.environ.setdefault("FUSIONREC_QUIET", "1")
    torch.set_num_threads(args.threads)
    rows = [r for r in args.rows.split(",") if r]
    unknown = sorted(set(rows) - {*ROWS, *ALL})
    if unknown:
        parser.error(f"unknown rows {unknown}; known: {', '.join(ROWS)}")
    dataset = load_dataset(DataSpec.model_validate({"dataset": "ml-100k"}))
    cold = cold_split(dataset)
    out = Path(args.out)
    json_path, md_path = out.with_suffix(".json"), out.with_suffix(".md")
    previous = json.loads(json_path.read_text()) if json_path.is_file() else {}
    split_info = {"items": int(len(dataset.items)), "cold_items": int(len(cold.cold_items)), "cut": cold.cut,
                  "train_interactions": int(len(cold.warm.interactions)), "cold_cases": len(cold.cold_cases),
                  "overall_cases": len(cold.overall_cases), "seed": args.seed, "epochs": args.epochs}
    kept = [r for r in previous.get("rows", []) if previous.get("split") == split_info and r["name"] not in rows]
    command = "python bench/cold_start.py " + " ".join(argv if argv is not None else sys.argv[1:])
    payload: dict[str, Any] = {
        "split": split_info, "rows": kept,
        "commands": [*(previous.get("commands", []) if kept else []), *([command.strip()] if rows else [])],
        "environment": f"{platform.platform()}, {cpu_name()}, torch {torch.__version__}, {args.threads} torch "
                       f"thread(s), load average at start {os.getloadavg()[0]:.2f}",
    }
    pool = EncoderPool()
    for name in rows:
        payload["rows"].append(run_row(name, args.seed, cold, pool, args.epochs))
        payload["rows"].sort(key=lambda r: ROWS.index(r["name"]) if r["name"] in ROWS else len(ROWS))
        atomic_write_json(json_path, payload)
        atomic_write_text(md_path, render(payload, kept_discussion(md_path)))
    if not rows:  # --rows '': write the tables again from the JSON (after editing the discussion)
        atomic_write_text(md_path, render(payload, kept_discussion(md_path)))
    print(render(payload, kept_discussion(md_path)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
