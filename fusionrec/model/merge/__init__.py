"""Parameter-space merging of same-architecture checkpoints: linear soups, task arithmetic, TIES, DARE, SLERP.

`run_merge(spec, out_dir)` turns a `MergeSpec` into a new Hugging Face model folder with a merge_report.json;
`REGISTRY` maps each `merge.method` name to its method object, for use on tensors directly.
"""

from fusionrec.model.merge.base import MergedTensor, MergeMethod, ParamDef, TensorStats
from fusionrec.model.merge.registry import REGISTRY, get_method
from fusionrec.model.merge.report import InputRecord, MergeReport
from fusionrec.model.merge.runner import load_merge_config, run_merge

__all__ = [
    "REGISTRY",
    "InputRecord",
    "MergeMethod",
    "MergeReport",
    "MergedTensor",
    "ParamDef",
    "TensorStats",
    "get_method",
    "load_merge_config",
    "run_merge",
]
