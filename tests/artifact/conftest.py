"""A small but complete artifact: real safetensors weights, a tokenizer folder, an item index and a table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save as save_safetensors

from fusionrec.spec import FusionRecommenderSpec


def _spec(version: str = "v1") -> FusionRecommenderSpec:
    return FusionRecommenderSpec.model_validate({
        "version": version,
        "encoders": [{"name": "minilm", "source": "./models/minilm"}, {"name": "mpnet", "source": "./mpnet"}],
        "fusion": {"method": "attention", "dim": 32},
    })


@pytest.fixture
def make_spec():
    return _spec


@pytest.fixture
def spec() -> FusionRecommenderSpec:
    return _spec()


@pytest.fixture
def state_dict() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {"fusion.key.weight": torch.randn(32, 32), "head.bias": torch.randn(4)}


@pytest.fixture
def files(state_dict, tmp_path) -> dict:
    """One source of each kind: bytes, a Path to copy, and writer callables (file and folder)."""
    tokenizer_src = tmp_path / "tok-src"
    tokenizer_src.mkdir()
    (tokenizer_src / "vocab.txt").write_text("[PAD]\n[UNK]\nmovie\n")
    (tokenizer_src / "tokenizer_config.json").write_text('{"do_lower_case": true}')

    def write_mpnet_tokenizer(dest: Path) -> None:
        dest.mkdir()
        (dest / "vocab.txt").write_text("<pad>\n<unk>\nfilm\n")

    index = np.arange(12, dtype=np.float32).reshape(3, 4)
    return {
        "model.safetensors": save_safetensors(state_dict),
        "tokenizers/minilm": tokenizer_src,
        "tokenizers/mpnet": write_mpnet_tokenizer,
        "item_index.npy": lambda dest: np.save(dest, index),
        "items.parquet": lambda dest: pd.DataFrame({"item_id": ["1", "2", "3"],
                                                    "title": ["Heat", "Up", "Big"]}).to_parquet(dest),
    }
