"""Reading YAML files into located trees: every value keeps the file, line and column it came from.

Owned here: turning a manifest file into a `Node` tree (mappings as dicts of
nodes, sequences as lists of nodes, scalars as Python values), with YAML syntax
errors and duplicate keys reported as `Diagnostic`s. Called by `manifest`,
which merges, templates and validates these trees; every later error can then
point at the exact place a value was written, even after `extends` and
environment overlays have moved it between files.

ruamel.yaml composes the node graph (with its C parser when present: 500
manifests compose in about 0.13 s, against 1.3 s through the round-trip
loader); scalars are resolved by ruamel's own YAML 1.2 resolver and built here.
"""

from __future__ import annotations

import io
import os
import stat
from dataclasses import dataclass, field, replace
from typing import Any
from collections.abc import Iterator

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, ScalarNode, SequenceNode
from ruamel.yaml.nodes import Node as YamlNode

from orchestrator.core.errors import Diagnostic, Location

_TAG = "tag:yaml.org,2002:"


@dataclass(frozen=True, slots=True)
class Node:
    """A value and where it was written.

    `value` is a dict[str, Node], a list[Node] or a scalar (str, int, float,
    bool, None). `key_loc` is where the mapping key naming this value was
    written (None for sequence items and documents). `templated` marks a string
    produced by rendering a Jinja template, so a number written as
    "{{ vars.port }}" may still be read as a number.
    """

    value: Any
    loc: Location
    key_loc: Location | None = None
    templated: bool = False

    @property
    def where(self) -> Location:
        """The location errors about this entry as a whole should name: its key if it has one."""
        return self.key_loc or self.loc

    def get(self, key: str) -> Node | None:
        return self.value.get(key) if isinstance(self.value, dict) else None

    def with_value(self, value: Any, *, templated: bool | None = None) -> Node:
        return replace(self, value=value, templated=self.templated if templated is None else templated)

    def plain(self) -> Any:
        """The value with every location stripped: dicts, lists and scalars."""
        if isinstance(self.value, dict):
            return {k: v.plain() for k, v in self.value.items()}
        if isinstance(self.value, list):
            return [v.plain() for v in self.value]
        return self.value


@dataclass
class LoadResult:
    root: Node | None
    diagnostics: list[Diagnostic] = field(default_factory=list)


def _yaml() -> YAML:
    try:
        return YAML(typ="safe", pure=False)
    except Exception:  # pragma: no cover - the C parser is missing; the pure one is correct, slower
        return YAML(typ="safe", pure=True)


_PARSER = _yaml()


# Bounds that keep a hostile or broken file from hanging, exhausting or crashing the loader; each is
# far above any real manifest (the demo's largest is under 2 KB and 6 levels deep).
MAX_FILE_BYTES = 1 << 20     # a manifest file's size
MAX_DEPTH = 64               # nesting of mappings and sequences, checked before the C composer recurses
MAX_NODES = 100_000          # values built from one file, aliases counted each time they are used
MAX_SCALAR_BYTES = 8 << 20   # text built from one file, aliases counted each time they are used


def load_file(path: str) -> LoadResult:
    """The located tree of the YAML file at `path`, or the diagnostics that prevent reading it."""
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            return LoadResult(None, [Diagnostic(Location(path), "", f"not a regular file (a {_kind(info.st_mode)}); "
                                                "expected a YAML file")])
        if info.st_size > MAX_FILE_BYTES:
            return LoadResult(None, [Diagnostic(Location(path), "", f"{info.st_size} bytes, larger than the "
                                                f"{MAX_FILE_BYTES} a manifest may be (expected a smaller file)")])
        with open(path, "rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        return LoadResult(None, [Diagnostic(Location(path), "", f"cannot read: {exc.strerror}")])
    if len(data) > MAX_FILE_BYTES:  # it grew while being read
        return LoadResult(None, [Diagnostic(Location(path), "", f"larger than the {MAX_FILE_BYTES} bytes a manifest may be")])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_start = data.rfind(b"\n", 0, exc.start) + 1
        line = data.count(b"\n", 0, exc.start) + 1
        col = len(data[line_start:exc.start].decode("utf-8", errors="replace")) + 1
        return LoadResult(None, [Diagnostic(Location(path, line, col), "",
                                            f"not UTF-8 text: {exc.reason} (expected a file encoded as UTF-8)")])
    return load_text(text, path)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                       (stat.S_ISSOCK, "socket"), (stat.S_ISDIR, "directory")):
        if test(mode):
            return name
    return "special file"


