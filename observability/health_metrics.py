"""Metrics of endpoint health (gateway/health), on GatewayMetrics' meter.

Gauges, read from the health monitor's snapshot at each export (no work on the
request path):

- kamiwaza_endpoint_health_state: endpoint. 0 healthy, 1 probing (recovering,
  judged again on a share of the traffic), 2 lagging.
- kamiwaza_endpoint_health_p95_ttft_ms, ..._p95_latency_ms, ..._error_rate,
  ..._in_flight, ..._queue_depth: endpoint. The values the policy judged it on
  (over this replica's rolling window; the queue depth as last scraped).

Counters, from the audit records:

- kamiwaza_endpoint_health_reroutes_total: endpoint, reason (`lagging`,
  `latency_budget`, `cost_cap`). Requests whose route health changed: the
  endpoint skipped or moved behind its fallbacks, and why.
- kamiwaza_endpoint_health_transitions_total: endpoint, state (the state
  entered). Each change is counted once, when it happens.

Endpoints come from the registry (bounded).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

from opentelemetry.metrics import CallbackOptions, Meter, Observation

log = logging.getLogger(__name__)

STATE_VALUES = {"healthy": 0, "probing": 1, "lagging": 2}
GAUGES = {
    "p95_ttft_ms": "p95 time to first token over the rolling window",
    "p95_latency_ms": "p95 latency over the rolling window",
    "error_rate": "Share of attempts that failed over the rolling window",
    "in_flight": "Attempts in flight",
    "queue_depth": "Requests waiting on the server (its own metrics, scraped)",
}

Snapshot = Callable[[], Mapping[str, Mapping[str, Any]]]


class _Adder(Protocol):
    def add(self, key: tuple[str, ...], amount: float) -> None: ...


class HealthMetrics:
    """The health instruments; `counter` makes a cumulative sum (GatewayMetrics')."""

    def __init__(
        self,
        meter: Meter,
        counter: Callable[[str, tuple[str, ...], str, str], _Adder],
        *,
        enabled: bool,
    ) -> None:
        self.enabled = enabled
        self._lock = threading.Lock()
        self._snapshot: Snapshot | None = None
        self.reroutes = counter(
            "kamiwaza.endpoint.health.reroutes",
            ("endpoint", "reason"),
            "{request}",
            "Requests whose route endpoint health changed, by endpoint and reason",
        )
        self.transitions = counter(
            "kamiwaza.endpoint.health.transitions",
            ("endpoint", "state"),
            "{transition}",
            "Changes of an endpoint's health state, by the state entered",
        )
        meter.create_observable_gauge(
            "kamiwaza.endpoint.health.state",
            callbacks=[self._observe_state],
            description="Endpoint health: 0 healthy, 1 probing, 2 lagging",
        )
        for key, description in GAUGES.items():
            meter.create_observable_gauge(
                f"kamiwaza.endpoint.health.{key}",
                callbacks=[self._observe_value(key)],
                description=description,
            )

    def watch(self, snapshot: Snapshot) -> None:
        """Report the monitor's snapshot at each export."""
        with self._lock:
            self._snapshot = snapshot

    def transition(self, endpoint: str, before: str, after: str) -> None:
        """The monitor's transition hook."""
        if self.enabled:
            self.transitions.add((endpoint, after), 1)

    def observe_record(self, health: Mapping[str, Any]) -> None:
        """An audit record's `health` (what health changed in its route)."""
        for entry in (*(health.get("skipped") or ()), *(health.get("moved") or ())):
            self.reroutes.add((str(entry.get("endpoint")), str(entry.get("reason"))), 1)

    def _read(self) -> Mapping[str, Mapping[str, Any]]:
        with self._lock:
            snapshot = self._snapshot
        if snapshot is None:
            return {}
        try:
            return snapshot()
        except Exception:
            log.exception("metrics: the health snapshot failed")
            return {}

    def _observe_state(self, options: CallbackOptions) -> Iterator[Observation]:
        for name, values in self._read().items():
            yield Observation(STATE_VALUES.get(str(values.get("state")), 0), {"endpoint": name})

    def _observe_value(self, key: str) -> Callable[[CallbackOptions], Iterator[Observation]]:
        def observe(options: CallbackOptions) -> Iterator[Observation]:
            for name, values in self._read().items():
                value = values.get(key)
                if isinstance(value, int | float):
                    yield Observation(value, {"endpoint": name})

        return observe
