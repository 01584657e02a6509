"""Turn a pydantic model's JSON Schema into a Kubernetes *structural* OpenAPI v3 schema.

The API server accepts only structural schemas: every node typed, no `$ref`, no `anyOf` with null
(`nullable: true` instead), OpenAPI 3.0's boolean `exclusiveMinimum`, and no `additionalProperties`
beside `properties` (unknown fields are pruned, or refused under strict field validation). Pydantic emits
JSON Schema 2020-12, so this module rewrites it; any keyword it does not know raises, so a new kind of
field in the spec cannot slip into the CRD in a form the API server would reject.

Two things the API server checks that JSON Schema does not say:

- A `default` is validated as it is written, against its node's schema and CEL rules, when the CRD is
  created: the server does not fill the defaults nested inside a default first. So the default of a
  nested model is the model's complete dump (every field's own default), never `{}`.
- No `oneOf` of differently shaped objects: a tagged union of models (pydantic's discriminated union, such as
  `spec.merge`, one model per merge method) is flattened into one object holding every member's properties
  (a property shared by members must be the same in each), whose CEL rules say, member by member (guarded by
  the tag), which properties it requires and which it does not take, plus each member's own rules.
- A null never passes `enum`, even where the node is `nullable` and null is listed (kube-openapi compares
  only non-null values with the enum), and CEL rules skip null values. So a nullable string enum is written
  as a `pattern` that matches exactly its values (a null passes `pattern`), with `maxLength` for CEL costs.
"""

from __future__ import annotations

import copy
import inspect
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any, get_args

from pydantic import BaseModel

# Keywords copied as they are (after their children are converted).
_PLAIN = {"type", "description", "enum", "minimum", "maximum", "minLength", "maxLength", "pattern", "minProperties",
          "maxProperties",
          "minItems", "maxItems", "default", "format", "nullable", "required"}

# Extra schema for one property or one model: `(model class, alias or None) -> dict merged into the node`.
Extras = Mapping[tuple[type[BaseModel], str | None], Mapping[str, Any]]


def models_in(root: type[BaseModel]) -> Iterator[type[BaseModel]]:
    """Every BaseModel class reachable from `root` through field annotations, root first."""
    seen: set[type[BaseModel]] = set()
    stack = [root]
    while stack:
        cls = stack.pop()
        if cls in seen:
            continue
        seen.add(cls)
        yield cls
        for info in cls.model_fields.values():
            stack.extend(_models_of(info.annotation))


