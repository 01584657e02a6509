"""One manifest in, one verified artifact out: load the data, split it by the protocol, build the fused model,
fit it, test it, and write the versioned artifact (design.md sections 4 and 5). Single process; the Ray Train
job runs the same function with `FitHooks` that wrap the model and the batches.
"""

from __future__ import annotations

import io
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from fusionrec.artifact import ITEM_INDEX_NAME, ITEMS_NAME, WEIGHTS_NAME, Artifact, load_artifact, write_artifact
from fusionrec.data import load_dataset
from fusionrec.data.schema import Dataset
from fusionrec.data.splits import LeaveOneOutSplit, RandomSplit, leave_one_out, random_split
from fusionrec.errors import UserError
from fusionrec.metrics import evaluate_pointwise, evaluate_ranking
from fusionrec.model.fused import FusedRecommender
from fusionrec.spec import FusionRecommenderSpec, Manifest, load_manifest
from fusionrec.train.checkpoint import save_tensors
from fusionrec.train.loop import RANKING_CUTOFFS, REPORTED, FitHooks, fit, seed_everything

log = logging.getLogger(__name__)

CTR_SPLIT_SEED = 2020  # the protocol's random split is fixed; seeds vary the model, never the data
USERS_NAME = "users.parquet"
PROTOCOL = {
    "ranking": "chronological leave-one-out; full ranking over all items, seen items excluded; "
               "checkpoint selected by validation",
    "ctr": f"label = rating >= 4; random 80/10/10 split by interaction (seed {CTR_SPLIT_SEED}); AUC, LogLoss",
    "rating": f"random 80/10/10 split by interaction (seed {CTR_SPLIT_SEED}); RMSE, MAE",
}


