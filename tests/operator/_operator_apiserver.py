"""A stand-in for how kube-apiserver admits a custom resource, for tests without a cluster.

It follows the apiextensions-apiserver code (v1.36) step by step, and was checked against a real kube-apiserver
v1.36.3: tests/operator/test_invalid_specs.py runs its whole table through both and compares the errors word for
word, and the valid edge cases' stored objects.

- Writing the CRD (`check_crd`): every `default` is validated *as written* against its own node's schema, list
  types and CEL rules; the defaults nested inside a default are not filled first (a `default: {}` on an object
  whose rules read its fields is refused: `no such key`). An object's default must be complete.
- Admitting an object (`admit`), in the server's order:
  1. unknown fields are refused (strict field validation, what kubectl asks for: HTTP 400, before anything
     else); under the API's default (`Warn`) they would be pruned instead;
  2. a null where the node is not nullable is dropped when the node has no default, else replaced by it;
  3. defaults are filled top-down, *including* inside a default just filled (the server copies the default in,
     then recurses into it), so at request time a partial default would be completed (not at CRD time);
  4. the OpenAPI schema (types, enums, bounds, patterns) and `x-kubernetes-list-type` (`set`: no duplicate
     items, `map`: no duplicate keys) are validated; a null never passes an `enum`, even a nullable one
     that lists null (kube-openapi compares only non-null values), but a null skips `pattern`; a string's
     checks stop at the first that fails (maxLength, minLength, pattern);
  5. the CEL rules run unless step 4 found a "blocking" error (a wrong type, an unsupported enum value, a
     missing required field, a string or list over its limit), which then adds the server's
     `<nil>: ... some validation rules were not checked` line; CEL skips null values, and a null field of an
     object is absent for `has()`.
  Problems are `field.path: <the server's words>` (`Unsupported value: ...`, `Required value`, `Too long: ...`,
  `Duplicate value: ...`, `Invalid value: ...: <rule message>`); HTTP 422, or 400 for unknown fields.

What it cannot check: the CEL cost estimates (per rule and per CRD) that make the server refuse a CRD (only a
real server tells; the spec bounds every string and list the rules read); cel-go's error text for a rule that
fails to evaluate (cel-python's is reported instead) and Kubernetes' CEL libraries (the one library function the
rules use, `isSorted`, is supplied here); kube-openapi's wording for schema keywords the CRD does not use;
metadata validation beyond the schema given for `metadata.name` (ObjectMeta itself is the server's); values reach
CEL as the server types them (`number` fields as doubles).
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import celpy
import jsonschema
from celpy import celtypes


class Refused(Exception):
    """The object is refused: `problems` are `field.path: message` lines; `status` the HTTP status the API
    server answers (400 for unknown fields under strict field validation, 422 otherwise)."""

    def __init__(self, problems: list[str], status: int = 422) -> None:
        self.problems = problems
        self.status = status
        super().__init__("\n".join(problems))


def _root_schema(crd: dict[str, Any]) -> dict[str, Any]:
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI v3.0 (as Kubernetes uses it) -> JSON Schema draft 4 that refuses unknown fields.

    The root `metadata` is Kubernetes' ObjectMeta (only `name` may be restricted by the CRD), so it stays open.
    """
    out = copy.deepcopy(schema)

    def walk(node: dict[str, Any], meta: bool = False) -> None:
        if node.get("nullable"):
            kinds = node.get("type")
            if isinstance(kinds, str):
                node["type"] = [kinds, "null"]
            # no null added to `enum`: the server checks a null against the enum as written
        if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields") and not meta:
            node.setdefault("additionalProperties", False)
        for child in node.get("properties", {}).values():
            walk(child)
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                walk(node[key])

    walk(out)
    if isinstance(out.get("properties", {}).get("metadata"), dict):
        out["properties"]["metadata"].pop("additionalProperties", None)
    return out


def _child_schema(schema: dict[str, Any] | None, key: str) -> dict[str, Any] | None:
    if not schema:
        return None
    if key in schema.get("properties", {}):
        return schema["properties"][key]
    extra = schema.get("additionalProperties")
    return extra if isinstance(extra, dict) else None


