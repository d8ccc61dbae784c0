"""Gateway metrics with the OpenTelemetry SDK, exported over OTLP/HTTP.

The request middleware hands every finished model request's
:class:`~observability.audit.AuditRecord` to :meth:`GatewayMetrics.observe`,
which only records into the SDK's in-memory instruments (a few microseconds, no
I/O, never raises). A :class:`PeriodicExportingMetricReader` thread exports the
aggregates over OTLP/HTTP (protobuf) to an OpenTelemetry Collector or straight
to Prometheus' OTLP receiver; the event loop never waits on it.

Instruments (the Prometheus name after its OTLP translation, then the labels);
durations are in seconds:

- kamiwaza_gateway_request_duration_seconds (histogram): operation, endpoint,
  model, rule, status, stream. From arrival to the last byte (or the error).
- kamiwaza_gateway_time_to_first_token_seconds (histogram): endpoint, model.
  Streams that sent a first frame.
- kamiwaza_gateway_upstream_duration_seconds (histogram): endpoint, outcome.
  Each upstream attempt actually sent ("ok" or its error code).
- kamiwaza_gateway_policy_duration_seconds (histogram): rule. One OPA decision.
- kamiwaza_gateway_requests_total: tenant, operation, endpoint, model, rule,
  status, stream. `operation` is chat, embeddings, messages or responses.
- kamiwaza_gateway_decisions_total: rule, route_to, decision ("route" | "deny").
- kamiwaza_gateway_tokens_total: tenant, operation, endpoint, model, direction
  ("input" | "output").
- kamiwaza_gateway_cost_usd_total: tenant, endpoint, model. US dollars, from
  the registry's prices.
- kamiwaza_gateway_upstream_attempts_total: endpoint, outcome (attempts skipped
  with the circuit open count too, as "circuit_open").
- kamiwaza_gateway_shadow_disagreements_total: live_rule, shadow_rule. Requests
  the `shadow_policy` decided otherwise (another endpoint or rule).
- kamiwaza_gateway_failovers_total: endpoint (the one left), reason (its error).
- kamiwaza_gateway_circuit_breaker_state (gauge): endpoint. 0 closed,
  1 half-open, 2 open.
- kamiwaza_audit_spool_depth (gauge): sink. Records spooled, not yet shipped.
- kamiwaza_audit_shipping_lag_seconds (gauge): sink. Age of the oldest
  unshipped record.
- kamiwaza_gateway_policy_revision (gauge): source, revision. 1 for the policy
  revision this replica enforces (0 and revision "none" before it has one), so
  that a rollout shows converging per replica (`instance`).
- kamiwaza_gateway_policy_refusals_total: source. Policy bundles or hot
  reloads refused (the previous revision stayed in force).
- kamiwaza_audit_shipped_total, kamiwaza_audit_ship_failures_total,
  kamiwaza_audit_dropped_total: sink. Records shipped, failed uploads, records
  dropped (spool full in drop mode).
- kamiwaza_limits_*: the per-tenant limiter's refusals, spend and remaining
  budget (observability/limit_metrics.py; the limiter calls `metrics.limits`).

Every attribute set is bounded: tenants, endpoints, models and rules come from
configuration (the keys file, the registry, the policy), statuses and error
codes from small fixed sets. Request ids, user ids, key ids and the model a
client asked for (free text) are never attributes. A missing value is "none".

**Audit pipeline gauges (the interface for the audit spool).** The spool
registers a snapshot callback; the exporter thread calls it at each export
(`metrics` is the GatewayMetrics the composition root holds)::

    from observability.metrics import AuditPipelineSnapshot

    unregister = metrics.register_audit_pipeline(
        "s3", lambda: AuditPipelineSnapshot(depth=spool.depth, lag_s=spool.lag_s,
                                            shipped=spool.shipped, ship_failures=spool.failures)
    )
    # or, from a stats() dict with those keys (depth, lag_s, shipped,
    # ship_failures, dropped):
    #   lambda: AuditPipelineSnapshot.from_stats(pipeline.stats())
    ...
    unregister()   # at shutdown

The callback runs in the exporter's thread, not the event loop: it must be
cheap, must not block, and should only read plain numbers the spool keeps up to
date (no asyncio objects, no I/O). A callback that raises is logged and skipped.
Registering works before or after the metrics start, and whether or not metrics
are enabled. `shipped`, `ship_failures` and `dropped` are cumulative counts
since the process started (None: not reported).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from types import MappingProxyType
from typing import Any, Protocol

from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource

from observability.audit import AuditRecord
from observability.health_metrics import HealthMetrics
from observability.limit_metrics import LimitMetrics
from observability.otlp import otlp_target, read_otlp_env

log = logging.getLogger(__name__)

# Request and upstream durations, in seconds: a cached answer or a fast local
# model answers in milliseconds, a long generation takes minutes.
DURATION_BUCKETS_S: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip
# Time to first token: tens of milliseconds to a minute.
TTFT_BUCKETS_S: tuple[float, ...] = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 60.0,
)  # fmt: skip
# One OPA decision on loopback: well under a millisecond to its timeout.
POLICY_BUCKETS_S: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip

NONE = "none"
SKIPPED = frozenset({"circuit_open", "endpoint_unavailable"})  # attempts never sent
BREAKER_STATE_VALUES: Mapping[str, int] = MappingProxyType({"closed": 0, "half_open": 1, "open": 2})
DEFAULT_SERVICE_NAME = "kamiwaza-gateway"
METRICS_PATH = "/v1/metrics"


class MetricsConfigError(Exception):
    """The metrics configuration is invalid; the message names the setting."""


# -- labels shared with `kamiwaza stats` ---------------------------------------


def rule_label(rule: Mapping[str, Any] | None, overridden_by: str | None) -> str:
    """The rule that routed a request, as a label: a rule name, "override:<name>" or "none"."""
    if overridden_by:
        return f"override:{overridden_by}"
    if rule and rule.get("name"):
        return str(rule["name"])
    return NONE


def label(value: object) -> str:
    return NONE if value is None or value == "" else str(value)


# -- configuration -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """Where and how often to export; see :func:`resolve_metrics_config`."""

    endpoint: str  # full URL of the OTLP/HTTP metrics path
    headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    interval_s: float = 60.0
    timeout_s: float = 10.0


def _env_float(env: Mapping[str, str], name: str, scale: float) -> float | None:
    raw = env.get(name)
    if raw is None or not raw.strip():
        return None
    try:
        value = float(raw) * scale
    except ValueError:
        raise MetricsConfigError(f"{name}: expected a number, got {raw!r}") from None
    if value <= 0:
        raise MetricsConfigError(f"{name}: must be positive, got {raw!r}")
    return value


def resolve_metrics_config(
    *,
    enabled: bool | None,
    endpoint: str | None,
    headers: Mapping[str, str],
    interval_s: float | None,
    environ: Mapping[str, str] | None = None,
) -> MetricsConfig | None:
    """Merge our settings with the standard OTEL_* variables; None: metrics are off.

    - on/off: `enabled` when set; else off with OTEL_SDK_DISABLED=true or
      OTEL_METRICS_EXPORTER=none; else on when an OTLP endpoint is configured.
    - endpoint: ours (a base URL; /v1/metrics is appended unless present), else
      OTEL_EXPORTER_OTLP_METRICS_ENDPOINT (used as is), else
      OTEL_EXPORTER_OTLP_ENDPOINT (+ /v1/metrics), else localhost:4318.
    - headers: OTEL_EXPORTER_OTLP_METRICS_HEADERS or OTEL_EXPORTER_OTLP_HEADERS,
      overlaid with ours.
    - interval: ours, else OTEL_METRIC_EXPORT_INTERVAL (ms), else 60 s; the
      export timeout: OTEL_METRIC_EXPORT_TIMEOUT (ms), else 10 s.
    - protocol: only http/protobuf (OTEL_EXPORTER_OTLP[_METRICS]_PROTOCOL).
    """
    env = os.environ if environ is None else environ
    otlp = read_otlp_env(env, "METRICS")
    if enabled is None:
        enabled = (
            not otlp.sdk_disabled
            and otlp.exporter != "none"
            and bool(endpoint or otlp.signal_url or otlp.base_url)
        )
    if not enabled:
        return None
    try:
        url, merged = otlp_target(otlp, METRICS_PATH, endpoint, headers)
    except ValueError as err:
        raise MetricsConfigError(str(err)) from None
    interval = interval_s or _env_float(env, "OTEL_METRIC_EXPORT_INTERVAL", 0.001) or 60.0
    timeout = _env_float(env, "OTEL_METRIC_EXPORT_TIMEOUT", 0.001) or 10.0
    return MetricsConfig(url, merged, interval, timeout)


# Attributes of this process that every signal's resource carries (e.g. the
# worker of `kamiwaza serve --workers`): set once, before the providers exist.
_instance_attributes: dict[str, str] = {}


def set_instance_attributes(attributes: Mapping[str, str]) -> None:
    """Add `attributes` to the resource of the metrics and traces built from now on."""
    _instance_attributes.update(attributes)


def _resource() -> Resource:
    """service.name (unless OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES set it),
    service.version and a per-process service.instance.id, which becomes
    Prometheus' `instance` label so that replicas' (and workers') cumulative
    series stay apart; plus the process's own attributes (a worker's
    `kamiwaza.worker`, Prometheus' `target_info` label `kamiwaza_worker`)."""
    try:
        service_version = version("kamiwaza-gateway")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        service_version = "0"
    attributes: dict[str, str] = {
        "service.version": service_version,
        "service.instance.id": f"{socket.gethostname()}-{os.getpid()}",
        **_instance_attributes,
    }
    detected = Resource.create(attributes)
    if "OTEL_SERVICE_NAME" not in os.environ and "service.name=" not in os.environ.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    ):
        detected = detected.merge(Resource({"service.name": DEFAULT_SERVICE_NAME}))
    return detected


