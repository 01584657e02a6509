"""A causal self-attentive sequence encoder (SASRec's transformer stack, Kang & McAuley 2018,
https://arxiv.org/abs/1808.09781), kept apart from any item table so the same stack reads ID embeddings in
the SASRec baseline and fused language-model item embeddings in the fused model's user tower.

Padding may sit on either side of a sequence (`mask` says which slots hold real items). Positions count real
items from the oldest one in the window, so the amount of padding never changes the output at a real slot.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class SequenceEncoderConfig:
    dim: int = 64
    n_layers: int = 2
    n_heads: int = 1
    max_len: int = 50  # longest window the positional table covers
    dropout: float = 0.2  # on the input embeddings, attention weights and each residual branch
    inner_size: int = 256  # width of the feed-forward layer
    # Pre-LN (final LayerNorm after the stack) or post-LN (BERT-style); post-LN trained better on ml-100k.
    norm_first: bool = False

    def __post_init__(self) -> None:
        if self.dim % self.n_heads:
            raise ValueError(f"dim must be divisible by n_heads, got dim={self.dim}, n_heads={self.n_heads}")


class _Block(nn.Module):
    def __init__(self, cfg: SequenceEncoderConfig) -> None:
        super().__init__()
        self.n_heads, self.dropout, self.norm_first = cfg.n_heads, cfg.dropout, cfg.norm_first
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.proj = nn.Linear(cfg.dim, cfg.dim)
        self.ffn = nn.Sequential(nn.Linear(cfg.dim, cfg.inner_size), nn.GELU(), nn.Linear(cfg.inner_size, cfg.dim))
        self.norm_attn = nn.LayerNorm(cfg.dim)
        self.norm_ffn = nn.LayerNorm(cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)

    def _attend(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        b, length, dim = x.shape
        q, k, v = self.qkv(x).split(dim, dim=-1)  # 3 x (B, L, D)
        # (B, L, D) -> (B, nh, L, hs)
        q, k, v = (t.view(b, length, self.n_heads, dim // self.n_heads).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed,
                                             dropout_p=self.dropout if self.training else 0.0)
        out = out.transpose(1, 2).reshape(b, length, dim)  # (B, nh, L, hs) -> (B, L, D)
        return self.drop(self.proj(out))

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        if self.norm_first:
            x = x + self._attend(self.norm_attn(x), allowed)
            return x + self.drop(self.ffn(self.norm_ffn(x)))
        x = self.norm_attn(x + self._attend(x, allowed))
        return self.norm_ffn(x + self.drop(self.ffn(x)))


class SequenceEncoder(nn.Module):
    """Causal transformer over item vectors: the state at slot t summarises the real items at slots <= t."""

    def __init__(self, cfg: SequenceEncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.position = nn.Embedding(cfg.max_len, cfg.dim)
        # Post-LN normalises the embeddings on the way in; pre-LN normalises once on the way out.
        self.input_norm = nn.Identity() if cfg.norm_first else nn.LayerNorm(cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(_Block(cfg) for _ in range(cfg.n_layers))
        self.final_norm = nn.LayerNorm(cfg.dim) if cfg.norm_first else nn.Identity()

    def forward(self, items: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Encode a batch of item-vector sequences.

        Args:
            items: [B, L, D] item vectors, oldest first; padding slots may hold anything.
            mask: [B, L] bool, True where a slot holds a real item (left or right padding).
        Returns:
            [B, L, D] states; the state at a padding slot is finite but meaningless.
        """
        if items.dim() != 3 or items.shape[-1] != self.cfg.dim:
            raise ValueError(f"items must be [B, L, {self.cfg.dim}], got shape {tuple(items.shape)}")
        if mask.shape != items.shape[:2] or mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor of shape {tuple(items.shape[:2])}, "
                             f"got {mask.dtype} of shape {tuple(mask.shape)}")
        length = items.shape[1]
        positions = (mask.long().cumsum(dim=1) - 1).clamp(min=0)  # [B, L] index among real items
        if length > self.cfg.max_len:  # only then can a row hold too many; reading it is a device sync
            longest = int(positions.max()) + 1 if positions.numel() else 0
            if longest > self.cfg.max_len:
                raise ValueError(f"a sequence holds {longest} items but max_len={self.cfg.max_len}; "
                                 "keep only the most recent max_len items")
        x = items + self.position(positions)
        x = self.drop(self.input_norm(x))
        causal = torch.ones(length, length, dtype=torch.bool, device=items.device).tril()  # [L, L]
        # A slot sees earlier real items and always itself, so an all-padding row never softmaxes over nothing.
        allowed = causal & mask[:, None, :]  # [B, L(query), L(key)]
        allowed = allowed | torch.eye(length, dtype=torch.bool, device=items.device)
        allowed = allowed[:, None]  # [B, 1, L, L], broadcast over heads
        for block in self.blocks:
            x = block(x, allowed)
        return self.final_norm(x)

    @staticmethod
    def last_state(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, L, D] states -> [B, D] state at each row's last real slot (slot 0 for an all-padding row)."""
        if states.dim() != 3 or mask.shape != states.shape[:2]:
            raise ValueError(f"states [B, L, D] and mask [B, L] must agree, got {tuple(states.shape)} "
                             f"and {tuple(mask.shape)}")
        slots = torch.arange(mask.shape[1], device=mask.device)
        last = (slots * mask).amax(dim=1)  # [B] index of the newest real item
        return states[torch.arange(states.shape[0], device=states.device), last]


def left_pad(rows: list[np.ndarray], pad: int) -> torch.Tensor:
    """B ragged rows of item indices -> [B, L] int64, right-aligned with `pad` in front, L the longest row
    (at least 1): the newest item always sits in the last position, where `last_state` reads the user."""
    length = max([len(r) for r in rows] + [1])
    out = np.full((len(rows), length), pad, dtype=np.int64)
    for i, row in enumerate(rows):
        if len(row):
            out[i, length - len(row):] = row
    return torch.from_numpy(out)
