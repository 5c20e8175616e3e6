"""Typed field specifications: one declaration gives validation, defaults, model values and JSON Schema.

Owned here: the small vocabulary (`Str`, `Int`, `Duration`, `Record`, ...) in
which `schema` declares the manifest's fields. Each spec checks a located
`Node`, reports every problem as a `Diagnostic` naming the key path and what
would be valid, and returns the value the immutable model holds (seconds for
durations, tuples for lists, read-only mappings for maps), or `INVALID`.

Called by `schema` (declarations, JSON Schema export) and `manifest` (checking).
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from collections.abc import Callable, Mapping, Sequence

from orchestrator.core import svsyntax
from orchestrator.core.errors import Diagnostic, Location
from orchestrator.core.units import DURATION_HINT, SIZE_HINT, parse_duration, parse_size
from orchestrator.config.yamltree import Node


class _Invalid:
    def __repr__(self) -> str:
        return "INVALID"


INVALID: Any = _Invalid()
MISSING: Any = object()


class _Failed:
    """The value of a node whose template failed to render: already reported, never reported again."""

    def __repr__(self) -> str:
        return "FAILED"


FAILED: Any = _Failed()


def check_node(spec: Spec, node: Node, path: str, checker: Checker) -> Any:
    """`spec.check`, except for a node already reported as a failed template."""
    if node.value is FAILED:
        return INVALID
    return spec.check(node, path, checker)

# A string that is (or holds) a Jinja expression: schemas accept it wherever a
# typed value goes, because its type is only known once it is rendered.
TEMPLATE_PATTERN = r"\{\{.*\}\}|\{%.*%\}"
_TEMPLATE_SCHEMA = {"type": "string", "pattern": TEMPLATE_PATTERN}
_NULL_SCHEMA = {"type": "null"}


class Checker:
    """Collects diagnostics while specs check a tree."""

    def __init__(self) -> None:
        self.diagnostics: list[Diagnostic] = []

    def error(self, loc: Location, path: str, message: str) -> Any:
        self.diagnostics.append(Diagnostic(loc, path, message))
        return INVALID

    def warning(self, loc: Location, path: str, message: str) -> None:
        self.diagnostics.append(Diagnostic(loc, path, message, "warning"))


def describe(value: Any) -> str:
    """How a wrong value is named in a message: the value itself for scalars, its kind otherwise."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return repr(shown)
    return str(value)


def suggest(word: str, choices: Sequence[str]) -> str | None:
    """The closest of `choices` to a mistyped `word`, if one is close enough to be a likely typo."""
    matches = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return matches[0] if matches else None


def choices_hint(word: str, choices: Sequence[str], *, label: str = "available", none: str = "there are none") -> str:
    """What to say instead of a mistyped `word`: the likely intended choice, else every choice there is."""
    hint = suggest(word, choices)
    if hint:
        return f"did you mean '{hint}'?"
    return f"{label}: {', '.join(choices)}" if choices else none


def join_path(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class Spec:
    """Base of every field type."""

    what: str = "a value"

    def check(self, node: Node, path: str, checker: Checker) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def json_schema(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def wrong(self, node: Node, path: str, checker: Checker, problem: str | None = None) -> Any:
        problem = problem or f"got {describe(node.value)}"
        return checker.error(node.loc, path, f"{problem} (expected {self.what})")


def _templatable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, _TEMPLATE_SCHEMA]}


@dataclass
class Str(Spec):
    what: str = "a string"
    pattern: str | None = None
    numbers: bool = False  # accept 9102 where "9102" is meant (env values, command arguments)
    multiline: bool = False
    max_length: int | None = None

    def check(self, node: Node, path: str, checker: Checker) -> Any:
        value = node.value
        if self.numbers and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            return self.wrong(node, path, checker)
        if not self.multiline and svsyntax.breaks_line(value):
            return checker.error(node.loc, path, "contains a line break or NUL character, which would break the "
                                 "supervisord configuration (expected a single line)")
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            return self.wrong(node, path, checker, f"invalid value {describe(value)}")
        if self.max_length is not None and len(value) > self.max_length:
            return self.wrong(node, path, checker, f"longer than {self.max_length} characters")
        return value

    def json_schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "string"}
        if self.pattern is not None:
            schema["pattern"] = f"^(?:{self.pattern})$|{TEMPLATE_PATTERN}"
        if self.max_length is not None:
            schema["maxLength"] = self.max_length
        if self.numbers:
            return {"type": ["string", "number"]}
        return schema