def _too_deep(text: str, path: str) -> Diagnostic | None:
    """Flow nesting (`[` and `{`) deeper than MAX_DEPTH, found before the composer sees it: ruamel's C
    composer recurses once per level in C, and 30,000 nested brackets crash the process.
    Quotes and comments are skipped roughly; a bracket miscounted there errs toward a syntax error
    the composer would report anyway."""
    depth, line, col, quote = 0, 1, 0, ""
    in_comment = False
    for char in text:
        col += 1
        if char == "\n":
            line, col, in_comment = line + 1, 0, False
            continue
        if in_comment:
            continue
        if quote:
            if char == quote:
                quote = ""
            continue
        if char in "\"'" and depth:
            quote = char
        elif char == "#":
            in_comment = True
        elif char in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return Diagnostic(Location(path, line, col), "", f"nested more than {MAX_DEPTH} levels deep "
                                  "(expected a flatter structure)")
        elif char in "]}":
            depth = max(0, depth - 1)
    return None


def load_text(text: str, path: str) -> LoadResult:
    """The located tree of YAML `text`, naming `path` in locations."""
    deep = _too_deep(text, path)
    if deep is not None:
        return LoadResult(None, [deep])
    try:
        documents = list(_PARSER.compose_all(text))
    except MarkedYAMLError as exc:
        return LoadResult(None, [_syntax_error(exc, text, path)])
    except YAMLError as exc:
        return LoadResult(None, [Diagnostic(Location(path, 1, 1), "", f"YAML syntax error: {exc}")])
    except (ValueError, RecursionError) as exc:  # the C parser reports some encodings this way
        return LoadResult(None, [Diagnostic(Location(path, 1, 1), "", f"YAML syntax error: {exc}")])
    if len(documents) > 1:
        return LoadResult(None, [Diagnostic(_second_document(text, path), "", "one YAML document per file (found a second '---')")])
    if not documents or documents[0] is None:
        return LoadResult(Node({}, Location(path, 1, 1)))
    builder = _Builder(path)
    try:
        root = builder.build(documents[0], None, depth=0)
    except _Budget as exc:
        return LoadResult(None, [Diagnostic(exc.loc, "", str(exc))])
    return LoadResult(root, builder.diagnostics)


class _Budget(Exception):
    """The file expands past MAX_NODES or MAX_SCALAR_BYTES (an alias bomb, typically)."""

    def __init__(self, message: str, loc: Location) -> None:
        super().__init__(message)
        self.loc = loc


def _syntax_error(exc: MarkedYAMLError, text: str, path: str) -> Diagnostic:
    """A YAML syntax error, placed where a person would look for it."""
    lines = text.split("\n")
    mark = exc.problem_mark or exc.context_mark
    at_end = mark is not None and (mark.line >= len(lines) or (mark.line == len(lines) - 1 and mark.column >= len(lines[-1])))
    if at_end and exc.context_mark is not None:
        mark = exc.context_mark  # "unexpected end of stream": point at what was left open
    line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
    problem = exc.problem or exc.context or "invalid YAML"
    if exc.context and exc.problem and exc.context not in problem:
        problem = f"{exc.context}, {problem}"
    char = lines[line - 1][col - 1] if line <= len(lines) and col <= len(lines[line - 1]) else ""
    if "found character that cannot start any token" in problem and char:
        if char == "\t":
            problem = problem.replace("found character", "found a tab character") + \
                " (expected spaces: YAML indents with spaces, never tabs)"
        else:
            problem = problem.replace("found character", f"found character {char!r}") + \
                " (quote the value if it is text)"
    return Diagnostic(Location(path, line, col), "", f"YAML syntax error: {problem}")


def _second_document(text: str, path: str) -> Location:
    """Where the second document of a stream starts: its '---'."""
    count = 0
    for event in _PARSER.parse(text):
        if type(event).__name__ == "DocumentStartEvent":
            count += 1
            if count == 2:
                mark = event.start_mark
                return Location(path, mark.line + 1, mark.column + 1)
    return Location(path, 1, 1)  # pragma: no cover - compose_all found two documents


