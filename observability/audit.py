"""The per-request audit record.

One :class:`AuditRecord` is written for every request the gateway answers,
successful or not. It says who asked, what the policy decided and why, where the
request went (every attempt), and what it cost. Prompts and completions are
never part of it; `prompt_hash` is an optional salted hash (HMAC-SHA256) of the
messages, for matching a known prompt without disclosing any.

:mod:`observability.pipeline` spools, chains and ships the records.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any


@dataclass(slots=True)
class Attempt:
    endpoint: str
    status: int | None  # upstream HTTP status; None when no response arrived
    error: str | None  # short code, e.g. "timeout", "connect_error", "http_503", "circuit_open"
    latency_ms: float


@dataclass(slots=True)
class AuditRecord:
    request_id: str
    timestamp: str  # RFC 3339, UTC, when the request arrived
    path: str
    operation: str | None = None  # chat | embeddings | messages | responses
    status: int = 0  # HTTP status returned to the client
    stream: bool = False
    # Who.
    tenant: str | None = None
    user: str | None = None
    roles: list[str] = field(default_factory=list)
    key_id: str | None = None
    auth_method: str | None = None
    # What the request declared and what the gateway used.
    data_class: str | None = None
    latency_budget_ms: float | None = None
    cost_cap_per_1k: float | None = None
    labels: dict[str, str] = field(default_factory=dict)
    requested_model: str | None = None
    # What the policy decided.
    decision_id: str | None = None
    policy_revision: str | None = None
    rule: dict[str, Any] | None = None
    conditions: list[dict[str, Any]] = field(default_factory=list)
    overridden_by: str | None = None
    deny: list[str] = field(default_factory=list)
    route_to: str | None = None
    fallback: list[str] = field(default_factory=list)
    # Where it went.
    endpoint: str | None = None
    model: str | None = None
    attempts: list[Attempt] = field(default_factory=list)
    # How long and how much.
    latency_ms: dict[str, float | None] = field(
        default_factory=lambda: {"total": None, "policy": None, "upstream": None, "ttft": None}
    )
    tokens: dict[str, int] = field(default_factory=lambda: {"input": 0, "output": 0})
    cost_usd: float = 0.0
    error: dict[str, str] | None = None  # {"type", "code", "message"} when status >= 400
    # What a bridge dropped or changed translating the request for the endpoint
    # that served it (e.g. "reasoning.effort: dropped (...)"); empty when native.
    notes: list[str] = field(default_factory=list)
    # HMAC-SHA256 of the request's messages under the operator's salt (None: off).
    prompt_hash: str | None = None
    # The shadow policy's {revision, route_to, rule} when it decided otherwise
    # (`shadow_policy`); left out of the record when it agreed or none is loaded.
    shadow: dict[str, Any] | None = None
    # What the per-tenant limiter did (gateway/pipeline/limiting.py): reserved and
    # settled cost, or the limit that refused it; left out without a limits file.
    limits: dict[str, Any] | None = None
    # What endpoint health changed in the route: {"skipped": [...], "moved": [...]},
    # each entry {endpoint, reason, detail, values} with the observed values that
    # decided it (docs/health.md); left out when health changed nothing.
    health: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        # dataclasses.asdict deep-copies every value (~0.25 ms a record); the
        # record is written once and never mutated after, so a shallow view will do.
        doc = {f.name: getattr(self, f.name) for f in fields(self)}
        doc["attempts"] = [
            {
                "endpoint": a.endpoint,
                "status": a.status,
                "error": a.error,
                "latency_ms": a.latency_ms,
            }
            for a in self.attempts
        ]
        if self.shadow is None:
            del doc["shadow"]
        if self.limits is None:
            del doc["limits"]
        if self.health is None:
            del doc["health"]
        return doc

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True)


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
