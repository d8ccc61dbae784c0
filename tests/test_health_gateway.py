"""Endpoint health in the routing decision, end to end: a real gateway and OPA
sidecar, fake upstreams whose latency, errors and scraped queue depth change
while the test runs (docs/health.md).

Each test polls a condition with a deadline; no sleep stands in for readiness.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from click.testing import CliRunner

from gateway.health.stage import HEALTH, SCRAPER
from observability.audit_reader import decision_events
from tests.fake_upstream import Behavior
from tests.gateway_harness import Gateway, start_gateway
from translator.cli import policy as kamiwaza_policy

pytestmark = pytest.mark.integration

POLICY = """\
version: v1
rules:
  - name: gpu
    match:
      labels.pool: gpu
    route_to: private-gpu
    fallback: [private-gpu-b]
  - default:
      route_to: anthropic
      fallback: [bedrock]
health:
  lagging:
    p95_latency_ms: ">250"
    error_rate: ">0.5"
    queue_depth: ">32"
  min_samples: 20
  latency_budget: enforce
  cost_cap: enforce
"""
FAST = {
    "audit_batch_interval_s": 0.05,
    "audit_fsync_interval_ms": 20,
    "health_cooldown_s": 0.3,
    "health_probe_share": 0.5,
    "health_scrape_interval_s": 0.05,
    "opa_timeout_ms": 5000,  # a loaded machine is not what is tested
}
SLOW = 0.4  # seconds: well past the 250 ms threshold
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


async def _send(http: aiohttp.ClientSession, gw: Gateway, **headers: str) -> tuple[int, Any]:
    async with http.post(gw.url("/v1/chat/completions"), json=BODY, headers=headers) as resp:
        return resp.status, (resp.headers.get("X-Kamiwaza-Endpoint"), await resp.json())


async def _endpoint(http: aiohttp.ClientSession, gw: Gateway, **headers: str) -> str:
    status, (endpoint, body) = await _send(http, gw, **headers)
    assert status == 200, body
    return str(endpoint)


GPU = {"X-Labels": "pool=gpu"}


async def _until(
    http: aiohttp.ClientSession, gw: Gateway, want: str, limit: int, **headers: str
) -> int:
    """Requests sent until one lands on `want` (at most `limit`)."""
    for n in range(1, limit + 1):
        if await _endpoint(http, gw, **headers) == want:
            return n
    raise AssertionError(f"no request reached {want} in {limit}")


@pytest.fixture
async def gw(tmp_path: Path, fake_upstream: Any) -> Any:
    gateway = await start_gateway(
        tmp_path,
        fake_upstream,
        policy=POLICY,
        settings_overrides=FAST,
        scraped=frozenset({"private-gpu"}),
    )
    try:
        yield gateway
    finally:
        await gateway.close()


async def test_slow_primary_moves_to_its_fallback_and_comes_back(gw: Gateway) -> None:
    gpu = gw.upstreams["private-gpu"]
    headers = {"Authorization": f"Bearer {gw.keys['acme']}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        for _ in range(20):
            assert await _endpoint(http, gw, **GPU) == "private-gpu"
        # One slow request among twenty is not a lagging endpoint: no flap.
        gpu.next(delay_headers=SLOW)
        for _ in range(5):  # the slow one, then four
            assert await _endpoint(http, gw, **GPU) == "private-gpu"
        assert gw.app[HEALTH].state("private-gpu") == "healthy"

        # It slows down for good: within two more slow requests, traffic moves.
        gpu.behavior = Behavior(delay_headers=SLOW)
        moved_after = await _until(http, gw, "private-gpu-b", 3, **GPU)
        assert moved_after == 2
        assert gw.app[HEALTH].state("private-gpu") == "lagging"
        for _ in range(3):  # held lagging: the fallback serves while it cools down
            assert await _endpoint(http, gw, **GPU) == "private-gpu-b"

        # Fast again: after the cooldown a share of requests probes it, and once
        # twenty probes were healthy every request goes back to it.
        gpu.behavior = Behavior()
        deadline = time.monotonic() + 20
        while gw.app[HEALTH].state("private-gpu") != "healthy":
            assert time.monotonic() < deadline, "private-gpu never recovered"
            await _endpoint(http, gw, **GPU)
            if gw.app[HEALTH].state("private-gpu") == "lagging":
                await asyncio.sleep(0.05)  # waiting out the cooldown, not a readiness wait
        for _ in range(5):
            assert await _endpoint(http, gw, **GPU) == "private-gpu"

    transitions = [t for t in gw.app[HEALTH].transitions if t[0] == "private-gpu"]
    # Every state change once, in order; a probe never flipped it back and forth.
    assert transitions == [
        ("private-gpu", "healthy", "lagging"),
        ("private-gpu", "lagging", "probing"),
        ("private-gpu", "probing", "healthy"),
    ]
    records = await gw.audit_records()
    moved = [r for r in records if r.get("health")]
    first = moved[0]
    assert first["endpoint"] == "private-gpu-b"
    assert first["route_to"] == "private-gpu-b"
    assert first["fallback"] == ["private-gpu"]
    (entry,) = first["health"]["moved"]
    assert entry["endpoint"] == "private-gpu"
    assert entry["reason"] == "lagging"
    values = entry["values"]
    assert values["state"] == "healthy"
    assert values["samples"] == 26  # 20 + 5, then the first of the slow ones
    assert values["p95_latency_ms"] > 250
    assert entry["detail"] == [f"p95_latency_ms {_num(values['p95_latency_ms'])} > 250"]
    assert first["health"]["skipped"] == []
    held = moved[1]["health"]["moved"][0]
    assert held["detail"] == ["held lagging by this replica until its cooldown ends"]
    assert held["values"]["state"] == "lagging"

    await gw.close()  # OPA flushes its decision log to the gateway
    events = {e["decision_id"]: e for e in decision_events(str(gw.audit_dir))}
    event = events[first["decision_id"]]
    # The decision log holds the observed values the decision was made with...
    assert event["input"]["health"]["endpoints"]["private-gpu"] == values
    assert event["result"]["health"]["moved"] == first["health"]["moved"]
    # ...and `policy explain` replays it to the same decision.
    log_file = gw.workdir / "event.json"
    log_file.write_text(json.dumps(event))
    run = CliRunner().invoke(
        kamiwaza_policy,
        [
            "explain",
            str(gw.workdir / "routing.yaml"),
            "--from-decision-log",
            str(log_file),
            "--json",
        ],
    )
    assert run.exit_code == 0, run.output
    replayed = json.loads(run.stdout)
    assert replayed["route_to"] == "private-gpu-b"
    assert replayed["health"] == event["result"]["health"]
    assert "replayed: the same decision as logged" in run.stderr


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


async def test_latency_budget_and_cost_cap_are_enforced(gw: Gateway) -> None:
    gpu = gw.upstreams["private-gpu"]
    gpu.behavior = Behavior(delay_headers=0.12)  # slower than a 100 ms budget, not lagging
    headers = {"Authorization": f"Bearer {gw.keys['acme']}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        for _ in range(20):
            assert await _endpoint(http, gw, **GPU) == "private-gpu"
        assert await _endpoint(http, gw, **GPU, **{"X-Latency-Budget-Ms": "100"}) == (
            "private-gpu-b"
        )
        assert await _endpoint(http, gw, **GPU, **{"X-Latency-Budget-Ms": "1000"}) == (
            "private-gpu"
        )
        # Cost cap: anthropic (0.015 per 1k output) is skipped, bedrock serves.
        assert await _endpoint(http, gw, **{"X-Cost-Cap-Per-1k": "0.002"}) == "bedrock"
        status, (endpoint, body) = await _send(http, gw, **{"X-Cost-Cap-Per-1k": "0.0001"})
    assert status == 403
    assert endpoint is None
    assert body["error"]["code"] == "policy_denied"
    assert body["error"]["message"] == (
        "request denied by policy: cost cap: no endpoint of the route meets the cost cap of "
        "0.0001 USD per 1k tokens (cheapest: bedrock at 0.00125 per 1k)"
    )
    assert gw.upstream_requests()["anthropic"] == 0
    records = await gw.audit_records()
    budget, roomy, capped, refused = records[-4:]
    assert budget["health"]["skipped"] == [
        {
            "endpoint": "private-gpu",
            "reason": "latency_budget",
            "detail": budget["health"]["skipped"][0]["detail"],
            "values": budget["health"]["skipped"][0]["values"],
        }
    ]
    assert budget["health"]["skipped"][0]["detail"].endswith("> latency budget 100 ms")
    assert budget["health"]["skipped"][0]["values"]["p95_latency_ms"] > 100
    assert "health" not in roomy
    assert capped["health"] == {
        "skipped": [
            {
                "endpoint": "anthropic",
                "reason": "cost_cap",
                "detail": "price 0.015 per 1k > cost cap 0.002",
                "values": {},
            }
        ],
        "moved": [],
    }
    assert refused["status"] == 403
    assert [s["endpoint"] for s in refused["health"]["skipped"]] == ["anthropic", "bedrock"]


async def test_scraped_queue_depth_moves_traffic(gw: Gateway) -> None:
    gpu = gw.upstreams["private-gpu"]
    scraper = gw.app[SCRAPER]
    headers = {"Authorization": f"Bearer {gw.keys['acme']}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        assert await _endpoint(http, gw, **GPU) == "private-gpu"
        gpu.metrics_text = (
            "# HELP vllm:num_requests_waiting Number of requests waiting.\n"
            "# TYPE vllm:num_requests_waiting gauge\n"
            'vllm:num_requests_waiting{model_name="m"} 40.0\n'
            'vllm:kv_cache_usage_perc{model_name="m"} 0.93\n'
        )
        seen = scraper.scrapes
        deadline = time.monotonic() + 10
        while scraper.scrapes < seen + 2:  # a round that began after the change ended
            assert time.monotonic() < deadline, "the scraper never ran"
            await asyncio.sleep(0.02)
        assert await _endpoint(http, gw, **GPU) == "private-gpu-b"
    records = await gw.audit_records()
    (entry,) = records[-1]["health"]["moved"]
    assert entry["endpoint"] == "private-gpu"
    assert entry["detail"] == ["queue_depth 40 > 32"]
    assert entry["values"]["queue_depth"] == 40
    assert entry["values"]["kv_cache_usage"] == 0.93
