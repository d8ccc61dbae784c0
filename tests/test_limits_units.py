"""Unit tests of the limiter's pure parts: the limits file, worst-case estimates,
key names and windows, headers and refusals, OPA's budget field, settings,
the error bodies, and `kamiwaza budgets` without Redis."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from redis.crc import key_slot

from gateway.cli import main
from gateway.errors import LimitsUnavailableError, RateLimitedError
from gateway.limits.config import (
    Limits,
    LimitsConfigError,
    ReservationPolicy,
    load_limits,
    parse_limits,
)
from gateway.limits.estimate import (
    Estimate,
    estimate_request,
    requested_output_tokens,
    worst_pricing,
)
from gateway.limits.factory import LimitsSetupError, build_limits
from gateway.limits.keys import (
    TenantKeys,
    day_end_ms,
    day_id,
    encode,
    month_end_ms,
    month_id,
    scope_key,
    to_nano,
    to_nano_rounded,
)
from gateway.limits.memory import InProcessLimits
from gateway.limits.model import BudgetStatus, Subject, applicable, duration
from gateway.limits.opa import budget_input
from gateway.limits.redis_backend import RedisConfigError, RedisLimits, redis_client
from gateway.providers.usage import estimate_prompt_tokens
from gateway.settings import SettingsError, load_settings
from translator.registry import Pricing

EXAMPLE = """\
version: v1
defaults:
  requests_per_minute: 600
  tokens_per_minute: 200000
  usd_per_day: 50
  usd_per_month: 1000
reservation:
  default_output_tokens: 512
  max_output_tokens: 4096
  max_usd: 2
  ttl_s: 600
tenants:
  enterprise-acme:
    usd_per_day: 200
    usd_per_month: null
    users:
      "*": {requests_per_minute: 60}
      u-17: {requests_per_minute: 600}
    endpoints:
      anthropic: {usd_per_day: 100}
  globex: {}
keys:
  0123456789abcdef: {requests_per_minute: 10}
"""


# -- the limits file -----------------------------------------------------------


def test_the_example_parses_with_inheritance() -> None:
    config = parse_limits(EXAMPLE, "limits.yaml")
    acme = config.tenant("enterprise-acme")
    assert acme.limits == Limits(600, 200000, 200.0, None)
    assert acme.user("u-17") == Limits(requests_per_minute=600)
    assert acme.user("u-99") == Limits(requests_per_minute=60)
    assert acme.user(None) is None
    assert acme.endpoints["anthropic"] == Limits(usd_per_day=100.0)
    # An empty entry is the defaults; an unknown tenant gets the defaults.
    assert config.tenant("globex").limits == Limits(600, 200000, 50.0, 1000.0)
    assert config.tenant("initech") == config.defaults
    assert config.keys["0123456789abcdef"] == Limits(requests_per_minute=10)
    assert config.reservation == ReservationPolicy(512, 4096, 2.0, 600.0)


def test_applicable_lists_every_scope_of_a_subject() -> None:
    config = parse_limits(EXAMPLE, "limits.yaml")
    subject = Subject(
        "enterprise-acme", key_id="0123456789abcdef", user="u-1", endpoint="anthropic"
    )
    assert [(a.limit_id, a.scope, a.value) for a in applicable(config, subject)] == [
        ("tenant.requests_per_minute", "tenant", 600),
        ("tenant.tokens_per_minute", "tenant", 200000),
        ("tenant.usd_per_day", "tenant", 200.0),
        ("key.requests_per_minute", "key:0123456789abcdef", 10),
        ("user.requests_per_minute", "user:u-1", 60),
        ("endpoint.usd_per_day", "endpoint:anthropic", 100.0),
    ]


def test_every_problem_is_reported_with_its_position() -> None:
    text = """\
version: v2
defaults:
  requests_per_minute: -1
  usd_per_day: ten
  usd_per_week: 5
reservation:
  default_output_tokens: 0
  ttl_s: 0
tenants:
  acme:
    users: [u-1]
    endpoints:
      anthropic: {tokens_per_minute: 1.5}
keys:
  abc: 7
