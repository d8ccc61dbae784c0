"""The policy's `health:` section and the `endpoint_health.<endpoint>` match key.

```yaml
health:
  lagging:                  # an endpoint lags while any of these holds
    p95_ttft_ms: ">1500"
    error_rate: ">0.2"
    queue_depth: ">32"
  min_samples: 20           # requests in the window before a percentile or rate counts
  latency_budget: enforce   # skip endpoints whose p95 exceeds the request's budget
  cost_cap: enforce         # skip endpoints priced above the request's cost cap
  when_none_healthy: try_best   # or refuse
```

Checked here (every error collected), lowered to the object the generated
module exports as `health` (read by rego/kamiwaza/health/health.rego).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from translator.errors import BAD_COMPARISON, BAD_VALUE, UNKNOWN_ENDPOINT, did_you_mean
from translator.model import (
    HEALTH_PREFIX,
    HEALTH_STATUSES,
    HealthConfig,
    NumberCondition,
    StringCondition,
)
from translator.registry import Registry
from translator.source import LMap, LNode, LScalar
from translator.validate import Collector

# The observed values a lagging condition may test (docs/health.md says what
# each one is and where it comes from).
HEALTH_VALUES = (
    "p50_ttft_ms",
    "p95_ttft_ms",
    "p50_latency_ms",
    "p95_latency_ms",
    "error_rate",
    "timeout_rate",
    "in_flight",
    "queue_depth",
    "kv_cache_usage",
    "ratelimit_remaining_requests",
    "ratelimit_remaining_tokens",
)
# Measured over the window's requests: these count only with min_samples of them.
SAMPLED_VALUES = frozenset(HEALTH_VALUES[:6])
HEALTH_KEYS = ("lagging", "min_samples", "latency_budget", "cost_cap", "when_none_healthy")
ENFORCE = ("enforce", "off")
WHEN_NONE_HEALTHY = ("try_best", "refuse")
DEFAULT_MIN_SAMPLES = 20

# The match keys' check of one comparison: (field, node, what to call it).
NumberCheck = Callable[[str, LNode, str], NumberCondition | None]


def check_health(out: Collector, root: LMap, number: NumberCheck) -> HealthConfig | None:
    """The `health:` section of `root`, or None when absent or invalid.

    `number` checks one comparison (the match keys' own check)."""
    node = root.get("health")
    if node is None:
        return None
    before = len(out.diagnostics)
    section = out.expect_map(node, "'health'", root.keys["health"])
    if section is None:
        return None
    out.check_keys(section, HEALTH_KEYS, "'health'")
    conditions: list[NumberCondition] = []
    lagging = out.expect_table(section, "lagging", "'health.lagging'", HEALTH_VALUES)
    if lagging is not None:
        for field, value in lagging.entries.items():
            if field not in HEALTH_VALUES:
                continue  # reported by expect_table
            condition = number(field, value, f"'health.lagging.{field}'")
            if condition is not None and condition.op in ("==", "!="):
                out.err(
                    BAD_COMPARISON,
                    f'\'health.lagging.{field}\' must be a bound: one of "<N", "<=N", '
                    f'">N", ">=N" (a measured value is never exactly a number)',
                    value.pos,
                )
            elif condition is not None:
                conditions.append(condition)
    min_samples = DEFAULT_MIN_SAMPLES
    if (samples := section.get("min_samples")) is not None:
        got = out.expect_number(samples, "'health.min_samples'", minimum=1, integer=True)
        min_samples = int(got) if got is not None else min_samples
    # Enforcement is opt-in: a health section alone only moves lagging endpoints.
    choices = {
        key: _choice(out, section, key, allowed, default)
        for key, allowed, default in (
            ("latency_budget", ENFORCE, "off"),
            ("cost_cap", ENFORCE, "off"),
            ("when_none_healthy", WHEN_NONE_HEALTHY, "try_best"),
        )
    }
    if len(out.diagnostics) != before:
        return None
    return HealthConfig(
        lagging=tuple(conditions),
        min_samples=min_samples,
        latency_budget=choices["latency_budget"],
        cost_cap=choices["cost_cap"],
        when_none_healthy=choices["when_none_healthy"],
        pos=section.pos,
    )


def _choice(out: Collector, section: LMap, key: str, allowed: tuple[str, ...], default: str) -> str:
    node = section.get(key)
    if node is None:
        return default
    if "off" in allowed and isinstance(node, LScalar) and node.value is False:
        return "off"  # YAML reads a bare `off` (or `no`, `false`) as false
    value = out.expect_str(node, f"'health.{key}'")
    if value is None:
        return default
    if value not in allowed:
        out.err(
            BAD_VALUE,
            f"'health.{key}' must be one of {', '.join(allowed)}, got '{value}'",
            node.pos,
            did_you_mean(value, allowed),
        )
        return default
    return value


def check_endpoint_health(
    out: Collector, condition: StringCondition, registry: Registry
) -> StringCondition | None:
    """`endpoint_health.<endpoint>`: a known endpoint, and statuses it can have."""
    name = condition.field[len(HEALTH_PREFIX) :]
    ok = True
    if registry.readable and name not in registry.endpoints:
        known = registry.endpoints
        out.err(
            UNKNOWN_ENDPOINT,
            f"match key '{condition.field}' names unknown endpoint '{name}' "
            f"(registry: {registry.path})",
            condition.pos,
            did_you_mean(name, known) or f"known endpoints: {', '.join(sorted(known))}",
        )
        ok = False
    for value in condition.values:
        if value not in HEALTH_STATUSES:
            out.err(
                BAD_VALUE,
                f"match key '{condition.field}': unknown health status '{value}'",
                condition.pos,
                did_you_mean(value, HEALTH_STATUSES) or f"statuses: {', '.join(HEALTH_STATUSES)}",
            )
            ok = False
    return condition if ok and name in registry.endpoints else None


def health_data(config: HealthConfig) -> dict[str, Any]:
    """The generated module's `health` object (data.kamiwaza.policy.health).

    Each lagging condition carries the samples it needs (min_samples for a
    percentile or a rate, 0 for a gauge) and is spelled as one comparison, so
    that the health package tests it without a function call: that is most of
    what health costs a decision (bench/health_bench.py)."""
    # Every comparison as `value * sign > bound` (strict) or `>= bound`: two
    # lists, one comparison each, whatever the operators.
    lagging: dict[str, list[dict[str, Any]]] = {"strict": [], "inclusive": []}
    for c in config.lagging:
        sign = -1 if c.op in ("<", "<=") else 1
        lagging["strict" if c.op in ("<", ">") else "inclusive"].append(
            {
                "field": c.field,
                "op": c.op,
                "value": c.value,
                "sign": sign,
                "bound": c.value * sign,
                "min_samples": config.min_samples if c.field in SAMPLED_VALUES else 0,
            }
        )
    return {
        "lagging": lagging,
        "min_samples": config.min_samples,
        "latency_budget": config.latency_budget,
        "cost_cap": config.cost_cap,
        "when_none_healthy": config.when_none_healthy,
    }
