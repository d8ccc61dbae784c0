"""Metrics end to end: the gateway (real OPA sidecar, fake upstreams) exports
over OTLP/HTTP to a real Prometheus (built by scripts/install-prometheus.sh)
with its OTLP receiver; every metric is checked through Prometheus' HTTP API
against the audit records of the same traffic, every PromQL query of every
Grafana dashboard must return data, and `kamiwaza stats` must agree."""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from click.testing import CliRunner

from gateway.cli import main
from gateway.errors import RateLimitedError
from gateway.limits.config import parse_limits
from gateway.limits.estimate import Estimate
from gateway.limits.memory import InProcessLimits
from gateway.limits.model import Subject
from gateway.state import METRICS, OBSERVERS
from observability.metrics import (
    DURATION_BUCKETS_S,
    POLICY_BUCKETS_S,
    TTFT_BUCKETS_S,
    AuditPipelineSnapshot,
    label,
    rule_label,
)
from observability.stats import quantile
from tests.fake_upstream import Behavior
from tests.gateway_harness import EXAMPLE_OVERRIDES, Gateway, start_gateway
from tests.prometheus_server import ROOT, PrometheusServer

pytestmark = pytest.mark.integration

DASHBOARDS = sorted((ROOT / "observability" / "grafana" / "dashboards").glob("*.json"))

# One phase of traffic, sent twice (Prometheus' rate() needs two samples, so
# metrics are exported after each phase). (tenant, headers, stream, prompt)
TRAFFIC: list[tuple[str, dict[str, str], bool, str]] = [
    # pii-on-prem: private-gpu answers 503, private-gpu-b serves.
    ("acme", {"X-Data-Class": "pii-restricted"}, False, "summarise this record"),
    # ... the second 503 opens private-gpu's circuit (breaker_failures=2).
    ("acme", {"X-Data-Class": "pii-restricted"}, True, "summarise this record as a stream"),
    # The hospital's floor makes it PII: private-gpu is skipped (circuit open).
    ("hospital", {}, False, "patient notes"),
    ("acme", {"X-Latency-Budget-Ms": "300"}, False, "quick answer please"),  # acme-low-latency
    ("acme", {"X-Latency-Budget-Ms": "300"}, True, "quick streamed answer please"),
    ("globex", {}, False, "hello"),  # default
    ("globex", {}, True, "hello as a stream"),
    ("globex", {"X-Latency-Budget-Ms": "900"}, False, "hello again with a budget"),
    # cost-capped: bedrock fails (500, no fallback) twice, then its circuit is open.
    ("globex", {"X-Cost-Cap-Per-1k": "0.0015"}, False, "cheap one"),
    ("globex", {"X-Cost-Cap-Per-1k": "0.0015"}, False, "cheap two"),
    ("globex", {"X-Cost-Cap-Per-1k": "0.0015"}, False, "cheap three"),
    # An override routes to private-gpu only: its circuit is open, 503.
    ("globex", {"X-Labels": "legal_hold=true"}, False, "held"),
    ("globex", {"X-Labels": '{"export_control": "embargoed"}'}, False, "denied"),  # 403
    ("limited", {"X-Data-Class": "pii-restricted"}, False, "not allowed"),  # 403 before routing
]


class FakeSpool:
    """Stands in for the audit spool (issue 5) through the documented interface."""

    def __init__(self) -> None:
        self.snapshot = AuditPipelineSnapshot(depth=0, shipped=0, ship_failures=0, dropped=0)

    def advance(self, depth: int, lag_s: float, shipped: int, failures: int, dropped: int) -> None:
        self.snapshot = AuditPipelineSnapshot(depth, lag_s, shipped, failures, dropped)

    def __call__(self) -> AuditPipelineSnapshot:
        return self.snapshot


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    server = PrometheusServer(tmp_path_factory.mktemp("prometheus"))
    server.start()
    yield server
    server.stop()


LIMITS = "version: v1\ndefaults: {usd_per_day: 1.0, usd_per_month: 10}\n"


