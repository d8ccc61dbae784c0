"""Endpoint health as this replica sees it, for the routing decision.

The forwarder tells the monitor of every attempt it starts and finishes (and of
each upstream response's headers); the scraper (:mod:`.scrape`) of each
self-hosted server's own metrics. Before each decision the monitor gives the
OPA input its `health` object::

    "health": {"endpoints": {"private-gpu": {"state": "healthy", "samples": 41,
                  "p50_ttft_ms": 180.2, "p95_ttft_ms": 610.4, "p50_latency_ms": ...,
                  "p95_latency_ms": ..., "error_rate": 0.0244, "timeout_rate": 0,
                  "in_flight": 3, "breaker": "closed", "queue_depth": 4, ...}},
               "probe": ["anthropic"]}

and reads back what the decision said of each endpoint of the route (its
`health.verdicts`, judged by rego/kamiwaza/health against the policy's
thresholds), which drives the one piece of state OPA cannot keep, the hysteresis:

    healthy --(verdict lagging)--> lagging --(cooldown_s)--> probing
    probing --(verdict healthy, min_samples met)--> healthy
    probing --(verdict lagging)--> lagging (cooldown again)

A lagging endpoint is held lagging for the cooldown whatever its stale window
says; probing starts from an empty window and only a share of the requests
(`probe_share`, every Nth) may try it first, so one slow request can neither
trip nor clear it. Each change of state is logged once. Everything is in
memory, per replica, and never blocks: the hooks are a few additions, the
snapshot of an endpoint is rebuilt only when something about it changed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.forwarding.attempts import Attempt
from gateway.health.window import RollingWindow
from gateway.providers.failures import AttemptFailure

log = logging.getLogger("gateway.health")

State = Literal["healthy", "lagging", "probing"]
STATES: tuple[State, ...] = ("healthy", "probing", "lagging")  # gauge values 0, 1, 2

# Rate-limit headroom headers of managed APIs (OpenAI and Azure OpenAI, Anthropic).
RATELIMIT_HEADERS: Mapping[str, str] = {
    "x-ratelimit-remaining-requests": "ratelimit_remaining_requests",
    "x-ratelimit-remaining-tokens": "ratelimit_remaining_tokens",
    "anthropic-ratelimit-requests-remaining": "ratelimit_remaining_requests",
    "anthropic-ratelimit-tokens-remaining": "ratelimit_remaining_tokens",
}
# Values that are not measured over the window: gauges read from elsewhere.
GAUGES = ("queue_depth", "kv_cache_usage", *dict.fromkeys(RATELIMIT_HEADERS.values()))


@dataclass(frozen=True, slots=True)
class HealthSettings:
    window_s: float = 60.0
    buckets: int = 12
    cooldown_s: float = 30.0  # how long a lagging endpoint is held before it is judged again
    probe_share: float = 0.05  # share of requests that may try a recovering endpoint first


@dataclass(slots=True)
class _Endpoint:
    window: RollingWindow
    state: State = "healthy"
    since: float = 0.0
    in_flight: int = 0
    gauges: dict[str, float] = field(default_factory=dict)
    probes: int = 0  # requests seen while probing (every Nth probes)
    cached: dict[str, Any] | None = None


class HealthMonitor:
    """Per-endpoint rolling health and the recovery state machine (one per replica)."""

    def __init__(
        self,
        names: Iterable[str],
        settings: HealthSettings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        breaker_state: Callable[[str], str] | None = None,
    ) -> None:
        self.settings = settings or HealthSettings()
        self._clock = clock
        self._breaker_state = breaker_state
        self._every = max(1, round(1 / self.settings.probe_share))
        self._endpoints = {
            name: _Endpoint(
                RollingWindow(self.settings.window_s, buckets=self.settings.buckets, clock=clock)
            )
            for name in names
        }
        self.transitions: list[tuple[str, State, State]] = []  # (endpoint, from, to), bounded
        self.on_transition: list[Callable[[str, State, State], None]] = []

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._endpoints)

    # -- observations (forwarder, scraper) --------------------------------------

    def attempt_started(self, name: str) -> None:
        ep = self._endpoints.get(name)
        if ep is not None:
            ep.in_flight += 1
            ep.cached = None

    def attempt_finished(
        self, name: str, attempt: Attempt, failure: AttemptFailure | None, ttft_ms: float | None
    ) -> None:
        """One attempt's end (the forwarder's AttemptObserver). A retryable failure
        counts against the endpoint; a refusal of the request itself (4xx) is an
        answer; a cancelled attempt or a client that left says nothing of it."""
        ep = self._endpoints.get(name)
        if ep is None:
            return
        ep.in_flight = max(0, ep.in_flight - 1)
        ep.cached = None
        if failure is None and attempt.error is not None:
            return  # cancelled, aborted, client_disconnected: no verdict on the endpoint
        failed = failure is not None and failure.retryable
        ep.window.add(
            None if failed else attempt.latency_ms,
            None if failed else ttft_ms,
            error=failed,
            timeout=failure is not None and failure.timeout,
        )

    def response_headers(self, name: str, headers: Mapping[str, str]) -> None:
        """Rate-limit headroom from an upstream response's headers, where present."""
        ep = self._endpoints.get(name)
        if ep is None:
            return
        for header, key in RATELIMIT_HEADERS.items():
            raw = headers.get(header)
            if raw is None:
                continue
            try:
                ep.gauges[key] = float(raw)
            except ValueError:
                continue
            ep.cached = None

    def set_gauges(self, name: str, values: Mapping[str, float]) -> None:
        """The latest scraped server metrics (queue depth, KV cache); {} forgets them."""
        ep = self._endpoints.get(name)
        if ep is None:
            return
        for key in ("queue_depth", "kv_cache_usage"):
            ep.gauges.pop(key, None)
        ep.gauges.update(values)
        ep.cached = None

    # -- the decision ------------------------------------------------------------

    def opa_input(self) -> dict[str, Any] | None:
        """`input.health`, or None when nothing is known of any endpoint."""
        endpoints: dict[str, Any] = {}
        probe: list[str] = []
        now = self._clock()
        for name, ep in self._endpoints.items():
            if ep.state == "lagging" and now - ep.since >= self.settings.cooldown_s:
                self._move(name, ep, "probing", now, "cooldown over: judged again on a share")
            if ep.state == "probing":
                ep.probes += 1
                if ep.probes % self._every == 1 or self._every == 1:
                    probe.append(name)
            values = self._values(name, ep)
            if values is not None:
                endpoints[name] = values
        if not endpoints:
            return None
        doc: dict[str, Any] = {"endpoints": endpoints}
        if probe:
            doc["probe"] = probe
        return doc

    def note_verdicts(self, report: Mapping[str, Any] | None) -> None:
        """Read back the decision's `health` report: the state machine's input."""
        if not report:
            return
        verdicts = report.get("verdicts")
        if not isinstance(verdicts, Mapping):
            return
        now = self._clock()
        for name, verdict in verdicts.items():
            ep = self._endpoints.get(name)
            if ep is None:
                continue
            if verdict == "lagging" and ep.state in ("healthy", "probing"):
                self._move(name, ep, "lagging", now, _reasons(report, name))
            elif verdict == "healthy" and ep.state == "probing":
                self._move(name, ep, "healthy", now, "healthy again over enough samples")

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Every endpoint's current values (gauges, `kamiwaza stats`), known or not."""
        return {
            name: dict(self._values(name, ep) or {"state": ep.state, "samples": 0})
            for name, ep in self._endpoints.items()
        }

    def state(self, name: str) -> State:
        return self._endpoints[name].state

    # -- internals ----------------------------------------------------------------

    def _values(self, name: str, ep: _Endpoint) -> dict[str, Any] | None:
        if ep.window.advance():
            ep.cached = None
        breaker = self._breaker_state(name) if self._breaker_state is not None else "closed"
        cached = ep.cached
        if cached is not None and cached.get("breaker", "closed") == breaker:
            return cached if _worth_sending(cached) else None
        values: dict[str, Any] = {"state": ep.state, **ep.window.stats()}
        values["in_flight"] = ep.in_flight
        if breaker != "closed":
            values["breaker"] = breaker
        values.update(ep.gauges)
        ep.cached = values
        return values if _worth_sending(values) else None

    def _move(self, name: str, ep: _Endpoint, to: State, now: float, why: str) -> None:
        before = ep.state
        ep.state, ep.since, ep.cached = to, now, None
        if to == "probing":
            ep.window.reset()
            ep.probes = 0
        self.transitions.append((name, before, to))
        del self.transitions[:-100]
        level = logging.WARNING if to == "lagging" else logging.INFO
        log.log(level, "endpoint %s: %s -> %s (%s)", name, before, to, why)
        for hook in self.on_transition:
            try:
                hook(name, before, to)
            except Exception:
                log.exception("health transition hook failed")


def _worth_sending(values: Mapping[str, Any]) -> bool:
    """Whether an endpoint has anything to tell the policy."""
    return bool(
        values.get("samples")
        or values.get("in_flight")
        or values.get("state") != "healthy"
        or "breaker" in values
        or any(key in values for key in GAUGES)
    )


def _reasons(report: Mapping[str, Any], name: str) -> str:
    for entry in report.get("moved") or ():
        if isinstance(entry, Mapping) and entry.get("endpoint") == name:
            detail = entry.get("detail")
            if isinstance(detail, list):
                return "; ".join(str(d) for d in detail)
    return "the policy's lagging conditions hold"
