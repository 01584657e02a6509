"""Every task head, by the name `task.type` uses in a spec. Register new heads here, and only here."""

from __future__ import annotations

from fusionrec.model.heads.base import Head
from fusionrec.model.heads.pointwise import CTRHead, RatingHead
from fusionrec.model.heads.ranking import RankingHead

HEADS: dict[str, type[Head]] = {cls.name: cls for cls in (RankingHead, CTRHead, RatingHead)}


def build_head(task: str, *, dim: int, n_users: int, negatives: str = "full", num_negatives: int = 256,
               hidden: int = 128, dropout: float = 0.0, cross_layers: int = 0) -> Head:
    """The head for a task type (`task.type` in a spec).

    Args:
        task: "ranking", "ctr" or "rating".
        dim: tower dimension D.
        n_users: users in the training vocabulary (per-user biases of the pointwise heads).
        negatives, num_negatives: the ranking head's softmax candidates (see `RankingHead`).
        hidden, dropout: the pointwise heads' interaction MLP.
        cross_layers: the pointwise heads' explicit cross layers (0: none).
    """
    try:
        cls = HEADS[task]
    except KeyError:
        raise ValueError(f"task.type {task!r} has no head; known heads: {sorted(HEADS)}") from None
    if cls is RankingHead:
        return RankingHead(negatives, num_negatives)  # type: ignore[arg-type]  # a str; RankingHead checks it
    return cls(dim, n_users, hidden=hidden, dropout=dropout, cross_layers=cross_layers)
