"""Per-tenant limits through the gateway's HTTP API: three replicas sharing a
real redis-server, the real OPA with the example policy, fake upstreams that
count what reaches them, the official openai SDK as the client.

A burst across the replicas against a spend cap admits exactly what the cap
holds (every reservation in flight at once); requests and tokens per minute
hold within one window; streams settle from their final usage (or an estimate,
flagged); a replica SIGKILLed mid-stream leaks nothing after the TTL; Redis
stopped refuses with nothing forwarded (fail-closed) or lets through (fail-open);
a tenant near its cap is routed to the cheaper endpoint; SIGHUP reloads the
limits and keeps them on a bad file.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from gateway.app import create_app
from gateway.auth import KeyStore
from gateway.errors import StartupError
from gateway.limits.config import ReservationPolicy
from gateway.limits.estimate import estimate_request
from gateway.settings import load_settings
from gateway.state import LIMITS, METRICS
from tests.fake_upstream import Behavior
from tests.gateway_harness import ROOT, start_gateway
from tests.limits_gateways import Cluster, free_port, start_cluster, wait_ready
from tests.redis_server import RedisServer
from translator.registry import Pricing

pytestmark = pytest.mark.integration

ANTHROPIC = Pricing(input_per_1k=0.003, output_per_1k=0.015)  # the default route's endpoint
BEDROCK = Pricing(input_per_1k=0.00025, output_per_1k=0.00125)
PROMPT = "count my tokens " * 25
REPLY = " ".join(f"w{i}" for i in range(10))  # ten pieces: ten completion tokens
MAX_TOKENS = 10
MESSAGES = [{"role": "user", "content": PROMPT}]
BODY = {"model": "m", "max_tokens": MAX_TOKENS, "messages": MESSAGES}
RESERVED = estimate_request(BODY, ANTHROPIC, ReservationPolicy())  # what one request reserves
TTL_S = 4.0  # the SIGKILL test's reservations expire this soon

LIMITS_YAML = f"""\
version: v1
defaults:
  requests_per_minute: 100000
reservation:
  ttl_s: 60
tenants:
  burst: {{usd_per_day: {RESERVED.cost_usd * 5.5:.9f}}}
  rpm: {{requests_per_minute: 7}}
  tpm: {{tokens_per_minute: {int(RESERVED.tokens * 3.5)}}}
  nousage: {{usd_per_day: 10}}
  nearcap: {{usd_per_day: 1.0}}
  killed: {{usd_per_day: {RESERVED.cost_usd * 1.5:.9f}}}
  outage: {{usd_per_day: 10, requests_per_minute: 1000}}
  shape: {{requests_per_minute: 1}}
"""


def cost(usage_in: int, usage_out: int, pricing: Pricing = ANTHROPIC) -> float:
    return (usage_in * pricing.input_per_1k + usage_out * pricing.output_per_1k) / 1000


@pytest.fixture
async def cluster(
    tmp_path: Path, fake_upstream: Any, redis_server: RedisServer
) -> AsyncIterator[Cluster]:
    async for cluster in start_cluster(tmp_path, fake_upstream, redis_server, LIMITS_YAML):
        yield cluster


async def three(cluster: Cluster) -> list[Any]:
    return [await cluster.replica() for _ in range(3)]


async def until(condition: Any, what: str, timeout: float = 10.0) -> None:
    """Poll `condition()` (sync or async) until true, or fail naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)  # poll interval


def by_tenant(records: list[dict[str, Any]], tenant: str) -> list[dict[str, Any]]:
    return [r for r in records if r["tenant"] == tenant]


# -- spend: a burst across the replicas --------------------------------------------


