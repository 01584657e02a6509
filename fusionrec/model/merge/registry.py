"""Every merge method, by the name `merge.method` uses. Register a new method here and nowhere else.

TIES, DARE-linear, DARE-TIES and task arithmetic are one class with different settings, so a fix to the
task-vector arithmetic reaches all four. The keys must equal `fusionrec.choices.MERGE_METHODS`, where each
method's parameters are defined (the spec is generated from them; tests/spec checks both).
"""

from __future__ import annotations

from fusionrec.errors import UserError
from fusionrec.model.merge.base import MergeMethod
from fusionrec.model.merge.linear import LinearMerge
from fusionrec.model.merge.slerp import SlerpMerge
from fusionrec.model.merge.task_arithmetic import GeneralizedTaskArithmetic

_TASK_ARITHMETIC = "https://arxiv.org/abs/2212.04089"
_TIES = "https://arxiv.org/abs/2306.01708"
_DARE = "https://arxiv.org/abs/2311.03099"

REGISTRY: dict[str, MergeMethod] = {
    method.name(): method
    for method in (
        LinearMerge(),
        GeneralizedTaskArithmetic("task_arithmetic", "Task Arithmetic", _TASK_ARITHMETIC),
        GeneralizedTaskArithmetic("ties", "TIES", _TIES, sparsify="magnitude", consensus=True),
        GeneralizedTaskArithmetic("dare_linear", "DARE (linear)", _DARE, sparsify="random"),
        GeneralizedTaskArithmetic("dare_ties", "DARE-TIES", _DARE, sparsify="random", consensus=True),
        SlerpMerge(),
    )
}


def get_method(name: str) -> MergeMethod:
    """The registered method called `name`; UserError listing the known names otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise UserError(f"unknown merge method {name!r}; known: {', '.join(REGISTRY)}", field="merge.method") from None
