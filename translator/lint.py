"""Warnings about silent mistakes that need more than the policy file to see.

- W002: a `data_class` value that is not among the gateway's configured classes
  (`data_classes`; the built-in list by default): the gateway refuses such a
  class, so that value can never match;
- W003: a numeric condition no request can meet, because the gateway only sends
  positive latency budgets and non-negative cost caps;
- W004: an override whose forced route names an endpoint the registry does not
  have (a static scan of the override directories for `"route_to": "<name>"`):
  every request it forces is denied;
- W005 (`policy explain`): a field of the input document that neither the
  compiled rules nor the hand-written Rego (guards, overrides) ever read.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from translator.classes import DEFAULT_DATA_CLASSES
from translator.errors import (
    NEVER_HOLDS,
    OVERRIDE_UNKNOWN_ENDPOINT,
    UNKNOWN_DATA_CLASS,
    UNREAD_INPUT,
    Diagnostic,
    Position,
    did_you_mean,
    warning,
)
from translator.model import NumberCondition, Policy, StringCondition
from translator.registry import Registry
from translator.shadow import glob_matches

# What the gateway can send for each numeric field (gateway/metadata.py).
_POSITIVE = {"latency_budget_ms"}
_NON_NEGATIVE = {"cost_cap_per_1k"}
_SHARE = {"budget_remaining_share"}  # 0..1 (gateway/limits/opa.py)

_ROUTE_TO_RE = re.compile(r'"route_to"\s*:\s*"((?:[^"\\]|\\.)*)"')
_PACKAGE_RE = re.compile(r"^package\s+([\w.]+)", re.M)
_INPUT_REF_RE = re.compile(r"\binput((?:\.[A-Za-z_][A-Za-z0-9_]*|\[\"(?:[^\"\\]|\\.)*\"\])+)")
_PATH_PART_RE = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[\"((?:[^\"\\]|\\.)*)\"\]")


@dataclass
class RegoFile:
    path: str  # as shown in diagnostics
    text: str

    @property
    def lines(self) -> list[str]:
        return self.text.splitlines()


def rego_files(directories: Iterable[str]) -> list[RegoFile]:
    """The hand-written modules of `directories` (tests left out), sorted by path."""
    from translator.pipeline import display_path

    out = []
    for directory in directories:
        for path in sorted(Path(directory).rglob("*.rego")):
            if path.name.endswith("_test.rego"):
                continue
            out.append(RegoFile(display_path(str(path)), path.read_text(encoding="utf-8")))
    return out


# -- policy check ------------------------------------------------------------------


def data_class_warnings(policy: Policy, classes: Sequence[str]) -> list[Diagnostic]:
    out = []
    known = ", ".join(classes)
    for rule in policy.rules:
        for c in rule.conditions:
            if not (isinstance(c, StringCondition) and c.field == "data_class"):
                continue
            dead = [v for v in c.literals if v not in classes]
            dead += [g for g in c.globs if not any(glob_matches(g, name) for name in classes)]
            if not dead:
                continue
            never = len(dead) == len(c.values)
            for value in dead:
                what = "glob" if "*" in value else "data class"
                out.append(
                    warning(
                        UNKNOWN_DATA_CLASS,
                        f"rule '{rule.name}': {what} '{value}' is not among the configured "
                        f"data classes ({known})" + (": the rule can never match" if never else ""),
                        c.pos,
                        did_you_mean(value, classes)
                        or "configure the class in the gateway's data_classes, or fix the name",
                    )
                )
    return out


def domain_warnings(policy: Policy) -> list[Diagnostic]:
    out = []
    for rule in policy.rules:
        for c in rule.conditions:
            if not isinstance(c, NumberCondition) or not _never_holds(c):
                continue
            sent = (
                "values from 0 to 1"
                if c.field in _SHARE
                else ("positive" if c.field in _POSITIVE else "non-negative") + " values"
            )
            out.append(
                warning(
                    NEVER_HOLDS,
                    f"rule '{rule.name}' can never match: {c.field} {c.op} {c.value:g} never "
                    f"holds, the gateway only sends {sent}",
                    c.pos,
                )
            )
    return out


def _never_holds(c: NumberCondition) -> bool:
    n = c.value
    if c.field in _POSITIVE:  # values > 0
        return c.op in ("<", "<=", "==") and n <= 0
    if c.field in _NON_NEGATIVE:  # values >= 0
        return (c.op == "<" and n <= 0) or (c.op in ("<=", "==") and n < 0)
    if c.field in _SHARE:  # 0 <= values <= 1
        return (
            (c.op == "<" and n <= 0)
            or (c.op == "<=" and n < 0)
            or (c.op == ">" and n >= 1)
            or (c.op == ">=" and n > 1)
            or (c.op == "==" and not 0 <= n <= 1)
        )
    return False


def override_route_warnings(files: Sequence[RegoFile], registry: Registry) -> list[Diagnostic]:
    """Forced routes (string literals after `"route_to":`) to unknown endpoints."""
    if not registry.readable:
        return []  # the registry's own error says why
    out = []
    for f in files:
        package = _PACKAGE_RE.search(f.text)
        if package is None or not package.group(1).startswith("overrides."):
            continue
        name = package.group(1).removeprefix("overrides.")
        for match in _ROUTE_TO_RE.finditer(f.text):
            endpoint = match.group(1)
            if endpoint in registry.endpoints:
                continue
            out.append(
                warning(
                    OVERRIDE_UNKNOWN_ENDPOINT,
                    f"override {name} forces a route to '{endpoint}', which is not in the "
                    f"registry ({registry.path}): the requests it forces are denied",
                    _position(f.path, f.text, match.start(1) - 1),
                    did_you_mean(endpoint, registry.endpoints),
                )
            )
    return out


def _position(path: str, text: str, offset: int) -> Position:
    line = text.count("\n", 0, offset) + 1
    col = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return Position(path, line, col)


# -- policy explain ------------------------------------------------------------------


def read_paths(
    condition_paths: Iterable[Sequence[str]], files: Sequence[RegoFile]
) -> set[tuple[str, ...]]:
    """Every input path the compiled conditions and the hand-written Rego read."""
    paths = {tuple(p) for p in condition_paths}
    for f in files:
        for ref in _INPUT_REF_RE.finditer(f.text):
            parts = tuple(a or b for a, b in _PATH_PART_RE.findall(ref.group(1)))
            paths.add(parts)
    return paths


def unread_input_warnings(
    input_doc: Mapping[str, Any], text: str, source: str, reads: set[tuple[str, ...]]
) -> list[Diagnostic]:
    """A warning for each top-level field and label of `input_doc` nothing reads.

    `request` is the gateway's own bookkeeping (request id, path), never meant
    for the policy, and is not reported."""
    fields: list[tuple[str, ...]] = [(k,) for k in input_doc if k != "request"]
    labels = input_doc.get("labels")
    if isinstance(labels, Mapping):
        fields = [f for f in fields if f != ("labels",)]
        fields += [("labels", str(k)) for k in labels]

    def read(field: tuple[str, ...]) -> bool:
        return any(p[: len(field)] == field or field[: len(p)] == p for p in reads)

    out = []
    names = sorted({".".join(p) for p in reads if p})
    for field in fields:
        if read(field):
            continue
        dotted = ".".join(field)
        out.append(
            warning(
                UNREAD_INPUT,
                f"input field '{dotted}' is never read by the policy, its overrides or guards",
                _key_position(text, source, field),
                did_you_mean(dotted, names),
            )
        )
    return out


def _key_position(text: str, source: str, field: tuple[str, ...]) -> Position:
    offset = 0
    for key in field:
        found = text.find(f'"{key}"', offset)
        if found < 0:
            return Position(source, 1, 1)
        offset = found
    return _position(source, text, offset)


# -- the gateway's config ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """The settings of a gateway config file that checks need (others are ignored)."""

    data_classes: tuple[str, ...] = DEFAULT_DATA_CLASSES
    rego_dir: str | None = None
    overrides_dirs: tuple[str, ...] = ()


def read_gateway_config(path: str) -> GatewayConfig:
    """`data_classes`, `rego_dir` and `overrides_dirs` of a gateway config file;
    ValueError names what is wrong."""
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            doc = yaml.safe_load(fh) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"config file {path}: {err}") from err
    if not isinstance(doc, dict):
        raise ValueError(f"config file {path}: expected a mapping of settings")

    def names(key: str) -> tuple[str, ...] | None:
        value = doc.get(key)
        if value is None:
            return None
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(i, str) and i.strip() for i in items):
            raise ValueError(f"config file {path}: {key}: expected a list of names")
        return tuple(i.strip() for i in items)

    rego_dir = doc.get("rego_dir")
    if rego_dir is not None and not isinstance(rego_dir, str):
        raise ValueError(f"config file {path}: rego_dir: expected a path")
    return GatewayConfig(
        data_classes=names("data_classes") or DEFAULT_DATA_CLASSES,
        rego_dir=rego_dir,
        overrides_dirs=names("overrides_dirs") or (),
    )
