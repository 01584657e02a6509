"""What a spec may choose, in one torch-free table the spec, the CRD and the implementations all read.

- `MODEL_SOURCE_SCHEMES`: the `scheme://` prefixes `fusionrec.model.sources` loads models from;
- `BACKEND_PRECISIONS`: which precisions each compile backend builds (`fusionrec.compile.registry`);
- `MERGE_METHODS`: every merge method's parameters (`ParamDef`), whether it needs a base and how many models it
  takes; `fusionrec.spec` generates one pydantic model per method from it (a discriminated union on
  `merge.method`), the CRD follows from that model, and `fusionrec.model.merge` reads the same definitions.

The operator imports this module through `fusionrec.spec`, so it imports nothing beyond the standard library
(an import-linter contract keeps torch and model code out of the operator).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

# --- model sources ---------------------------------------------------------------------------------------------

# Schemes a model (`encoders[].source`, `merge.base`, `merge.models[].source`) may use; a plain path is local.
MODEL_SOURCE_SCHEMES = ("pkg", "hf", "pvc", "file", "s3", "gs")
MODEL_SOURCE_FIX = ("use a local folder, file://, pkg://<package>[/subdir], hf://org/name, pvc://<claim>/<path>, "
                    "s3://<bucket>/<prefix> or gs://<bucket>/<prefix>; or run `fusionrec models pull` on a machine "
                    "that reaches the model and give its folder")


def model_source_problem(source: str) -> str | None:
    """Why `source` names no model fusionrec can load (an unsupported scheme), or None when it can."""
    match = re.match(r"^([a-z][a-z0-9+.-]*)://", source)
    if match and match.group(1) not in MODEL_SOURCE_SCHEMES:
        return f"models are not loaded from {match.group(1)}:// sources"
    return None


# --- compile backends ------------------------------------------------------------------------------------------

PRECISIONS = ("fp32", "fp16", "bf16", "int8")
BACKEND_PRECISIONS: dict[str, tuple[str, ...]] = {
    "onnxruntime": ("fp32", "int8"),
    "tensorrt": ("fp32", "fp16", "bf16"),
    "torch": ("fp32", "fp16", "bf16"),
}


def precision_problem(backend: str, precision: str) -> tuple[str, str] | None:
    """(message, fix) when `backend` does not compile `precision`, else None."""
    supported = BACKEND_PRECISIONS.get(backend)
    if supported is None or precision in supported:
        return None
    others = sorted(name for name, precisions in BACKEND_PRECISIONS.items() if precision in precisions)
    fix = f"for {precision} use backend {' or '.join(others)}" if others else f"use one of {list(supported)}"
    return f"backend {backend} does not compile {precision}; it supports {list(supported)}", fix


# --- merge methods ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParamDef:
    """A typed method parameter, named as in the YAML spec (camelCase) so errors point at the user's key.

    Bounds are declarative (`ge`, `gt`, `le`) so the spec and the CRD can be generated from them; `check` turns
    a raw value into the one the method uses and raises ValueError (naming the value) when it is out of range.
    `convert`, where set, replaces the kind's own check (SLERP's tFilters compiles its patterns).
    """

    name: str
    kind: type
    description: str
    required: bool = False
    default: Any = None
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    convert: Callable[[Any], Any] | None = None

    def check(self, value: Any) -> Any:
        if self.convert is not None:
            return self.convert(value)
        if self.kind is bool:
            if not isinstance(value, bool):
                raise ValueError(f"must be true or false, got {value!r}")
            return value
        if self.kind is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"must be an integer, got {value!r}")
            _check_bounds(value, value, self)
            return value
        if self.kind is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"must be a number, got {value!r}")
            number = float(value)
            if not math.isfinite(number):
                raise ValueError(f"must be a finite number, got {value!r}")
            _check_bounds(number, value, self)
            return number
        if not isinstance(value, self.kind):
            raise ValueError(f"must be a {self.kind.__name__}, got {value!r}")
        return value


def _check_bounds(number: float, raw: Any, pdef: ParamDef) -> None:
    low = pdef.gt if pdef.gt is not None else pdef.ge
    too_low = (pdef.gt is not None and number <= pdef.gt) or (pdef.ge is not None and number < pdef.ge)
    too_high = pdef.le is not None and number > pdef.le
    if too_low or too_high:
        left = "(" if pdef.gt is not None else "["
        raise ValueError(f"must be in {left}{low if low is not None else '-inf'}, "
                         f"{pdef.le if pdef.le is not None else 'inf'}], got {raw!r}")


T_FILTERS_MAX = 64  # merge.tFilters entries
T_FILTER_KEY_MAX = 256  # a merge.tFilters key (a tensor-name regex)


def compile_t_filters(value: Any) -> tuple[tuple[re.Pattern[str], float], ...]:
    """SLERP's tFilters {regex or substring: t} as (compiled pattern, t) pairs, in order; ValueError when bad."""
    if not isinstance(value, Mapping):
        raise ValueError(f"must be a mapping of tensor-name pattern to t, got {value!r}")
    if len(value) > T_FILTERS_MAX:
        raise ValueError(f"at most {T_FILTERS_MAX} patterns, got {len(value)}")
    t_def = ParamDef("t", float, "t", ge=0, le=1)
    compiled = []
    for pattern, t in value.items():
        if not isinstance(pattern, str) or not 1 <= len(pattern) <= T_FILTER_KEY_MAX:
            raise ValueError(f"a key is a regex or substring of 1 to {T_FILTER_KEY_MAX} characters, got {pattern!r}"
                             if isinstance(pattern, str) and len(pattern) <= 40 else
                             f"a key is a regex or substring of 1 to {T_FILTER_KEY_MAX} characters")
        try:
            regex = re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"{pattern!r} is not a valid regular expression: {exc}") from None
        try:
            compiled.append((regex, t_def.check(t)))
        except ValueError as exc:
            raise ValueError(f"the t of {pattern!r} {exc}") from None
    return tuple(compiled)