# -- sources of observable gauges ----------------------------------------------


@dataclass(frozen=True, slots=True)
class AuditPipelineSnapshot:
    """What an audit sink reports at each export (see the module docstring)."""

    depth: int  # records written to the spool and not yet shipped
    lag_s: float = 0.0  # age of the oldest unshipped record; 0 when the spool is empty
    shipped: int | None = None  # records shipped since start
    ship_failures: int | None = None  # failed upload attempts since start
    dropped: int | None = None  # records dropped since start (spool full, drop mode)

    @classmethod
    def from_stats(cls, stats: Mapping[str, Any]) -> AuditPipelineSnapshot:
        """From a dict with the keys depth, lag_s and optionally shipped,
        ship_failures and dropped (other keys are ignored)."""
        return cls(
            depth=int(stats["depth"]),
            lag_s=float(stats.get("lag_s") or 0.0),
            shipped=stats.get("shipped"),
            ship_failures=stats.get("ship_failures"),
            dropped=stats.get("dropped"),
        )


@dataclass(frozen=True, slots=True)
class PolicySnapshot:
    """The policy a replica enforces (gateway/policy_state.py keeps it)."""

    source: str
    revision: str | None
    active: bool
    failures: int


class _Breaker(Protocol):
    @property
    def state(self) -> str: ...


