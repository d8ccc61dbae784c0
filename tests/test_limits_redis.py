"""The limiter against a real redis-server: replicas in separate processes, a
replica killed with a reservation held, Redis stopped and restarted, key
design (one slot per tenant, a TTL on every key), and Redis Cluster."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from gateway.errors import LimitsUnavailableError, RateLimitedError
from gateway.limits.config import load_limits, parse_limits
from gateway.limits.estimate import Estimate
from gateway.limits.model import Subject
from gateway.limits.redis_backend import RedisLimits, redis_client
from tests.redis_server import RedisServer

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent

LIMITS = """\
version: v1
defaults:
  usd_per_day: 2.0
  requests_per_minute: 1000
  tokens_per_minute: 1000000
reservation:
  ttl_s: 5
"""


def _replica(
    redis: RedisServer, limits: Path, mode: str, costs: list[float]
) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.limits_replica", redis.url, str(limits), mode, "acme"]
        + [str(c) for c in costs],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


@pytest.fixture
def limits_file(tmp_path: Path) -> Path:
    path = tmp_path / "limits.yaml"
    path.write_text(LIMITS)
    return path


async def test_a_burst_from_three_replicas_overshoots_by_at_most_one_reservation(
    redis_server: RedisServer, limits_file: Path
) -> None:
    rng = random.Random(13)
    # About $1 asked by each replica, $3 in all, against a $2 cap.
    costs = [[round(rng.uniform(0.02, 0.08), 4) for _ in range(20)] for _ in range(3)]
    replicas = [_replica(redis_server, limits_file, "burst", c) for c in costs]
    for proc in replicas:  # every replica is connected: now all at once
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    results = []
    for proc in replicas:
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
        results.append(json.loads(out.strip().splitlines()[-1]))
    admitted = [c for r in results for c in r["admitted"]]
    refused = [c for r in results for c in r["refused"]]
    assert sorted(admitted + refused) == sorted(c for batch in costs for c in batch)
    spent = sum(admitted)
    # Never past the cap; and every refusal came when the next would not fit, so
    # what is left is less than the largest reservation.
    assert spent <= 2.0 + 1e-9
    assert 2.0 - spent < max(costs[0] + costs[1] + costs[2])
    # (How the cap is shared between the replicas depends on their timing.)
    limiter = RedisLimits(parse_limits(LIMITS, "limits.yaml"), redis_client(redis_server.url))
    try:
        status = await limiter.remaining_share(Subject("acme"))
        assert status is not None
        assert status.remaining_usd == pytest.approx(2.0 - spent, abs=1e-6)
    finally:
        await limiter.close()


async def test_a_killed_replica_leaks_nothing_after_the_ttl(
    redis_server: RedisServer, limits_file: Path
) -> None:
    holder = _replica(redis_server, limits_file, "hold", [1.5])
    assert holder.stdin is not None and holder.stdout is not None
    holder.stdin.write("go\n")
    holder.stdin.flush()
    assert holder.stdout.readline().strip() == "reserved"
    holder.send_signal(signal.SIGKILL)
    holder.communicate(timeout=10)
    assert holder.returncode == -signal.SIGKILL

    now = [time.time()]
    limiter = RedisLimits(
        load_limits(str(limits_file)), redis_client(redis_server.url), clock=lambda: now[0]
    )
    client = Redis.from_url(redis_server.url)
    try:
        status = await limiter.remaining_share(Subject("acme"))
        assert status is not None
        assert status.remaining_usd == pytest.approx(0.5)  # the dead replica's 1.5 still held
        with pytest.raises(RateLimitedError):
            await limiter.reserve(Subject("acme"), Estimate(10, 10, 1.0))
        # Every key the limiter wrote expires by itself, even if no request comes.
        keys = [k async for k in client.scan_iter("kw:lim:*")]
        assert keys
        for key in keys:
            assert await client.pttl(key) > 0, key
        now[0] += 5  # reservation.ttl_s later
        status = await limiter.remaining_share(Subject("acme"))
        assert status is not None
        assert status.remaining_usd == pytest.approx(2.0)
        assert await client.hgetall("kw:lim:{acme}:inflight") == {}
        assert await client.hgetall("kw:lim:{acme}:reserved") == {}
        assert await client.zcard("kw:lim:{acme}:expiry") == 0
        await limiter.reserve(Subject("acme"), Estimate(10, 10, 1.9))
    finally:
        await client.aclose()
        await limiter.close()


async def test_every_key_of_a_tenant_is_in_one_slot_and_has_a_ttl(
    redis_server: RedisServer,
) -> None:
    config = parse_limits(
        """\
version: v1
defaults: {requests_per_minute: 100, tokens_per_minute: 10000, usd_per_day: 5, usd_per_month: 50}
tenants:
  "we{ird}:tenant":
    users: {"*": {requests_per_minute: 10, usd_per_day: 1}}
    endpoints: {"end{point}": {usd_per_day: 1}}
keys:
  00000000000000aa: {tokens_per_minute: 1000}
