"""Task heads on top of the user and item towers: ranking (two-tower softmax), CTR (BCE) and rating (MSE)."""

from fusionrec.model.heads.base import Head
from fusionrec.model.heads.pointwise import CTRHead, PointwiseHead, RatingHead
from fusionrec.model.heads.ranking import RankingHead
from fusionrec.model.heads.registry import HEADS, build_head

__all__ = ["CTRHead", "HEADS", "Head", "PointwiseHead", "RankingHead", "RatingHead", "build_head"]
