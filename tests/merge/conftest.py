"""Tiny random BERT and Llama checkpoints, built once per session: a base and two "fine-tuned" variants each.

The variants are the base plus small seeded noise, the way a fine-tune moves a pretrained model, so task
vectors are small, dense and of mixed sign like real ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertModel, BertTokenizer, LlamaConfig, LlamaModel


@dataclass(frozen=True)
class Family:
    base: Path
    a: Path
    b: Path


def tiny_bert_config(**overrides) -> BertConfig:
    settings = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=100)
    return BertConfig(**{**settings, **overrides})


def tiny_llama_config() -> LlamaConfig:
    return LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                       intermediate_size=64, vocab_size=100, max_position_embeddings=64)


def _tokenizer(folder: Path) -> BertTokenizer:
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(95)]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return BertTokenizer(vocab_file=str(folder / "vocab.txt"))


def _variant(model: torch.nn.Module, seed: int, scale: float = 0.02) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(scale * torch.randn(param.shape, generator=generator))
    return model


def _family(root: Path, build, with_tokenizer: bool) -> Family:
    root.mkdir()
    tokenizer = _tokenizer(root) if with_tokenizer else None
    paths = {}
    for name, seed in (("base", None), ("a", 1), ("b", 2)):
        torch.manual_seed(0)  # every member starts from the same random init: the base
        model = build()
        if seed is not None:
            _variant(model, seed)
        paths[name] = root / name
        model.save_pretrained(paths[name])
        if tokenizer is not None:
            tokenizer.save_pretrained(paths[name])
    return Family(**paths)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Element-wise ops on small tensors are ~1000x slower with 2 threads on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def bert(tmp_path_factory) -> Family:
    return _family(tmp_path_factory.mktemp("bert") / "family", lambda: BertModel(tiny_bert_config()), True)


@pytest.fixture(scope="session")
def llama(tmp_path_factory) -> Family:
    return _family(tmp_path_factory.mktemp("llama") / "family", lambda: LlamaModel(tiny_llama_config()), False)


@pytest.fixture(scope="session")
def bert_wider(tmp_path_factory) -> Path:
    """Same architecture as `bert`, other intermediate size: every MLP tensor has another shape."""
    path = tmp_path_factory.mktemp("bert_wider") / "model"
    torch.manual_seed(0)
    BertModel(tiny_bert_config(intermediate_size=48)).save_pretrained(path)
    return path