def embedding_cache_dir() -> Path:
    """Where frozen encoders keep catalogue embeddings: `$FUSIONREC_EMBEDDING_CACHE`, else
    `~/.cache/fusionrec/embeddings` (keyed by weights and texts, so it is never stale)."""
    configured = os.environ.get("FUSIONREC_EMBEDDING_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "fusionrec" / "embeddings"


def make_split(dataset: Dataset, task: str) -> LeaveOneOutSplit | RandomSplit:
    """The protocol's split for a task type."""
    return leave_one_out(dataset) if task == "ranking" else random_split(dataset, seed=CTR_SPLIT_SEED)


def evaluate_model(model: Any, split: LeaveOneOutSplit | RandomSplit, stage: str = "test",
                   device: str | torch.device | None = None) -> dict[str, float]:
    """The protocol's metrics of a fitted model at `stage`, by the same evaluators as the baselines."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.eval()
    if isinstance(split, LeaveOneOutSplit):
        return evaluate_ranking(lambda users, histories: model.full_sort_predict(users.to(device), histories),
                                split, stage, ks=RANKING_CUTOFFS)
    rows = model.encode_rows(split, stage)
    return evaluate_pointwise(lambda batch: model.predict({k: v.to(device) for k, v in batch.items()}), rows,
                              metrics=REPORTED[getattr(model, "evaluates", "labels")])


def user_histories(split: LeaveOneOutSplit | RandomSplit, n_users: int) -> list[np.ndarray]:
    """What each user has done before the test stage, oldest first (the model's input at serving time)."""
    if isinstance(split, LeaveOneOutSplit):
        return split.history("test")
    ordered = split.train.sort_values(["user_idx", "timestamp"], kind="stable")
    histories = [np.empty(0, dtype=np.int64) for _ in range(n_users)]
    for user, items in ordered.groupby("user_idx", sort=False)["item_idx"]:
        histories[int(user)] = items.to_numpy(dtype=np.int64)
    return histories


def summarise_weights(report: dict[str, Any], quantiles: tuple[int, ...] = (5, 25, 50, 75, 95),
                      bins: int = 20) -> dict[str, Any]:
    """JSON form of `FusedRecommender.fusion_weights`: the global weights and per-user statistics.

    The per-user matrix itself is not stored (one row per user), so the spread is kept as quantiles
    (`p5`...`p95`) and a histogram per model: enough for `fusionrec report` to draw box plots and
    distributions. The histograms of all models share one set of bin edges so they can be overlaid.
    """
    out = {key: report[key] for key in ("method", "kind", "models", "global")}
    per_user = report.get("per_user")
    if per_user is not None and len(per_user):
        values = per_user.detach().cpu().double().numpy()  # [U, M]
        stats = {"mean": values.mean(0), "std": values.std(0), "min": values.min(0), "max": values.max(0),
                 **{f"p{q}": np.percentile(values, q, axis=0) for q in quantiles}}
        low, high = float(values.min()), float(values.max())
        if high - low < 1e-9:  # every user has the same weights (a global fusion): one narrow bin range
            low, high = low - 1e-3, high + 1e-3
        edges = np.linspace(low, high, bins + 1)
        summary: dict[str, Any] = {"users": len(values)}
        for m, name in enumerate(report["models"]):
            counts, _ = np.histogram(values[:, m], bins=edges)
            summary[name] = {**{key: round(float(v[m]), 6) for key, v in stats.items()},
                             "histogram": {"edges": [round(float(e), 6) for e in edges],
                                           "counts": [int(c) for c in counts]}}
        out["per_user"] = summary
    return out


def train_and_evaluate(manifest: Manifest | FusionRecommenderSpec | str | Path, output_root: str | Path, *,
                       overwrite: bool = False, device: str | None = None, hooks: FitHooks | None = None,
                       checkpoint_dir: str | Path | None = None, resume: bool = False,
                       embeddings: Path | None = None, **model_overrides: Any) -> Path:
    """Train the manifest's model and write `<output_root>/<spec.version>/`; returns that folder.

    Args:
        manifest: a Manifest, its spec, or the path of a manifest YAML.
        output_root: folder of versioned artifacts.
        overwrite: replace an existing version.
        device, hooks, checkpoint_dir, resume: passed to `fusionrec.train.loop.fit`.
        embeddings: frozen encoders' embedding cache (default `embedding_cache_dir()`).
        model_overrides: `FusedConfig` fields that the spec does not expose (architecture experiments).
    """
    spec = _spec_of(manifest)
    seed_everything(spec.training.seed)  # before building: the seed fixes the initial weights too
    dataset = load_dataset(spec.data)
    split = make_split(dataset, spec.task.type)
    model = FusedRecommender.from_spec(spec, dataset, split, embedding_cache_dir=embeddings or embedding_cache_dir(),
                                       **model_overrides)
    result = fit(model, split, spec.training, device=device, hooks=hooks, checkpoint_dir=checkpoint_dir,
                 resume=resume)
    test = evaluate_model(model, split, "test")
    histories = user_histories(split, split.vocab.n_users)
    metrics = {
        "task": spec.task.type, "protocol": PROTOCOL[spec.task.type], "seed": spec.training.seed,
        "data": {"name": dataset.name, "users": split.vocab.n_users, "items": split.vocab.n_items,
                 "interactions": len(dataset.interactions)},
        "test": test, "valid": result.best_valid, "best_epoch": result.best_epoch, "seconds": result.seconds,
        "history": result.history, "fusion": model.items.fusion.describe(), "head": model.head.describe(),
        "model": asdict(model.config),
        "fusion_weights": summarise_weights(model.fusion_weights(histories)),
    }
    log.info("%s: test %s", spec.version, ", ".join(f"{k} {v:.4f}" for k, v in test.items()))
    return write_model_artifact(output_root, spec, model, dataset, split, histories, metrics, overwrite=overwrite)


def _spec_of(manifest: Manifest | FusionRecommenderSpec | str | Path) -> FusionRecommenderSpec:
    if isinstance(manifest, FusionRecommenderSpec):
        return manifest
    if isinstance(manifest, Manifest):
        return manifest.spec
    return load_manifest(manifest).spec


def write_model_artifact(output_root: str | Path, spec: FusionRecommenderSpec, model: FusedRecommender,
                         dataset: Dataset, split: LeaveOneOutSplit | RandomSplit, histories: list[np.ndarray],
                         metrics: dict[str, Any], *, overwrite: bool = False) -> Path:
    """The artifact of design.md section 5, plus users.parquet (user ids in index order and each user's
    whole history, oldest first: the tower reads its recent end, serving leaves all of it out)."""
    vocab = split.vocab
    titles = dict(zip(dataset.items["item_id"].astype(str), dataset.items.get("title", dataset.items["item_id"])))
    items = pd.DataFrame({"item_id": vocab.item_ids.astype(str),
                          "title": [str(titles.get(str(i), i)) for i in vocab.item_ids],
                          "text": model.items.item_texts})
    # Whole histories: the tower reads only the last history_length items, but serving must leave out every
    # item the user has seen, not only the recent ones.
    users = pd.DataFrame({"user_id": vocab.user_ids.astype(str),
                          "history": [[str(vocab.item_ids[i]) for i in h] for h in histories]})
    files: dict[str, Any] = {
        WEIGHTS_NAME: lambda dest: save_tensors(model.state_dict(), dest),
        ITEM_INDEX_NAME: _npy_bytes(model.item_embeddings()),
        ITEMS_NAME: lambda dest: items.to_parquet(dest, index=False),
        USERS_NAME: lambda dest: users.to_parquet(dest, index=False),
    }
    for encoder in model.items.encoders:
        files[f"tokenizers/{encoder.spec.name}"] = lambda dest, tok=encoder.tokenizer: tok.save_pretrained(dest)
    return write_artifact(output_root, spec.version, files, spec=spec, metrics=metrics, overwrite=overwrite)


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()


def load_model(path: str | Path, *, embeddings: Path | None = None) -> tuple[FusedRecommender, Artifact]:
    """Rebuild a fused model from a verified artifact (its encoders' architectures come from their sources,
    every weight from model.safetensors), in eval mode."""
    artifact = load_artifact(path)
    if artifact.items_path is None or artifact.file(USERS_NAME) is None:
        raise UserError(f"artifact {artifact.path} lacks {ITEMS_NAME} or {USERS_NAME}: not a fused-model artifact")
    items = pd.read_parquet(artifact.items_path)
    users = pd.read_parquet(artifact.path / USERS_NAME)
    # The architecture as trained, including FusedConfig overrides the spec does not carry.
    config = artifact.metrics.get("model", {})
    model = FusedRecommender.build(artifact.spec, items["text"].tolist(), len(users),
                                   embedding_cache_dir=embeddings or embedding_cache_dir(), **config)
    model.load_state_dict(artifact.load_state_dict())
    model.eval()
    return model, artifact
