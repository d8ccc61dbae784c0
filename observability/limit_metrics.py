"""Metrics of the per-tenant limiter (gateway/limits), on GatewayMetrics' meter.

The limiter calls these hooks (its `LimitsObserver` protocol) from the request
path; each is an in-memory update under a lock, no I/O, never raises. The
exporter thread reads them like the gateway's other instruments:

- kamiwaza_limits_refusals_total: tenant, limit (`tenant.usd_per_day`,
  `user.requests_per_minute`, ...). Requests refused with 429.
- kamiwaza_limits_unavailable_total: mode (`closed`: refused with 503,
  `open`: let through unlimited). Requests that met an unreachable store.
- kamiwaza_limits_settlements_total: tenant, basis (`usage`: the upstream's
  report, `estimate`: counted by the gateway). Reservations settled.
- kamiwaza_limits_spend_usd (gauge): tenant, window (`day` | `month`). What
  the tenant's spend limit has taken in the current UTC period, settled and
  in flight, as of the tenant's last request on this replica.
- kamiwaza_limits_remaining_usd (gauge): tenant, window. What is left of it.
- kamiwaza_limits_remaining_share (gauge): tenant, window. The same as a share
  of the limit (0..1), the value policies route on.

Tenants come from the keys file and limits file (bounded); limits from a
fixed set of 16 ids. Past the cardinality limit, new sets fold into
"_overflow" as in observability.metrics.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Protocol

from opentelemetry.metrics import CallbackOptions, Meter, Observation


class _Adder(Protocol):
    """What `counter` returns (observability.metrics._Sums)."""

    def add(self, key: tuple[str, ...], amount: float) -> None: ...


class _Gauge:
    """The last value per attribute tuple, reported by an observable gauge."""

    def __init__(self, keys: tuple[str, ...], limit: int) -> None:
        self.keys = keys
        self.limit = limit
        self.values: dict[tuple[str, ...], float] = {}
        self._lock = threading.Lock()

    def set(self, key: tuple[str, ...], value: float) -> None:
        with self._lock:
            if key not in self.values and len(self.values) >= self.limit:
                key = ("_overflow",) * len(self.keys)
            self.values[key] = value

    def observe(self, options: CallbackOptions) -> Iterator[Observation]:
        with self._lock:
            items = list(self.values.items())
        for key, value in items:
            yield Observation(value, dict(zip(self.keys, key, strict=True)))


class LimitMetrics:
    """The limiter's instruments; `counter` makes a cumulative sum (GatewayMetrics')."""

    def __init__(
        self,
        meter: Meter,
        counter: Callable[[str, tuple[str, ...], str, str], _Adder],
        *,
        enabled: bool,
        cardinality_limit: int,
    ) -> None:
        self.enabled = enabled
        self.refusals = counter(
            "kamiwaza.limits.refusals",
            ("tenant", "limit"),
            "{request}",
            "Requests refused by a rate limit or budget (429), by the limit",
        )
        self.unavailable_requests = counter(
            "kamiwaza.limits.unavailable",
            ("mode",),
            "{request}",
            "Requests that met an unreachable limits store: refused (closed) or let through (open)",
        )
        self.settlements = counter(
            "kamiwaza.limits.settlements",
            ("tenant", "basis"),
            "{reservation}",
            "Reservations settled from the upstream's usage or from an estimate",
        )
        gauges = {
            "spend": ("kamiwaza.limits.spend.usd", "Spend counted against the tenant's limit"),
            "remaining": ("kamiwaza.limits.remaining.usd", "What is left of the tenant's limit"),
            "share": ("kamiwaza.limits.remaining.share", "Share of the tenant's limit left, 0..1"),
        }
        self._gauges: dict[str, _Gauge] = {}
        for name, (instrument, description) in gauges.items():
            gauge = _Gauge(("tenant", "window"), cardinality_limit)
            meter.create_observable_gauge(
                instrument, callbacks=[gauge.observe], description=description
            )
            self._gauges[name] = gauge

    # -- the hooks (gateway.limits.backend.LimitsObserver) ---------------------------

    def refused(self, tenant: str, limit: str) -> None:
        if self.enabled:
            self.refusals.add((tenant, limit), 1)

    def unavailable(self, mode: str) -> None:
        if self.enabled:
            self.unavailable_requests.add((mode,), 1)

    def settled(self, tenant: str, basis: str) -> None:
        if self.enabled:
            self.settlements.add((tenant, basis), 1)

    def budget(
        self, tenant: str, window: str, spent_usd: float, remaining_usd: float, share: float
    ) -> None:
        if not self.enabled:
            return
        key = (tenant, window)
        self._gauges["spend"].set(key, spent_usd)
        self._gauges["remaining"].set(key, remaining_usd)
        self._gauges["share"].set(key, share)