def _from_template(node: Node, parse: Callable[[str], Any]) -> Any:
    """A rendered template's text read as a typed value, or INVALID."""
    if node.templated and isinstance(node.value, str):
        try:
            return parse(node.value.strip())
        except ValueError:
            return INVALID
    return INVALID


@dataclass
class Int(Spec):
    min: int | None = None
    max: int | None = None

    @property
    def what(self) -> str:  # type: ignore[override]
        if self.min is not None and self.max is not None:
            return f"an integer from {self.min} to {self.max}"
        if self.min is not None:
            return f"an integer >= {self.min}"
        return "an integer"

    def check(self, node: Node, path: str, checker: Checker) -> Any:
        value = node.value
        if isinstance(value, str):
            value = _from_template(node, int)
        if isinstance(value, bool) or not isinstance(value, int):
            return self.wrong(node, path, checker)
        if (self.min is not None and value < self.min) or (self.max is not None and value > self.max):
            return self.wrong(node, path, checker, f"got {value}")
        return value

    def json_schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "integer"}
        if self.min is not None:
            schema["minimum"] = self.min
        if self.max is not None:
            schema["maximum"] = self.max
        return _templatable(schema)


@dataclass
class Number(Spec):
    min: float | None = None
    max: float | None = None
    exclusive_min: bool = False

    @property
    def what(self) -> str:  # type: ignore[override]
        low = f"> {self.min:g}" if self.exclusive_min else f">= {self.min:g}" if self.min is not None else ""
        if self.min is not None and self.max is not None:
            return f"a number {low} and <= {self.max:g}"
        if self.min is not None:
            return f"a number {low}"
        return "a number"

    def check(self, node: Node, path: str, checker: Checker) -> Any:
        value = node.value
        if isinstance(value, str):
            value = _from_template(node, float)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or math.isinf(value):
            return self.wrong(node, path, checker)
        too_low = self.min is not None and (value <= self.min if self.exclusive_min else value < self.min)
        if too_low or (self.max is not None and value > self.max):
            return self.wrong(node, path, checker, f"got {value:g}")
        return value

    def json_schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "number"}
        if self.min is not None:
            schema["exclusiveMinimum" if self.exclusive_min else "minimum"] = self.min
        if self.max is not None:
            schema["maximum"] = self.max
        return _templatable(schema)


@dataclass
class Bool(Spec):
    what: str = "true or false"

    def check(self, node: Node, path: str, checker: Checker) -> Any:
        value = node.value
        if isinstance(value, str):
            value = _from_template(node, _parse_bool)
        if not isinstance(value, bool):
            return self.wrong(node, path, checker)
        return value

    def json_schema(self) -> dict[str, Any]:
        return _templatable({"type": "boolean"})


def _parse_bool(text: str) -> bool:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    raise ValueError(text)


_DURATION_SCHEMA_PATTERN = r"^\s*(\d+(\.\d+)?|(\d+(\.\d+)?(ms|s|m|h|d))+)\s*$"
_SIZE_SCHEMA_PATTERN = r"^\s*\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)?\s*$"


@dataclass
class Duration(Spec):
    """Seconds, written as `500ms`, `10s`, `5m`, `1h` or a plain number of seconds."""

    min: float = 0.0
    what: str = DURATION_HINT

    def check(self, node: Node, path: str, checker: Checker) -> Any:
        try:
            seconds = parse_duration(node.value)
        except ValueError:
            return checker.error(node.loc, path, f"{describe(node.value)} is not a duration (expected {self.what})")
        if seconds < self.min:
            return checker.error(node.loc, path, f"{describe(node.value)} is too short (expected at least {self.min:g}s)")
        return seconds

    def json_schema(self) -> dict[str, Any]:
        return {"anyOf": [{"type": "number", "minimum": 0},
                          {"type": "string", "pattern": _DURATION_SCHEMA_PATTERN}, _TEMPLATE_SCHEMA]}


