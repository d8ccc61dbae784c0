"""Small helpers shared by the policy and registry checks: typed access to
located nodes that records a diagnostic instead of raising."""

from __future__ import annotations

import math
from collections.abc import Iterable

from translator.errors import (
    MISSING_KEY,
    UNKNOWN_KEY,
    WRONG_TYPE,
    Diagnostic,
    Position,
    Severity,
    did_you_mean,
)
from translator.source import LMap, LNode, LScalar, LSeq, type_name


class Collector:
    """Accumulates diagnostics; every `expect_*` returns None when the node is wrong."""

    def __init__(self) -> None:
        self.diagnostics: list[Diagnostic] = []

    def add(self, diagnostic: Diagnostic) -> None:
        self.diagnostics.append(diagnostic)

    def err(
        self,
        code: str,
        message: str,
        pos: Position,
        hint: str | None = None,
        *,
        redact_col: int | None = None,
    ) -> None:
        self.add(Diagnostic(Severity.ERROR, code, message, pos, hint, redact_col))

    def wrong_type(self, node: LNode, what: str, wanted: str) -> None:
        self.err(WRONG_TYPE, f"{what} must be {wanted}, got {type_name(node)}", node.pos)

    def expect_map(self, node: LNode | None, what: str, parent: Position) -> LMap | None:
        if node is None:
            self.err(MISSING_KEY, f"{what} is required", parent)
            return None
        if not isinstance(node, LMap):
            self.wrong_type(node, what, "a mapping")
            return None
        return node

    def expect_table(
        self,
        parent: LMap,
        key: str,
        what: str,
        allowed: Iterable[str],
        *,
        secret_values: bool = False,
    ) -> LMap | None:
        """`parent[key]` as a mapping whose keys are checked against `allowed`; None
        when it is absent (nothing reported) or not a mapping."""
        node = parent.get(key)
        if node is None:
            return None
        table = self.expect_map(node, what, parent.pos)
        if table is not None:
            self.check_keys(table, allowed, what, secret_values=secret_values)
        return table

    def expect_seq(self, node: LNode, what: str) -> LSeq | None:
        if not isinstance(node, LSeq):
            self.wrong_type(node, what, "a list")
            return None
        return node

    def expect_str(self, node: LNode, what: str, *, nonempty: bool = True) -> str | None:
        if not isinstance(node, LScalar) or not isinstance(node.value, str):
            self.wrong_type(node, what, "a string")
            return None
        if nonempty and not node.value.strip():
            self.err(WRONG_TYPE, f"{what} must not be empty", node.pos)
            return None
        return node.value

    def expect_bool(self, node: LNode, what: str) -> bool | None:
        if not isinstance(node, LScalar) or not isinstance(node.value, bool):
            self.wrong_type(node, what, "true or false")
            return None
        return node.value

    def expect_number(
        self, node: LNode, what: str, *, minimum: float | None = None, integer: bool = False
    ) -> float | None:
        value = node.value if isinstance(node, LScalar) else None
        if (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or (integer and not isinstance(value, int))
        ):
            self.wrong_type(node, what, "an integer" if integer else "a number")
            return None
        if not math.isfinite(value):
            self.err(WRONG_TYPE, f"{what} must be a finite number", node.pos)
            return None
        if minimum is not None and value < minimum:
            self.err(WRONG_TYPE, f"{what} must be at least {minimum:g}, got {value:g}", node.pos)
            return None
        return value

    def check_keys(
        self,
        node: LMap,
        allowed: Iterable[str],
        where: str,
        required: Iterable[str] = (),
        *,
        secret_values: bool = False,
    ) -> None:
        """Report unknown keys (with a "did you mean") and missing required ones.

        With `secret_values`, the source line of an unknown key is not shown past
        the key: in the registry, an unknown key is often a credential pasted in.
        """
        allowed_set = set(allowed)
        for key, pos in node.keys.items():
            if key not in allowed_set:
                self.err(
                    UNKNOWN_KEY,
                    f"unknown key '{key}' in {where}",
                    pos,
                    did_you_mean(key, allowed_set)
                    or f"allowed keys: {', '.join(sorted(allowed_set))}",
                    redact_col=pos.col + len(key) + 1 if secret_values else None,
                )
        for key in required:
            if key not in node.entries:
                self.err(MISSING_KEY, f"{where} is missing required key '{key}'", node.pos)
