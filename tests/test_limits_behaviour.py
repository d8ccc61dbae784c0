"""The limiter's behaviour, the same suite against both backends: Redis (a real
redis-server on loopback, three clients as three replicas would be) and the
in-process one. Time is the limiter's injected clock, so that minute windows
and UTC days pass without waiting."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from gateway.errors import RateLimitedError
from gateway.limits.backend import LimitsBackend
from gateway.limits.config import LimitsConfig, parse_limits
from gateway.limits.estimate import Estimate
from gateway.limits.memory import InProcessLimits
from gateway.limits.model import Subject
from gateway.limits.redis_backend import RedisLimits, redis_client
from tests.redis_server import RedisServer

# 2030-03-14 12:00:00 UTC: mid-day, mid-month, and in the future, as spend
# counters expire at their period's end by Redis' own clock.
T0 = 1899720000.0

LIMITS = """\
version: v1
defaults:
  requests_per_minute: 10
  tokens_per_minute: 1000
  usd_per_day: 1.0
  usd_per_month: 20
reservation:
  ttl_s: 30
tenants:
  acme:
    requests_per_minute: null
    tokens_per_minute: null
    usd_per_day: 5
    users:
      "*": {requests_per_minute: 3}
    endpoints:
      anthropic: {usd_per_day: 0.5}
keys:
  00000000000000aa: {tokens_per_minute: 100}