@dataclass
class Size(Spec):
    """Bytes, written as a number of bytes or `512KB`, `50MB`, `1GiB`."""

    what: str = SIZE_HINT

    def check(self, node: Node, path: str, checker: Checker) -> Any:
        try:
            return parse_size(node.value)
        except ValueError:
            return checker.error(node.loc, path, f"{describe(node.value)} is not a size (expected {self.what})")

    def json_schema(self) -> dict[str, Any]:
        return {"anyOf": [{"type": "integer", "minimum": 0},
                          {"type": "string", "pattern": _SIZE_SCHEMA_PATTERN}, _TEMPLATE_SCHEMA]}


@dataclass
class Enum(Spec):
    choices: tuple[str, ...] = ()
    noun: str = "value"

    @property
    def what(self) -> str:  # type: ignore[override]
        return "one of " + ", ".join(self.choices)

    def check(self, node: Node, path: str, checker: Checker) -> Any:
        value = node.value
        if not isinstance(value, str):
            return self.wrong(node, path, checker)
        if value not in self.choices:
            hint = suggest(value, self.choices)
            extra = f"; did you mean '{hint}'?" if hint else ""
            return checker.error(node.loc, path, f"unknown {self.noun} {describe(value)} (expected {self.what}{extra})")
        return value

    def json_schema(self) -> dict[str, Any]:
        return {"enum": list(self.choices)}


@dataclass
class AnyValue(Spec):
    """Any YAML value, kept as plain Python data (vars)."""

    what: str = "any value"

    def check(self, node: Node, path: str, checker: Checker) -> Any:
        return node.plain()

    def json_schema(self) -> dict[str, Any]:
        return {}


@dataclass
class AnyMapping(Spec):
    """Any mapping, kept as plain data; its keys are checked later, where it is merged."""

    what: str = "a mapping"

    def check(self, node: Node, path: str, checker: Checker) -> Any:
        if not isinstance(node.value, dict):
            return self.wrong(node, path, checker)
        return node.plain()

    def json_schema(self) -> dict[str, Any]:
        return {"type": "object"}


@dataclass
class ListOf(Spec):
    item: Spec = field(default_factory=Str)
    min_items: int = 0
    unique: bool = False

    @property
    def what(self) -> str:  # type: ignore[override]
        return f"a list of {_plural(self.item.what)}"

    def check(self, node: Node, path: str, checker: Checker) -> Any:
        if not isinstance(node.value, list):
            return self.wrong(node, path, checker)
        if len(node.value) < self.min_items:
            items = f"{self.min_items} item{'s' if self.min_items > 1 else ''}"
            return checker.error(node.loc, path, f"needs at least {items} (expected {self.what})")
        out, seen, ok = [], set(), True
        for index, item in enumerate(node.value):
            value = check_node(self.item, item, f"{path}[{index}]", checker)
            if value is INVALID:
                ok = False
                continue
            if self.unique and _hashable(value) in seen:
                checker.error(item.loc, f"{path}[{index}]", f"{describe(value)} is listed twice (expected each item once)")
                ok = False
            seen.add(_hashable(value))
            out.append(value)
        return tuple(out) if ok else INVALID

    def json_schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "array", "items": self.item.json_schema()}
        if self.min_items:
            schema["minItems"] = self.min_items
        if self.unique:
            schema["uniqueItems"] = True
        return schema


def _hashable(value: Any) -> Any:
    return repr(value) if isinstance(value, (dict, list)) else value


def _plural(what: str) -> str:
    for article in ("an ", "a "):
        if what.startswith(article):
            noun = what[len(article):]
            return noun.replace("string", "strings", 1).replace("integer", "integers", 1)
    return what


