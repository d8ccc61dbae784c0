"""Lowering: the checked :class:`Policy` becomes a small, Rego-shaped IR.

The IR says *what* each branch of the first-match chain tests, in terms of input
paths and constant values; it holds no Rego text. The emitter decides spelling
and escaping.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

from translator.health import health_data
from translator.model import (
    HEALTH_PREFIX,
    LABEL_PREFIX,
    Condition,
    DefaultRule,
    NumberCondition,
    Policy,
    Rule,
)

# Where each match key reads the input document.
_PATHS: dict[str, tuple[str, ...]] = {
    "tenant": ("tenant",),
    "data_class": ("data_class",),
    "user_role": ("user", "roles"),
    "model": ("model",),
    "operation": ("operation",),
    "latency_budget_ms": ("latency_budget_ms",),
    "cost_cap_per_1k": ("cost_cap_per_1k",),
    "budget_remaining_share": ("budget", "remaining_share"),
}
# Match keys whose input value is a list, any element of which may match.
_ANY_ELEMENT = frozenset({"user_role"})
# `endpoint_health.<endpoint>` reads the endpoint's status as the health package
# judges it, not the input: its path is under this root.
HEALTH_STATUS_ROOT = "data.kamiwaza.health.status"


def subject_root(field: str) -> str:
    """Where a condition's path starts: `input`, or the health status map."""
    return HEALTH_STATUS_ROOT if field.startswith(HEALTH_PREFIX) else "input"


def input_path(c: IRCondition) -> tuple[str, ...]:
    """What a condition reads of the input document."""
    return ("health",) if c.field.startswith(HEALTH_PREFIX) else c.path


@dataclass(frozen=True, slots=True)
class Test:
    """One expression over the subject.

    kind: "eq" (literal), "in" (set of literals), "glob" (one pattern),
    "any" (literals and patterns), "cmp" (numeric comparison `op` with `number`).
    """

    kind: str
    literals: tuple[str, ...] = ()
    globs: tuple[str, ...] = ()
    op: str = ""
    number: int | float = 0


@dataclass(frozen=True, slots=True)
class IRCondition:
    field: str
    path: tuple[str, ...]  # under `input`
    any_element: bool  # the path holds a list; the test applies to some element
    test: Test
    # What the decision's `conditions` list reports.
    report_op: str
    report_expected: Any


@dataclass(frozen=True, slots=True)
class IRBranch:
    index: int
    name: str
    source: str
    route_to: str
    fallback: tuple[str, ...]
    conditions: tuple[IRCondition, ...]


@dataclass(frozen=True, slots=True)
class IRTest:
    name: str
    source: str
    input: dict[str, Any]
    expect: dict[str, Any]


@dataclass(frozen=True, slots=True)
class IRPolicy:
    source_path: str
    branches: tuple[IRBranch, ...]
    default: IRBranch | None
    tests: tuple[IRTest, ...]
    revision: str
    # The `health:` section as the generated module exports it (None: absent).
    health: dict[str, Any] | None = None

    @property
    def uses_any_helper(self) -> bool:
        return any(c.test.kind == "any" for b in self.branches for c in b.conditions)


def lower(policy: Policy, registry_data: dict[str, Any]) -> IRPolicy:
    """Lower a checked policy; `registry_data` enters the revision hash."""
    branches = tuple(_lower_branch(policy.path, rule) for rule in policy.rules)
    default = _lower_branch(policy.path, policy.default) if policy.default else None
    tests = tuple(
        IRTest(t.name, f"{policy.path}:{t.pos.line}", t.input, t.expect) for t in policy.tests
    )
    health = health_data(policy.health) if policy.health else None
    digest = hashlib.sha256()
    # The revision names the routing behaviour: rules, default, health section and
    # the registry facts that guards read; tests do not change what gets admitted.
    behaviour: dict[str, Any] = {
        "branches": [asdict(b) for b in branches],
        "default": asdict(default) if default else None,
        "endpoints": registry_data,
    }
    if health is not None:  # absent: the revisions of policies without one stay as they were
        behaviour["health"] = health
    digest.update(json.dumps(behaviour, sort_keys=True, separators=(",", ":")).encode())
    return IRPolicy(policy.path, branches, default, tests, "sha256:" + digest.hexdigest(), health)


def _lower_branch(path: str, rule: Rule | DefaultRule) -> IRBranch:
    conditions = rule.conditions if isinstance(rule, Rule) else ()
    return IRBranch(
        index=rule.index,
        name=rule.name,
        source=f"{path}:{rule.pos.line}",
        route_to=rule.route_to,
        fallback=rule.fallback,
        conditions=tuple(_lower_condition(c) for c in conditions),
    )


def _lower_condition(c: Condition) -> IRCondition:
    if c.field.startswith(LABEL_PREFIX):
        path: tuple[str, ...] = ("labels", c.field[len(LABEL_PREFIX) :])
    elif c.field.startswith(HEALTH_PREFIX):
        path = (c.field[len(HEALTH_PREFIX) :],)
    else:
        path = _PATHS[c.field]
    any_element = c.field in _ANY_ELEMENT
    if isinstance(c, NumberCondition):
        test = Test("cmp", op=c.op, number=c.value)
        return IRCondition(c.field, path, any_element, test, c.op, c.value)
    if c.as_list:
        op = "in"
        expected: Any = list(c.values)
        if not c.globs:
            test = Test("in", literals=c.literals)
        elif not c.literals and len(c.globs) == 1:
            test = Test("glob", globs=c.globs)
        else:
            test = Test("any", literals=c.literals, globs=c.globs)
    elif c.globs:
        test, op, expected = Test("glob", globs=c.globs), "glob", c.globs[0]
    else:
        test, op, expected = Test("eq", literals=c.literals), "==", c.literals[0]
    return IRCondition(c.field, path, any_element, test, op, expected)