async def test_a_streamed_burst_across_three_replicas_admits_what_the_cap_holds(
    cluster: Cluster,
) -> None:
    gws = await three(cluster)
    # The upstream reports half the reserved prompt: settling from the final
    # usage (not the reservation) is then visible in the spend.
    prompt_used = RESERVED.input_tokens // 2
    for up in cluster.upstreams.values():
        up.behavior = Behavior(prompt_tokens=prompt_used, reply=REPLY, gate_after_chunks=1)
    clients = [cluster.sdk(gw, "burst") for gw in gws]

    async def one(i: int) -> Any:
        try:
            stream = await clients[i % 3].chat.completions.create(
                model="m", messages=MESSAGES, max_tokens=MAX_TOKENS, stream=True
            )
        except openai.RateLimitError as err:
            return err
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    async def burst(n: int) -> tuple[list[Any], int, dict[str, Any]]:
        """`n` at once; every admitted stream is held at the upstream's gate, its
        reservation in flight, while the others are refused: the cap alone
        decides. Returns the outcomes and how many reached an upstream."""
        before = cluster.upstream_requests()
        for up in cluster.upstreams.values():
            up.gate.clear()
        tasks = [asyncio.create_task(one(i)) for i in range(n)]
        await until(
            lambda: sum(t.done() for t in tasks) + cluster.upstream_requests() - before == n,
            "every request refused or held upstream",
        )
        held = cluster.upstream_requests() - before
        status = await cluster.status("burst")
        for up in cluster.upstreams.values():
            up.gate.set()
        return list(await asyncio.gather(*tasks)), held, status

    outcomes, held, status = await burst(24)
    assert held == 5  # floor(5.5 reservations)
    assert status["tenant.usd_per_day"].used == pytest.approx(5 * RESERVED.cost_usd, abs=1e-8)
    served = [o for o in outcomes if isinstance(o, str)]
    refused = [o for o in outcomes if isinstance(o, openai.RateLimitError)]
    assert served == [REPLY] * 5
    assert len(refused) == 19
    for err in refused:
        assert err.status_code == 429
        assert err.code == "budget_exceeded"
        assert err.type == "rate_limit_error"
        assert "usd_per_day of tenant 'burst'" in err.message
        headers = err.response.headers
        assert int(headers["retry-after"]) >= 1
        assert headers["x-ratelimit-limit-usd-day"] == f"{RESERVED.cost_usd * 5.5:.6f}".rstrip("0")
        assert float(headers["x-ratelimit-remaining-usd-day"]) < RESERVED.cost_usd
    each = cost(prompt_used, MAX_TOKENS)
    await until(
        lambda: _spent(cluster, "burst", 5 * each), "the five streams settled from their usage"
    )
    records = by_tenant(await cluster.records(), "burst")
    assert len(records) == 24
    ok = [r for r in records if r["status"] == 200]
    assert len(ok) == 5
    for record in ok:
        assert record["stream"] is True
        assert record["cost_usd"] == pytest.approx(each)
        assert record["limits"] == {
            "reserved_usd": round(RESERVED.cost_usd, 9),
            "reserved_tokens": RESERVED.tokens,
            "capped": False,
            "settled_usd": round(each, 9),
            "settled_tokens": prompt_used + MAX_TOKENS,
            "basis": "usage",
        }
    for record in (r for r in records if r["status"] == 429):
        assert record["limits"] == {
            "refused_by": "tenant.usd_per_day",
            "wanted_usd": round(RESERVED.cost_usd, 9),
            "wanted_tokens": RESERVED.tokens,
        }
        assert record["error"]["code"] == "budget_exceeded"
        assert record["attempts"] == []
    # What settled is what the records say; never past the cap (nor by more than
    # one reservation beyond it had the usage exceeded the reservations).
    spent = (await cluster.status("burst"))["tenant.usd_per_day"].used
    assert spent == pytest.approx(sum(r["cost_usd"] for r in ok), abs=1e-8)
    assert spent <= RESERVED.cost_usd * 5.5 + RESERVED.cost_usd
    # Settling gave back what was not used: a second burst gets exactly that room.
    room = int((RESERVED.cost_usd * 5.5 - spent) / RESERVED.cost_usd + 1e-9)
    assert room >= 2
    outcomes, held, _ = await burst(9)
    assert held == room
    assert sum(isinstance(o, str) for o in outcomes) == room


async def _spent(cluster: Cluster, tenant: str, expected: float) -> bool:
    used = (await cluster.status(tenant))["tenant.usd_per_day"].used
    return abs(used - expected) < 1e-8 and await cluster.in_flight(tenant) == 0


# -- requests and tokens per minute ---------------------------------------------------