@dataclass
class MapOf(Spec):
    """A mapping from free-form keys (matching `key_pattern`) to values of one spec."""

    value: Spec = field(default_factory=Str)
    key_pattern: str | None = None
    key_what: str = "a key"

    @property
    def what(self) -> str:  # type: ignore[override]
        return f"a mapping of {self.key_what} to {self.value.what}"

    def check(self, node: Node, path: str, checker: Checker) -> Any:
        if not isinstance(node.value, dict):
            return self.wrong(node, path, checker)
        out, ok = {}, True
        for key, item in node.value.items():
            sub = join_path(path, key)
            if self.key_pattern is not None and not re.fullmatch(self.key_pattern, key):
                checker.error(item.where, sub, f"invalid key {describe(key)} (expected {self.key_what})")
                ok = False
                continue
            value = check_node(self.value, item, sub, checker)
            if value is INVALID:
                ok = False
            out[key] = value
        return MappingProxyType(dict(sorted(out.items()))) if ok else INVALID

    def json_schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "object", "additionalProperties": {"anyOf": [self.value.json_schema(), _NULL_SCHEMA]}}
        if self.key_pattern is not None:
            schema["propertyNames"] = {"pattern": f"^(?:{self.key_pattern})$"}
        return schema


@dataclass
class Field:
    spec: Spec
    doc: str
    default: Any = MISSING
    required: bool = False


@dataclass
class Record(Spec):
    """A mapping with known keys; unknown keys are errors with a did-you-mean suggestion.

    `build` turns the checked values (defaults filled in) into the model's
    object; it is called only when every field is valid.
    """

    fields: Mapping[str, Field] = field(default_factory=dict)
    build: Callable[..., Any] | None = None
    what: str = "a mapping"
    doc: str = ""

    def check(self, node: Node, path: str, checker: Checker) -> Any:
        values = self.check_fields(node, path, checker)
        if values is INVALID or any(v is INVALID for v in values.values()):
            return INVALID
        return self.build(**values) if self.build is not None else MappingProxyType(values)

    def check_fields(self, node: Node, path: str, checker: Checker) -> Any:
        """Each field's checked value (defaults filled in; INVALID where a field is wrong or missing)."""
        if not isinstance(node.value, dict):
            return self.wrong(node, path, checker)
        values: dict[str, Any] = {}
        for key, item in node.value.items():
            spec = self.fields.get(key)
            sub = join_path(path, key)
            if spec is None:
                hint = suggest(key, list(self.fields))
                if hint:
                    checker.error(item.where, sub, f"unknown key (did you mean '{hint}'?)")
                else:
                    checker.error(item.where, sub, f"unknown key (valid keys: {', '.join(self.fields)})")
                values[key] = INVALID
                continue
            if item.value is None and not spec.required:
                if spec.default is not MISSING:
                    values[key] = spec.default  # an explicit null means "the default", or absent
                continue
            values[key] = check_node(spec.spec, item, sub, checker)
        for key, spec in self.fields.items():
            if key in values:
                continue
            if spec.required:
                checker.error(node.loc, join_path(path, key), f"missing (required: {spec.doc})")
                values[key] = INVALID
            elif spec.default is not MISSING:
                values[key] = spec.default
        return values

    def json_schema(self) -> dict[str, Any]:
        properties: dict[str, Any] = {}
        for key, spec in self.fields.items():
            schema = spec.spec.json_schema()
            if not spec.required:  # null removes an inherited value (see manifest's merge rule)
                schema = {"anyOf": [schema, _NULL_SCHEMA]}
            schema["description"] = spec.doc
            if spec.default is not MISSING and isinstance(spec.default, (str, int, float, bool)):
                schema["default"] = spec.default
            properties[key] = schema
        schema = {"type": "object", "properties": properties, "additionalProperties": False}
        required = [k for k, s in self.fields.items() if s.required]
        if required:
            schema["required"] = required
        if self.doc:
            schema["description"] = self.doc
        return schema


@dataclass
class OneOf(Spec):
    """The first of several specs whose JSON type matches the value (a command as a string or a list)."""

    options: tuple[tuple[type, Spec], ...] = ()
    what: str = "a value"

    def check(self, node: Node, path: str, checker: Checker) -> Any:
        for kind, spec in self.options:
            if isinstance(node.value, kind) and not isinstance(node.value, bool):
                return check_node(spec, node, path, checker)
        return self.wrong(node, path, checker)

    def json_schema(self) -> dict[str, Any]:
        return {"anyOf": [spec.json_schema() for _, spec in self.options]}