""",
        "limits.yaml",
    )
    limiter = RedisLimits(config, redis_client(redis_server.url))
    client = Redis.from_url(redis_server.url)
    try:
        subject = Subject(
            "we{ird}:tenant", key_id="00000000000000aa", user="u}1", endpoint="end{point}"
        )
        held = await limiter.reserve(subject, Estimate(10, 10, 0.1))
        settled = await limiter.reserve(subject, Estimate(10, 10, 0.1))
        await limiter.settle(settled, 15, 0.05, estimated=False)
        keys = sorted([k.decode() async for k in client.scan_iter("kw:lim:*")])
        assert {key_slot(k.encode()) for k in keys} == {key_slot(b"{we%7Bird%7D%3Atenant}")}
        scopes = {k.split(":", 3)[3] for k in keys}
        day = "usd:d:" + time.strftime("%Y%m%d", time.gmtime())
        month = day[:12].replace(":d:", ":m:")
        assert scopes == {
            "inflight", "expiry", "reserved",
            "tenant:rpm", "tenant:tpm", f"tenant:{day}", f"tenant:{month}",
            "key:00000000000000aa:tpm",
            "user:u%7D1:rpm", f"user:u%7D1:{day}",
            f"endpoint:end%7Bpoint%7D:{day}",
        }  # fmt: skip
        for key in keys:
            assert await client.pttl(key) > 0, key
        await limiter.release(held)
        assert await client.hgetall("kw:lim:{we%7Bird%7D%3Atenant}:reserved") == {}
    finally:
        await client.aclose()
        await limiter.close()


@pytest.mark.parametrize("mode", ["closed", "open"])
async def test_redis_stopped_fails_closed_or_open_and_recovers(
    redis_server: RedisServer, mode: str
) -> None:
    config = parse_limits(LIMITS, "limits.yaml")
    seen: list[str] = []

    class Observer:
        def refused(self, tenant: str, limit: str) -> None: ...
        def settled(self, tenant: str, basis: str) -> None: ...
        def budget(self, *args: object) -> None: ...
        def unavailable(self, mode: str) -> None:
            seen.append(mode)

    limiter = RedisLimits(
        config, redis_client(redis_server.url), fail_open=mode == "open", observer=Observer()
    )
    subject = Subject("acme")
    try:
        await limiter.start()
        before = await limiter.reserve(subject, Estimate(10, 10, 0.5))
        redis_server.stop()
        if mode == "closed":
            with pytest.raises(LimitsUnavailableError) as info:
                await limiter.reserve(subject, Estimate(10, 10, 0.1))
            assert (info.value.status, info.value.code) == (503, "limits_unavailable")
            with pytest.raises(LimitsUnavailableError):
                await limiter.remaining_share(subject)
        else:
            unlimited = await limiter.reserve(subject, Estimate(10, 10, 100.0))
            assert not unlimited.enforced
            await limiter.settle(unlimited, 20, 100.0, estimated=False)
            assert await limiter.remaining_share(subject) is None
        # Fail-open: the budget lookup only logs, the reservation after it counts
        # the request (once per request).
        counted = 2 if mode == "closed" else 1
        assert seen == [mode] * counted
        assert limiter.unavailable_count == counted
        await limiter.settle(before, 20, 0.5, estimated=False)  # logged, never raises
        # A restarted (empty) server: the scripts are loaded again on NOSCRIPT.
        redis_server.start()
        after = await limiter.reserve(subject, Estimate(10, 10, 1.5))
        assert after.enforced
        with pytest.raises(RateLimitedError):
            await limiter.reserve(subject, Estimate(10, 10, 1.0))
    finally:
        await limiter.close()


async def test_redis_cluster_mode_on_a_one_node_cluster(tmp_path: Path) -> None:
    server = RedisServer(tmp_path, cluster=True)
    server.start()
    limiter = RedisLimits(
        parse_limits(LIMITS, "limits.yaml"), redis_client(server.url, cluster=True)
    )
    try:
        await limiter.start()
        subject = Subject("acme", user="u-1")
        reservation = await limiter.reserve(subject, Estimate(10, 10, 1.5))
        with pytest.raises(RateLimitedError):
            await limiter.reserve(subject, Estimate(10, 10, 1.0))
        await limiter.settle(reservation, 20, 0.25, estimated=False)
        status = await limiter.remaining_share(subject)
        assert status is not None
        assert status.remaining_usd == pytest.approx(1.75)
    finally:
        await limiter.close()
        server.stop()


def test_budgets_cli_reads_what_the_replicas_share(
    redis_server: RedisServer, limits_file: Path
) -> None:
    from click.testing import CliRunner

    from gateway.cli import main

    async def traffic() -> None:
        limiter = RedisLimits(parse_limits(LIMITS, "limits.yaml"), redis_client(redis_server.url))
        try:
            done = await limiter.reserve(Subject("acme"), Estimate(100, 50, 0.5))
            await limiter.settle(done, 120, 0.25, estimated=False)
            await limiter.reserve(Subject("globex"), Estimate(10, 10, 1.0))  # in flight
        finally:
            await limiter.close()

    asyncio.run(traffic())
    runner = CliRunner()
    args = ["budgets", "--limits", str(limits_file), "--redis-url", redis_server.url]
    result = runner.invoke(main, [*args, "--format", "json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["shared"] is True
    rows = {(r["tenant"], r["limit"]): (r["used"], r["remaining"]) for r in doc["limits"]}
    assert rows == {
        ("acme", "requests_per_minute"): (1, 999),
        ("acme", "tokens_per_minute"): (120, 999880),
        ("acme", "usd_per_day"): (0.25, 1.75),
        ("globex", "requests_per_minute"): (1, 999),
        ("globex", "tokens_per_minute"): (20, 999980),
        ("globex", "usd_per_day"): (1.0, 1.0),
    }
    table = runner.invoke(main, args).stdout.splitlines()
    assert table[0].split() == [
        "tenant",
        "scope",
        "limit",
        "value",
        "used",
        "remaining",
        "resets",
        "in",
    ]
    assert table[3].split()[:6] == ["acme", "tenant", "usd_per_day", "2", "0.25", "1.75"]
    assert table[3].split()[6].startswith(tuple("0123456789"))  # resets in ...h...m...s
    redis_server.stop()
    down = runner.invoke(main, args)
    assert down.exit_code == 1
    assert down.stderr.startswith(f"error: Redis at {redis_server.url} is unreachable: ")