def prune_nulls(schema: dict[str, Any] | None, value: Any) -> Any:
    """Drop the nulls of non-nullable fields that have no default (PruneNonNullableNullsWithoutDefaults)."""
    value = copy.deepcopy(value)

    def walk(node: dict[str, Any] | None, x: Any) -> None:
        if isinstance(x, dict):
            for key in list(x):
                child = _child_schema(node, key)
                if x[key] is None and child is not None and not child.get("nullable") and "default" not in child:
                    del x[key]
                else:
                    walk(child, x[key])
        elif isinstance(x, list):
            for item in x:
                walk((node or {}).get("items"), item)

    walk(schema, value)
    return value


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Fill `default`s top-down as the server does: an absent field, or a null where the node is not
    nullable, gets a copy of the default, and the recursion then goes into it (a default's own nested
    defaults are filled at request time; at CRD time they are not: see check_crd)."""
    value = copy.deepcopy(value)

    def walk(node: dict[str, Any] | None, x: Any) -> None:
        if not node:
            return
        if isinstance(x, dict):
            for name, child in node.get("properties", {}).items():
                if "default" in child and (name not in x or (x[name] is None and not child.get("nullable"))):
                    x[name] = copy.deepcopy(child["default"])
            for key in x:
                walk(_child_schema(node, key), x[key])
        elif isinstance(x, list) and isinstance(node.get("items"), dict):
            for index, item in enumerate(x):
                if item is None and not node["items"].get("nullable") and "default" in node["items"]:
                    x[index] = copy.deepcopy(node["items"]["default"])
                walk(node["items"], x[index])

    walk(schema, value)
    return value


def _path(parts: Any) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _go(value: Any) -> str:
    """A value as the server quotes it in messages (strings in double quotes, numbers bare)."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if isinstance(value, (dict, list)):  # the server names the type of a container, not its content
        return '"object"' if isinstance(value, dict) else '"array"'
    if isinstance(value, float) and value.is_integer():  # Go's %v prints the float64 1.0 as 1
        return str(int(value))
    return str(value)


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number" if isinstance(value, float) else "integer"
    return {str: "string", dict: "object", list: "array", type(None): "null"}.get(type(value), "unknown")


# Error types after which the server skips the CEL rules (strategy.go hasBlockingErr).
_BLOCKING = {"Unsupported value", "Required value", "Too long", "Too many", "Invalid type"}


def _schema_error(error: jsonschema.ValidationError) -> tuple[str, str, str]:
    """(path, error type, message) in the server's words for one jsonschema error."""
    path = _path(error.absolute_path) or "<root>"
    kind, value, schema = error.validator, error.instance, error.schema
    if kind == "additionalProperties":
        unknown = sorted(set(value) - set(schema.get("properties", {})))
        return (path, "unknown field", "; ".join(f'unknown field "{_path([*error.absolute_path, u])}"'
                                                 for u in unknown))
    if kind == "required":
        missing = re.match(r"^'(.+)' is a required property$", error.message)
        name = missing.group(1) if missing else "?"
        return (_path([*error.absolute_path, name]), "Required value", "Required value")
    if kind == "enum":
        supported = ", ".join(_go(v) for v in error.validator_value)
        return path, "Unsupported value", f"Unsupported value: {_go(value)}: supported values: {supported}"
    if kind == "type":
        wanted = schema.get("type")
        wanted = wanted[0] if isinstance(wanted, list) else wanted
        got = json.dumps(_json_type(value))
        return path, "Invalid type", f"Invalid value: {got}: {path} in body must be of type {wanted}: {got}"
    if kind == "maxLength":
        return path, "Too long", f"Too long: may not be more than {error.validator_value} bytes"
    if kind in ("maxItems", "maxProperties"):
        what = "items" if kind == "maxItems" else "properties"
        return path, "Too many", f"Too many: {len(value)}: must have at most {error.validator_value} {what}"
    if kind == "minLength":
        return (path, "Invalid value",
                f"Invalid value: {_go(value)}: {path} in body should be at least {error.validator_value} chars long")
    if kind in ("minItems", "minProperties"):
        what = "items" if kind == "minItems" else "properties"
        return (path, "Invalid value",
                f"Invalid value: {len(value)}: {path} in body should have at least {error.validator_value} {what}")
    if kind in ("minimum", "maximum"):
        exclusive = schema.get("exclusiveMinimum" if kind == "minimum" else "exclusiveMaximum")
        words = {("minimum", False): "greater than or equal to", ("minimum", True): "greater than",
                 ("maximum", False): "less than or equal to", ("maximum", True): "less than"}[(kind, bool(exclusive))]
        return (path, "Invalid value",
                f"Invalid value: {_go(value)}: {path} in body should be {words} {error.validator_value}")
    if kind == "pattern":
        return (path, "Invalid value",
                f"Invalid value: {_go(value)}: {path} in body should match '{error.validator_value}'")
    return path, "Invalid value", f"Invalid value: {_go(value)}: {error.message}"


