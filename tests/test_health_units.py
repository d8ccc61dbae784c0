"""Endpoint health's parts on their own: the rolling window, the monitor's
recovery state machine, the metrics parser, replaying a logged decision, and
the settings and registry fields (the whole is tests/test_health_gateway.py)."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from gateway.forwarding.attempts import Attempt
from gateway.health import HealthMonitor, HealthSettings, RollingWindow, parse_metrics
from gateway.policy import parse_decision
from gateway.providers.failures import AttemptFailure
from gateway.settings import SettingsError, load_settings
from translator.registry import check_registry
from translator.replay import ReplayError, differences, read_logged_decision
from translator.source import load


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _window(clock: Clock) -> RollingWindow:
    return RollingWindow(60, buckets=12, clock=clock)


def test_percentiles_are_within_a_bin_of_the_exact_values() -> None:
    clock = Clock()
    window = _window(clock)
    for ms in range(1, 101):  # 1..100 ms
        window.add(float(ms) * 10, float(ms), error=False, timeout=False)
    stats = window.stats()
    assert stats["samples"] == 100
    assert stats["p50_latency_ms"] == pytest.approx(500, rel=0.13)
    assert stats["p95_latency_ms"] == pytest.approx(950, rel=0.13)
    assert stats["p50_ttft_ms"] == pytest.approx(50, rel=0.13)
    assert stats["p95_ttft_ms"] == pytest.approx(95, rel=0.13)
    assert stats["error_rate"] == 0
    assert stats["timeout_rate"] == 0


def test_one_outlier_in_twenty_is_not_the_p95() -> None:
    window = _window(Clock())
    for _ in range(20):
        window.add(10, None, error=False, timeout=False)
    window.add(5000, None, error=False, timeout=False)
    assert window.stats()["p95_latency_ms"] < 20
    window.add(5000, None, error=False, timeout=False)
    assert window.stats()["p95_latency_ms"] > 4000


def test_failures_count_in_the_rates_not_in_the_latencies() -> None:
    window = _window(Clock())
    window.add(100, None, error=False, timeout=False)
    window.add(None, None, error=True, timeout=True)
    window.add(None, None, error=True, timeout=False)
    window.add(100, None, error=False, timeout=False)
    stats = window.stats()
    assert stats["samples"] == 4
    assert stats["error_rate"] == 0.5
    assert stats["timeout_rate"] == 0.25
    assert stats["p95_latency_ms"] == pytest.approx(100, rel=0.13)


def test_old_buckets_leave_the_window() -> None:
    clock = Clock()
    window = _window(clock)
    window.add(5000, None, error=True, timeout=False)
    clock.now += 30
    window.add(10, None, error=False, timeout=False)
    assert window.stats()["samples"] == 2
    clock.now += 31  # the first bucket is now older than 60 s
    stats = window.stats()
    assert stats["samples"] == 1
    assert stats["error_rate"] == 0
    clock.now += 60
    assert window.stats() == {"samples": 0}
    assert window.advance() is False  # nothing left to expire in the same bucket


def test_memory_does_not_grow_with_traffic() -> None:
    clock = Clock()
    window = _window(clock)
    sizes = set()
    for n in range(5000):
        clock.now += 0.05
        window.add(float(n % 300), None, error=n % 7 == 0, timeout=False)
        sizes.add(sum(len(b.latency) + len(b.ttft) for b in window._ring))
    assert len(sizes) == 1


def test_reset_forgets_everything() -> None:
    window = _window(Clock())
    window.add(10, None, error=False, timeout=False)
    window.reset()
    assert window.stats() == {"samples": 0}


def test_bad_window() -> None:
    with pytest.raises(ValueError, match="positive length"):
        RollingWindow(0, clock=Clock())


# -- the monitor ---------------------------------------------------------------


def _ok(ms: float) -> Attempt:
    return Attempt("gpu", 200, None, ms)


def _monitor(clock: Clock, **kwargs: Any) -> HealthMonitor:
    settings = HealthSettings(window_s=60, cooldown_s=10, probe_share=0.25, **kwargs)
    return HealthMonitor(["gpu", "saas"], settings, clock=clock)


def _lagging(name: str = "gpu") -> dict[str, Any]:
    return {
        "skipped": [],
        "moved": [{"endpoint": name, "reason": "lagging", "detail": ["p95_ttft_ms 2100 > 1500"]}],
        "verdicts": {name: "lagging"},
    }


def test_nothing_known_means_no_input() -> None:
    assert _monitor(Clock()).opa_input() is None


def test_attempts_and_in_flight_reach_the_input() -> None:
    monitor = _monitor(Clock())
    monitor.attempt_started("gpu")
    monitor.attempt_started("gpu")
    monitor.attempt_finished("gpu", _ok(120), None, 80.0)
    doc = monitor.opa_input()
    assert doc is not None
    gpu = doc["endpoints"]["gpu"]
    assert gpu["state"] == "healthy"
    assert gpu["samples"] == 1
    assert gpu["in_flight"] == 1
    assert gpu["p95_ttft_ms"] == pytest.approx(80, rel=0.13)
    assert gpu["p95_latency_ms"] == pytest.approx(120, rel=0.13)
    assert "saas" not in doc["endpoints"]
    assert "probe" not in doc


def test_retryable_failures_count_refusals_do_not() -> None:
    monitor = _monitor(Clock())
    down = AttemptFailure(503, "http_503", "unavailable", True)
    slow = AttemptFailure(504, "timeout", "timed out", True, timeout=True)
    refused = AttemptFailure(400, "invalid_request", "bad", False)
    for failure in (down, slow, refused):
        monitor.attempt_started("gpu")
        monitor.attempt_finished(
            "gpu", Attempt("gpu", failure.status_for_client, failure.code, 5), failure, None
        )
    monitor.attempt_started("gpu")
    monitor.attempt_finished("gpu", Attempt("gpu", None, "cancelled", 5), None, None)
    values = monitor.snapshot()["gpu"]
    assert values["samples"] == 3  # the cancelled attempt says nothing of the endpoint
    assert values["error_rate"] == pytest.approx(0.6667)
    assert values["timeout_rate"] == pytest.approx(0.3333)
    assert values["in_flight"] == 0


def test_rate_limit_headers_and_scraped_gauges() -> None:
    monitor = _monitor(Clock())
    monitor.response_headers(
        "saas",
        {"anthropic-ratelimit-requests-remaining": "12", "x-ratelimit-remaining-tokens": "x"},
    )
    monitor.set_gauges("gpu", {"queue_depth": 7.0, "kv_cache_usage": 0.5})
    monitor.response_headers("unknown", {"x-ratelimit-remaining-requests": "1"})
    doc = monitor.opa_input()
    assert doc is not None
    assert doc["endpoints"]["saas"]["ratelimit_remaining_requests"] == 12
    assert "ratelimit_remaining_tokens" not in doc["endpoints"]["saas"]
    assert doc["endpoints"]["gpu"]["queue_depth"] == 7
    monitor.set_gauges("gpu", {})  # a failed scrape forgets the scraped values
    assert "gpu" not in (monitor.opa_input() or {"endpoints": {}})["endpoints"]


def test_lagging_is_held_then_probed_then_healthy(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    monitor = _monitor(clock)
    monitor.attempt_started("gpu")
    monitor.attempt_finished("gpu", _ok(2500), None, 2100.0)
    caplog.set_level(logging.INFO, "gateway.health")
    for _ in range(3):  # every decision says so; the state changes once
        monitor.note_verdicts(_lagging())
    assert monitor.state("gpu") == "lagging"
    doc = monitor.opa_input()
    assert doc is not None and doc["endpoints"]["gpu"]["state"] == "lagging"
    clock.now += 9.9
    assert monitor.state("gpu") == "lagging"
    monitor.opa_input()
    assert monitor.state("gpu") == "lagging"
    clock.now += 0.1
    probes = []
    for _ in range(8):
        doc = monitor.opa_input()
        assert doc is not None
        probes.append("gpu" in doc.get("probe", []))
    assert monitor.state("gpu") == "probing"
    assert probes == [True, False, False, False, True, False, False, False]  # one in four
    assert doc["endpoints"]["gpu"]["samples"] == 0  # judged from fresh observations
    monitor.note_verdicts({"verdicts": {"gpu": "unknown"}})
    assert monitor.state("gpu") == "probing"
    monitor.note_verdicts({"verdicts": {"gpu": "healthy", "saas": "healthy"}})
    assert monitor.state("gpu") == "healthy"
    assert monitor.state("saas") == "healthy"
    assert monitor.transitions == [
        ("gpu", "healthy", "lagging"),
        ("gpu", "lagging", "probing"),
        ("gpu", "probing", "healthy"),
    ]
    assert [r.getMessage() for r in caplog.records] == [
        "endpoint gpu: healthy -> lagging (p95_ttft_ms 2100 > 1500)",
        "endpoint gpu: lagging -> probing (cooldown over: judged again on a share)",
        "endpoint gpu: probing -> healthy (healthy again over enough samples)",
    ]


def test_a_probe_that_lags_again_restarts_the_cooldown() -> None:
    clock = Clock()
    monitor = _monitor(clock)
    seen: list[tuple[str, str, str]] = []
    monitor.on_transition.append(lambda *t: seen.append(t))
    monitor.on_transition.append(lambda *t: 1 / 0)  # a failing hook is logged, not raised
    monitor.note_verdicts(_lagging())
    clock.now += 10
    monitor.opa_input()
    monitor.note_verdicts({"verdicts": {"gpu": "lagging"}})
    assert monitor.state("gpu") == "lagging"
    clock.now += 5
    monitor.opa_input()
    assert monitor.state("gpu") == "lagging"
    assert seen == [
        ("gpu", "healthy", "lagging"),
        ("gpu", "lagging", "probing"),
        ("gpu", "probing", "lagging"),
    ]


def test_breaker_state_is_sent_when_not_closed() -> None:
    states = {"gpu": "closed"}
    monitor = HealthMonitor(["gpu"], clock=Clock(), breaker_state=states.__getitem__)
    assert monitor.opa_input() is None
    states["gpu"] = "open"
    doc = monitor.opa_input()
    assert doc is not None and doc["endpoints"]["gpu"]["breaker"] == "open"


def test_reports_it_cannot_read_are_ignored() -> None:
    monitor = _monitor(Clock())
    monitor.note_verdicts(None)
    monitor.note_verdicts({"verdicts": "lagging"})
    monitor.note_verdicts({"verdicts": {"elsewhere": "lagging"}})
    assert monitor.state("gpu") == "healthy"
    monitor.attempt_started("elsewhere")
    monitor.set_gauges("elsewhere", {"queue_depth": 1})


# -- the scraper's parser ---------------------------------------------------------


def test_metrics_of_vllm_and_tgi() -> None:
    text = """\
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="llama"} 3.0
vllm:num_requests_waiting{engine="1",model_name="llama"} 4.0
vllm:gpu_cache_usage_perc{model_name="llama"} 0.5
vllm:kv_cache_usage_perc{model_name="llama"} 0.75
vllm:num_requests_running{model_name="llama"} 9.0
tgi_queue_size 2
tgi_batch_current_size 1
vllm:num_requests_waiting{model_name="x} broken
vllm:num_requests_waiting{model_name="nan"} NaN
vllm:num_requests_waiting
"""
    assert parse_metrics(text) == {"queue_depth": 9.0, "kv_cache_usage": 0.75}
    assert parse_metrics("") == {}


# -- the decision's health report ----------------------------------------------------


def test_a_malformed_health_report_is_dropped_not_a_503() -> None:
    base = {"route_to": "gpu", "fallback": [], "deny": [], "rule": None}
    good = {"skipped": [], "moved": [{"endpoint": "x"}], "verdicts": {}}
    assert parse_decision({**base, "health": good}, "d", 0).health == good
    for bad in ("x", {"moved": [{"reason": "no endpoint"}]}, {"verdicts": []}):
        decision = parse_decision({**base, "health": bad}, "d", 0)
        assert decision.health is None
        assert decision.route_to == "gpu"


# -- replaying a logged decision ---------------------------------------------------------


def test_logged_decisions_are_read_from_events_and_spool_entries() -> None:
    event = {"decision_id": "d1", "path": "kamiwaza/route/decision", "input": {"a": 1}, "result": 2}
    other = {"decision_id": "d2", "path": "kamiwaza/guards/refusals", "input": {}, "result": {}}
    assert read_logged_decision(json.dumps(event), None).input == {"a": 1}
    lines = "\n".join(
        json.dumps(e)
        for e in (
            {"kind": "opa_decision", "id": "d1", "body": event},
            {"kind": "request", "id": "r", "body": {}},
            {"kind": "opa_decision", "id": "d2", "body": other},
            {**event, "decision_id": "d3"},
        )
    )
    with pytest.raises(ReplayError, match="2 routing decisions in it"):
        read_logged_decision(lines, None)
    picked = read_logged_decision(lines, "d3")
    assert (picked.decision_id, picked.result) == ("d3", 2)
    with pytest.raises(ReplayError, match="no routing decision with decision_id 'd9'"):
        read_logged_decision(lines, "d9")
    with pytest.raises(ReplayError, match="no routing decision event"):
        read_logged_decision(json.dumps(other), None)
    with pytest.raises(ReplayError, match="line 2 is not JSON"):
        read_logged_decision('{"a": 1}\n{oops', None)
    with pytest.raises(ReplayError, match="input is not an object"):
        read_logged_decision(json.dumps({**event, "input": [1]}), None)


def test_differences_name_the_fields() -> None:
    assert differences({"a": 1, "b": 2}, {"a": 1, "b": 3, "c": 0}) == ["b", "c"]
    assert differences(None, None) == []
    assert differences(None, {"a": 1}) == ["the whole decision"]


# -- configuration ------------------------------------------------------------------


def test_health_settings_are_validated() -> None:
    settings = load_settings(
        overrides={"health_window_s": 30, "health_probe_share": 0.1}, environ={}
    )
    assert (settings.health_window_s, settings.health_probe_share, settings.health) == (
        30,
        0.1,
        True,
    )
    with pytest.raises(SettingsError, match="health-probe-share: must be a share above 0"):
        load_settings(overrides={"health_probe_share": 0}, environ={})
    with pytest.raises(SettingsError, match="health-window-s: must be positive"):
        load_settings(overrides={"health_window_s": 0}, environ={})
    assert load_settings(environ={"KAMIWAZA_HEALTH": "false"}).health is False


def test_metrics_url_must_be_a_url() -> None:
    text = """\
endpoints:
  gpu:
    type: openai-compatible
    base_url: http://10.0.0.5:8000/v1
    metrics_url: 10.0.0.5:8000/metrics
  gpu-b:
    type: openai-compatible
    base_url: http://10.0.0.6:8000/v1
    metrics_url: http://10.0.0.6:8000/metrics
"""
    registry, diagnostics = check_registry(load(text, "endpoints.yaml"))
    assert [d.message for d in diagnostics] == [
        "endpoint 'gpu': 'metrics_url' must be an http:// or https:// URL, got "
        "'10.0.0.5:8000/metrics'"
    ]
    assert registry.endpoints["gpu-b"].options["metrics_url"] == "http://10.0.0.6:8000/metrics"


# -- kamiwaza stats -------------------------------------------------------------


def test_stats_count_what_health_changed() -> None:
    from datetime import UTC, datetime

    from observability.stats import compute
    from observability.stats_render import render_table

    def rec(n: int, health: Any) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "request_id": f"r{n}",
            "timestamp": "2026-12-02T10:00:00Z",
            "status": 200,
            "endpoint": "private-gpu-b",
            "latency_ms": {"total": 10.0},
        }
        if health is not None:
            doc["health"] = health
        return doc

    moved = {"skipped": [], "moved": [{"endpoint": "private-gpu", "reason": "lagging"}]}
    capped = {
        "skipped": [{"endpoint": "anthropic", "reason": "cost_cap"}],
        "moved": [{"endpoint": "private-gpu", "reason": "lagging"}],
    }
    records = [rec(1, moved), rec(2, capped), rec(3, None), rec(4, {"moved": "junk"})]
    summary = compute(records, datetime(2026, 12, 2, tzinfo=UTC), datetime(2026, 12, 3, tzinfo=UTC))
    assert summary["health"] == [
        {"endpoint": "private-gpu", "reason": "lagging", "requests": 2},
        {"endpoint": "anthropic", "reason": "cost_cap", "requests": 1},
    ]
    table = render_table(summary)
    assert table.endswith(
        "Endpoint health (endpoints skipped or moved behind their fallbacks)\n"
        "endpoint     reason    requests\n"
        "private-gpu  lagging          2\n"
        "anthropic    cost_cap         1\n"
    )
