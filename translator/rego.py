"""Spelling Python values as Rego source. All escaping of emitted Rego happens
here, so templates only ever place strings that are already safe."""

from __future__ import annotations

import json
import math
import re
from typing import Any

_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Words that cannot follow a dot in a Rego reference.
_KEYWORDS = frozenset(
    {
        "as",
        "contains",
        "default",
        "else",
        "every",
        "false",
        "if",
        "import",
        "in",
        "not",
        "null",
        "package",
        "some",
        "true",
        "with",
    }
)
# Characters the glob matcher treats specially; the policy language only gives
# meaning to `*`, so the rest are escaped to match themselves.
_GLOB_SPECIAL = re.compile(r"([?\[\]{}\\!])")


def string(value: str) -> str:
    """A Rego string literal. Rego strings use JSON escapes."""
    return json.dumps(value, ensure_ascii=False)


def number(value: int | float) -> str:
    if isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"not a finite number: {value!r}")
    if isinstance(value, int):
        return str(value)
    if value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    return repr(value)


def value(data: Any) -> str:
    """Any JSON-like value as a Rego term (objects keep their key order)."""
    if data is None:
        return "null"
    if isinstance(data, bool):
        return "true" if data else "false"
    if isinstance(data, int | float):
        return number(data)
    if isinstance(data, str):
        return string(data)
    if isinstance(data, list | tuple):
        return "[" + ", ".join(value(item) for item in data) + "]"
    if isinstance(data, dict):
        return "{" + ", ".join(f"{string(str(k))}: {value(v)}" for k, v in data.items()) + "}"
    raise TypeError(f"cannot spell {type(data).__name__} as Rego")


def string_set(items: tuple[str, ...] | list[str]) -> str:
    return "{" + ", ".join(string(item) for item in items) + "}"


def ref(root: str, path: tuple[str, ...]) -> str:
    """`input.a.b`, with bracket syntax for keys that are not plain identifiers."""
    out = root
    for key in path:
        if _IDENT_RE.match(key) and key not in _KEYWORDS:
            out += "." + key
        else:
            out += "[" + string(key) + "]"
    return out


def glob_pattern(glob: str) -> str:
    """A policy glob as a Rego glob.match pattern literal: only `*` stays special."""
    return string(_GLOB_SPECIAL.sub(r"\\\1", glob))


def identifier(text: str, prefix: str) -> str:
    """A Rego rule name built from free text, e.g. a test's name."""
    word = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")
    return f"{prefix}{word or 'unnamed'}"