def _models_of(annotation: Any) -> Iterator[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for arg in get_args(annotation):
        yield from _models_of(arg)


def structural_schema(root: type[BaseModel], extras: Extras | None = None) -> dict[str, Any]:
    """The structural schema of `root`, with `extras` (CEL rules, limits) merged where they belong."""
    raw = root.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    classes = {cls.__name__: cls for cls in models_in(root)}
    converter = _Converter(defs, classes, extras or {})
    schema = converter.model(raw, root)
    unused = set(extras or {}) - converter.used
    if unused:
        raise ValueError(f"schema extras for fields that do not exist: {sorted(map(str, unused))}")
    return ordered(schema)


_ORDER = ["type", "description", "nullable", "default", "enum", "format", "minimum", "exclusiveMinimum",
          "maximum", "exclusiveMaximum", "minLength", "maxLength", "pattern", "minItems", "maxItems", "maxProperties"]


def ordered(schema: dict[str, Any]) -> dict[str, Any]:
    """Keys in a fixed, readable order (type first, children last), recursively; the CRD file diffs well."""
    out = {k: schema[k] for k in _ORDER if k in schema}
    for key, value in schema.items():
        if key in out:
            continue
        if key == "properties":
            value = {name: ordered(child) for name, child in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            value = ordered(value)
        out[key] = value
    return out


class _Converter:
    def __init__(self, defs: dict[str, Any], classes: dict[str, type[BaseModel]], extras: Extras) -> None:
        self.defs = defs
        self.classes = classes
        self.extras = extras
        self.used: set[tuple[type[BaseModel], str | None]] = set()

    def model(self, node: dict[str, Any], cls: type[BaseModel]) -> dict[str, Any]:
        out = self.keywords({k: v for k, v in node.items() if k != "properties"}, where=cls.__name__)
        out["type"] = "object"
        by_alias = {info.alias or name: info for name, info in cls.model_fields.items()}
        properties = {}
        for alias, prop in node.get("properties", {}).items():
            converted = self.node(prop, where=f"{cls.__name__}.{alias}")
            info = by_alias.get(alias)
            if info is not None and info.default_factory is not None and "default" not in converted:
                converted["default"] = _factory_default(info.default_factory)
            self._merge(converted, cls, alias)
            properties[alias] = converted
        out["properties"] = properties
        self._merge(out, cls, None)
        return out

    def _merge(self, out: dict[str, Any], cls: type[BaseModel], alias: str | None) -> None:
        extra = self.extras.get((cls, alias))
        if extra is None:
            return
        self.used.add((cls, alias))
        for key, value in extra.items():
            if key == "x-kubernetes-validations":
                out[key] = [*out.get(key, []), *copy.deepcopy(value)]
            else:
                out[key] = copy.deepcopy(value)

    def node(self, node: dict[str, Any], where: str) -> dict[str, Any]:
        if "$ref" in node:
            name = node["$ref"].rsplit("/", 1)[-1]
            cls = self.classes.get(name)  # None for enums, which pydantic also puts in $defs
            target = self.model(self.defs[name], cls) if cls else self.node(self.defs[name], where)
            siblings = self.keywords({k: v for k, v in node.items() if k != "$ref"}, where)
            return {**target, **siblings}
        if "oneOf" in node:
            return self.union(node, where)
        if "anyOf" in node:
            options = [o for o in node["anyOf"] if o != {"type": "null"}]
            if len(options) != 1:
                raise ValueError(f"{where}: a union of {len(options)} non-null types has no structural schema")
            inner = self.node(options[0], where)
            outer = self.keywords({k: v for k, v in node.items() if k != "anyOf"}, where)
            nullable = len(options) < len(node["anyOf"])
            if nullable and "enum" in inner:
                inner = _nullable_enum(inner, where)
            return {**inner, **outer, **({"nullable": True} if nullable else {})}
        out = self.keywords(node, where)
        if "enum" in out and "type" not in out:
            out["type"] = _enum_type(out["enum"], where)
        if "type" not in out:
            raise ValueError(f"{where}: every node of a structural schema needs a type; got {sorted(out)}")
        return out

    def union(self, node: dict[str, Any], where: str) -> dict[str, Any]:
        """A tagged union of models as one structural object (see the module's docstring)."""
        members: list[tuple[type[BaseModel], dict[str, Any]]] = []
        for option in node["oneOf"]:
            name = option.get("$ref", "").rsplit("/", 1)[-1]
            cls = self.classes.get(name)
            if cls is None or set(option) != {"$ref"}:
                raise ValueError(f"{where}: only a union of models has a structural form, got {option}")
            members.append((cls, self.model(self.defs[name], cls)))
        tag = _tag_property(members, where)
        values = [m["properties"][tag]["enum"][0] for _, m in members]
        properties: dict[str, Any] = {tag: {**members[0][1]["properties"][tag], "enum": values}}
        properties[tag].pop("description", None)
        for _, member in members:
            for prop, schema in member["properties"].items():
                if prop == tag:
                    continue
                if prop in properties and properties[prop] != schema:
                    raise ValueError(f"{where}.{prop}: the members of the union define it differently; a "
                                     f"structural schema has one definition per property")
                properties[prop] = schema
        required = set.intersection(*(set(m.get("required", [])) for _, m in members))
        rules: list[dict[str, Any]] = []
        for (_, member), value in zip(members, values, strict=True):
            guard = f"self.{tag} != '{value}' || "
            for prop in properties:
                if prop in member.get("required", []) and prop not in required:
                    rules.append({"rule": f"{guard}has(self.{prop})", "message": f"{prop} is required for {tag} "
                                  f"{value}", "fieldPath": f".{prop}", "reason": "FieldValueRequired"})
                elif prop not in member["properties"]:
                    rules.append({"rule": f"{guard}!has(self.{prop})",
                                  "message": f"{prop} does not apply to {tag} {value}", "fieldPath": f".{prop}"})
            for rule in member.get("x-kubernetes-validations", []):
                rules.append({**rule, "rule": f"{guard}({rule['rule']})"})
        common = next(c for c in members[0][0].__mro__ if all(issubclass(m, c) for m, _ in members))
        summary = inspect.cleandoc(common.__doc__ or "").split("\n\n")[0]  # the docstring's first paragraph
        out: dict[str, Any] = {"type": "object", "description": " ".join(summary.split())}
        if required:
            out["required"] = [p for p in properties if p in required]
        out["properties"] = properties
        if rules:
            out["x-kubernetes-validations"] = rules
        return out

    def keywords(self, node: dict[str, Any], where: str) -> dict[str, Any]:
        """Convert the keywords of one node, without resolving `$ref` or `anyOf` at this level."""
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key == "title" or (key == "default" and value is None):
                continue
            if key == "additionalProperties":
                if isinstance(value, dict):
                    out[key] = self.node(value, f"{where}{{}}")
                continue  # `false`: pruning and strict field validation refuse unknown fields
            if key == "items":
                out[key] = self.node(value, f"{where}[]")
            elif key == "const":
                out["enum"] = [value]
            elif key in ("exclusiveMinimum", "exclusiveMaximum"):
                out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
                out[key] = True
            elif key == "properties":
                out[key] = {k: self.node(v, f"{where}.{k}") for k, v in value.items()}
            elif key in _PLAIN:
                out[key] = value
            else:
                raise ValueError(f"{where}: JSON Schema keyword {key!r} has no structural equivalent here")
        return out


def _tag_property(members: list[tuple[type[BaseModel], dict[str, Any]]], where: str) -> str:
    """The property that tells the members apart: one constant value per member, all different."""
    for prop in members[0][1]["properties"]:
        values = [m["properties"].get(prop, {}).get("enum") for _, m in members]
        if all(v is not None and len(v) == 1 for v in values) and len({v[0] for v in values}) == len(values):
            return prop
    raise ValueError(f"{where}: a union of models needs a property with one constant value per member")


def _factory_default(factory: Callable[..., Any]) -> Any:
    """A default_factory's value as the API server should fill it: a model is dumped complete (camelCase,
    nulls left out), because the server validates a default as written, without filling the defaults nested
    in it first; a list or dict is dumped as is."""
    value = factory()
    if isinstance(value, BaseModel):
        return value.model_dump(by_alias=True, exclude_none=True, mode="json")
    return copy.deepcopy(value)


def _nullable_enum(node: dict[str, Any], where: str) -> dict[str, Any]:
    """A nullable string enum as the API server can take it: the same values as an anchored `pattern`."""
    values = [v for v in node["enum"] if v is not None]
    if not values or not all(isinstance(v, str) for v in values):
        raise ValueError(f"{where}: a nullable enum has no structural form unless its values are strings")
    out = {k: v for k, v in node.items() if k != "enum"}
    out["maxLength"] = max(len(v) for v in values)
    out["pattern"] = "^(" + "|".join(_go_regex_literal(v) for v in values) + ")$"
    return out


def _go_regex_literal(value: str) -> str:
    """`value` as a literal in an RE2 (Go) and Python regular expression."""
    return re.sub(r"([\\.+*?()|\[\]{}^$])", r"\\\1", value)


def _enum_type(values: list[Any], where: str) -> str:
    kinds = {type(v) for v in values}
    if kinds <= {str}:
        return "string"
    if kinds <= {int}:
        return "integer"
    raise ValueError(f"{where}: enum mixes types {sorted(k.__name__ for k in kinds)}")


def check_structural(schema: dict[str, Any], path: str = "") -> list[str]:
    """Problems that would make the API server refuse the schema as non-structural (empty when fine)."""
    problems: list[str] = []
    for key in ("$ref", "anyOf", "oneOf", "allOf", "not", "const", "$defs", "definitions"):
        if key in schema:
            problems.append(f"{path or '<root>'}: {key} is not allowed")
    if "type" not in schema and not schema.get("x-kubernetes-int-or-string") \
            and not schema.get("x-kubernetes-preserve-unknown-fields"):
        problems.append(f"{path or '<root>'}: no type")
    if "properties" in schema and "additionalProperties" in schema:
        problems.append(f"{path}: properties and additionalProperties together")
    if not isinstance(schema.get("exclusiveMinimum", False), bool):
        problems.append(f"{path}: exclusiveMinimum must be a boolean in OpenAPI v3.0")
    for name, child in schema.get("properties", {}).items():
        problems += check_structural(child, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        problems += check_structural(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        problems += check_structural(schema["additionalProperties"], f"{path}{{}}")
    return problems
