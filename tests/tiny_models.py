"""Tiny random models of the three families fusionrec fuses (bert, mpnet, llama), built offline.

`build_tiny_models(root)` returns {family: folder} (the session fixture `tiny_models` in tests/conftest.py
builds them once for the whole run); each folder is a plain HF folder (config.json,
model.safetensors, tokenizer.json + tokenizer_config.json) that AutoModel/AutoTokenizer load with the hub off.
The weights are random but seeded, so two sessions build the same models. The llama tokenizer has no pad
token on purpose: decoders often ship without one, and the encoder wrapper must cope.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    BertConfig,
    BertModel,
    LlamaConfig,
    LlamaForCausalLM,
    MPNetConfig,
    MPNetModel,
    PreTrainedTokenizerFast,
)

FAMILIES = ("bert", "mpnet", "llama")
HIDDEN = 32
LAYERS = 3
HEADS = 4

_WORDS = (
    "a the of and to in is on for with at by from an as it this that movie film story love war space comedy "
    "drama action thriller horror romance family music crime mystery adventure animation documentary western "
    "cat dog kitten puppy sits sat mat rug stock market markets fell rose today year genres title time man "
    "woman world life night day city star toy toys boy girl king queen"
).split()
_CORPUS = [
    "Toy Story. Genres: Animation, Comedy. Year: 1995",
    "A cat sits on the mat. A kitten sat on the rug.",
    "Stock markets fell sharply today; markets rose last year.",
    "Star Wars is a space adventure about a boy, a princess and a war among the stars.",
    "The Godfather: a crime drama about a family, its king and the city at night.",
] * 4


def _wordpiece(specials: list[str], unk: str, first: str, last: str) -> Tokenizer:
    """Lower-casing WordPiece over a small fixed vocab: specials, whole words, then characters as ## pieces."""
    letters = "abcdefghijklmnopqrstuvwxyz0123456789"
    punctuation = list(".,;:!?'\"()-")
    vocab_list = specials + _WORDS + list(letters) + punctuation + [f"##{c}" for c in letters]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(vocab_list))}
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token=unk, max_input_chars_per_word=50))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{first} $A {last}", pair=f"{first} $A {last} $B {last}",
        special_tokens=[(first, vocab[first]), (last, vocab[last])],
    )
    tokenizer.decoder = decoders.WordPiece()
    return tokenizer


def _byte_bpe() -> Tokenizer:
    """Byte-level BPE trained on a tiny corpus, with BOS/EOS but no pad token (like many decoder LMs)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<s>", "</s>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(_CORPUS, trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tokenizer.token_to_id("<s>"))],
    )
    return tokenizer


def build_bert(folder: Path) -> Path:
    raw = _wordpiece(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], "[UNK]", "[CLS]", "[SEP]")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", model_max_length=128,
    )
    config = BertConfig(
        vocab_size=raw.get_vocab_size(), hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        intermediate_size=2 * HIDDEN, max_position_embeddings=128, pad_token_id=0,
    )
    return _save(BertModel(config), tokenizer, folder)


def build_mpnet(folder: Path) -> Path:
    # MPNet computes positions from pad_token_id, so <pad> must sit at index 1 like in the real vocab.
    raw = _wordpiece(["<s>", "<pad>", "</s>", "<unk>", "<mask>"], "<unk>", "<s>", "</s>")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        cls_token="<s>", sep_token="</s>", mask_token="<mask>", model_max_length=128,
    )
    config = MPNetConfig(
        vocab_size=raw.get_vocab_size(), hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        intermediate_size=2 * HIDDEN, max_position_embeddings=130, pad_token_id=1, bos_token_id=0, eos_token_id=2,
    )
    return _save(MPNetModel(config), tokenizer, folder)


def build_llama(folder: Path) -> Path:
    raw = _byte_bpe()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>",
                                        model_max_length=128)
    config = LlamaConfig(
        vocab_size=raw.get_vocab_size(), hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        num_key_value_heads=2, intermediate_size=2 * HIDDEN, max_position_embeddings=128,
        bos_token_id=raw.token_to_id("<s>"), eos_token_id=raw.token_to_id("</s>"), pad_token_id=None,
        tie_word_embeddings=True,
    )
    return _save(LlamaForCausalLM(config), tokenizer, folder)


_BUILDERS = {"bert": build_bert, "mpnet": build_mpnet, "llama": build_llama}


def _save(model: torch.nn.Module, tokenizer: PreTrainedTokenizerFast, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_tiny_models(root: Path, seed: int = 0) -> dict[str, Path]:
    """Build one tiny random model per family under root; returns {family: folder}."""
    folders = {}
    for family in FAMILIES:
        torch.manual_seed(seed)
        folders[family] = _BUILDERS[family](root / family)
    return folders