def list_type_problems(schema: dict[str, Any], value: Any, path: str = "") -> list[str]:
    """`x-kubernetes-list-type` set (unique items) and map (unique keys): `Duplicate value` at the repeat."""
    problems: list[str] = []
    if isinstance(value, list):
        kind = schema.get("x-kubernetes-list-type")
        seen: list[Any] = []
        for index, item in enumerate(value):
            key = item
            if kind == "map" and isinstance(item, dict):
                key = {k: item.get(k) for k in schema.get("x-kubernetes-list-map-keys", [])}
            if kind in ("set", "map"):
                if key in seen:
                    shown = _go(key) if kind == "set" else json.dumps(key, separators=(",", ":"))
                    problems.append(f"{path}[{index}]: Duplicate value: {shown}")
                seen.append(key)
            if isinstance(schema.get("items"), dict):
                problems += list_type_problems(schema["items"], item, f"{path}[{index}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            child = _child_schema(schema, key)
            if child is not None:
                problems += list_type_problems(child, item, f"{path}.{key}" if path else key)
    return problems


def _for_cel(schema: dict[str, Any], value: Any) -> Any:
    """Values as Kubernetes hands them to CEL: `number` fields are doubles (YAML `1` included); a null field of
    an object with properties is absent (`has()` is false), as in the server's unstructuredMap."""
    if isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties") if isinstance(schema.get("additionalProperties"), dict) else {}
        return {k: _for_cel(props.get(k, extra), v) for k, v in value.items() if v is not None or not props}
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


_REASONS = {"FieldValueRequired": "Required value", "FieldValueDuplicate": "Duplicate value",
            "FieldValueForbidden": "Forbidden"}


def cel_problems(schema: dict[str, Any], value: Any, path: str = "") -> list[str]:
    problems = []
    if value is None:
        return problems
    for rule in schema.get("x-kubernetes-validations", []):
        try:
            result = evaluate(rule["rule"], value, schema)
        except celpy.CELEvalError as exc:
            result = exc
        if isinstance(result, celpy.CELEvalError):  # the server reports it as an error of the object
            error = result.args[0] if result.args else result
            problems.append(f"{path or '<root>'}: Invalid value: {_go(value)}: {error} evaluating rule: "
                            f"{rule.get('message', rule['rule'])}")
            continue
        if not result:
            where = path + rule.get("fieldPath", "")
            message = (str(evaluate(rule["messageExpression"], value, schema)) if "messageExpression" in rule
                       else rule["message"])
            kind = _REASONS.get(rule.get("reason", ""))
            shown = "" if isinstance(value, (dict, list)) else f"{_go(value)}: "  # the server omits containers
            text = f"{kind}: {message}" if kind else f"Invalid value: {shown}{message}"
            problems.append(f"{where or '<root>'}: {text}")
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


def _validate(schema: dict[str, Any], value: Any) -> tuple[list[str], bool]:
    """(problems, blocking) of schema and list-type validation; unknown fields count as problems."""
    found = list(jsonschema.Draft4Validator(strict(schema)).iter_errors(value))
    # kube-openapi's string validator stops at its first failure (maxLength, minLength, then pattern): an empty
    # string that also misses the pattern is reported as too short only.
    short = {tuple(e.absolute_path) for e in found if e.validator in ("maxLength", "minLength")}
    errors = [_schema_error(e) for e in found if not (e.validator == "pattern" and tuple(e.absolute_path) in short)]
    problems = [f"{path}: {message}" for path, _, message in errors] + list_type_problems(schema, value)
    return problems, any(kind in _BLOCKING for _, kind, _ in errors)


def admit(crd: dict[str, Any], obj: dict[str, Any]) -> dict[str, Any]:
    """The object as stored (nulls pruned, defaults applied), or Refused listing `field.path: message` lines."""
    schema = _root_schema(crd)
    unknown = [f"strict decoding error: {_schema_error(e)[2]}"
               for e in jsonschema.Draft4Validator(strict(schema)).iter_errors(obj)
               if e.validator == "additionalProperties"]
    if unknown:  # strict field validation: a 400 before anything else
        raise Refused(unknown, status=400)
    stored = apply_defaults(schema, prune_nulls(schema, obj))
    problems, blocking = _validate(schema, stored)
    if blocking:
        problems.append("<nil>: Invalid value: null: some validation rules were not checked because the object "
                        "was invalid; correct the existing errors to complete validation")
    else:
        problems += cel_problems(schema, stored)
    if problems:
        raise Refused(problems)
    return stored


def check_crd(crd: dict[str, Any]) -> list[str]:
    """What the server refuses in the CRD's defaults (ValidateDefaults): each default, as written (no nested
    defaults filled), against its node's schema, list types and CEL rules. Empty when fine."""
    problems: list[str] = []

    def walk(node: dict[str, Any], path: str) -> None:
        if "default" in node:
            default = node["default"]
            where = f"{path}.default"
            found, blocking = _validate(node, default)
            if not found and not blocking:  # e.g. `no such key` on a field a partial default leaves out
                found = cel_problems(node, default)
            problems.extend(where + (p[len("<root>"):] if p.startswith("<root>") else p if p.startswith((".", "["))
                                     else f".{p}") for p in found)
        for name, child in node.get("properties", {}).items():
            walk(child, f"{path}.properties[{name}]")
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{path}.items")

    walk(_root_schema(crd), "openAPIV3Schema")
    return problems
