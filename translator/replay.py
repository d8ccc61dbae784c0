"""Replaying a logged decision: `kamiwaza policy explain --from-decision-log FILE`.

OPA's decision log event holds the whole input the gateway sent (endpoint
health included, docs/health.md) and the decision it got back, so deciding the
event's input again with the same policy must give the same decision. FILE is
one event (a JSON object), or JSON lines of events or of the audit spool's
entries (`{"kind": "opa_decision", "body": {...}}`); with several routing
decisions in it, `--decision-id` picks one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

ROUTE_DECISION_PATH = "kamiwaza/route/decision"


class ReplayError(ValueError):
    """The file holds no usable decision event; the message says why."""


@dataclass(frozen=True, slots=True)
class LoggedDecision:
    decision_id: str | None
    input: dict[str, Any]
    result: Any


def _events(text: str) -> list[dict[str, Any]]:
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        whole = None
    docs: list[Any]
    if isinstance(whole, dict):
        docs = [whole]
    elif isinstance(whole, list):
        docs = whole
    else:
        docs = []
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                docs.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ReplayError(f"line {n} is not JSON: {err.msg}") from None
    events = []
    for item in docs:
        doc = (
            item.get("body")
            if isinstance(item, dict) and item.get("kind") == "opa_decision"
            else item
        )
        if not isinstance(doc, dict):
            continue
        path = str(doc.get("path", ROUTE_DECISION_PATH)).strip("/").replace(".", "/")
        if path == ROUTE_DECISION_PATH and "input" in doc:
            events.append(doc)
    return events


def read_logged_decision(text: str, decision_id: str | None) -> LoggedDecision:
    """The routing decision event of `text` (the one with `decision_id`, if given)."""
    events = _events(text)
    if decision_id is not None:
        events = [e for e in events if e.get("decision_id") == decision_id]
        if not events:
            raise ReplayError(f"no routing decision with decision_id {decision_id!r}")
    if not events:
        raise ReplayError("no routing decision event (path kamiwaza/route/decision) in it")
    if len(events) > 1:
        raise ReplayError(f"{len(events)} routing decisions in it: pick one with --decision-id")
    event = events[0]
    if not isinstance(event["input"], dict):
        raise ReplayError("the event's input is not an object")
    found = event.get("decision_id")
    return LoggedDecision(
        found if isinstance(found, str) else None, event["input"], event.get("result")
    )


def differences(logged: Any, replayed: Any) -> list[str]:
    """The top-level fields of the decision that differ (all of them: sorted)."""
    if not isinstance(logged, dict) or not isinstance(replayed, dict):
        return [] if logged == replayed else ["the whole decision"]
    keys = sorted(set(logged) | set(replayed))
    return [k for k in keys if logged.get(k) != replayed.get(k)]