class BreakerSource(Protocol):
    """What the gauge reads: gateway.upstream.Forwarder fits."""

    @property
    def endpoint_names(self) -> tuple[str, ...]: ...

    def breaker(self, name: str) -> _Breaker: ...


# -- the instruments -----------------------------------------------------------

OVERFLOW = "_overflow"  # every label of a counter's extra attribute sets past the limit
DEFAULT_CARDINALITY_LIMIT = 10_000  # attribute sets per metric


class _Sums:
    """Cumulative sums per attribute tuple, reported by an asynchronous counter.

    The request path adds with one dict update (the SDK's synchronous `add`
    costs some 10 microseconds a call); the exporter thread reads a copy.
    Past `limit` attribute sets, new ones fold into one "_overflow" set.
    """

    def __init__(self, keys: tuple[str, ...], limit: int) -> None:
        self.keys = keys
        self.limit = limit
        self.values: dict[tuple[str, ...], float] = {}
        self._lock = threading.Lock()
        self._overflow = (OVERFLOW,) * len(keys)

    def add(self, key: tuple[str, ...], amount: float) -> None:
        with self._lock:
            values = self.values
            if key not in values and len(values) >= self.limit:
                if self._overflow not in values:
                    log.warning("metrics: more than %d attribute sets of %s", self.limit, self.keys)
                key = self._overflow
            values[key] = values.get(key, 0) + amount

    def observe(self, options: CallbackOptions) -> Iterator[Observation]:
        with self._lock:
            items = list(self.values.items())
        for key, value in items:
            yield Observation(value, dict(zip(self.keys, key, strict=True)))