async def _spend(limiter: InProcessLimits) -> None:
    """One phase of the limiter's traffic through its hooks: two requests settle
    (from usage, from an estimate), a third does not fit the day's budget."""
    globex = Subject("globex")
    first = await limiter.reserve(globex, Estimate(100, 100, 0.2))
    await limiter.settle(first, 200, 0.2, estimated=False)
    second = await limiter.reserve(globex, Estimate(100, 100, 0.2))
    await limiter.settle(second, 200, 0.2, estimated=True)
    with pytest.raises(RateLimitedError):
        await limiter.reserve(globex, Estimate(100, 100, 0.9))


async def _send(gw: Gateway, session: aiohttp.ClientSession) -> None:
    for tenant, headers, stream, prompt in TRAFFIC:
        body = {"model": "gpt-4o", "messages": [{"role": "user", "content": prompt}]}
        if stream:
            body["stream"] = True
        async with session.post(
            gw.url("/v1/chat/completions"),
            json=body,
            headers={"Authorization": f"Bearer {gw.keys[tenant]}", **headers},
        ) as resp:
            await resp.read()


async def _flush(gw: Gateway) -> None:
    assert await asyncio.to_thread(gw.app[METRICS].force_flush)


def _bucket_width(value: float, bounds: tuple[float, ...]) -> float:
    lower = 0.0
    for upper in bounds:
        if value <= upper:
            return upper - lower
        lower = upper
    return math.inf


def _within_bucket_error(estimate: float, exact: float, bounds: tuple[float, ...]) -> bool:
    tolerance = max(_bucket_width(exact, bounds), _bucket_width(estimate, bounds))
    return abs(estimate - exact) <= tolerance + 1e-12


def _grafana_to_promql(expr: str) -> str:
    """Grafana's variables as the dashboards use them, for an instant query."""
    expr = expr.replace("$__rate_interval", "1m").replace("$__range", "1h")
    return re.sub(r"\$(\w+)|\$\{(\w+)\}", ".*", expr)


def _dashboard_targets() -> Iterator[tuple[str, str, str]]:
    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    for path in DASHBOARDS:
        for panel in panels(json.loads(path.read_text())["panels"]):
            for target in panel.get("targets", []):
                yield path.name, panel["title"], target["expr"]


def _key(record: dict[str, Any], *names: str) -> tuple[str, ...]:
    return tuple(label(record.get(name)) for name in names)


def _rule(record: dict[str, Any]) -> str:
    return rule_label(record.get("rule"), record.get("overridden_by"))


async def test_metrics_arrive_in_prometheus_with_exact_values(
    tmp_path: Path, fake_upstream: Any, opa_bin: str, prometheus: PrometheusServer
) -> None:
    gw = await start_gateway(
        tmp_path,
        fake_upstream,
        settings_overrides={
            "metrics": True,
            "otlp_endpoint": prometheus.otlp_url,
            "metrics_interval_s": 3600,  # exports happen when the test flushes
            "breaker_failures": 2,
            "overrides_dirs": [EXAMPLE_OVERRIDES],
        },
    )
    try:
        up = gw.upstreams
        up["private-gpu"].behavior = Behavior(status=503)
        up["bedrock"].behavior = Behavior(status=500)
        up["private-gpu-b"].behavior = Behavior(delay_headers=0.012)
        up["anthropic"].behavior = Behavior(delay_headers=0.03, delay_first_chunk=0.02)
        # The records as the observers saw them (independent of the audit sink).
        seen: list[str] = []
        gw.app[OBSERVERS].append(lambda record: seen.append(record.to_json()))
        spool = FakeSpool()
        unregister = gw.app[METRICS].register_audit_pipeline("test-sink", spool)
        limiter = InProcessLimits(
            parse_limits(LIMITS, "limits.yaml"), observer=gw.app[METRICS].limits
        )
        gw.app[METRICS].limits.unavailable("open")
        async with aiohttp.ClientSession() as session:
            await _send(gw, session)
            await _spend(limiter)
            spool.advance(depth=5, lag_s=1.5, shipped=10, failures=1, dropped=0)
            await _flush(gw)
            await _send(gw, session)
            await _spend(limiter)
            spool.advance(depth=2, lag_s=0.25, shipped=40, failures=3, dropped=4)
            await _flush(gw)
        unregister()
    finally:
        await gw.close()
    records = [json.loads(line) for line in seen]
    audit_file = tmp_path / "records.jsonl"
    audit_file.write_text("".join(line + "\n" for line in seen))

    assert len(records) == 2 * len(TRAFFIC)
    _check_the_traffic_did_what_it_should(records)
    _check_counters(prometheus, records)
    _check_histograms(prometheus, records)
    _check_gauges(prometheus)
    _check_limits(prometheus)
    _check_labels_are_bounded(prometheus, records)
    _check_every_dashboard_query(prometheus)
    _check_stats_agree(prometheus, audit_file)


