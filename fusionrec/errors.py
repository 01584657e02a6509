"""User-facing errors: every message names the field (or file and line) and, where one exists, the fix.

`UserError` is what bad input raises anywhere in the project; the CLI turns it into exit code 2, the serving
app into HTTP 4xx `{error, field}`, the operator into a `SpecValid=False` condition. Anything else is a bug.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError


class UserError(Exception):
    """Bad input from the user: a retry with the same input cannot succeed."""

    def __init__(self, message: str, *, field: str | None = None, fix: str | None = None) -> None:
        self.message = message
        self.field = field
        self.fix = fix
        super().__init__(self.render())

    def render(self) -> str:
        named = self.field and not self.message.startswith(self.field)
        text = f"{self.field}: {self.message}" if named else self.message
        return f"{text}\n  fix: {self.fix}" if self.fix else text

    def as_json(self) -> dict[str, Any]:
        return {"error": self.message, "field": self.field}

    def __reduce__(self) -> tuple[Any, ...]:
        # Errors raised on a Ray worker are pickled back to the driver; subclasses take other __init__
        # arguments, so rebuild from the instance state instead of calling __init__ again.
        return (_restore_error, (type(self), self.__dict__))


def _restore_error(cls: type[UserError], state: dict[str, Any]) -> UserError:
    error = cls.__new__(cls)
    error.__dict__.update(state)
    Exception.__init__(error, error.render())
    return error


class DataError(UserError):
    """A bad row or column in a data file: names the file, the line (1-based, header included) and the field."""

    def __init__(self, message: str, *, file: str, line: int | None = None, field: str | None = None,
                 fix: str | None = None) -> None:
        self.file = file
        self.line = line
        where = f"{file}, line {line}" if line is not None else file
        column = f", field {field!r}" if field else ""
        super().__init__(f"{where}{column}: {message}", field=field, fix=fix)


def _location(loc: tuple[Any, ...], prefix: str) -> str:
    path = prefix
    for piece in loc:
        if _union_tag(piece):
            continue  # which member of a tagged union (spec.merge's `method=ties`): not a field
        if isinstance(piece, int):
            path += f"[{piece}]"
        else:
            path = f"{path}.{piece}" if path else str(piece)
    return path


def _union_tag(piece: Any) -> bool:
    """A location piece naming a tagged union's member: `method=ties` (fusionrec.spec tags them so)."""
    return isinstance(piece, str) and "=" in piece


def format_validation_error(exc: ValidationError, prefix: str = "") -> list[tuple[str, str]]:
    """(field path, message) pairs in the manifest's own camelCase spelling, e.g. `spec.training.workers`."""
    out = []
    for err in exc.errors():
        field = _location(tuple(err["loc"]), prefix)
        message = err["msg"]
        if message.startswith("Value error, "):
            message = message[len("Value error, "):]
        tag = next((p for p in err["loc"] if _union_tag(p)), None)
        key, _, value = str(tag or "").partition("=")
        if err["type"] == "extra_forbidden":
            if tag is not None:  # e.g. density on a linear merge
                message = f"unknown field for {key} {value}; check its spelling and the {key}'s parameters"
            else:
                message = "unknown field; check its spelling (fields are camelCase, e.g. batchSize)"
        elif err["type"] == "missing" and tag is not None:
            message = f"required for {key} {value}"
        out.append((field, message))
    return out