async def test_requests_and_tokens_per_minute_hold_within_one_window(cluster: Cluster) -> None:
    gws = await three(cluster)
    for up in cluster.upstreams.values():
        up.behavior = Behavior(prompt_tokens=RESERVED.input_tokens, reply=REPLY)

    async def one(tenant: str, i: int) -> Any:
        client = cluster.sdk(gws[i % 3], tenant)
        try:
            return await client.chat.completions.with_raw_response.create(
                model="m", messages=MESSAGES, max_tokens=MAX_TOKENS
            )
        except openai.RateLimitError as err:
            return err

    rpm = await asyncio.gather(*(one("rpm", i) for i in range(12)))
    ok = [r for r in rpm if not isinstance(r, openai.RateLimitError)]
    refused = [r for r in rpm if isinstance(r, openai.RateLimitError)]
    assert (len(ok), len(refused)) == (7, 5)
    assert cluster.upstream_requests() == 7
    for err in refused:
        assert err.code == "rate_limit_exceeded"
        assert "requests_per_minute of tenant 'rpm' is 7" in err.message
        assert err.response.headers["x-ratelimit-limit-requests"] == "7"
        assert err.response.headers["x-ratelimit-remaining-requests"] == "0"
        assert 1 <= int(err.response.headers["retry-after"]) <= 66
    remaining = sorted(int(r.headers["x-ratelimit-remaining-requests"]) for r in ok)
    assert remaining == [0, 1, 2, 3, 4, 5, 6]  # each admitted request took one
    for raw in ok:
        assert raw.headers["x-ratelimit-limit-requests"] == "7"
        assert raw.headers["x-ratelimit-reset-requests"].endswith("s")
        assert raw.parse().choices[0].message.content == REPLY

    # Tokens: each request reserves (and here uses) RESERVED.tokens; 3.5 fit.
    tpm = await asyncio.gather(*(one("tpm", i) for i in range(6)))
    ok = [r for r in tpm if not isinstance(r, openai.RateLimitError)]
    assert len(ok) == 3
    for err in (r for r in tpm if isinstance(r, openai.RateLimitError)):
        assert err.code == "rate_limit_exceeded"
        assert "tokens_per_minute of tenant 'tpm'" in err.message
    await until(lambda: _tokens_settled(cluster), "the token reservations settled")
    used = (await cluster.status("tpm"))["tenant.tokens_per_minute"].used
    assert used == 3 * (RESERVED.input_tokens + MAX_TOKENS) <= int(RESERVED.tokens * 3.5)
    again = await one("tpm", 0)
    assert isinstance(again, openai.RateLimitError)  # still within the window
    assert cluster.upstream_requests() == 7 + 3


async def _tokens_settled(cluster: Cluster) -> bool:
    return await cluster.in_flight("tpm") == 0


async def test_the_anthropic_front_is_refused_in_its_own_shape(cluster: Cluster) -> None:
    gw = await cluster.replica()
    headers = {"x-api-key": cluster.keys["shape"], "anthropic-version": "2023-06-01"}
    body = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as http:
        async with http.post(gw.url("/v1/messages"), json=body, headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            assert resp.headers["x-ratelimit-remaining-requests"] == "0"
        async with http.post(gw.url("/v1/messages"), json=body, headers=headers) as resp:
            assert resp.status == 429
            answer = await resp.json()
            retry = resp.headers["Retry-After"]
    assert answer["type"] == "error"
    assert answer["error"]["type"] == "rate_limit_error"
    assert "requests_per_minute of tenant 'shape' is 1" in answer["error"]["message"]
    assert 1 <= int(retry) <= 66
    assert cluster.upstream_requests() == 1


# -- streams: final usage, or an estimate -------------------------------------------


async def test_a_stream_without_usage_settles_on_the_estimate_and_says_so(
    cluster: Cluster,
) -> None:
    gw = await cluster.replica()
    for up in cluster.upstreams.values():
        up.behavior = Behavior(include_usage=False, reply=REPLY)
    client = cluster.sdk(gw, "nousage")
    stream = await client.chat.completions.create(
        model="m", messages=MESSAGES, max_tokens=MAX_TOKENS, stream=True
    )
    assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices]) == REPLY
    [record] = by_tenant(await cluster.records(), "nousage")
    assert record["limits"]["basis"] == "estimate"
    assert record["limits"]["settled_usd"] == pytest.approx(record["cost_usd"])
    assert record["cost_usd"] > 0
    await until(lambda: _spent(cluster, "nousage", record["cost_usd"]), "the estimate settled")