def _check_the_traffic_did_what_it_should(records: list[dict[str, Any]]) -> None:
    by_rule_status = Counter((_rule(r), r["status"]) for r in records)
    assert by_rule_status == {
        ("pii-on-prem", 200): 6,
        ("acme-low-latency", 200): 4,
        ("default", 200): 6,
        ("cost-capped", 502): 2,
        ("cost-capped", 503): 4,
        ("override:legal_hold", 503): 2,
        ("default", 403): 2,  # the override's deny wins over the matched rule
        ("none", 403): 2,
    }
    assert {r["tenant"] for r in records} == {"enterprise-acme", "globex", "hospital", "limited"}
    assert sum(1 for r in records if r["latency_ms"]["ttft"] is not None) == 6


def _check_counters(prom: PrometheusServer, records: list[dict[str, Any]]) -> None:
    keys = ("tenant", "operation", "endpoint", "model", "rule", "status", "stream")
    requests: Counter[tuple[str, ...]] = Counter()
    tokens: dict[tuple[str, ...], int] = defaultdict(int)
    cost: dict[tuple[str, ...], float] = defaultdict(float)
    decisions: Counter[tuple[str, ...]] = Counter()
    attempts: Counter[tuple[str, ...]] = Counter()
    failovers: Counter[tuple[str, ...]] = Counter()
    for r in records:  # in the order the gateway recorded them, as the sums were added
        requests[
            (*_key(r, "tenant", "operation", "endpoint", "model"), _rule(r), str(r["status"]),
             "true" if r["stream"] else "false")
        ] += 1  # fmt: skip
        usage = _key(r, "tenant", "endpoint", "model")
        for direction in ("input", "output"):
            if r["tokens"][direction]:
                tokens[(*_key(r, "tenant", "operation", "endpoint", "model"), direction)] += r[
                    "tokens"
                ][direction]
        if r["cost_usd"]:
            cost[usage] += r["cost_usd"]
        if r["latency_ms"]["policy"] is not None:
            decision = "deny" if r["deny"] else "route"
            decisions[(_rule(r), label(r["route_to"]), decision)] += 1
        for i, attempt in enumerate(r["attempts"]):
            attempts[(attempt["endpoint"], attempt["error"] or "ok")] += 1
            if i:
                previous = r["attempts"][i - 1]
                failovers[(previous["endpoint"], label(previous["error"]))] += 1

    assert prom.values("kamiwaza_gateway_requests_total", *keys) == requests
    assert prom.values(
        "kamiwaza_gateway_tokens_total", "tenant", "operation", "endpoint", "model", "direction"
    ) == dict(tokens)
    # Costs exactly: the same float additions in the same order.
    assert prom.values("kamiwaza_gateway_cost_usd_total", "tenant", "endpoint", "model") == cost
    assert prom.values("kamiwaza_gateway_decisions_total", "rule", "route_to", "decision") == (
        decisions
    )
    assert prom.values("kamiwaza_gateway_upstream_attempts_total", "endpoint", "outcome") == (
        attempts
    )
    assert prom.values("kamiwaza_gateway_failovers_total", "endpoint", "reason") == failovers
    # What the traffic must have produced, independently of the bookkeeping above.
    assert {endpoint for endpoint, _ in failovers} == {"private-gpu"}
    assert sum(failovers.values()) == 6
    assert failovers[("private-gpu", "circuit_open")] == 4
    bedrock = {outcome: n for (endpoint, outcome), n in attempts.items() if endpoint == "bedrock"}
    assert bedrock.pop("circuit_open") == 4
    assert list(bedrock.values()) == [2]  # failed twice, then skipped
    assert sum(tokens.values()) > 0
    assert all(value > 0 for value in cost.values())
    assert {k[0] for k in cost} == {"enterprise-acme", "globex", "hospital"}


