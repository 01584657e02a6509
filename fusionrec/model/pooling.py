"""Turn a sequence of token states into one vector per text.

Pooling is a setting of the one encoder wrapper, not a model class: the same three functions serve BERT-style
encoders and decoder-only LMs. Every function takes the padding mask, so results do not depend on how much
padding a batch happened to need (right or left padding both work).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

PoolingFn = Callable[[Tensor, Tensor], Tensor]


def mean_pool(hidden: Tensor, mask: Tensor) -> Tensor:
    """Average of the non-pad token states (sentence-transformers' default for MiniLM and MPNet).

    Args:
        hidden: (B, T, H) token states.
        mask: (B, T) attention mask, 1 for real tokens.
    Returns:
        (B, H) pooled states; an all-pad row gives zeros instead of NaN.
    """
    weights = mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    total = (hidden * weights).sum(dim=1)  # (B, H)
    count = weights.sum(dim=1).clamp(min=1.0)  # (B, 1)
    return total / count


def cls_pool(hidden: Tensor, mask: Tensor) -> Tensor:
    """State of the first token: the [CLS]/<s> token a bidirectional encoder summarises the text into.

    Args:
        hidden: (B, T, H) token states.
        mask: (B, T) attention mask (unused; kept so every pooling has one signature).
    Returns:
        (B, H) the state at position 0.
    """
    return hidden[:, 0]  # (B, H)


def last_pool(hidden: Tensor, mask: Tensor) -> Tensor:
    """State of the last real token: in a causal LM it is the only position that has seen the whole text.

    Args:
        hidden: (B, T, H) token states.
        mask: (B, T) attention mask, 1 for real tokens.
    Returns:
        (B, H) the state at each row's last non-pad position (position 0 for an all-pad row).
    """
    positions = torch.arange(mask.shape[1], device=mask.device)  # (T,)
    # The highest position whose mask is set; argmax of position*mask finds it under right or left padding.
    last = (positions.unsqueeze(0) * (mask > 0)).argmax(dim=1)  # (B,)
    rows = torch.arange(hidden.shape[0], device=hidden.device)  # (B,)
    return hidden[rows, last]  # (B, H)


POOLINGS: dict[str, PoolingFn] = {"mean": mean_pool, "cls": cls_pool, "last": last_pool}


def get_pooling(name: str) -> PoolingFn:
    """Look a pooling up by its spec name; an unknown name lists the choices."""
    try:
        return POOLINGS[name]
    except KeyError:
        raise ValueError(f"pooling must be one of {sorted(POOLINGS)}, got {name!r}") from None