async def test_a_client_leaving_mid_stream_settles_what_was_streamed(cluster: Cluster) -> None:
    gw = await cluster.replica()
    for up in cluster.upstreams.values():
        up.behavior = Behavior(reply=REPLY, gate_after_chunks=2)
    headers = {"Authorization": f"Bearer {cluster.keys['nousage']}"}
    async with aiohttp.ClientSession() as http:
        resp = await http.post(
            gw.url("/v1/chat/completions"), json={**BODY, "stream": True}, headers=headers
        )
        assert resp.status == 200
        assert float(resp.headers["x-ratelimit-remaining-usd-day"]) < 10
        await resp.content.readuntil(b"\n\n")  # the first chunk has arrived
        assert await cluster.in_flight("nousage") == 1
        resp.close()  # the client goes away
    await until(lambda: _released(cluster, "nousage"), "the reservation given back")
    [record] = by_tenant(await cluster.records(), "nousage")
    assert record["status"] == 499
    assert record["limits"]["basis"] == "estimate"  # the streamed part, counted
    assert 0 < record["limits"]["settled_usd"] < record["limits"]["reserved_usd"]
    spent = (await cluster.status("nousage"))["tenant.usd_per_day"].used
    assert spent == pytest.approx(record["limits"]["settled_usd"], abs=1e-8)


async def _released(cluster: Cluster, tenant: str) -> bool:
    await cluster.status(tenant)  # a step purges what expired
    return await cluster.in_flight(tenant) == 0


async def test_every_attempt_failing_gives_the_reservation_back(cluster: Cluster) -> None:
    gw = await cluster.replica()
    cluster.upstreams["anthropic"].behavior = Behavior(status=503)
    client = cluster.sdk(gw, "nousage")
    with pytest.raises(openai.APIStatusError) as info:
        await client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=10)
    assert info.value.status_code in (502, 503)
    assert len(cluster.upstreams["anthropic"].requests) == 1
    await until(lambda: _released(cluster, "nousage"), "the reservation given back")
    [record] = by_tenant(await cluster.records(), "nousage")
    assert record["limits"] == {
        "reserved_usd": round(RESERVED.cost_usd, 9),
        "reserved_tokens": RESERVED.tokens,
        "capped": False,
        "settled_usd": 0.0,
        "settled_tokens": 0,
        "basis": "released",
    }
    assert (await cluster.status("nousage"))["tenant.usd_per_day"].used == 0


# -- budget-aware routing -----------------------------------------------------------


async def test_a_tenant_near_its_cap_is_routed_to_the_cheaper_endpoint(cluster: Cluster) -> None:
    gw = await cluster.replica()
    # 310k prompt tokens at Anthropic's price: 0.93 of the 1.00 USD day.
    cluster.upstreams["anthropic"].behavior = Behavior(prompt_tokens=310_000, reply=REPLY)
    client = cluster.sdk(gw, "nearcap")
    first = await client.chat.completions.with_raw_response.create(
        model="m", messages=MESSAGES, max_tokens=MAX_TOKENS
    )
    assert first.headers["x-kamiwaza-endpoint"] == "anthropic"
    assert first.headers["x-kamiwaza-rule"] == "default"
    await until(lambda: _released(cluster, "nearcap"), "the first request settled")
    # The dry run sees the budget as the request will.
    async with aiohttp.ClientSession() as http:
        auth = {"Authorization": f"Bearer {cluster.keys['nearcap']}"}
        async with http.post(
            gw.url("/v1/route/explain"), json={"headers": auth, "body": BODY}, headers=auth
        ) as resp:
            explained = await resp.json()
    budget = explained["input"]["budget"]
    assert budget["limit"] == "tenant.usd_per_day"
    assert 0 < budget["remaining_share"] < 0.1
    assert explained["decision"]["rule"]["name"] == "near-budget-cap"
    second = await client.chat.completions.with_raw_response.create(
        model="m", messages=MESSAGES, max_tokens=MAX_TOKENS
    )
    assert second.headers["x-kamiwaza-endpoint"] == "bedrock"
    assert second.headers["x-kamiwaza-rule"] == "near-budget-cap"
    records = by_tenant(await cluster.records(), "nearcap")
    assert [r["rule"]["name"] for r in records] == ["default", "near-budget-cap"]
    # Priced at the route's endpoint: Bedrock's reservation fits what is left.
    reserved = estimate_request(BODY, BEDROCK, ReservationPolicy())
    assert records[1]["limits"]["reserved_usd"] == round(reserved.cost_usd, 9)