def _check_histograms(prom: PrometheusServer, records: list[dict[str, Any]]) -> None:
    def check(
        metric: str,
        by: tuple[str, ...],
        samples: dict[tuple[str, ...], list[float]],
        bounds: tuple[float, ...],
    ) -> None:
        assert samples, metric
        assert prom.values(f"{metric}_count", *by) == {k: len(v) for k, v in samples.items()}
        sums = prom.values(f"{metric}_sum", *by)
        assert sums == {k: pytest.approx(sum(v), rel=1e-9) for k, v in samples.items()}
        # Quantiles per first label (endpoint), as the dashboards compute them.
        grouped: dict[str, list[float]] = defaultdict(list)
        for key, values in samples.items():
            grouped[key[0]] += values
        for phi in (0.5, 0.95, 0.99):
            estimates = prom.values(
                f"histogram_quantile({phi}, sum by ({by[0]}, le) ({metric}_bucket))", by[0]
            )
            assert set(estimates) == {(k,) for k in grouped}
            for name, values in grouped.items():
                exact = quantile(sorted(values), phi)
                assert exact is not None
                estimate = estimates[(name,)]
                assert _within_bucket_error(estimate, exact, bounds), (
                    metric, name, phi, estimate, exact
                )  # fmt: skip

    duration: dict[tuple[str, ...], list[float]] = defaultdict(list)
    ttft: dict[tuple[str, ...], list[float]] = defaultdict(list)
    policy: dict[tuple[str, ...], list[float]] = defaultdict(list)
    upstream: dict[tuple[str, ...], list[float]] = defaultdict(list)
    for r in records:
        stream = "true" if r["stream"] else "false"
        latency = r["latency_ms"]
        key = (*_key(r, "endpoint", "model"), _rule(r), str(r["status"]), stream)
        duration[key].append(latency["total"] / 1000)
        if latency["ttft"] is not None:
            ttft[_key(r, "endpoint", "model")].append(latency["ttft"] / 1000)
        if latency["policy"] is not None:
            policy[(_rule(r),)].append(latency["policy"] / 1000)
        for attempt in r["attempts"]:
            if attempt["error"] not in ("circuit_open", "endpoint_unavailable"):
                upstream[(attempt["endpoint"], attempt["error"] or "ok")].append(
                    attempt["latency_ms"] / 1000
                )
    check(
        "kamiwaza_gateway_request_duration_seconds",
        ("endpoint", "model", "rule", "status", "stream"),
        duration,
        DURATION_BUCKETS_S,
    )
    check(
        "kamiwaza_gateway_time_to_first_token_seconds", ("endpoint", "model"), ttft, TTFT_BUCKETS_S
    )
    check("kamiwaza_gateway_policy_duration_seconds", ("rule",), policy, POLICY_BUCKETS_S)
    check(
        "kamiwaza_gateway_upstream_duration_seconds",
        ("endpoint", "outcome"),
        upstream,
        DURATION_BUCKETS_S,
    )
    # The slow endpoint is visibly slower than the fast one.
    p50 = prom.values(
        "histogram_quantile(0.5, sum by (endpoint, le) "
        '(kamiwaza_gateway_upstream_duration_seconds_bucket{outcome="ok"}))',
        "endpoint",
    )
    assert p50[("anthropic",)] > p50[("private-gpu-b",)]