class GatewayMetrics:
    """The gateway's instruments on one MeterProvider.

    Build with :meth:`from_config` (OTLP export; `None` gives a disabled
    instance whose :meth:`observe` does nothing) or with any metric reader
    (tests use the SDK's InMemoryMetricReader). The exporter thread starts
    here; :meth:`shutdown` exports what is left and stops it: call it once,
    off the event loop (it does network I/O).
    """

    def __init__(
        self,
        readers: Iterable[MetricReader] = (),
        *,
        enabled: bool = True,
        cardinality_limit: int = DEFAULT_CARDINALITY_LIMIT,
    ) -> None:
        from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter
        from opentelemetry.sdk.metrics.view import View

        self.enabled = enabled
        self._provider = MeterProvider(
            metric_readers=list(readers),
            resource=_resource() if enabled else Resource.get_empty(),
            exemplar_filter=AlwaysOffExemplarFilter(),
            shutdown_on_exit=False,
            # Room for the counters' own "_overflow" set; histograms past the
            # limit get the SDK's {"otel.metric.overflow": true} set.
            views=[
                View(
                    instrument_name="kamiwaza.*",
                    aggregation_cardinality_limit=cardinality_limit + 2,
                )
            ],
        )
        self._lock = threading.Lock()
        self._breaker_sources: list[BreakerSource] = []
        self._pipelines: dict[str, Callable[[], AuditPipelineSnapshot]] = {}
        self._policy: Callable[[], PolicySnapshot] | None = None
        self._closed = False
        meter = self._provider.get_meter("kamiwaza.gateway")

        # Histograms: the SDK aggregates them (explicit buckets, LLM-sized).
        self.request_duration = meter.create_histogram(
            "kamiwaza.gateway.request.duration",
            unit="s",
            description="Time from the request's arrival to its last byte (or error)",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS_S,
        )
        self.ttft = meter.create_histogram(
            "kamiwaza.gateway.time_to_first_token",
            unit="s",
            description="Streams: from the first upstream attempt's start to the first frame",
            explicit_bucket_boundaries_advisory=TTFT_BUCKETS_S,
        )
        self.upstream_duration = meter.create_histogram(
            "kamiwaza.gateway.upstream.duration",
            unit="s",
            description="One upstream attempt, from sending to its end, by outcome",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS_S,
        )
        self.policy_duration = meter.create_histogram(
            "kamiwaza.gateway.policy.duration",
            unit="s",
            description="One OPA routing decision, as the gateway waited for it",
            explicit_bucket_boundaries_advisory=POLICY_BUCKETS_S,
        )

        # Counters: summed here, reported as cumulative asynchronous counters.
        def counter(name: str, keys: tuple[str, ...], unit: str, description: str) -> _Sums:
            sums = _Sums(keys, cardinality_limit)
            meter.create_observable_counter(
                name, callbacks=[sums.observe], unit=unit, description=description
            )
            return sums

        self.requests = counter(
            "kamiwaza.gateway.requests",
            ("tenant", "operation", "endpoint", "model", "rule", "status", "stream"),
            "{request}",
            "Model requests answered, by outcome",
        )
        self.decisions = counter(
            "kamiwaza.gateway.decisions",
            ("rule", "route_to", "decision"),
            "{decision}",
            "Routing decisions by rule and chosen endpoint",
        )
        self.tokens = counter(
            "kamiwaza.gateway.tokens",
            ("tenant", "operation", "endpoint", "model", "direction"),
            "{token}",
            "Tokens reported by the upstreams",
        )
        self.cost = counter(
            "kamiwaza.gateway.cost.usd",
            ("tenant", "endpoint", "model"),
            "",
            "Cost in US dollars from the registry's prices",
        )
        self.attempts = counter(
            "kamiwaza.gateway.upstream.attempts",
            ("endpoint", "outcome"),
            "{attempt}",
            "Upstream attempts, including ones skipped (circuit open)",
        )
        self.shadow_disagreements = counter(
            "kamiwaza.gateway.shadow.disagreements",
            ("live_rule", "shadow_rule"),
            "{decision}",
            "Requests the shadow policy decided otherwise (endpoint or rule)",
        )
        self.failovers = counter(
            "kamiwaza.gateway.failovers",
            ("endpoint", "reason"),
            "{failover}",
            "Moves to the next endpoint of a route, by the endpoint left",
        )

        # The per-tenant limiter's hooks (gateway/limits calls them).
        self.limits = LimitMetrics(
            meter, counter, enabled=enabled, cardinality_limit=cardinality_limit
        )

        # Endpoint health (gateway/health): gauges from its snapshot, reroutes from records.
        self.health = HealthMetrics(meter, counter, enabled=enabled)

        # Gauges and counters read from other components at each export.
        meter.create_observable_gauge(
            "kamiwaza.gateway.circuit_breaker.state",
            callbacks=[self._observe_breakers],
            description="Circuit breaker per endpoint: 0 closed, 1 half-open, 2 open",
        )
        meter.create_observable_gauge(
            "kamiwaza.gateway.policy.revision",
            callbacks=[self._observe_policy_revision],
            description="1 for the policy revision this replica enforces",
        )
        meter.create_observable_counter(
            "kamiwaza.gateway.policy.refusals",
            callbacks=[self._observe_policy_refusals],
            unit="{refusal}",
            description="Policy bundles or reloads refused; the previous revision stayed",
        )
        meter.create_observable_gauge(
            "kamiwaza.audit.spool.depth",
            callbacks=[self._pipeline_callback(lambda s: s.depth)],
            unit="{record}",
            description="Audit records written to the spool and not yet shipped",
        )
        meter.create_observable_gauge(
            "kamiwaza.audit.shipping.lag",
            callbacks=[self._pipeline_callback(lambda s: s.lag_s)],
            unit="s",
            description="Age of the oldest audit record not yet shipped",
        )
        meter.create_observable_counter(
            "kamiwaza.audit.shipped",
            callbacks=[self._pipeline_callback(lambda s: s.shipped)],
            unit="{record}",
            description="Audit records shipped to the sink",
        )
        meter.create_observable_counter(
            "kamiwaza.audit.ship_failures",
            callbacks=[self._pipeline_callback(lambda s: s.ship_failures)],
            unit="{failure}",
            description="Failed audit upload attempts",
        )
        meter.create_observable_counter(
            "kamiwaza.audit.dropped",
            callbacks=[self._pipeline_callback(lambda s: s.dropped)],
            unit="{record}",
            description="Audit records dropped (spool full, drop mode)",
        )

    @classmethod
    def from_config(cls, config: MetricsConfig | None) -> GatewayMetrics:
        if config is None:
            return cls(enabled=False)
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

        exporter = OTLPMetricExporter(
            endpoint=config.endpoint, headers=dict(config.headers), timeout=config.timeout_s
        )
        reader = PeriodicExportingMetricReader(
            exporter,
            export_interval_millis=config.interval_s * 1000,
            export_timeout_millis=config.timeout_s * 1000,
        )
        return cls([reader])

    # -- the observer (request path) -------------------------------------------

    def observe(self, record: AuditRecord) -> None:
        """Record one finished request: in-memory only, never raises."""
        if not self.enabled:
            return
        try:
            self._observe(record)
        except Exception:  # a metrics bug must never fail a request
            log.exception("metrics: cannot record request %s", record.request_id)

    def _observe(self, record: AuditRecord) -> None:
        endpoint = label(record.endpoint)
        model = label(record.model)
        rule = rule_label(record.rule, record.overridden_by)
        tenant = label(record.tenant)
        status = str(record.status)
        stream = "true" if record.stream else "false"
        operation = label(record.operation)
        latency = record.latency_ms
        self.requests.add((tenant, operation, endpoint, model, rule, status, stream), 1)
        total = latency.get("total")
        if total is not None:
            self.request_duration.record(
                total / 1000,
                {"operation": operation, "endpoint": endpoint, "model": model, "rule": rule,
                 "status": status, "stream": stream},
            )  # fmt: skip
        policy = latency.get("policy")
        if policy is not None:
            self.policy_duration.record(policy / 1000, {"rule": rule})
            decision = "deny" if record.deny else "route"
            self.decisions.add((rule, label(record.route_to), decision), 1)
        if record.health is not None:
            self.health.observe_record(record.health)
        if record.shadow is not None:
            self.shadow_disagreements.add((rule, rule_label(record.shadow.get("rule"), None)), 1)
        ttft = latency.get("ttft")
        if ttft is not None:
            self.ttft.record(ttft / 1000, {"endpoint": endpoint, "model": model})
        tokens = record.tokens
        if tokens.get("input"):
            self.tokens.add((tenant, operation, endpoint, model, "input"), tokens["input"])
        if tokens.get("output"):
            self.tokens.add((tenant, operation, endpoint, model, "output"), tokens["output"])
        if record.cost_usd:
            self.cost.add((tenant, endpoint, model), record.cost_usd)
        previous = None
        for attempt in record.attempts:
            outcome = attempt.error or "ok"
            self.attempts.add((attempt.endpoint, outcome), 1)
            if outcome not in SKIPPED:
                self.upstream_duration.record(
                    attempt.latency_ms / 1000, {"endpoint": attempt.endpoint, "outcome": outcome}
                )
            if previous is not None:
                self.failovers.add((previous.endpoint, label(previous.error)), 1)
            previous = attempt

    # -- observable gauges (exporter thread) ------------------------------------

    def watch_breakers(self, source: BreakerSource) -> None:
        """Report `source`'s circuit breakers (e.g. the Forwarder) at each export."""
        with self._lock:
            self._breaker_sources.append(source)

    def _observe_breakers(self, options: CallbackOptions) -> Iterator[Observation]:
        with self._lock:
            sources = list(self._breaker_sources)
        for source in sources:
            for name in source.endpoint_names:
                state = source.breaker(name).state
                yield Observation(BREAKER_STATE_VALUES.get(state, 0), {"endpoint": name})

    def watch_policy(self, snapshot: Callable[[], PolicySnapshot]) -> None:
        """Report the active policy revision from `snapshot` at each export."""
        self._policy = snapshot

    def _policy_snapshot(self) -> PolicySnapshot | None:
        if self._policy is None:
            return None
        try:
            return self._policy()
        except Exception:
            log.exception("metrics: the policy snapshot failed")
            return None

    def _observe_policy_revision(self, options: CallbackOptions) -> Iterator[Observation]:
        snap = self._policy_snapshot()
        if snap is not None:
            revision = snap.revision if snap.active and snap.revision else "none"
            yield Observation(
                1 if snap.active else 0, {"source": snap.source, "revision": revision}
            )

    def _observe_policy_refusals(self, options: CallbackOptions) -> Iterator[Observation]:
        snap = self._policy_snapshot()
        if snap is not None:
            yield Observation(snap.failures, {"source": snap.source})

    def register_audit_pipeline(
        self, sink: str, snapshot: Callable[[], AuditPipelineSnapshot]
    ) -> Callable[[], None]:
        """Report an audit sink's spool depth, lag and shipping counts under
        `sink`; returns a function that unregisters it. See the module docstring."""
        with self._lock:
            if sink in self._pipelines:
                raise ValueError(f"an audit pipeline named {sink!r} is already registered")
            self._pipelines[sink] = snapshot

        def unregister() -> None:
            with self._lock:
                if self._pipelines.get(sink) is snapshot:
                    del self._pipelines[sink]

        return unregister

    def _pipeline_callback(
        self, pick: Callable[[AuditPipelineSnapshot], float | None]
    ) -> Callable[[CallbackOptions], Iterator[Observation]]:
        def callback(options: CallbackOptions) -> Iterator[Observation]:
            with self._lock:
                pipelines = list(self._pipelines.items())
            for sink, snapshot in pipelines:
                try:
                    value = pick(snapshot())
                except Exception:
                    log.exception("metrics: the audit pipeline %r snapshot failed", sink)
                    continue
                if value is not None:
                    yield Observation(value, {"sink": sink})

        return callback

    # -- lifecycle --------------------------------------------------------------

    def force_flush(self, timeout_s: float = 10.0) -> bool:
        """Collect and export now (blocking: call it from a thread)."""
        if not self.enabled:
            return True
        return self._provider.force_flush(timeout_millis=timeout_s * 1000)

    def shutdown(self, timeout_s: float = 10.0) -> None:
        """Export what is left and stop the exporter thread (blocking)."""
        if self._closed:
            return
        self._closed = True
        self._provider.shutdown(timeout_millis=timeout_s * 1000)
