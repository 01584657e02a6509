"""One manifest in, one verified artifact out: load the data, split it by the protocol, build the fused model,
fit it, test it, and write the versioned artifact (design.md sections 4 and 5). Single process; the Ray Train
job runs the same function with `FitHooks` that wrap the model and the batches.

With `evaluation.select: best` the job also fits each encoder alone, in this process, and writes the artifact of
whichever candidate validates best (`fusionrec.train.candidates`): the selection happens where the artifact is
written, so the local runner and a cluster's RayJob ship the same model.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any, cast

from fusionrec.data import load_dataset
from fusionrec.model.fused import FusedRecommender
from fusionrec.model.saved import embedding_cache_dir, write_model_artifact
from fusionrec.model.weights_summary import summarise_weights
from fusionrec.protocol import make_split, protocol_text, user_histories
from fusionrec.spec import FusionRecommenderSpec, Manifest, load_manifest
from fusionrec.train.candidates import select_best, selects_best
from fusionrec.train.evaluate import Evaluated, fit_and_evaluate
from fusionrec.train.loop import FitHooks

log = logging.getLogger(__name__)


def train_and_evaluate(manifest: Manifest | FusionRecommenderSpec | str | Path, output_root: str | Path, *,
                       overwrite: bool = False, device: str | None = None, hooks: FitHooks | None = None,
                       checkpoint_dir: str | Path | None = None, resume: bool = False,
                       embeddings: Path | None = None) -> Path:
    """Train the manifest's model and write `<output_root>/<spec.version>/`; returns that folder.

    Args:
        manifest: a Manifest, its spec, or the path of a manifest YAML.
        output_root: folder of versioned artifacts.
        overwrite: replace an existing version.
        device, hooks, checkpoint_dir, resume: passed to `fusionrec.train.loop.fit`.
        embeddings: frozen encoders' embedding cache (default `embedding_cache_dir()`).

    The model is the spec's (its sizes are task.sequenceLayers, sequenceHeads and headHidden); nothing else
    shapes it. With `evaluation.select: best` (and two or more encoders) each encoder alone is fitted after it,
    with the same seed, split and training but no hooks or checkpoints (the Ray Train driver calls this once,
    after the workers are done), and the best by validation is written under its own single-encoder spec;
    metrics.json's "selection" lists every candidate.
    """
    spec = _spec_of(manifest)
    dataset = load_dataset(spec.data)
    split = make_split(dataset, spec.task.type, spec.data.order)
    cache = embeddings or embedding_cache_dir()
    done = fit_and_evaluate(lambda: FusedRecommender.from_spec(spec, dataset, split, embedding_cache_dir=cache),
                            split, spec.training, device=device, hooks=hooks, checkpoint_dir=checkpoint_dir,
                            resume=resume)
    selection: dict[str, Any] | None = None
    if selects_best(spec):
        def fit_single(alone: FusionRecommenderSpec) -> Evaluated:
            log.info("%s: fitting %s alone (evaluation.select: best)", spec.version, alone.encoders[0].name)
            return fit_and_evaluate(
                lambda: FusedRecommender.from_spec(alone, dataset, split, embedding_cache_dir=cache), split,
                alone.training, device=device)

        chosen = select_best(spec, done, fit_single)
        log.info("%s: shipping %s (best valid %s of %d candidates)", spec.version, chosen.shipped, chosen.metric,
                 len(chosen.rows))
        spec, done, selection = chosen.spec, chosen.done, chosen.record()
    model, result, test = cast(FusedRecommender, done.model), done.fit, done.test
    histories = user_histories(split, split.vocab.n_users)
    metrics = {
        "task": spec.task.type, "protocol": protocol_text(spec.task.type, spec.data.order),
        "order": spec.data.order, "seed": spec.training.seed,
        "data": {"name": dataset.name, "users": split.vocab.n_users, "items": split.vocab.n_items,
                 "interactions": len(dataset.interactions)},
        "test": test, "valid": result.best_valid, "best_epoch": result.best_epoch, "seconds": result.seconds,
        "setup_seconds": round(done.setup_seconds, 2), "train_seconds": round(done.train_seconds, 2),
        "history": result.history, "fusion": model.items.fusion.describe(), "head": model.head.describe(),
        "model": asdict(model.config),
        "fusion_weights": summarise_weights(model.fusion_weights(histories)),
        **({"selection": selection} if selection is not None else {}),
    }
    log.info("%s: test %s", spec.version, ", ".join(f"{k} {v:.4f}" for k, v in test.items()))
    return write_model_artifact(output_root, spec, model, dataset, split, histories, metrics, overwrite=overwrite)


def _spec_of(manifest: Manifest | FusionRecommenderSpec | str | Path) -> FusionRecommenderSpec:
    if isinstance(manifest, FusionRecommenderSpec):
        return manifest
    if isinstance(manifest, Manifest):
        return manifest.spec
    return load_manifest(manifest).spec
