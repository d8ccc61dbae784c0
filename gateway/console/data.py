"""What the console shows, computed from the audit records and the gateway's
own state.

Records are read where `kamiwaza stats` reads them (the sink's objects and the
spool's records not shipped yet, :func:`gateway.audit_config.record_sources`),
with the same reader and the same aggregation (:mod:`observability.stats`), so
the overview's numbers are those of `kamiwaza stats` for the same window and
filters. Reading runs in a worker thread: the event loop keeps serving requests.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from gateway.audit_config import record_sources
from gateway.forwarding import Forwarder
from gateway.settings import Settings
from observability.metrics import label
from observability.pipeline import AuditPipeline
from observability.record_filter import RecordFilter, record_rule
from observability.stats import ReadReport, compute, read_many
from observability.times import parse_timestamp
from translator.registry import Endpoint, Registry

_REVISION = re.compile(r'^revision := "([^"]+)"$', re.MULTILINE)
# Time-series buckets: the first that gives at most ~90 points over the window.
_BUCKETS_S = (10, 30, 60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 86400)


def policy_revision(compiled: Mapping[str, str]) -> str | None:
    """The revision the compiler wrote into the policy the sidecar serves."""
    for path, text in compiled.items():
        if path.endswith("policy.rego") and (match := _REVISION.search(text)):
            return match.group(1)
    return None


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _safe_url(url: str | None) -> str | None:
    """A URL without user info (a registry never holds credentials, but a URL could)."""
    if not url:
        return url
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def endpoint_view(endpoint: Endpoint) -> dict[str, Any]:
    """A registry entry without secrets: `auth` holds only the names of the
    variables and files the credentials come from (never a value)."""
    return {
        "name": endpoint.name,
        "type": endpoint.type,
        "description": endpoint.description,
        "base_url": _safe_url(endpoint.base_url),
        "model": endpoint.model,
        "in_vpc": endpoint.in_vpc,
        "operations": sorted(endpoint.operations),
        "auth": dict(endpoint.auth),
        "pricing": {
            "input_per_1k": endpoint.pricing.input_per_1k,
            "output_per_1k": endpoint.pricing.output_per_1k,
        },
        "timeouts": {
            "connect_ms": endpoint.timeouts.connect_ms,
            "first_token_ms": endpoint.timeouts.first_token_ms,
            "total_ms": endpoint.timeouts.total_ms,
        },
        "options": dict(endpoint.options),
    }


def request_row(record: Mapping[str, Any]) -> dict[str, Any]:
    """One line of the recent-requests table."""
    latency = record.get("latency_ms")
    latency = latency if isinstance(latency, Mapping) else {}
    tokens = record.get("tokens")
    tokens = tokens if isinstance(tokens, Mapping) else {}
    error = record.get("error")
    return {
        "timestamp": record.get("timestamp"),
        "request_id": record.get("request_id"),
        "tenant": label(record.get("tenant")),
        "data_class": label(record.get("data_class")),
        "operation": label(record.get("operation")),
        "rule": record_rule(record),
        "endpoint": label(record.get("endpoint")),
        "status": record.get("status"),
        "stream": bool(record.get("stream")),
        "latency_ms": latency.get("total"),
        "ttft_ms": latency.get("ttft"),
        "input_tokens": tokens.get("input", 0),
        "output_tokens": tokens.get("output", 0),
        "cost_usd": record.get("cost_usd") or 0.0,
        "error": error.get("code") if isinstance(error, Mapping) else None,
    }


def series(records: list[Mapping[str, Any]], since: datetime, until: datetime) -> dict[str, Any]:
    """Requests and errors per time bucket over the window."""
    span = (until - since).total_seconds()
    bucket = next((b for b in _BUCKETS_S if span / b <= 90), _BUCKETS_S[-1])
    start = since.timestamp() - since.timestamp() % bucket
    count = int((until.timestamp() - start) // bucket) + 1
    requests = [0] * count
    errors = [0] * count
    for record in records:
        moment = parse_timestamp(record.get("timestamp"))
        if moment is None:
            continue
        index = int((moment.timestamp() - start) // bucket)
        if 0 <= index < count:
            requests[index] += 1
            status = record.get("status")
            errors[index] += not isinstance(status, int) or status >= 400
    return {
        "bucket_s": bucket,
        "points": [
            {
                "t": _iso(datetime.fromtimestamp(start + i * bucket, UTC)),
                "requests": requests[i],
                "errors": errors[i],
            }
            for i in range(count)
        ],
    }


@dataclass(frozen=True, slots=True)
class Window:
    since: datetime
    until: datetime

    @property
    def span(self) -> timedelta:
        return self.until - self.since


class ConsoleData:
    """The console's view of one gateway (`app[CONSOLE]`)."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        forwarder: Forwarder,
        audit: AuditPipeline,
        compiled: Mapping[str, str],
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.forwarder = forwarder
        self.audit = audit
        self.revision = policy_revision(compiled)
        self.sources, self.options, self.complete = record_sources(settings)
        # The policy as it was loaded: a later edit of the file is not active.
        self.policy_yaml = _read(settings.policy)
        self.policy_path = settings.policy
        self.registry_path = registry.path

    # -- records ---------------------------------------------------------------

    def _read(self, window: Window, selection: RecordFilter) -> tuple[list[Any], ReadReport]:
        report = ReadReport()
        records = list(
            selection.apply(
                read_many(self.sources, window.since, window.until, report, self.options)
            )
        )
        return records, report

    async def records(
        self, window: Window, selection: RecordFilter
    ) -> tuple[list[Any], ReadReport]:
        return await asyncio.to_thread(self._read, window, selection)

    async def overview(self, window: Window, selection: RecordFilter) -> dict[str, Any]:
        records, report = await self.records(window, selection)
        return {
            "summary": compute(records, window.since, window.until),
            "series": series(records, window.since, window.until),
            "endpoints": self.endpoint_states(),
            "policy_revision": self.revision,
            "audit": self.audit.stats(),
            **self._provenance(report),
        }

    async def requests(
        self, window: Window, selection: RecordFilter, search: str, limit: int
    ) -> dict[str, Any]:
        records, report = await self.records(window, selection)
        if search:
            records = [r for r in records if search in str(r.get("request_id") or "")]
        records.sort(key=lambda r: str(r.get("timestamp") or ""), reverse=True)
        return {
            "window": {"since": _iso(window.since), "until": _iso(window.until)},
            "total": len(records),
            "requests": [request_row(r) for r in records[:limit]],
            **self._provenance(report),
        }

    async def request(self, window: Window, request_id: str) -> dict[str, Any] | None:
        records, _ = await self.records(window, RecordFilter())
        return next((dict(r) for r in records if r.get("request_id") == request_id), None)

    def _provenance(self, report: ReadReport) -> dict[str, Any]:
        return {
            "sources": self.sources,
            "complete": self.complete,
            "bad_lines": report.bad_lines,
        }

    # -- the gateway's own state ------------------------------------------------

    def endpoint_states(self) -> list[dict[str, Any]]:
        """Each endpoint's circuit breaker as this process sees it, or why it is out."""
        live = set(self.forwarder.endpoint_names)
        unavailable = self.forwarder.unavailable
        states = []
        for name, endpoint in sorted(self.registry.endpoints.items()):
            state: dict[str, Any] = {
                "endpoint": name,
                "type": endpoint.type,
                "in_vpc": endpoint.in_vpc,
                "breaker": None,
                "retry_after_s": None,
                "unavailable": unavailable.get(name),
            }
            if name in live:
                breaker = self.forwarder.breaker(name)
                state["breaker"] = breaker.state
                wait = breaker.retry_after()
                state["retry_after_s"] = None if wait is None else round(wait, 1)
            states.append(state)
        return states

    def policy(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "policy_path": self.policy_path,
            "policy_yaml": self.policy_yaml,
            "registry_path": self.registry_path,
            "endpoints": [endpoint_view(e) for _, e in sorted(self.registry.endpoints.items())],
            "states": self.endpoint_states(),
        }


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