def _loc(path: str, node: YamlNode) -> Location:
    mark = node.start_mark
    return Location(path, mark.line + 1, mark.column + 1)


class _Builder:
    """Turns a composed ruamel node graph into `Node`s, collecting duplicate-key errors."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.diagnostics: list[Diagnostic] = []
        self.nodes = 0
        self.text_bytes = 0

    def build(self, node: YamlNode, key_loc: Location | None, depth: int) -> Node:
        loc = _loc(self.path, node)
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise _Budget(f"expands to more than {MAX_NODES} values (an alias used again and again?); "
                          "expected a manifest of ordinary size", loc)
        if isinstance(node, ScalarNode):
            self.text_bytes += len(node.value)
            if self.text_bytes > MAX_SCALAR_BYTES:
                raise _Budget(f"expands to more than {MAX_SCALAR_BYTES} bytes of text (an alias used again and again?); "
                              "expected a manifest of ordinary size", loc)
        if depth > MAX_DEPTH:
            self.diagnostics.append(Diagnostic(loc, "", f"nested more than {MAX_DEPTH} levels deep"))
            return Node(None, loc, key_loc)
        if isinstance(node, MappingNode):
            return Node(self._mapping(node, depth), loc, key_loc)
        if isinstance(node, SequenceNode):
            return Node([self.build(item, None, depth + 1) for item in node.value], loc, key_loc)
        assert isinstance(node, ScalarNode)  # the composer yields only these three kinds
        return Node(self._scalar(node), loc, key_loc)

    def _mapping(self, node: MappingNode, depth: int) -> dict[str, Node]:
        result: dict[str, Node] = {}
        merged: dict[str, Node] = {}
        for key_node, value_node in node.value:
            key_loc = _loc(self.path, key_node)
            if key_node.tag == _TAG + "merge":  # YAML merge key `<<: *base`
                for source in self._merge_sources(value_node, depth):
                    for k, v in source.items():
                        merged.setdefault(k, v)
                continue
            if not isinstance(key_node, ScalarNode):
                self.diagnostics.append(Diagnostic(key_loc, "", "a key must be a plain string, not a list or mapping"))
                continue
            key = self._scalar(key_node)
            if not isinstance(key, str):
                key = "null" if key is None else str(key).lower() if isinstance(key, bool) else str(key)
            if key in result:
                first = result[key].key_loc
                self.diagnostics.append(Diagnostic(key_loc, key, f"duplicate key (first set at line {first.line if first else '?'})"))
                continue
            result[key] = self.build(value_node, key_loc, depth + 1)
        for k, v in merged.items():
            result.setdefault(k, v)
        return result

    def _merge_sources(self, node: YamlNode, depth: int) -> Iterator[dict[str, Node]]:
        items = node.value if isinstance(node, SequenceNode) else [node]
        for item in items:
            built = self.build(item, None, depth + 1)
            if isinstance(built.value, dict):
                yield built.value
            else:
                self.diagnostics.append(Diagnostic(built.loc, "<<", "a merge key needs a mapping or a list of mappings"))

    @staticmethod
    def _scalar(node: ScalarNode) -> Any:
        tag, text = node.tag, node.value
        if tag == _TAG + "null":
            return None
        if tag == _TAG + "bool":
            return text.lower() == "true"
        if tag == _TAG + "int":
            try:
                return int(text.replace("_", ""), 0) if text.lower().startswith(("0x", "0o")) else int(text.replace("_", ""))
            except ValueError:
                return text
        if tag == _TAG + "float":
            lowered = text.lower()
            if lowered in (".inf", "+.inf"):
                return float("inf")
            if lowered == "-.inf":
                return float("-inf")
            if lowered == ".nan":
                return float("nan")
            try:
                return float(text.replace("_", ""))
            except ValueError:
                return text
        return text  # str, timestamps and custom tags stay as written


def dump(data: Any) -> str:
    """`data` (plain dicts, lists, strings and numbers) as block-style YAML, keys in their given order.

    The writer of generated files (Prometheus rules and configuration): lines are never folded, so an
    expression stays on the line of its key.
    """
    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    yaml.sort_base_mapping_type_on_output = False  # type: ignore[assignment]  # typed None, takes a bool: keep insertion order
    yaml.width = 1 << 16
    stream = io.StringIO()
    yaml.dump(data, stream)
    return stream.getvalue()
