"""Full-catalogue ranking for the single-target leave-one-out protocol (design.md section 4).

A user's score row covers every item; the items the user has already seen are excluded, but the held-out
target never is, even when the user interacted with it before (repeat consumption). The metric inputs are
the target's 1-based rank, so HR, NDCG and MRR at any K come from one pass over the scores.

Ties count against the model: the rank is the number of non-excluded items scoring at least as high as the
target (the target included). A constant scorer therefore gets the worst rank, not the best, and the result
does not depend on how a sort happens to order equal scores.
"""

from __future__ import annotations

import scipy.sparse as sp
import torch


def target_ranks(scores: torch.Tensor, targets: torch.Tensor, exclude: sp.csr_matrix | None = None) -> torch.Tensor:
    """1-based rank of each row's target among the row's non-excluded items.

    Args:
        scores: [B, n_items] float scores, higher is better.
        targets: [B] item index of each row's target.
        exclude: [B, n_items] sparse 0/1 rows of items to leave out of the ranking (the target is kept).
    Returns:
        [B] int64 ranks, 1 = best.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be [batch, n_items], got shape {tuple(scores.shape)}")
    batch, n_items = scores.shape
    if targets.shape != (batch,):
        raise ValueError(f"targets must have shape ({batch},) to match scores {tuple(scores.shape)}, "
                         f"got {tuple(targets.shape)}")
    if torch.isnan(scores).any():
        bad_rows = torch.isnan(scores).any(dim=1).nonzero().flatten()[:5].tolist()
        raise ValueError(f"scores contain NaN (first rows: {bad_rows}); a NaN would rank anywhere")
    targets = targets.to(device=scores.device, dtype=torch.long)
    rows = torch.arange(batch, device=scores.device)
    target_scores = scores[rows, targets]  # [B]
    candidates = scores >= target_scores.unsqueeze(1)  # [B, n_items]; the target counts itself
    if exclude is not None:
        if exclude.shape != (batch, n_items):
            raise ValueError(f"exclude must have shape {(batch, n_items)}, got {exclude.shape}")
        coo = exclude.tocoo()
        excluded = torch.zeros(batch, n_items, dtype=torch.bool, device=scores.device)
        excluded[torch.as_tensor(coo.row, dtype=torch.long, device=scores.device),
                 torch.as_tensor(coo.col, dtype=torch.long, device=scores.device)] = True
        excluded[rows, targets] = False  # the target is never excluded
        candidates &= ~excluded
    return candidates.sum(dim=1)


def hit_rate(ranks: torch.Tensor, k: int) -> torch.Tensor:
    """[U] 1.0 where the target is in the top k."""
    return (ranks <= k).double()


def ndcg(ranks: torch.Tensor, k: int) -> torch.Tensor:
    """[U] 1 / log2(rank + 1) inside the top k (a single relevant item, so the ideal DCG is 1)."""
    ranks = ranks.double()
    return torch.where(ranks <= k, 1.0 / torch.log2(ranks + 1.0), torch.zeros_like(ranks))


def reciprocal_rank(ranks: torch.Tensor, k: int) -> torch.Tensor:
    """[U] 1 / rank inside the top k."""
    ranks = ranks.double()
    return torch.where(ranks <= k, 1.0 / ranks, torch.zeros_like(ranks))

