"""Human-readable rendering of a routing decision for `kamiwaza policy explain`."""

from __future__ import annotations

import json
from typing import Any


def _show(value: Any) -> str:
    return "(absent)" if value is None else json.dumps(value)


def render_explanation(decision: dict[str, Any] | None, trace: list[dict[str, Any]] | None) -> str:
    """The decision first, then each rule up to the one that matched, condition by condition."""
    if decision is None:
        return "OPA returned no decision: is the entry point (rego/) loaded?"
    lines: list[str] = []
    rule = decision.get("rule")
    if decision.get("deny"):
        lines.append("decision: DENY")
        lines.extend(f"  - {reason}" for reason in decision["deny"])
    else:
        fallback = ", ".join(decision.get("fallback") or []) or "none"
        lines.append(f"decision: route to {decision['route_to']} (fallback: {fallback})")
    if decision.get("overridden_by"):
        lines.append(f"override applied: {decision['overridden_by']} (compiled rules not used)")
    elif rule:
        lines.append(f"matched rule: #{rule['index']} {rule['name']} ({rule['source']})")
    lines.append(f"policy revision: {decision.get('revision')}")
    lines.append("")
    lines.append("rules in order:")
    matched_index = rule["index"] if rule and not decision.get("overridden_by") else None
    trace = trace or []
    for entry in trace:
        conditions = entry["conditions"]
        holds = all(c["result"] for c in conditions)
        verdict = "MATCH" if holds else "no match"
        lines.append(
            f"  #{entry['index']} {entry['name']} -> {entry['route_to']}: {verdict}"
            f"  ({entry['source']})"
        )
        for c in conditions:
            mark = "ok  " if c["result"] else "FAIL"
            lines.append(
                f"      {mark} {c['field']} {c['op']} {_show(c['expected'])}"
                f"   actual: {_show(c['actual'])}"
            )
        if holds and entry["index"] == matched_index:
            remaining = len(trace) - trace.index(entry) - 1
            if remaining:
                lines.append(f"  ({remaining} later rule(s) not reached: first match wins)")
            break
    if rule and rule.get("name") == "default" and not decision.get("overridden_by"):
        target = decision["route_to"] or "(refused, see deny)"
        lines.append(f"  default -> {target}  ({rule['source']})")
    if not trace:
        lines.append("  (the policy has no rules)")
    return "\n".join(lines)
