"""A stand-in for how the API server admits a custom resource, for tests without a cluster.

Order as in kube-apiserver: apply the schema's defaults, validate against the OpenAPI schema with unknown
fields refused (strict field validation), then evaluate the `x-kubernetes-validations` CEL rules with
cel-python. Two gaps to keep in mind: cel-python lacks Kubernetes' CEL libraries, so the one list function
the rules use (`isSorted`) is supplied here; values reach CEL as the server types them (`number` fields as
doubles); and null values are treated as absent for `has()`, which is how the rules are written to read,
not something checked against a real API server (the e2e tests do).
"""

from __future__ import annotations

import copy
from typing import Any

import celpy
import jsonschema
from celpy import celtypes


class Refused(Exception):
    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI v3.0 (as Kubernetes uses it) -> JSON Schema draft 4 that refuses unknown fields."""
    out = copy.deepcopy(schema)

    def walk(node: dict[str, Any]) -> None:
        if node.get("nullable"):
            kinds = node.get("type")
            if isinstance(kinds, str):
                node["type"] = [kinds, "null"]
            if "enum" in node:
                node["enum"] = [*node["enum"], None]
        if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            node.setdefault("additionalProperties", False)
        for child in node.get("properties", {}).values():
            walk(child)
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                walk(node[key])
        for key in ("anyOf", "allOf", "oneOf"):
            for child in node.get(key, []):
                walk(child)

    walk(out)
    return out


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Fill `default`s top-down; a defaulted object gets its own fields' defaults too (as the server does)."""
    value = copy.deepcopy(value)
    if isinstance(value, dict) and "properties" in schema:
        for name, child in schema["properties"].items():
            if name not in value and "default" in child:
                value[name] = copy.deepcopy(child["default"])
            if name in value and value[name] is not None:
                value[name] = apply_defaults(child, value[name])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        value = [apply_defaults(schema["items"], item) for item in value]
    return value


def _path(parts: Any) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _for_cel(schema: dict[str, Any], value: Any) -> Any:
    """Values as Kubernetes hands them to CEL: `number` fields are doubles (YAML `1` included), nulls absent."""
    if isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties") if isinstance(schema.get("additionalProperties"), dict) else {}
        return {k: _for_cel(props.get(k, extra), v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_for_cel(schema.get("items", {}), v) for v in value]
    if schema.get("type") == "number" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _is_sorted(values: celtypes.ListType) -> celtypes.BoolType:
    return celtypes.BoolType(all(a <= b for a, b in zip(values, values[1:], strict=False)))


_ENV = celpy.Environment()
_FUNCTIONS = {"isSorted": _is_sorted}


def evaluate(expression: str, self_value: Any, schema: dict[str, Any] | None = None) -> Any:
    program = _ENV.program(_ENV.compile(expression), functions=_FUNCTIONS)
    return program.evaluate({"self": celpy.json_to_cel(_for_cel(schema or {}, self_value))})


def cel_problems(schema: dict[str, Any], value: Any, path: str = "") -> list[str]:
    problems = []
    if value is None:
        return problems
    for rule in schema.get("x-kubernetes-validations", []):
        result = evaluate(rule["rule"], value, schema)
        if isinstance(result, celpy.CELEvalError):
            raise AssertionError(f"CEL rule {rule['rule']!r} failed to evaluate at {path}: {result}")
        if not result:
            where = path + rule.get("fieldPath", "")
            message = (str(evaluate(rule["messageExpression"], value, schema)) if "messageExpression" in rule
                       else rule["message"])
            problems.append(f"{where or '<root>'}: {message}")
    if isinstance(value, dict):
        for name, child in schema.get("properties", {}).items():
            if name in value:
                problems += cel_problems(child, value[name], f"{path}.{name}" if path else name)
        if isinstance(schema.get("additionalProperties"), dict):
            for key, item in value.items():
                problems += cel_problems(schema["additionalProperties"], item, f"{path}[{key}]")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            problems += cel_problems(schema["items"], item, f"{path}[{index}]")
    return problems


def admit(crd: dict[str, Any], obj: dict[str, Any]) -> dict[str, Any]:
    """The object as stored (defaults applied), or Refused listing `field.path: message` lines."""
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    defaulted = apply_defaults(schema, obj)
    validator = jsonschema.Draft4Validator(strict(schema))
    problems = [f"{_path(e.absolute_path) or '<root>'}: {e.message}" for e in validator.iter_errors(defaulted)]
    if not problems:  # the server runs CEL only on a schema-valid object
        problems = cel_problems(schema, defaulted)
    if problems:
        raise Refused(problems)
    return defaulted