"""


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["redis", "in-process"])
async def make(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Callable[[Clock], LimitsBackend]]:
    """Factory of limiters sharing one store (one Redis, or one process's memory)."""
    config = parse_limits(LIMITS, "limits.yaml")
    started: list[LimitsBackend] = []
    server: RedisServer | None = None
    shared: InProcessLimits | None = None
    if request.param == "redis":
        server = RedisServer(tmp_path)
        server.start()

    def build(clock: Clock) -> LimitsBackend:
        nonlocal shared
        limiter: LimitsBackend
        if server is not None:
            limiter = RedisLimits(config, redis_client(server.url), clock=clock)
        else:
            # One process has one store: every "replica" is the same object.
            if shared is None:
                shared = InProcessLimits(config, clock=clock)
            limiter = shared
        started.append(limiter)
        return limiter

    yield build
    for limiter in started:
        await limiter.close()
    if server is not None:
        server.stop()


def est(tokens: int = 10, usd: float = 0.0) -> Estimate:
    return Estimate(input_tokens=tokens // 2, output_tokens=tokens - tokens // 2, cost_usd=usd)


GLOBEX = Subject("globex", key_id="00000000000000bb", user="u-1")


async def test_requests_per_minute_hold_within_one_window(make) -> None:
    clock = Clock()
    replicas = [make(clock) for _ in range(3)]
    admitted: list[float] = []
    refused: list[RateLimitedError] = []
    # Requests at random moments over five minutes, spread over three replicas.
    rng = random.Random(7)
    times = sorted(T0 + rng.uniform(0, 300) for _ in range(120))
    for i, moment in enumerate(times):
        clock.now = moment
        try:
            reservation = await replicas[i % 3].reserve(GLOBEX, est())
        except RateLimitedError as err:
            refused.append(err)
            continue
        await replicas[(i + 1) % 3].settle(reservation, 10, 0.0, estimated=False)
        admitted.append(moment)
    # No 60-second window holds more than the limit ...
    for moment in admitted:
        assert sum(1 for t in admitted if moment - 60 < t <= moment) <= 10
    # ... and the limit is used: about 10 per minute over five minutes (66 s coverage).
    assert 40 <= len(admitted) <= 50
    first = refused[0]
    assert first.status == 429
    assert first.code == "rate_limit_exceeded"
    assert first.limit == "tenant.requests_per_minute"
    assert first.message.startswith(
        "rate limit exceeded: requests_per_minute of tenant 'globex' is 10 requests per minute"
    )
    assert first.headers["x-ratelimit-limit-requests"] == "10"
    assert first.headers["x-ratelimit-remaining-requests"] == "0"
    assert 1 <= int(first.headers["Retry-After"]) <= 66


async def test_a_burst_in_one_instant_admits_exactly_the_limit(make) -> None:
    clock = Clock()
    replicas = [make(clock) for _ in range(3)]
    results = []
    for i in range(15):
        try:
            results.append(await replicas[i % 3].reserve(GLOBEX, est()))
        except RateLimitedError as err:
            results.append(err)
    admitted = [r for r in results if not isinstance(r, RateLimitedError)]
    assert len(admitted) == 10
    assert admitted[-1].headers["x-ratelimit-remaining-requests"] == "0"
    refusal = results[10]
    assert isinstance(refusal, RateLimitedError)
    # All ten sit in the current 6 s bucket: it leaves the window 60-66 s from now.
    assert 60 <= int(refusal.headers["Retry-After"]) <= 66
    clock.now += int(refusal.headers["Retry-After"])
    await replicas[0].reserve(GLOBEX, est())


async def test_tokens_per_minute_count_reservations_then_real_use(make) -> None:
    clock = Clock()
    a, b, c = (make(clock) for _ in range(3))
    subject = Subject("globex")
    first = await a.reserve(subject, est(600))
    # 600 in flight: another 600 does not fit in 1000.
    with pytest.raises(RateLimitedError) as info:
        await b.reserve(subject, est(600))
    assert info.value.limit == "tenant.tokens_per_minute"
    # In-flight reservations may settle any moment: retry soon.
    assert info.value.headers["Retry-After"] == "1"
    assert info.value.headers["x-ratelimit-remaining-tokens"] == "400"
    # The real use was 100 tokens: 900 left.
    await c.settle(first, 100, 0.0, estimated=False)
    second = await b.reserve(subject, est(600))
    assert second.headers["x-ratelimit-remaining-tokens"] == "300"
    await a.release(second)
    third = await c.reserve(subject, est(900))
    assert third.headers["x-ratelimit-remaining-tokens"] == "0"
    await a.settle(third, 900, 0.0, estimated=True)
    # Settled tokens stay counted for the window, then leave it.
    with pytest.raises(RateLimitedError) as info:
        await a.reserve(subject, est(10))
    assert info.value.headers["x-ratelimit-remaining-tokens"] == "0"
    clock.now += 67
    fourth = await b.reserve(subject, est(1000))
    assert fourth.headers["x-ratelimit-remaining-tokens"] == "0"


async def test_spend_is_reserved_then_settled_at_its_real_cost(make) -> None:
    clock = Clock()
    a, b = make(clock), make(clock)
    subject = Subject("globex")
    assert (await a.remaining_share(subject)).remaining_share == 1.0
    held = await a.reserve(subject, est(usd=0.6))
    status = await b.remaining_share(subject)
    assert (status.remaining_share, status.limit_id) == (0.4, "tenant.usd_per_day")
    with pytest.raises(RateLimitedError) as info:
        await b.reserve(subject, est(usd=0.5))
    err = info.value
    assert (err.code, err.limit) == ("budget_exceeded", "tenant.usd_per_day")
    assert err.message == (
        "budget exceeded: usd_per_day of tenant 'globex' is 1 USD per UTC day; retry after 1 s"
    )
    assert err.headers["x-ratelimit-remaining-usd-day"] == "0.4"
    await b.settle(held, 10, 0.25, estimated=False)
    status = await a.remaining_share(subject)
    assert status.remaining_share == 0.75
    assert status.remaining_usd == pytest.approx(0.75)
    await a.reserve(subject, est(usd=0.5))


async def test_a_spent_day_refuses_until_midnight_and_the_month_keeps_counting(make) -> None:
    clock = Clock()
    limiter = make(clock)
    subject = Subject("globex")
    for _ in range(4):
        await limiter.settle(await limiter.reserve(subject, est(usd=0.25)), 1, 0.25, False)
    with pytest.raises(RateLimitedError) as info:
        await limiter.reserve(subject, est(usd=0.01))
    # Settled spend, not in-flight: nothing frees up before the day ends (12 h).
    assert info.value.headers["Retry-After"] == str(12 * 3600)
    assert info.value.headers["x-ratelimit-reset-usd-day"] == "12h0m0s"
    clock.now += 12 * 3600 + 1
    reservation = await limiter.reserve(subject, est(usd=0.5))
    assert reservation.headers["x-ratelimit-remaining-usd-day"] == "0.5"
    assert reservation.headers["x-ratelimit-remaining-usd-month"] == "18.5"


async def test_each_scope_applies_and_the_refusal_names_it(make) -> None:
    clock = Clock()
    limiter = make(clock)
    # acme's own rpm is unlimited (null), but each of its users has 3.
    user = Subject("acme", user="u-9")
    for _ in range(3):
        await limiter.reserve(user, est())
    with pytest.raises(RateLimitedError) as info:
        await limiter.reserve(user, est())
    assert info.value.limit == "user.requests_per_minute"
    assert "requests_per_minute of user 'u-9' of tenant 'acme'" in info.value.message
    await limiter.reserve(Subject("acme", user="u-10"), est())
    # A key's own tokens per minute.
    keyed = Subject("globex", key_id="00000000000000aa")
    with pytest.raises(RateLimitedError) as info:
        await limiter.reserve(keyed, est(101))
    assert info.value.limit == "key.tokens_per_minute"
    assert "API key 00000000000000aa" in info.value.message
    # acme's spend on one endpoint.
    on_anthropic = Subject("acme", user="u-11", endpoint="anthropic")
    await limiter.reserve(on_anthropic, est(usd=0.4))
    with pytest.raises(RateLimitedError) as info:
        await limiter.reserve(on_anthropic, est(usd=0.2))
    assert info.value.limit == "endpoint.usd_per_day"
    assert "tenant 'acme' on endpoint 'anthropic'" in info.value.message
    await limiter.reserve(Subject("acme", user="u-11", endpoint="openai"), est(usd=0.2))
    # The endpoint budget is not part of the share that reaches OPA.
    share = await limiter.remaining_share(Subject("acme", user="u-11"))
    assert share.limit_id == "tenant.usd_per_day"
    assert share.remaining_share == pytest.approx(1 - 0.6 / 5)


async def test_an_expired_reservation_is_given_back(make) -> None:
    clock = Clock()
    a, b = make(clock), make(clock)
    subject = Subject("globex")
    await a.reserve(subject, est(900, usd=0.9))  # never settled: its owner is gone
    with pytest.raises(RateLimitedError):
        await b.reserve(subject, est(200, usd=0.2))
    clock.now += 30  # reservation.ttl_s
    status = await b.remaining_share(subject)
    assert status.remaining_share == 1.0
    await b.reserve(subject, est(900, usd=0.9))


async def test_settling_an_expired_reservation_still_counts_its_use(make) -> None:
    clock = Clock()
    limiter = make(clock)
    subject = Subject("globex")
    reservation = await limiter.reserve(subject, est(usd=0.5))
    clock.now += 31
    await limiter.settle(reservation, 10, 0.3, estimated=False)
    assert (await limiter.remaining_share(subject)).remaining_share == 0.7
    # Settling (or releasing) twice changes nothing.
    await limiter.settle(reservation, 10, 0.3, estimated=False)
    await limiter.release(reservation)
    assert (await limiter.remaining_share(subject)).remaining_share == 0.7


async def test_status_lists_every_limit_with_its_use(make) -> None:
    clock = Clock()
    limiter = make(clock)
    subject = Subject("globex", user="u-1")
    await limiter.settle(await limiter.reserve(subject, est(40, usd=0.1)), 30, 0.05, False)
    await limiter.reserve(subject, est(20, usd=0.2))
    states = {s.limit.limit_id: (s.used, s.remaining) for s in await limiter.status(subject)}
    assert states == {
        "tenant.requests_per_minute": (2, 8),
        "tenant.tokens_per_minute": (50, 950),
        "tenant.usd_per_day": (pytest.approx(0.25), pytest.approx(0.75)),
        "tenant.usd_per_month": (pytest.approx(0.25), pytest.approx(19.75)),
    }


def test_the_suite_config_parses() -> None:
    config = parse_limits(LIMITS, "limits.yaml")
    assert isinstance(config, LimitsConfig)
    assert config.tenant("acme").limits.requests_per_minute is None
    assert config.tenant("acme").limits.usd_per_month == 20