extra: 1
"""
    with pytest.raises(LimitsConfigError) as info:
        parse_limits(text, "limits.yaml")
    assert list(info.value.problems) == [
        "limits.yaml:1:10: version: expected one of v1",
        "limits.yaml:3:24: defaults.requests_per_minute: must be between 0 and 1000000000000, "
        "got -1",
        "limits.yaml:4:16: defaults.usd_per_day: expected a number, got a string",
        "limits.yaml:5:3: defaults: unknown key 'usd_per_week' (known: requests_per_minute, "
        "tokens_per_minute, usd_per_day, usd_per_month, users, endpoints)",
        "limits.yaml:7:26: reservation.default_output_tokens: must be between 1 and 10000000, "
        "got 0",
        "limits.yaml:8:10: reservation.ttl_s: must be a positive finite number, got 0",
        "limits.yaml:11:12: tenants.acme.users: expected a mapping, got a list",
        "limits.yaml:13:38: tenants.acme.endpoints.anthropic.tokens_per_minute: expected an "
        "integer, got a number",
        "limits.yaml:15:8: keys.abc: expected a mapping, got a number",
        "limits.yaml:16:1: unknown key 'extra' (known: version, defaults, reservation, "
        "tenants, keys)",
    ]
    assert str(info.value).startswith("limits file limits.yaml: limits.yaml:1:10: version:")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "limits.yaml:1:1: the file is empty: it needs 'version: v1'"),
        ("version: v1\nversion: v1\n", "limits.yaml:2:1: key 'version' is given twice"),
        ("[1, 2]\n", "limits.yaml:1:1: the limits file: expected a mapping, got a list"),
        ("defaults: {}\n", "limits.yaml:1:1: version: required: write 'version: v1'"),
        ("version: v1\nreservation: {max_usd: .inf}\n", "reservation.max_usd: must be a"),
        (
            "version: v1\nreservation: {default_output_tokens: 9000, max_output_tokens: 10}\n",
            "reservation.default_output_tokens: must not exceed max_output_tokens",
        ),
        ("version: v1\ndefaults: {usd_per_day: 2000000}\n", "must be at most 1e+06"),
        ("version: v1\ntenants: {' acme': {}}\n", "tenants: bad name ' acme'"),
        ("version: v1\ndefaults: {requests_per_minute: true}\n", "got a boolean"),
        ("version: v1\n  bad: [\n", "YAML syntax error"),
    ],
)
def test_bad_files_name_the_key(text: str, problem: str) -> None:
    with pytest.raises(LimitsConfigError) as info:
        parse_limits(text, "limits.yaml")
    assert any(problem in p for p in info.value.problems), info.value.problems


def test_an_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(LimitsConfigError) as info:
        load_limits(str(tmp_path / "nope.yaml"))
    assert info.value.problems == ("cannot read it: No such file or directory",)


async def test_reload_swaps_the_limits_or_keeps_the_old_ones(tmp_path: Path) -> None:
    path = tmp_path / "limits.yaml"
    path.write_text("version: v1\ndefaults: {requests_per_minute: 1}\n")
    limiter = InProcessLimits(load_limits(str(path)))
    await limiter.reserve(Subject("acme"), Estimate(1, 1, 0.0))
    with pytest.raises(RateLimitedError):
        await limiter.reserve(Subject("acme"), Estimate(1, 1, 0.0))
    path.write_text("version: v1\ndefaults: {requests_per_minute: 2}\n")
    assert limiter.reload().defaults.limits.requests_per_minute == 2
    await limiter.reserve(Subject("acme"), Estimate(1, 1, 0.0))  # the counter is kept: 2 of 2
    path.write_text("version: v1\ndefaults: {requests_per_minute: many}\n")
    with pytest.raises(LimitsConfigError):
        limiter.reload()
    assert limiter.config.defaults.limits.requests_per_minute == 2


# -- estimates -----------------------------------------------------------------

POLICY = ReservationPolicy(default_output_tokens=1000, max_output_tokens=4000, max_usd=None)
PRICE = Pricing(input_per_1k=0.003, output_per_1k=0.015)


def body(**extra: object) -> dict[str, object]:
    return {"model": "m", "messages": [{"role": "user", "content": "x" * 400}], **extra}


@pytest.mark.parametrize(
    ("extra", "wanted"),
    [
        ({}, None),
        ({"max_tokens": 300}, 300),
        ({"max_completion_tokens": 200, "max_tokens": 300}, 200),
        ({"max_output_tokens": 50}, 50),
        ({"max_tokens": 0}, None),
        ({"max_tokens": True}, None),
        ({"max_tokens": "300"}, None),
    ],
)
def test_requested_output_tokens(extra: dict[str, object], wanted: int | None) -> None:
    assert requested_output_tokens(body(**extra)) == wanted


def test_the_estimate_is_prompt_plus_allowed_output_at_the_price() -> None:
    prompt = estimate_prompt_tokens(body())
    assert prompt == 100 + 3 + 3
    assert estimate_request(body(max_tokens=300), PRICE, POLICY) == Estimate(
        prompt, 300, pytest.approx((prompt * 0.003 + 300 * 0.015) / 1000)
    )
    # No max_tokens: the default; n choices multiply the output.
    assert estimate_request(body(), PRICE, POLICY).output_tokens == 1000
    assert estimate_request(body(max_tokens=300, n=3), PRICE, POLICY).output_tokens == 900


def test_the_reservation_cap_bounds_large_max_tokens() -> None:
    capped = estimate_request(body(max_tokens=100_000), PRICE, POLICY)
    assert (capped.output_tokens, capped.capped) == (4000, True)
    assert capped.cost_usd == pytest.approx((capped.input_tokens * 0.003 + 4000 * 0.015) / 1000)
    by_cost = estimate_request(body(max_tokens=4000), PRICE, ReservationPolicy(max_usd=0.01))
    assert (by_cost.cost_usd, by_cost.capped) == (0.01, True)
    assert estimate_request(body(max_tokens=10), PRICE, POLICY).capped is False


def test_embeddings_reserve_their_input_only() -> None:
    price = Pricing(input_per_1k=0.0001, output_per_1k=0.0)
    assert estimate_request(
        {"model": "e", "input": ["x" * 40, "y" * 8, [1, 2, 3]]}, price, POLICY, "embeddings"
    ) == Estimate(10 + 2 + 3, 0, pytest.approx(15 * 0.0001 / 1000))
    assert estimate_request({"input": "x" * 400}, price, POLICY, "embeddings").input_tokens == 100
    assert estimate_request({"input": [5, 6, 7, 8]}, price, POLICY, "embeddings").tokens == 4
    capped = estimate_request(
        {"input": "x" * 4000}, Pricing(1.0, 0.0), ReservationPolicy(max_usd=0.5), "embeddings"
    )
    assert (capped.cost_usd, capped.capped) == (0.5, True)


def test_a_route_is_priced_at_its_dearest_endpoint() -> None:
    cheap, dear = Pricing(0.001, 0.02), Pricing(0.004, 0.005)
    assert worst_pricing([cheap, dear]) == Pricing(0.004, 0.02)
    assert worst_pricing([]) == Pricing(0.0, 0.0)
    route = estimate_request(body(max_tokens=100), [cheap, dear], POLICY)
    assert route.cost_usd == pytest.approx((route.input_tokens * 0.004 + 100 * 0.02) / 1000)


# -- keys and windows ------------------------------------------------------------


def test_every_key_of_a_tenant_shares_one_hash_slot() -> None:
    tenant = "odd{name}:x"
    fixed = TenantKeys.of(tenant)
    keys = [
        fixed.inflight,
        fixed.expiry,
        fixed.reserved,
        scope_key(tenant, "user:" + encode("u{1}"), "rpm"),
        scope_key(tenant, "endpoint:" + encode("a:b"), "usd:d:20300314"),
    ]
    assert fixed.inflight == "kw:lim:{odd%7Bname%7D%3Ax}:inflight"
    assert len({key_slot(k.encode()) for k in keys}) == 1
    assert key_slot(TenantKeys.of("other").inflight.encode()) != key_slot(keys[0].encode())


def test_periods_are_utc_days_and_months() -> None:
    moment = 1899720000.0  # 2030-03-14 12:00:00 UTC
    assert (day_id(moment), month_id(moment)) == ("20300314", "203003")
    assert day_end_ms(moment) == (moment + 12 * 3600) * 1000
    assert month_end_ms(moment) == (moment + (17 * 24 + 12) * 3600) * 1000
    december = 1924948800.0  # 2030-12-31 12:00 UTC
    assert month_end_ms(december) == (december + 12 * 3600) * 1000


def test_nano_dollars() -> None:
    assert to_nano(0.3) == 300_000_000  # not 300000001 from float noise
    assert to_nano(1e-10) == 1  # a reservation rounds up
    assert to_nano_rounded(1e-10) == 0
    assert to_nano(-1.0) == 0


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (0, "0ms"),
        (20, "20ms"),
        (1000, "1s"),
        (1001, "2s"),
        (360_000, "6m0s"),
        (3_723_000, "1h2m3s"),
    ],
)
def test_durations_as_openai_writes_them(ms: int, text: str) -> None:
    assert duration(ms) == text


# -- OPA, errors, settings ---------------------------------------------------------


def test_budget_input() -> None:
    assert budget_input(None) is None
    status = BudgetStatus(0.12, 6.0000004, 50.0, "tenant.usd_per_day")
    assert budget_input(status) == {
        "remaining_share": 0.12,
        "remaining_usd": 6.0,
        "limit": "tenant.usd_per_day",
    }


def test_error_bodies_and_headers() -> None:
    err = RateLimitedError(
        "budget exceeded: ...",
        code="budget_exceeded",
        limit="tenant.usd_per_day",
        retry_after_s=30,
        headers={"x-ratelimit-limit-usd-day": "50"},
    )
    assert (err.status, err.limit) == (429, "tenant.usd_per_day")
    assert err.body() == {
        "error": {
            "message": "budget exceeded: ...",
            "type": "rate_limit_error",
            "code": "budget_exceeded",
        }
    }
    assert err.headers == {"x-ratelimit-limit-usd-day": "50", "Retry-After": "30"}
    down = LimitsUnavailableError("the limits store is unreachable")
    assert (down.status, down.code, down.headers) == (
        503,
        "limits_unavailable",
        {"Retry-After": "1"},
    )


def test_limits_settings(tmp_path: Path) -> None:
    settings = load_settings(
        environ={
            "KAMIWAZA_LIMITS": "limits.yaml",
            "KAMIWAZA_LIMITS_REDIS_URL": "redis://127.0.0.1:6379/0",
            "KAMIWAZA_LIMITS_FAIL_MODE": "Open",
            "KAMIWAZA_LIMITS_REDIS_TIMEOUT_MS": "100",
        }
    )
    assert (settings.limits, settings.limits_fail_mode) == ("limits.yaml", "open")
    assert settings.limits_redis_timeout_ms == 100
    assert load_settings(environ={}).limits is None
    with pytest.raises(SettingsError, match="KAMIWAZA_LIMITS_FAIL_MODE: expected one of closed"):
        load_settings(environ={"KAMIWAZA_LIMITS_FAIL_MODE": "maybe"})


def test_the_factory_builds_the_configured_backend(tmp_path: Path) -> None:
    path = tmp_path / "limits.yaml"
    path.write_text(EXAMPLE)
    environ = {"KAMIWAZA_LIMITS": str(path)}
    assert isinstance(build_limits(load_settings(environ=environ)), InProcessLimits)
    redis = build_limits(
        load_settings(environ={**environ, "KAMIWAZA_LIMITS_REDIS_URL": "redis://127.0.0.1:1"})
    )
    assert isinstance(redis, RedisLimits)
    assert redis.fail_open is False
    path.write_text("version: v1\ndefaults: {usd_per_day: x}\n")
    with pytest.raises(LimitsSetupError, match=r"limits.yaml:2:25: defaults.usd_per_day"):
        build_limits(load_settings(environ=environ))


def test_a_password_never_sits_in_the_redis_url() -> None:
    with pytest.raises(RedisConfigError, match="must not contain a password"):
        redis_client("redis://user:hunter2@127.0.0.1:6379/0")
    with pytest.raises(RedisConfigError, match="REDIS_PW is not set"):
        redis_client("redis://127.0.0.1:6379/0", password_env="REDIS_PW", environ={})
    with pytest.raises(RedisConfigError, match="expected a redis://"):
        redis_client("http://127.0.0.1:6379")


def test_budgets_without_redis_shows_the_limits_only(tmp_path: Path) -> None:
    path = tmp_path / "limits.yaml"
    path.write_text(EXAMPLE)
    result = CliRunner().invoke(main, ["budgets", "--limits", str(path), "--format", "json"])
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith("note: no Redis: the in-process limiter keeps its counters")
    doc = json.loads(result.stdout)
    assert doc["shared"] is False
    rows = {(r["tenant"], r["scope"], r["limit"]): r for r in doc["limits"]}
    assert rows[("enterprise-acme", "endpoint anthropic", "usd_per_day")] == {
        "tenant": "enterprise-acme",
        "scope": "endpoint anthropic",
        "limit": "usd_per_day",
        "value": 100.0,
        "used": None,
        "remaining": None,
        "resets_in": None,
    }
    assert sorted(k for k in rows if k[0] == "globex") == [
        ("globex", "tenant", "requests_per_minute"),
        ("globex", "tenant", "tokens_per_minute"),
        ("globex", "tenant", "usd_per_day"),
        ("globex", "tenant", "usd_per_month"),
    ]
    assert ("enterprise-acme", "user u-17", "requests_per_minute") in rows
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\n")
    result = CliRunner().invoke(main, ["budgets", "--limits", str(bad)])
    assert result.exit_code == 1
    assert result.stderr == f"error: {bad}:1:10: version: expected one of v1\n"


# -- the pipeline's calls ------------------------------------------------------------


async def test_the_stage_prices_the_route_and_settles_or_releases() -> None:
    from gateway.auth import Identity
    from gateway.limits.stage import LimitsStage
    from gateway.providers.usage import Usage
    from translator.registry import check_registry
    from translator.source import load as load_yaml

    registry, problems = check_registry(
        load_yaml((Path(__file__).parent.parent / "policies" / "endpoints.yaml").read_text(), "e")
    )
    assert problems == []
    limits = parse_limits(
        "version: v1\ndefaults: {usd_per_day: 1.0}\ntenants:\n"
        "  acme: {endpoints: {anthropic: {usd_per_day: 0.1}}}\n",
        "limits.yaml",
    )
    stage = LimitsStage(InProcessLimits(limits), registry)
    who = Identity("acme", "u-1", ("analyst",), "0123456789abcdef", None, None, "api_key")
    assert await stage.budget(who) == {
        "remaining_share": 1.0,
        "remaining_usd": 1.0,
        "limit": "tenant.usd_per_day",
    }
    request = body(max_tokens=1000)
    # anthropic's output price (0.015 per 1k) is the route's dearest: 1000 tokens, $0.015+.
    reservation = await stage.reserve(who, ["bedrock", "anthropic"], request)
    assert reservation.subject.endpoint == "bedrock"
    assert reservation.estimate.cost_usd == pytest.approx(
        (reservation.estimate.input_tokens * 0.003 + 1000 * 0.015) / 1000
    )
    assert reservation.headers["x-ratelimit-limit-usd-day"] == "1"
    await stage.finish(reservation, Usage(100, 200), 0.25)
    assert (await stage.budget(who))["remaining_usd"] == pytest.approx(0.75)
    released = await stage.reserve(who, ["anthropic"], request)
    await stage.finish(released, None, 0.0)
    assert (await stage.budget(who))["remaining_usd"] == pytest.approx(0.75)
    # The endpoint's own budget (the first endpoint of the route) refuses.
    first = await stage.reserve(who, ["anthropic"], body(max_tokens=4000))
    with pytest.raises(RateLimitedError) as info:
        await stage.reserve(who, ["anthropic"], body(max_tokens=4000))
    assert info.value.limit == "endpoint.usd_per_day"
    await stage.finish(first, Usage(10, 10, estimated=True), 0.01)
    await stage.close()


async def test_a_tenant_without_limits_costs_no_round_trip() -> None:
    class Refusing(InProcessLimits):
        async def _reserve(self, step):  # type: ignore[no-untyped-def]
            raise AssertionError("no store call expected")

        async def _settle(self, *args):  # type: ignore[no-untyped-def]
            raise AssertionError("no store call expected")

    limiter = Refusing(parse_limits("version: v1\n", "limits.yaml"))
    reservation = await limiter.reserve(Subject("acme"), Estimate(1, 1, 1.0))
    assert reservation.headers == {}
    await limiter.settle(reservation, 2, 1.0, estimated=False)
    assert await limiter.remaining_share(Subject("acme")) is None


async def test_a_settlement_in_the_background_is_awaited_at_close() -> None:
    from gateway.limits.stage import LimitsStage
    from gateway.providers.usage import Usage
    from translator.registry import Registry

    gate = asyncio.Event()

    class Slow(InProcessLimits):
        async def _settle(self, *args):  # type: ignore[no-untyped-def]
            await gate.wait()  # the store is slow to answer
            return await super()._settle(*args)

    limits = parse_limits("version: v1\ndefaults: {usd_per_day: 1.0}\n", "limits.yaml")
    limiter = Slow(limits)
    stage = LimitsStage(limiter, Registry("endpoints.yaml", {}))
    reservation = await limiter.reserve(Subject("acme"), Estimate(10, 10, 0.5))
    stage.finish_soon(reservation, Usage(10, 5), 0.2)
    assert stage.settling == 1
    closing = asyncio.ensure_future(stage.close())
    await asyncio.sleep(0)  # let close() start waiting
    assert not closing.done()
    gate.set()
    await closing
    assert stage.settling == 0
    [state] = await limiter.status(Subject("acme"))
    assert state.used == pytest.approx(0.2)
