"""GatewayMetrics with the SDK's in-memory reader, and the metrics configuration
(our settings and the standard OTEL_* variables)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from gateway.settings import SettingsError, load_settings
from observability.audit import Attempt, AuditRecord
from observability.metrics import (
    DURATION_BUCKETS_S,
    AuditPipelineSnapshot,
    GatewayMetrics,
    MetricsConfig,
    MetricsConfigError,
    resolve_metrics_config,
    rule_label,
)


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def metrics(reader: InMemoryMetricReader) -> Iterator[GatewayMetrics]:
    gm = GatewayMetrics([reader])
    yield gm
    gm.shutdown()


def make_record(**overrides: Any) -> AuditRecord:
    record = AuditRecord(
        request_id="req-1",
        timestamp="2025-06-01T10:00:00.000Z",
        path="/v1/route",
        operation="chat",
        status=200,
        stream=True,
        tenant="acme",
        user="u-17",
        key_id="k-1",
        endpoint="private-gpu-b",
        model="llama",
        rule={"index": 1, "name": "pii-on-prem", "source": "routing.yaml:6"},
        route_to="private-gpu",
        attempts=[
            Attempt("private-gpu", 503, "http_503", 12.0),
            Attempt("private-gpu-b", 200, None, 240.0),
        ],
        tokens={"input": 11, "output": 7},
        cost_usd=0.0000036,
    )
    record.latency_ms.update(total=260.0, policy=0.8, upstream=252.0, ttft=90.0)
    for key, value in overrides.items():
        setattr(record, key, value)
    return record


def collect(reader: InMemoryMetricReader) -> dict[str, list[tuple[dict[str, Any], Any]]]:
    """{metric name: [(attributes, value or (count, sum, bucket counts))]}."""
    out: dict[str, list[tuple[dict[str, Any], Any]]] = {}
    data = reader.get_metrics_data()
    assert data is not None
    for resource_metrics in data.resource_metrics:
        for scope in resource_metrics.scope_metrics:
            for metric in scope.metrics:
                points = []
                for point in metric.data.data_points:
                    if hasattr(point, "bucket_counts"):
                        value: Any = (point.count, point.sum, tuple(point.bucket_counts))
                    else:
                        value = point.value
                    points.append((dict(point.attributes or {}), value))
                out[metric.name] = points
    return out


def test_one_request_records_every_instrument(
    metrics: GatewayMetrics, reader: InMemoryMetricReader
) -> None:
    metrics.observe(make_record())
    got = collect(reader)
    route = {"endpoint": "private-gpu-b", "model": "llama"}
    assert got["kamiwaza.gateway.requests"] == [
        (
            {"tenant": "acme", "operation": "chat", **route, "rule": "pii-on-prem"}
            | {"status": "200", "stream": "true"},
            1,
        )
    ]
    assert got["kamiwaza.gateway.tokens"] == [
        ({"tenant": "acme", "operation": "chat", **route, "direction": "input"}, 11),
        ({"tenant": "acme", "operation": "chat", **route, "direction": "output"}, 7),
    ]
    assert got["kamiwaza.gateway.cost.usd"] == [({"tenant": "acme", **route}, 0.0000036)]
    assert got["kamiwaza.gateway.decisions"] == [
        ({"rule": "pii-on-prem", "route_to": "private-gpu", "decision": "route"}, 1)
    ]
    assert got["kamiwaza.gateway.upstream.attempts"] == [
        ({"endpoint": "private-gpu", "outcome": "http_503"}, 1),
        ({"endpoint": "private-gpu-b", "outcome": "ok"}, 1),
    ]
    assert got["kamiwaza.gateway.failovers"] == [
        ({"endpoint": "private-gpu", "reason": "http_503"}, 1)
    ]
    [(attrs, (count, total, buckets))] = got["kamiwaza.gateway.request.duration"]
    assert attrs == {
        "operation": "chat",
        **route,
        "rule": "pii-on-prem",
        "status": "200",
        "stream": "true",
    }
    assert (count, total) == (1, 0.26)
    # 0.26 s falls in the (0.25, 0.5] bucket.
    assert buckets[DURATION_BUCKETS_S.index(0.5)] == 1
    assert len(buckets) == len(DURATION_BUCKETS_S) + 1
    [(attrs, (count, total, _))] = got["kamiwaza.gateway.time_to_first_token"]
    assert (attrs, count, total) == (route, 1, 0.09)
    [(attrs, (count, total, _))] = got["kamiwaza.gateway.policy.duration"]
    assert (attrs, count, total) == ({"rule": "pii-on-prem"}, 1, 0.0008)
    upstream = {a["endpoint"]: v[:2] for a, v in got["kamiwaza.gateway.upstream.duration"]}
    assert upstream == {"private-gpu": (1, 0.012), "private-gpu-b": (1, 0.24)}


def test_labels_of_a_request_refused_before_routing(
    metrics: GatewayMetrics, reader: InMemoryMetricReader
) -> None:
    record = AuditRecord(request_id="req-2", timestamp="t", path="/v1/route", status=401)
    record.latency_ms["total"] = 0.3
    metrics.observe(record)
    got = collect(reader)
    none = "none"
    assert got["kamiwaza.gateway.requests"] == [
        ({"tenant": none, "operation": none, "endpoint": none, "model": none, "rule": none,
          "status": "401", "stream": "false"}, 1)
    ]  # fmt: skip
    for name in ("tokens", "cost.usd", "decisions", "upstream.attempts", "failovers"):
        assert f"kamiwaza.gateway.{name}" not in got
    assert "kamiwaza.gateway.time_to_first_token" not in got


def test_skipped_attempts_count_but_have_no_duration(
    metrics: GatewayMetrics, reader: InMemoryMetricReader
) -> None:
    record = make_record(
        attempts=[
            Attempt("private-gpu", None, "circuit_open", 0.0),
            Attempt("private-gpu-b", 200, None, 100.0),
        ]
    )
    metrics.observe(record)
    got = collect(reader)
    assert got["kamiwaza.gateway.upstream.attempts"] == [
        ({"endpoint": "private-gpu", "outcome": "circuit_open"}, 1),
        ({"endpoint": "private-gpu-b", "outcome": "ok"}, 1),
    ]
    assert [a["endpoint"] for a, _ in got["kamiwaza.gateway.upstream.duration"]] == [
        "private-gpu-b"
    ]
    assert got["kamiwaza.gateway.failovers"] == [
        ({"endpoint": "private-gpu", "reason": "circuit_open"}, 1)
    ]


def test_rule_labels() -> None:
    assert rule_label({"name": "default"}, None) == "default"
    assert rule_label({"name": "default"}, "legal_hold") == "override:legal_hold"
    assert rule_label(None, None) == "none"


def test_the_observer_never_raises(
    metrics: GatewayMetrics, reader: InMemoryMetricReader, caplog: pytest.LogCaptureFixture
) -> None:
    record = make_record()
    record.latency_ms = None  # type: ignore[assignment]
    metrics.observe(record)  # logged, not raised
    assert "metrics: cannot record request req-1" in caplog.text


def test_a_disabled_instance_records_nothing() -> None:
    disabled = GatewayMetrics.from_config(None)
    assert not disabled.enabled
    disabled.observe(make_record())
    assert disabled.force_flush()
    disabled.shutdown()


def test_counters_fold_extra_attribute_sets_into_overflow(reader: InMemoryMetricReader) -> None:
    gm = GatewayMetrics([reader], cardinality_limit=2)
    for tenant in ("a", "b", "c", "d"):
        gm.observe(make_record(tenant=tenant))
    tenants = [a["tenant"] for a, _ in collect(reader)["kamiwaza.gateway.requests"]]
    assert tenants == ["a", "b", "_overflow"]
    gm.shutdown()


def test_breaker_and_audit_pipeline_gauges(
    metrics: GatewayMetrics, reader: InMemoryMetricReader
) -> None:
    class Breaker:
        def __init__(self, state: str) -> None:
            self.state = state

    class Forwarder:
        endpoint_names = ("a", "b", "c")

        def breaker(self, name: str) -> Breaker:
            return Breaker({"a": "closed", "b": "half_open", "c": "open"}[name])

    metrics.watch_breakers(Forwarder())
    unregister = metrics.register_audit_pipeline(
        "s3", lambda: AuditPipelineSnapshot(depth=4, lag_s=2.5, shipped=9)
    )

    def broken() -> AuditPipelineSnapshot:
        raise RuntimeError("spool is gone")

    metrics.register_audit_pipeline("broken", broken)
    with pytest.raises(ValueError, match="already registered"):
        metrics.register_audit_pipeline("s3", lambda: AuditPipelineSnapshot(depth=0))
    got = collect(reader)
    assert got["kamiwaza.gateway.circuit_breaker.state"] == [
        ({"endpoint": "a"}, 0),
        ({"endpoint": "b"}, 1),
        ({"endpoint": "c"}, 2),
    ]
    assert got["kamiwaza.audit.spool.depth"] == [({"sink": "s3"}, 4)]
    assert got["kamiwaza.audit.shipping.lag"] == [({"sink": "s3"}, 2.5)]
    assert got["kamiwaza.audit.shipped"] == [({"sink": "s3"}, 9)]
    assert "kamiwaza.audit.ship_failures" not in got  # not reported
    assert "kamiwaza.audit.dropped" not in got
    unregister()
    assert "kamiwaza.audit.spool.depth" not in collect(reader)


def test_snapshot_from_a_stats_dict() -> None:
    stats = {"sink": "s3", "depth": 3, "lag_s": 1.25, "shipped": 8, "ship_failures": 1,
             "dropped": 2, "last_error": None}  # fmt: skip
    assert AuditPipelineSnapshot.from_stats(stats) == AuditPipelineSnapshot(3, 1.25, 8, 1, 2)
    assert AuditPipelineSnapshot.from_stats({"depth": 0}) == AuditPipelineSnapshot(0)


def test_the_observer_is_cheap(metrics: GatewayMetrics) -> None:
    """In-memory recording only: tens of microseconds, far below an OPA call."""
    record = make_record()
    for _ in range(200):
        metrics.observe(record)
    timings = []
    for _ in range(2000):
        start = time.perf_counter()
        metrics.observe(record)
        timings.append(time.perf_counter() - start)
    # Generous for a loaded CI machine; measured ~20 us on the development machine.
    assert statistics.median(timings) < 250e-6


# -- configuration -------------------------------------------------------------


def resolve(env: dict[str, str], **kwargs: Any) -> MetricsConfig | None:
    args: dict[str, Any] = {"enabled": None, "endpoint": None, "headers": {}, "interval_s": None}
    args.update(kwargs)
    return resolve_metrics_config(**args, environ=env)


def test_off_unless_an_endpoint_is_configured() -> None:
    assert resolve({}) is None
    assert resolve({}, enabled=False, endpoint="http://c:4318") is None
    config = resolve({}, enabled=True)
    assert config is not None
    assert config.endpoint == "http://localhost:4318/v1/metrics"
    assert (config.interval_s, config.timeout_s) == (60.0, 10.0)


def test_otel_variables() -> None:
    config = resolve(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/",
            "OTEL_EXPORTER_OTLP_HEADERS": "Authorization=Bearer%20abc,x-tenant=ops",
            "OTEL_METRIC_EXPORT_INTERVAL": "15000",
            "OTEL_METRIC_EXPORT_TIMEOUT": "5000",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        }
    )
    assert config == MetricsConfig(
        "http://collector:4318/v1/metrics",
        {"authorization": "Bearer abc", "x-tenant": "ops"},
        15.0,
        5.0,
    )
    signal = resolve(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://prom:9090/api/v1/otlp/v1/metrics",
            "OTEL_EXPORTER_OTLP_METRICS_HEADERS": "a=1",
            "OTEL_EXPORTER_OTLP_HEADERS": "b=2",
        }
    )
    assert signal is not None
    assert signal.endpoint == "http://prom:9090/api/v1/otlp/v1/metrics"
    assert dict(signal.headers) == {"a": "1"}


def test_our_settings_win_over_otel_variables() -> None:
    config = resolve(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
            "OTEL_EXPORTER_OTLP_HEADERS": "a=env,b=env",
            "OTEL_METRIC_EXPORT_INTERVAL": "15000",
        },
        endpoint="http://prom:9090/api/v1/otlp",
        headers={"b": "ours"},
        interval_s=5.0,
    )
    assert config == MetricsConfig(
        "http://prom:9090/api/v1/otlp/v1/metrics", {"a": "env", "b": "ours"}, 5.0, 10.0
    )


@pytest.mark.parametrize(
    "env",
    [
        {"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"},
        {"OTEL_METRICS_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"},
    ],
)
def test_otel_switches_turn_metrics_off(env: dict[str, str]) -> None:
    assert resolve(env) is None
    assert resolve(env, enabled=True) is not None  # our explicit setting wins


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "OTLP/HTTP only"),
        ({"OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "http/json"}, "OTLP/HTTP only"),
        ({"OTEL_METRIC_EXPORT_INTERVAL": "often"}, "expected a number"),
        ({"OTEL_METRIC_EXPORT_INTERVAL": "0"}, "must be positive"),
    ],
)
def test_bad_otel_variables(env: dict[str, str], message: str) -> None:
    with pytest.raises(MetricsConfigError, match=message):
        resolve(env, enabled=True)


def test_settings() -> None:
    settings = load_settings(
        environ={
            "KAMIWAZA_METRICS": "true",
            "KAMIWAZA_OTLP_ENDPOINT": "http://collector:4318",
            "KAMIWAZA_OTLP_HEADERS": "Authorization=Bearer abc,x-scope=ops",
            "KAMIWAZA_METRICS_INTERVAL_S": "2.5",
        }
    )
    assert settings.metrics is True
    assert settings.otlp_endpoint == "http://collector:4318"
    assert dict(settings.otlp_headers) == {"Authorization": "Bearer abc", "x-scope": "ops"}
    assert settings.metrics_interval_s == 2.5
    defaults = load_settings(environ={})
    assert (defaults.metrics, defaults.otlp_endpoint, defaults.metrics_interval_s) == (
        None,
        None,
        None,
    )
    with pytest.raises(SettingsError, match="KAMIWAZA_METRICS_INTERVAL_S: must be positive"):
        load_settings(environ={"KAMIWAZA_METRICS_INTERVAL_S": "0"})
    with pytest.raises(SettingsError, match="KAMIWAZA_METRICS: expected true or false"):
        load_settings(environ={"KAMIWAZA_METRICS": "maybe"})