def _check_gauges(prom: PrometheusServer) -> None:
    assert prom.values("kamiwaza_gateway_circuit_breaker_state", "endpoint") == {
        ("private-gpu",): 2,
        ("private-gpu-b",): 0,
        ("anthropic",): 0,
        ("bedrock",): 2,
        ("private-embeddings",): 0,
        ("openai-embeddings",): 0,
    }
    # (The gateway's own audit pipeline reports too, under its sink's name.)
    assert prom.values("kamiwaza_audit_spool_depth", "sink")[("test-sink",)] == 2
    assert prom.values("kamiwaza_audit_shipping_lag_seconds", "sink")[("test-sink",)] == 0.25
    assert prom.values("kamiwaza_audit_shipped_total", "sink")[("test-sink",)] == 40
    assert prom.values("kamiwaza_audit_ship_failures_total", "sink")[("test-sink",)] == 3
    assert prom.values("kamiwaza_audit_dropped_total", "sink")[("test-sink",)] == 4


def _check_limits(prom: PrometheusServer) -> None:
    assert prom.values("kamiwaza_limits_refusals_total", "tenant", "limit") == {
        ("globex", "tenant.usd_per_day"): 2
    }
    assert prom.values("kamiwaza_limits_settlements_total", "tenant", "basis") == {
        ("globex", "usage"): 2,
        ("globex", "estimate"): 2,
    }
    assert prom.values("kamiwaza_limits_unavailable_total", "mode") == {("open",): 1}
    # As of the last admitted request: 0.6 settled + 0.2 reserved of $1 a day, $10 a month.
    spend = prom.values("kamiwaza_limits_spend_usd", "tenant", "window")
    assert spend == {
        ("globex", "day"): pytest.approx(0.8),
        ("globex", "month"): pytest.approx(0.8),
    }
    remaining = prom.values("kamiwaza_limits_remaining_usd", "tenant", "window")
    assert remaining == {
        ("globex", "day"): pytest.approx(0.2),
        ("globex", "month"): pytest.approx(9.2),
    }
    share = prom.values("kamiwaza_limits_remaining_share", "tenant", "window")
    assert share == {
        ("globex", "day"): pytest.approx(0.2),
        ("globex", "month"): pytest.approx(0.92),
    }


# The labels of each metric, besides Prometheus' job and instance (from the
# OTel resource's service.name and service.instance.id).
LABELS = {
    "kamiwaza_gateway_request_duration_seconds_bucket": {
        "operation", "endpoint", "model", "rule", "status", "stream", "le"
    },
    "kamiwaza_gateway_time_to_first_token_seconds_bucket": {"endpoint", "model", "le"},
    "kamiwaza_gateway_upstream_duration_seconds_bucket": {"endpoint", "outcome", "le"},
    "kamiwaza_gateway_policy_duration_seconds_bucket": {"rule", "le"},
    "kamiwaza_gateway_requests_total": {
        "tenant", "operation", "endpoint", "model", "rule", "status", "stream"
    },
    "kamiwaza_gateway_decisions_total": {"rule", "route_to", "decision"},
    "kamiwaza_gateway_tokens_total": {"tenant", "operation", "endpoint", "model", "direction"},
    "kamiwaza_gateway_cost_usd_total": {"tenant", "endpoint", "model"},
    "kamiwaza_gateway_upstream_attempts_total": {"endpoint", "outcome"},
    "kamiwaza_gateway_failovers_total": {"endpoint", "reason"},
    "kamiwaza_gateway_circuit_breaker_state": {"endpoint"},
    "kamiwaza_endpoint_health_state": {"endpoint"},
    "kamiwaza_endpoint_health_p95_latency_ms": {"endpoint"},
    "kamiwaza_audit_spool_depth": {"sink"},
    "kamiwaza_audit_shipping_lag_seconds": {"sink"},
    "kamiwaza_audit_shipped_total": {"sink"},
    "kamiwaza_audit_ship_failures_total": {"sink"},
    "kamiwaza_audit_dropped_total": {"sink"},
    "kamiwaza_limits_refusals_total": {"tenant", "limit"},
    "kamiwaza_limits_unavailable_total": {"mode"},
    "kamiwaza_limits_settlements_total": {"tenant", "basis"},
    "kamiwaza_limits_spend_usd": {"tenant", "window"},
    "kamiwaza_limits_remaining_usd": {"tenant", "window"},
    "kamiwaza_limits_remaining_share": {"tenant", "window"},
}  # fmt: skip


