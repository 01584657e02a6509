"""A fused model on disk: the artifact a training run writes (design.md section 5) and the model rebuilt from
it. Compile and serving read models through here, so they never import training code.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fusionrec.artifact import (
    ITEM_INDEX_NAME,
    ITEMS_NAME,
    WEIGHTS_NAME,
    Artifact,
    load_artifact,
    save_tensors,
    write_artifact,
)
from fusionrec.data.schema import Dataset
from fusionrec.data.splits import LeaveOneOutSplit, RandomSplit
from fusionrec.errors import UserError
from fusionrec.model.fused import FusedRecommender
from fusionrec.spec import FusionRecommenderSpec

USERS_NAME = "users.parquet"
USER_FEATURE_TABLE = "user_features.embedding.weight"  # FusedRecommender.user_features.embedding


def embedding_cache_dir() -> Path:
    """Where frozen encoders keep catalogue embeddings: `$FUSIONREC_EMBEDDING_CACHE`, else
    `~/.cache/fusionrec/embeddings` (keyed by weights and texts, so it is never stale)."""
    configured = os.environ.get("FUSIONREC_EMBEDDING_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "fusionrec" / "embeddings"


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
    for encoder in model.text_encoders():
        files[f"tokenizers/{encoder.spec.name}"] = lambda dest, tok=encoder.tokenizer: tok.save_pretrained(dest)
    if dataset.template is not None:  # the prepared card's template when the spec sets none: live items use it
        metrics = {**metrics, "item_text_template": dataset.template}
    return write_artifact(output_root, spec.version, files, spec=spec, metrics=metrics, overwrite=overwrite)


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()


def load_model(path: str | Path, *, embeddings: Path | None = None) -> tuple[FusedRecommender, Artifact]:
    """Rebuild a fused model from a verified artifact, in eval mode: the architecture from its spec.yaml alone
    (the encoders' from their sources), every weight from model.safetensors. metrics["model"] is a record of
    the architecture for readers, not an input. Artifacts written before the model's sizes were spec fields
    (task.sequenceLayers, sequenceHeads, headHidden) load as they were built: their specs lack the fields, whose
    defaults are the sizes every manifest got then."""
    artifact = load_artifact(path)
    if artifact.items_path is None or artifact.file(USERS_NAME) is None:
        raise UserError(f"artifact {artifact.path} lacks {ITEMS_NAME} or {USERS_NAME}: not a fused-model artifact")
    items = pd.read_parquet(artifact.items_path)
    users = pd.read_parquet(artifact.path / USERS_NAME)
    state = artifact.load_state_dict()
    # The user features' id space is the data's, not the spec's: the trained table's rows.
    feature_table = state.get(USER_FEATURE_TABLE)
    model = FusedRecommender.build(artifact.spec, items["text"].tolist(), len(users),
                                   embedding_cache_dir=embeddings or embedding_cache_dir(),
                                   user_feature_values=int(feature_table.shape[0]) if feature_table is not None else 0)
    model.load_state_dict(state)
    model.eval()
    return model, artifact