@dataclass(frozen=True)
class MergeMethodInfo:
    """One merge method as the spec sees it: its parameters, whether it takes a base, how many models."""

    name: str
    params: tuple[ParamDef, ...]
    needs_base: bool = False
    models: int | None = None  # exactly this many models (SLERP: 2), else 1 to 16
    uses_weights: bool = True  # False: per-model weights mean nothing to the method (SLERP uses t)
    description: str = ""


_LAMBDA = ParamDef("lambda", float, "scale of the combined task vector", default=1.0, gt=0)
_DENSITY = ParamDef("density", float, "fraction of each task vector kept (e.g. 0.2)", required=True, gt=0, le=1)
_RESCALE = ParamDef("rescale", bool, "rescale kept entries by 1/density", default=True)
_SEED = ParamDef("seed", int, "seed of the random drop masks", default=0, ge=0)
_T = ParamDef("t", float, "interpolation factor: 0 returns the first model, 1 the second", required=True,
              ge=0, le=1)
_T_FILTERS = ParamDef("tFilters", dict, "per-tensor t: {regex or substring of the tensor name: t}; first match "
                      "wins, else t", convert=compile_t_filters)

MERGE_METHODS: dict[str, MergeMethodInfo] = {m.name: m for m in (
    MergeMethodInfo("linear", (), description="weighted average of the models (a model soup)"),
    MergeMethodInfo("task_arithmetic", (_LAMBDA,), needs_base=True,
                    description="base + lambda * weighted sum of task vectors"),
    MergeMethodInfo("ties", (_LAMBDA, _DENSITY), needs_base=True,
                    description="TIES: trimmed task vectors, sign consensus, disjoint mean"),
    MergeMethodInfo("dare_linear", (_LAMBDA, _DENSITY, _RESCALE, _SEED), needs_base=True,
                    description="DARE: randomly dropped task vectors, summed"),
    MergeMethodInfo("dare_ties", (_LAMBDA, _DENSITY, _RESCALE, _SEED), needs_base=True,
                    description="DARE-TIES: randomly dropped task vectors, sign consensus"),
    MergeMethodInfo("slerp", (_T, _T_FILTERS), models=2, uses_weights=False,
                    description="spherical interpolation between exactly two models"),
)}