def _check_labels_are_bounded(prom: PrometheusServer, records: list[dict[str, Any]]) -> None:
    identifiers = {r["request_id"] for r in records} | {r["user"] for r in records if r["user"]}
    identifiers |= {r["key_id"] for r in records if r["key_id"]}
    names = set(prom.api("label/__name__/values"))
    assert set(LABELS) <= names
    for metric, expected in LABELS.items():
        series = prom.api("series", **{"match[]": metric})
        assert series, metric
        for labels in series:
            assert labels.pop("job") == "kamiwaza-gateway"
            assert labels.pop("instance")
            assert labels.pop("__name__") == metric
            assert set(labels) == expected, (metric, labels)
            assert not identifiers & set(labels.values()), (metric, labels)


def _check_every_dashboard_query(prom: PrometheusServer) -> None:
    targets = list(_dashboard_targets())
    assert len(DASHBOARDS) == 3
    assert len(targets) >= 20
    empty = []
    for dashboard, title, expr in targets:
        result = prom.query(_grafana_to_promql(expr))
        values = [float(sample["value"][1]) for sample in result]
        if not any(math.isfinite(v) for v in values):
            empty.append(f"{dashboard}: {title}: {expr} -> {values}")
    assert not empty, "dashboard queries without data:\n" + "\n".join(empty)
    # The template variables' label_values() queries.
    for path in DASHBOARDS:
        for variable in json.loads(path.read_text())["templating"]["list"]:
            if variable["type"] != "query":
                continue
            match = re.fullmatch(r"label_values\((\w+), (\w+)\)", variable["definition"])
            assert match, variable["definition"]
            metric, name = match.groups()
            assert prom.api(f"label/{name}/values", **{"match[]": metric}), variable["name"]


def _check_stats_agree(prom: PrometheusServer, audit_file: Path) -> None:
    """`kamiwaza stats` over the same records says what Prometheus says."""
    window = ["--since", "2000-01-01", "--until", "2100-01-01"]
    result = CliRunner().invoke(main, ["stats", str(audit_file), *window, "--format", "json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    requests = prom.values("sum by (endpoint) (kamiwaza_gateway_requests_total)", "endpoint")
    errors = prom.values(
        'sum by (endpoint) (kamiwaza_gateway_requests_total{status=~"[45].."})', "endpoint"
    )
    assert {(row["endpoint"],): row["requests"] for row in summary["endpoints"]} == requests
    assert {(row["endpoint"],): row["errors"] for row in summary["endpoints"] if row["errors"]} == (
        errors
    )
    for phi, column in ((0.5, "p50_ms"), (0.95, "p95_ms"), (0.99, "p99_ms")):
        estimates = prom.values(
            f"histogram_quantile({phi}, sum by (endpoint, le) "
            "(kamiwaza_gateway_request_duration_seconds_bucket))",
            "endpoint",
        )
        for row in summary["endpoints"]:
            exact = row[column] / 1000
            assert _within_bucket_error(estimates[(row["endpoint"],)], exact, DURATION_BUCKETS_S)
    cost = prom.values("sum by (tenant) (kamiwaza_gateway_cost_usd_total)", "tenant")
    tokens = prom.values(
        "sum by (tenant, direction) (kamiwaza_gateway_tokens_total)", "tenant", "direction"
    )
    for row in summary["tenants"]:
        tenant = row["tenant"]
        assert row["cost_usd"] == pytest.approx(cost.get((tenant,), 0.0), rel=1e-9, abs=1e-12)
        assert row["input_tokens"] == tokens.get((tenant, "input"), 0)
        assert row["output_tokens"] == tokens.get((tenant, "output"), 0)
    by_rule = prom.values("sum by (rule) (kamiwaza_gateway_requests_total)", "rule")
    assert {(row["rule"],): row["requests"] for row in summary["rules"]} == by_rule
