"""One text encoder: a pretrained LM, its own tokenizer, a pooling and a projection to the fusion dimension.

Encoders and decoder-only LMs go through the same wrapper over `AutoModel`; what differs between families
(where the layers sit, whether a pad token exists) is found from the loaded model, not written per family.
A frozen encoder's item embeddings never change during training, so they are computed once per catalogue and
cached (in memory, and on disk when a folder is given); only the projection on top of them is trained.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import torch
from torch import Tensor, nn

from fusionrec.errors import UserError
from fusionrec.model.pooling import get_pooling
from fusionrec.model.sources import resolve_source
from fusionrec.progress import progress
from fusionrec.spec import EncoderSpec

if TYPE_CHECKING:
    from transformers import PreTrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

_MEMORY_CACHE_ENTRIES = 8


class TextEncoder(nn.Module):
    """Pretrained LM + pooling + linear projection to `dim`.

    Args:
        spec: the encoder's spec (source, pooling, max_length, freeze_layers, freeze).
        dim: output dimension, shared by every encoder of a fusion model.
        model_cache_dir: where converted packaged models go (default `$FUSIONREC_MODEL_HOME`).
        embedding_cache_dir: if set, a frozen encoder also keeps its item embeddings here as .npy files.
        dtype: dtype of the LM's weights (float32 keeps CPU training exact).
    """

    def __init__(self, spec: EncoderSpec, dim: int, *, model_cache_dir: Path | None = None,
                 embedding_cache_dir: Path | None = None, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"encoder {spec.name}: output dim must be >= 1, got {dim}")
        self.spec = spec
        self.pool = get_pooling(spec.pooling)
        self.folder = resolve_source(spec.source, model_cache_dir)
        self.tokenizer = _load_tokenizer(self.folder, spec)
        self.backbone = _load_backbone(self.folder, spec, dtype)
        if getattr(self.backbone.config, "use_cache", False):
            # A decoder's KV cache serves generation; reading each text once, it would only copy every layer's
            # keys and values and hold them to the end of the forward (~0.75 GB at batch 256 for SmolLM2).
            self.backbone.config.use_cache = False
        # transformers types the input embeddings as any nn.Module; they are an nn.Embedding (or a subclass)
        embeddings = cast(nn.Embedding, self.backbone.get_input_embeddings())
        if len(self.tokenizer) > embeddings.num_embeddings:  # a pad token was added
            self.backbone.resize_token_embeddings(len(self.tokenizer))
        self.hidden_size = _hidden_size(self.backbone.config, spec)
        self.max_length = _max_length(self.tokenizer, spec)
        self.projection = nn.Linear(self.hidden_size, dim)
        self.dim = dim
        self.embedding_cache_dir = Path(embedding_cache_dir) if embedding_cache_dir else None
        self._memory_cache: OrderedDict[str, Tensor] = OrderedDict()
        self._fingerprint: tuple[tuple[int, ...], str] | None = None
        self.cache_stats = {"computed": 0, "memory_hits": 0, "disk_hits": 0}
        if spec.pooling == "cls" and _is_decoder(self.backbone.config):
            log.warning("encoder %s: cls pooling on a decoder reads a token that saw only itself; "
                        "use pooling: last or mean", spec.name)
        self._freeze()

    # --- freezing -----------------------------------------------------------------------------------------

    @property
    def frozen(self) -> bool:
        return self.spec.freeze

    def _freeze(self) -> None:
        """Freeze the whole LM (`freeze`) or its embeddings and bottom `freeze_layers` layers."""
        if self.spec.freeze:
            self.backbone.requires_grad_(False)
            self.backbone.eval()
            return
        if self.spec.freeze_layers == 0:
            return
        layers = _layer_list(self.backbone)
        if self.spec.freeze_layers > len(layers):
            raise UserError(
                f"freeze_layers is {self.spec.freeze_layers} but encoder {self.spec.name!r} has {len(layers)} layers",
                field=f"encoders[{self.spec.name}].freezeLayers",
                fix=f"use at most {len(layers)}, or freeze: true to freeze the whole encoder",
            )
        for param in _embedding_parameters(self.backbone, layers):
            param.requires_grad_(False)
        for layer in layers[: self.spec.freeze_layers]:
            layer.requires_grad_(False)

    def train(self, mode: bool = True) -> TextEncoder:
        """Keep a frozen LM in eval mode (no dropout), so its cached embeddings stay valid while training."""
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self

    # --- tokens to vectors --------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.projection.weight.device

    def _check_texts(self, texts: list[str]) -> None:
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValueError(f"encoder {self.spec.name}: texts[{i}] must be a str, got {type(text).__name__}")

    def tokenize(self, texts: list[str]) -> dict[str, Tensor]:
        """Right-padded, truncated token ids for a batch of texts, on the encoder's device."""
        self._check_texts(texts)
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="pt")
        return {"input_ids": batch["input_ids"].to(self.device),
                "attention_mask": batch["attention_mask"].to(self.device)}

    def pool_tokens(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Pooled LM states before the projection.

        Args:
            input_ids: (B, T) token ids.
            attention_mask: (B, T) 1 for real tokens, 0 for padding.
        Returns:
            (B, H) pooled states, H = the LM's hidden size.
        """
        if input_ids.shape != attention_mask.shape:
            raise ValueError(f"input_ids {tuple(input_ids.shape)} and attention_mask "
                             f"{tuple(attention_mask.shape)} must have the same shape")
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, H)
            return self.pool(hidden, attention_mask).to(self.projection.weight.dtype)  # (B, H)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """(B, T) token ids and mask -> (B, dim) projected text embeddings (the training path)."""
        return self.projection(self.pool_tokens(input_ids, attention_mask))

    # --- catalogues ---------------------------------------------------------------------------------------

    def pooled_texts(self, texts: list[str], batch_size: int = 64) -> Tensor:
        """(N,) texts -> (N, H) pooled embeddings, computed without gradients in eval mode.

        A frozen encoder looks the result up by a hash of the texts, its weights, pooling and max_length first,
        so an item catalogue is encoded once per run (once ever, with an embedding cache folder).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self._check_texts(texts)
        if not self.frozen:
            return self._compute(texts, batch_size)
        key = self._cache_key(texts)
        if key in self._memory_cache:
            self._memory_cache.move_to_end(key)
            self.cache_stats["memory_hits"] += 1
            return self._memory_cache[key].to(self.device)
        pooled = self._load_from_disk(key, len(texts))
        if pooled is None:
            pooled = self._compute(texts, batch_size)
            self._save_to_disk(key, pooled)
        else:
            self.cache_stats["disk_hits"] += 1
        self._memory_cache[key] = pooled.detach().cpu()
        while len(self._memory_cache) > _MEMORY_CACHE_ENTRIES:
            self._memory_cache.popitem(last=False)
        return pooled.to(self.device)

    def _compute(self, texts: list[str], batch_size: int) -> Tensor:
        self.cache_stats["computed"] += 1
        out = torch.empty(len(texts), self.hidden_size, dtype=self.projection.weight.dtype, device=self.device)
        order = longest_first(texts)
        was_training = self.backbone.training
        self.backbone.eval()
        try:
            starts = range(0, len(order), batch_size)
            # Progress only for catalogues (many batches); single batches of a training step stay silent. Counted
            # in items, so the lines written without a terminal give a rate comparable across batch sizes.
            bar = progress(desc=f"embedding items ({self.spec.name})", total=len(texts), unit="item", lines=True) \
                if len(starts) >= 4 else None
            with (bar if bar is not None else contextlib.nullcontext()), torch.no_grad():
                for start in starts:
                    index = order[start:start + batch_size]
                    batch = self.tokenize([texts[i] for i in index])
                    out[torch.tensor(index, device=self.device)] = self.pool_tokens(**batch)  # (b, H)
                    if bar is not None:
                        bar.update(len(index))
        finally:
            self.backbone.train(was_training)
        return out

    def catalogue_key(self, texts: list[str]) -> str:
        """The key `pooled_texts` caches these texts' pooled rows under (weights, pooling, max_length, texts):
        a job that computes them elsewhere (fusionrec.train.catalogue_embedding) stores them where this looks."""
        return self._cache_key(texts)

    def cache_path(self, key: str) -> Path | None:
        """The .npy file `pooled_texts` reads for `key` (None without an embedding cache folder)."""
        return self._disk_path(key)

    def _weights_fingerprint(self) -> str:
        """Hash of the LM's weights, recomputed only when a tensor changed (load_state_dict, merges)."""
        tensors = list(self.backbone.state_dict().values())
        versions = tuple(t._version for t in tensors) + tuple(t.data_ptr() for t in tensors)
        if self._fingerprint is None or self._fingerprint[0] != versions:
            digest = hashlib.blake2b(digest_size=16)
            for tensor in tensors:
                digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
            self._fingerprint = (versions, digest.hexdigest())
        return self._fingerprint[1]

    def _cache_key(self, texts: list[str]) -> str:
        digest = hashlib.sha256()
        settings = f"{self._weights_fingerprint()}|{self.spec.pooling}|{self.max_length}|{len(self.tokenizer)}"
        digest.update(settings.encode())
        for text in texts:
            data = text.encode("utf-8", "surrogatepass")
            digest.update(len(data).to_bytes(8, "little"))
            digest.update(data)
        return digest.hexdigest()

    def _disk_path(self, key: str) -> Path | None:
        if self.embedding_cache_dir is None:
            return None
        return self.embedding_cache_dir / f"{self.spec.name}-{key[:32]}.npy"

    def _load_from_disk(self, key: str, rows: int) -> Tensor | None:
        path = self._disk_path(key)
        if path is None or not path.is_file():
            return None
        array = np.load(path, allow_pickle=False)
        if array.shape != (rows, self.hidden_size):
            log.warning("ignoring %s: shape %s, expected %s", path, array.shape, (rows, self.hidden_size))
            return None
        return torch.from_numpy(array).to(self.projection.weight.dtype)

    def _save_to_disk(self, key: str, pooled: Tensor) -> None:
        path = self._disk_path(key)
        if path is not None:
            write_pooled(path, pooled.detach().cpu().float().numpy())


def write_pooled(path: Path, pooled: np.ndarray) -> None:
    """Write (N, H) float32 pooled rows as a cache file, whole or not at all (temp file + rename): the one writer
    of the embedding cache, shared with the jobs that fill it elsewhere (fusionrec.train.catalogue_embedding)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as handle:
        np.save(handle, np.ascontiguousarray(pooled, dtype=np.float32), allow_pickle=False)
    os.replace(tmp, path)


def longest_first(texts: list[str]) -> list[int]:
    """Text indices, longest text first (ties in input order): the order a catalogue is batched in, so batches
    of similar lengths waste little padding and the first batch shows peak memory. Whoever splits a catalogue
    into shards along this order and batches each shard from its start gets the very same batches."""
    return sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)


# --- loading helpers ------------------------------------------------------------------------------------------


def _load_tokenizer(folder: Path, spec: EncoderSpec) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as exc:
        raise UserError(f"encoder {spec.name!r}: no usable tokenizer in {folder} ({exc})", field="source",
                        fix="the model folder needs tokenizer.json or the tokenizer files it was saved with") from None
    # Decoder LMs often ship without a pad token; any token works because the mask hides the padding.
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        elif tokenizer.unk_token is not None:
            tokenizer.pad_token = tokenizer.unk_token
        else:
            tokenizer.add_special_tokens({"pad_token": "<pad>"})
    # Right padding keeps positions 0..len-1 for real tokens, as the LMs were trained; `last` pooling uses the mask.
    tokenizer.padding_side = "right"
    return tokenizer


def _load_backbone(folder: Path, spec: EncoderSpec, dtype: torch.dtype) -> PreTrainedModel:
    from transformers import AutoModel

    try:
        backbone = AutoModel.from_pretrained(folder, dtype=dtype)
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"encoder {spec.name!r}: cannot load the model in {folder} ({exc})", field="source",
                        fix="the folder needs config.json and weights (model.safetensors)") from None
    # BERT-style models carry a pooler head that none of our poolings reads; unused trainable weights would
    # only make DDP fail on parameters without gradients.
    if isinstance(getattr(backbone, "pooler", None), nn.Module):
        backbone.pooler = None
    return backbone


def _hidden_size(config: PreTrainedConfig, spec: EncoderSpec) -> int:
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    size = getattr(text_config, "hidden_size", None)
    if not isinstance(size, int):
        raise UserError(f"encoder {spec.name!r}: config {config.model_type!r} has no hidden_size", field="source")
    return size


def _max_length(tokenizer: PreTrainedTokenizerBase, spec: EncoderSpec) -> int:
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < spec.max_length:
        log.warning("encoder %s: max_length %d exceeds the model's %d; using %d",
                    spec.name, spec.max_length, limit, limit)
        return limit
    return spec.max_length


def _is_decoder(config: PreTrainedConfig) -> bool:
    architectures = getattr(config, "architectures", None) or []
    return bool(getattr(config, "is_decoder", False)) or any(a.endswith("ForCausalLM") for a in architectures)


def _layer_list(backbone: PreTrainedModel) -> nn.ModuleList:
    """The stack of transformer blocks: the first ModuleList as long as config.num_hidden_layers."""
    count = getattr(backbone.config.get_text_config(), "num_hidden_layers", None)
    for module in backbone.modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return module
    raise UserError(f"cannot find the {count} transformer layers of a {backbone.config.model_type!r} model, "
                    "so freeze_layers cannot be applied", fix="use freeze: true or freeze_layers: 0")


def _embedding_parameters(backbone: nn.Module, layers: nn.ModuleList) -> list[nn.Parameter]:
    """Parameters of the embedding modules (token, position, their LayerNorm) outside the layer stack."""
    in_layers = {id(p) for p in layers.parameters()}
    found: dict[int, nn.Parameter] = {}
    for name, module in backbone.named_modules():
        if isinstance(module, nn.Embedding) or "embed" in name.rsplit(".", 1)[-1]:
            for param in module.parameters():
                if id(param) not in in_layers:
                    found[id(param)] = param
    return list(found.values())