# -- Redis stopped ----------------------------------------------------------------------


async def test_redis_stopped_fails_closed_with_nothing_forwarded_or_open_when_configured(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    closed = await cluster.replica()
    opened = await cluster.replica(limits_fail_mode="open")
    cluster.redis.stop()
    caplog.set_level(logging.ERROR, logger="kamiwaza.limits")
    strict = cluster.sdk(closed, "outage")
    for stream in (False, True):
        with pytest.raises(openai.InternalServerError) as info:
            await strict.chat.completions.create(
                model="m", messages=MESSAGES, max_tokens=MAX_TOKENS, stream=stream
            )
        assert info.value.status_code == 503
        assert info.value.code == "limits_unavailable"
        assert info.value.response.headers["retry-after"] == "1"
    assert cluster.upstream_requests() == 0  # nothing forwarded in fail-closed mode
    lenient = cluster.sdk(opened, "outage")
    raw = await lenient.chat.completions.with_raw_response.create(
        model="m", messages=MESSAGES, max_tokens=MAX_TOKENS
    )
    assert raw.parse().choices[0].message.content
    assert "x-ratelimit-remaining-usd-day" not in raw.headers  # unlimited: nothing to say
    assert cluster.upstream_requests() == 1
    # Counted once per request (kamiwaza_limits_unavailable_total), whichever
    # step met the store first.
    assert opened.app[LIMITS].limiter.unavailable_count == 1
    assert closed.app[LIMITS].limiter.unavailable_count == 2
    logged = [r.getMessage() for r in caplog.records]
    assert any("failing open" in m for m in logged)
    assert any("failing closed" in m for m in logged)
    records = by_tenant(await cluster.records(), "outage")
    assert [(r["status"], r.get("limits")) for r in records] == [
        (503, None),
        (503, None),
        (200, {"enforced": False}),
    ]
    # Redis back on the same port: both enforce again, without a restart.
    cluster.redis.start()
    for gw in (closed, opened):
        raw = await cluster.sdk(gw, "outage").chat.completions.with_raw_response.create(
            model="m", messages=MESSAGES, max_tokens=MAX_TOKENS
        )
        assert float(raw.headers["x-ratelimit-remaining-usd-day"]) < 10
    assert cluster.upstream_requests() == 3


# -- a real process: SIGHUP and SIGKILL -------------------------------------------------


@pytest.fixture
async def short_ttl(
    tmp_path: Path, fake_upstream: Any, redis_server: RedisServer
) -> AsyncIterator[Cluster]:
    limits = LIMITS_YAML.replace("ttl_s: 60", f"ttl_s: {TTL_S}")
    async for cluster in start_cluster(tmp_path, fake_upstream, redis_server, limits):
        yield cluster


async def test_kamiwaza_serve_reloads_on_sighup_and_a_killed_replica_leaks_nothing(
    short_ttl: Cluster,
) -> None:
    cluster = short_ttl
    port = free_port()
    proc = cluster.serve_process(port)
    log = cluster.workdir / f"process-{port}" / "serve.log"
    url = f"http://127.0.0.1:{port}"
    other = await cluster.replica()
    try:
        await wait_ready(url, proc, log)
        # A broken limits file on SIGHUP: logged, the running limits kept.
        good = cluster.limits_file.read_text()
        cluster.limits_file.write_text(good.replace("usd_per_day: 10}", "usd_per_day: -1}", 1))
        proc.send_signal(signal.SIGHUP)
        await until(lambda: "limits file reload failed" in log.read_text(), "the refusal logged")
        assert "usd_per_day: must be a non-negative finite number, got -1" in log.read_text()
        cluster.limits_file.write_text(good)
        proc.send_signal(signal.SIGHUP)
        await until(lambda: "reloaded (8 tenants)" in log.read_text(), "the good file reloaded")

        for up in cluster.upstreams.values():
            up.behavior = Behavior(reply=REPLY, gate_after_chunks=1)
        headers = {"Authorization": f"Bearer {cluster.keys['killed']}"}
        async with aiohttp.ClientSession() as http:
            resp = await http.post(
                f"{url}/v1/chat/completions", json={**BODY, "stream": True}, headers=headers
            )
            assert resp.status == 200
            await resp.content.readuntil(b"\n\n")  # mid-stream, its reservation held
            assert await cluster.in_flight("killed") == 1
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            resp.close()
        # Held in Redis until it expires: another replica's request does not fit.
        client = cluster.sdk(other, "killed")
        with pytest.raises(openai.RateLimitError) as info:
            await client.chat.completions.create(
                model="m", messages=MESSAGES, max_tokens=MAX_TOKENS
            )
        assert info.value.code == "budget_exceeded"
        assert await cluster.in_flight("killed") == 1
        await until(lambda: _released(cluster, "killed"), "the reservation expired", TTL_S + 5)
        status = await cluster.status("killed")
        assert status["tenant.usd_per_day"].used == 0  # nothing leaked, nothing settled
        for up in cluster.upstreams.values():
            up.behavior = Behavior(reply=REPLY)
            up.gate.set()
        answer = await client.chat.completions.create(
            model="m", messages=MESSAGES, max_tokens=MAX_TOKENS
        )
        assert answer.choices[0].message.content == REPLY
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


# -- one replica, counters in process -------------------------------------------------


async def test_without_redis_one_replica_limits_in_process(
    tmp_path: Path, fake_upstream: Any, caplog: pytest.LogCaptureFixture
) -> None:
    limits = tmp_path / "limits.yaml"
    limits.write_text("version: v1\ntenants:\n  globex: {requests_per_minute: 2}\n")
    caplog.set_level(logging.WARNING, logger="kamiwaza.gateway")
    gw = await start_gateway(tmp_path, fake_upstream, settings_overrides={"limits": str(limits)})
    try:
        assert any("correct for a single replica only" in r.getMessage() for r in caplog.records)
        # Refusals, spend and remaining budget go to the gateway's metrics.
        assert gw.app[LIMITS].limiter.observer is gw.app[METRICS].limits
        client = openai.AsyncOpenAI(api_key=gw.keys["globex"], base_url=gw.base_url, max_retries=0)
        gw.clients.append(client)
        for left in ("1", "0"):
            raw = await client.chat.completions.with_raw_response.create(
                model="m", messages=MESSAGES
            )
            assert raw.headers["x-ratelimit-remaining-requests"] == left
        with pytest.raises(openai.RateLimitError) as info:
            await client.chat.completions.create(model="m", messages=MESSAGES)
        assert info.value.code == "rate_limit_exceeded"
        # Another tenant (no entry, no defaults) is not limited: no headers.
        other = openai.AsyncOpenAI(api_key=gw.keys["acme"], base_url=gw.base_url, max_retries=0)
        gw.clients.append(other)
        raw = await other.chat.completions.with_raw_response.create(model="m", messages=MESSAGES)
        assert not [h for h in raw.headers if h.startswith("x-ratelimit")]
    finally:
        await gw.close()
    assert sum(gw.upstream_requests().values()) == 3


def test_a_bad_limits_file_stops_start_up_naming_the_key(tmp_path: Path) -> None:
    limits = tmp_path / "limits.yaml"
    limits.write_text("version: v1\ndefaults:\n  usd_per_day: lots\n")
    KeyStore.load(tmp_path / "keys.json", missing_ok=True).create(tenant="acme")
    settings = load_settings(
        overrides={
            "policy": str(ROOT / "policies" / "routing.yaml"),
            "keys": str(tmp_path / "keys.json"),
            "limits": str(limits),
            "allow_unconfigured_endpoints": True,
        },
        environ={},
    )
    with pytest.raises(StartupError) as info:
        create_app(settings, environ={})
    assert str(info.value) == (
        f"limits: {limits}:3:16: defaults.usd_per_day: expected a number, got a string"
    )
