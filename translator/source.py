"""Load YAML into located values: every mapping, sequence and scalar keeps the
file, line and column it came from, so later stages can point at the source.

This is the first stage of the pipeline. It never raises on bad YAML: syntax
errors and duplicate keys come back as diagnostics.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from translator.errors import DUPLICATE_KEY, WRONG_TYPE, YAML_SYNTAX, Diagnostic, Position, error

# libyaml's parser is ~10x faster on large policies and reports the same marks.
_LOADER: type[yaml.SafeLoader] | type[yaml.CSafeLoader] = getattr(
    yaml, "CSafeLoader", yaml.SafeLoader
)

Scalar = str | int | float | bool | None


@dataclass(frozen=True, slots=True)
class LScalar:
    value: Scalar
    pos: Position


@dataclass(frozen=True, slots=True)
class LSeq:
    items: tuple[LNode, ...]
    pos: Position


@dataclass(frozen=True, slots=True)
class LMap:
    """A mapping whose keys are strings; `keys` keeps each key's own position."""

    entries: dict[str, LNode]
    keys: dict[str, Position]
    pos: Position

    def get(self, key: str) -> LNode | None:
        return self.entries.get(key)


LNode = LScalar | LSeq | LMap


@dataclass(slots=True)
class Document:
    """A loaded file: its root node (None if empty or unreadable) and its lines."""

    path: str
    lines: list[str]
    root: LNode | None
    diagnostics: list[Diagnostic] = field(default_factory=list)


def plain(node: LNode) -> object:
    """The node as plain Python data, positions dropped."""
    if isinstance(node, LScalar):
        return node.value
    if isinstance(node, LSeq):
        return [plain(item) for item in node.items]
    return {k: plain(v) for k, v in node.entries.items()}


def type_name(node: LNode) -> str:
    """How an error message names the kind of a value."""
    if isinstance(node, LMap):
        return "a mapping"
    if isinstance(node, LSeq):
        return "a list"
    value = node.value
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "a string"


class _Builder:
    def __init__(self, path: str) -> None:
        self.path = path
        self.constructor = SafeConstructor()
        self.diagnostics: list[Diagnostic] = []

    def pos(self, node: Node) -> Position:
        return Position(self.path, node.start_mark.line + 1, node.start_mark.column + 1)

    def build(self, node: Node) -> LNode:
        if isinstance(node, ScalarNode):
            value = self.constructor.construct_object(node, deep=True)
            if not isinstance(value, str | int | float | bool | type(None)):
                # Timestamps and binary scalars have no meaning in a policy; keep the text.
                value = str(node.value)
            return LScalar(value, self.pos(node))
        if isinstance(node, SequenceNode):
            return LSeq(tuple(self.build(item) for item in node.value), self.pos(node))
        if isinstance(node, MappingNode):
            return self.build_map(node)
        raise TypeError(f"unexpected YAML node {node!r}")  # pragma: no cover

    def build_map(self, node: MappingNode) -> LMap:
        self.constructor.flatten_mapping(node)
        entries: dict[str, LNode] = {}
        keys: dict[str, Position] = {}
        for key_node, value_node in node.value:
            key_pos = self.pos(key_node)
            if not isinstance(key_node, ScalarNode):
                self.diagnostics.append(
                    error(WRONG_TYPE, "mapping keys must be plain strings", key_pos)
                )
                continue
            key = str(self.constructor.construct_object(key_node))
            if key in entries:
                first = keys[key]
                self.diagnostics.append(
                    error(
                        DUPLICATE_KEY,
                        f"key '{key}' is given twice in this mapping (first at line {first.line})",
                        key_pos,
                    )
                )
                continue
            entries[key] = self.build(value_node)
            keys[key] = key_pos
        return LMap(entries, keys, self.pos(node))


def load(text: str, path: str) -> Document:
    """Parse `text` (the contents of `path`) into a located document."""
    lines = text.splitlines()
    doc = Document(path=path, lines=lines, root=None)
    try:
        node = yaml.compose(text, Loader=_LOADER)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        if lines and line > len(lines):
            # libyaml reports end-of-input errors one line past the end; point
            # at the end of the last line so the source line can be shown.
            line, col = len(lines), len(lines[-1]) + 1
        problem = err.problem or err.context or "invalid YAML"
        context = f" ({err.context})" if err.context and err.problem else ""
        doc.diagnostics.append(
            error(YAML_SYNTAX, f"YAML syntax error: {problem}{context}", Position(path, line, col))
        )
        return doc
    except yaml.YAMLError as err:  # pragma: no cover - unmarked errors are rare
        doc.diagnostics.append(
            error(YAML_SYNTAX, f"YAML syntax error: {err}", Position(path, 1, 1))
        )
        return doc
    if node is None:
        return doc
    builder = _Builder(path)
    try:
        doc.root = builder.build(node)
    except yaml.constructor.ConstructorError as err:
        mark = err.problem_mark
        pos = Position(path, mark.line + 1, mark.column + 1) if mark else Position(path, 1, 1)
        doc.diagnostics.append(error(YAML_SYNTAX, f"YAML error: {err.problem}", pos))
    doc.diagnostics.extend(builder.diagnostics)
    return doc
