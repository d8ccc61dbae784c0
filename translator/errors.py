"""Diagnostics and the exception hierarchy of the policy translator.

Every problem the translator finds is a :class:`Diagnostic` with a source
position. Stages collect diagnostics instead of raising on the first one, so an
author sees every mistake of a file at once; :class:`PolicyError` carries them
out of the pipeline when any of them is an error.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, slots=True)
class Position:
    """A 1-based line and column in a named file."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


# Codes are stable: docs, golden tests and users' CI greps refer to them.
YAML_SYNTAX = "E001"
UNSUPPORTED_VERSION = "E002"
UNKNOWN_KEY = "E003"
WRONG_TYPE = "E004"
BAD_COMPARISON = "E005"
EMPTY_MATCH = "E006"
DEFAULT_NOT_LAST = "E007"
DEFAULT_TWICE = "E008"
DUPLICATE_RULE_NAME = "E009"
UNKNOWN_ENDPOINT = "E010"
MISSING_KEY = "E011"
DUPLICATE_KEY = "E012"
BAD_VALUE = "E013"
SHADOWED_RULE = "W001"
UNKNOWN_DATA_CLASS = "W002"
NEVER_HOLDS = "W003"
OVERRIDE_UNKNOWN_ENDPOINT = "W004"
UNREAD_INPUT = "W005"  # `policy explain` only: about its --input, not the policy
UNSERVED_OPERATION = "W006"


@dataclass(frozen=True, slots=True)
class Diagnostic:
    severity: Severity
    code: str
    message: str
    pos: Position
    hint: str | None = None
    # Where the offending value may be a credential pasted in by mistake, the
    # source line is shown only up to this 1-based column, so that CI logs never
    # carry it.
    redact_col: int | None = None

    @property
    def is_error(self) -> bool:
        return self.severity is Severity.ERROR

    def headline(self) -> str:
        """`path:line:col: error[CODE]: message`, the greppable first line."""
        return f"{self.pos}: {self.severity.value}[{self.code}]: {self.message}"

    def render(self, source_lines: Sequence[str] | None = None) -> str:
        """The headline, then the offending source line with a caret, then the hint."""
        out = [self.headline()]
        if source_lines is not None and 1 <= self.pos.line <= len(source_lines):
            text = source_lines[self.pos.line - 1].rstrip("\n")
            if self.redact_col is not None:
                text = text[: max(self.redact_col - 1, 0)].rstrip() + " <redacted>"
            gutter = f"{self.pos.line:>4} | "
            out.append(gutter + text)
            out.append(" " * (len(gutter) + max(self.pos.col - 1, 0)) + "^")
        if self.hint:
            out.append(f"  = help: {self.hint}")
        return "\n".join(out)


def error(code: str, message: str, pos: Position, hint: str | None = None) -> Diagnostic:
    return Diagnostic(Severity.ERROR, code, message, pos, hint)


def warning(code: str, message: str, pos: Position, hint: str | None = None) -> Diagnostic:
    return Diagnostic(Severity.WARNING, code, message, pos, hint)


def did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    """A "did you mean" hint naming the closest candidate, if one is close enough."""
    close = difflib.get_close_matches(word, sorted(candidates), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None


class TranslatorError(Exception):
    """Root of every error the translator raises."""


class PolicyError(TranslatorError):
    """The policy or registry has errors; `diagnostics` holds all of them (warnings too),
    `report` all of them rendered against their source lines."""

    def __init__(self, diagnostics: Sequence[Diagnostic], report: str) -> None:
        self.diagnostics = tuple(diagnostics)
        self.report = report
        errors = [d for d in self.diagnostics if d.is_error]
        super().__init__(
            f"{len(errors)} error(s) in policy"
            + (f"; first: {errors[0].headline()}" if errors else "")
        )


class OpaError(TranslatorError):
    """The OPA binary is missing or failed to run."""
