"""The checked policy: typed, validated rules that still know where they came from.

Produced by :mod:`translator.check`, lowered by :mod:`translator.ir`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from translator.errors import Position


class FieldKind(Enum):
    STRING = "string"
    NUMBER = "number"


# Match keys of the policy language and how each is matched. `labels.<key>` is
# handled separately: any key after the dot, string semantics.
MATCH_FIELDS: dict[str, FieldKind] = {
    "tenant": FieldKind.STRING,
    "data_class": FieldKind.STRING,
    "user_role": FieldKind.STRING,
    "model": FieldKind.STRING,
    "operation": FieldKind.STRING,
    "latency_budget_ms": FieldKind.NUMBER,
    "cost_cap_per_1k": FieldKind.NUMBER,
    # The tenant's remaining budget share (0..1), from the gateway's limiter.
    "budget_remaining_share": FieldKind.NUMBER,
}
LABEL_PREFIX = "labels."
# `endpoint_health.<endpoint>: lagging`: the endpoint's health for this request,
# as rego/kamiwaza/health judges it (string semantics, values HEALTH_STATUSES).
HEALTH_PREFIX = "endpoint_health."
HEALTH_STATUSES = ("healthy", "lagging", "probing")

COMPARISON_OPS = ("<=", ">=", "==", "!=", "<", ">")


@dataclass(frozen=True, slots=True)
class StringCondition:
    """Holds when the attribute equals a literal or matches a glob.

    `literals` and `globs` together are an any-of; a single plain string is the
    one-literal case. `as_list` remembers whether the author wrote a list.
    """

    field: str
    values: tuple[str, ...]  # as written, duplicates removed
    literals: tuple[str, ...]
    globs: tuple[str, ...]
    as_list: bool
    pos: Position


@dataclass(frozen=True, slots=True)
class NumberCondition:
    field: str
    op: str
    value: int | float
    pos: Position


Condition = StringCondition | NumberCondition


@dataclass(frozen=True, slots=True)
class Rule:
    index: int
    name: str
    conditions: tuple[Condition, ...]
    route_to: str
    fallback: tuple[str, ...]
    pos: Position


@dataclass(frozen=True, slots=True)
class DefaultRule:
    index: int
    route_to: str
    fallback: tuple[str, ...]
    pos: Position

    name = "default"


@dataclass(frozen=True, slots=True)
class PolicyTest:
    name: str
    input: dict[str, Any]
    expect: dict[str, Any]
    pos: Position


@dataclass(frozen=True, slots=True)
class HealthConfig:
    """The policy's `health:` section (translator/health.py checks it)."""

    lagging: tuple[NumberCondition, ...]  # an endpoint lags while any holds
    min_samples: int
    latency_budget: str  # enforce | off
    cost_cap: str  # enforce | off
    when_none_healthy: str  # try_best | refuse
    pos: Position


@dataclass(frozen=True, slots=True)
class Policy:
    path: str
    rules: tuple[Rule, ...]
    default: DefaultRule | None
    tests: tuple[PolicyTest, ...]
    health: HealthConfig | None = None
