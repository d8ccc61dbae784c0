"""What the limiter reasons about: who asks (:class:`Subject`), which limits
apply to them (:func:`applicable`), the checks a backend runs atomically
(:class:`Check`), what it answers (:class:`Outcome`), and what the caller gets
back (:class:`Reservation`, or :class:`Refusal` inside a RateLimitedError).

Amounts reach the backends in whole units: requests, tokens, nano-dollars.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from gateway.limits.config import Limits, LimitsConfig
from gateway.limits.estimate import Estimate
from gateway.limits.keys import (
    NANO,
    day_end_ms,
    day_id,
    from_nano,
    month_end_ms,
    month_id,
    scope_id,
    scope_key,
    to_nano,
)

# Check kinds: a sliding window of requests, a sliding window of tokens (with
# an in-flight part), a calendar period of spend (with an in-flight part).
REQUESTS: Final = "w"
TOKENS: Final = "t"
PERIOD: Final = "p"
# When only in-flight reservations stand in the way, they may settle any moment.
IN_FLIGHT_RETRY_S: Final = 1
SPEND_FIELDS: Final = ("usd_per_day", "usd_per_month")
HEADER_NAMES: Final = {
    "requests_per_minute": "requests",
    "tokens_per_minute": "tokens",
    "usd_per_day": "usd-day",
    "usd_per_month": "usd-month",
}


@dataclass(frozen=True, slots=True)
class Subject:
    """Who a request is for. `endpoint` is the route's endpoint (None before the
    routing decision: endpoint limits are then not looked at)."""

    tenant: str
    key_id: str | None = None
    user: str | None = None
    endpoint: str | None = None


@dataclass(frozen=True, slots=True)
class Applicable:
    """One limit that applies to a subject."""

    scope: str  # the scope id in keys: tenant, key:<id>, user:<name>, endpoint:<name>
    kind: str  # tenant | key | user | endpoint
    name: str | None  # the key id, user or endpoint (None for the tenant)
    field: str  # one of config.LIMIT_FIELDS
    value: float

    @property
    def limit_id(self) -> str:
        """`<kind>.<field>`, e.g. `tenant.usd_per_day`: bounded, used in metrics and audit."""
        return f"{self.kind}.{self.field}"

    def describe(self, tenant: str) -> str:
        owner = {
            "tenant": f"tenant '{tenant}'",
            "key": f"API key {self.name}",
            "user": f"user '{self.name}' of tenant '{tenant}'",
            "endpoint": f"tenant '{tenant}' on endpoint '{self.name}'",
        }[self.kind]
        return f"{self.field} of {owner}"


def applicable(config: LimitsConfig, subject: Subject) -> list[Applicable]:
    """Every limit of the subject: its tenant's, its key's, its user's, its endpoint's."""
    tenant = config.tenant(subject.tenant)
    scopes: list[tuple[str, str | None, Limits | None]] = [("tenant", None, tenant.limits)]
    if subject.key_id is not None:
        scopes.append(("key", subject.key_id, config.keys.get(subject.key_id)))
    scopes.append(("user", subject.user, tenant.user(subject.user)))
    if subject.endpoint is not None:
        scopes.append(("endpoint", subject.endpoint, tenant.endpoints.get(subject.endpoint)))
    out: list[Applicable] = []
    for kind, name, limits in scopes:
        if limits is None:
            continue
        scope = scope_id(kind, name)
        for field_name in HEADER_NAMES:
            value = getattr(limits, field_name)
            if value is not None:
                out.append(Applicable(scope, kind, name, field_name, value))
    return out


@dataclass(frozen=True, slots=True)
class Check:
    """One limit as a backend checks it, in whole units."""

    limit: Applicable
    kind: str  # REQUESTS | TOKENS | PERIOD
    key: str
    maximum: int
    amount: int
    inflight_field: str  # "" for requests
    period_end_ms: int = 0


@dataclass(frozen=True, slots=True)
class CheckResult:
    settled: int  # counted in the window or period
    inflight: int  # held by reservations not yet settled
    wait_ms: int  # until this check would admit the request; -1: in-flight blocks it
    reset_ms: int  # until the window or period is empty again


@dataclass(frozen=True, slots=True)
class ReserveStep:
    """One atomic step of a backend: purge expired reservations, run `checks`;
    unless `status`, and if all pass, count the requests and hold `holds` under
    `res_id` until `expires_ms`."""

    tenant: str
    checks: Sequence[Check]
    holds: Sequence[tuple[str, int]]
    res_id: str
    expires_ms: int
    now_ms: int
    status: bool


@dataclass(frozen=True, slots=True)
class Outcome:
    admitted: bool
    results: tuple[CheckResult, ...]


def build_checks(
    config: LimitsConfig, subject: Subject, estimate: Estimate | None, now_s: float
) -> list[Check]:
    """The checks of `subject` for a request of `estimate` (None: a status query)."""
    tokens = estimate.tokens if estimate else 0
    nano = to_nano(estimate.cost_usd) if estimate else 0
    checks: list[Check] = []
    day, month = day_id(now_s), month_id(now_s)
    for limit in applicable(config, subject):
        if limit.field == "requests_per_minute":
            key = scope_key(subject.tenant, limit.scope, "rpm")
            checks.append(Check(limit, REQUESTS, key, int(limit.value), 1 if estimate else 0, ""))
        elif limit.field == "tokens_per_minute":
            key = scope_key(subject.tenant, limit.scope, "tpm")
            field_name = f"{limit.scope}:tpm"
            checks.append(Check(limit, TOKENS, key, int(limit.value), tokens, field_name))
        else:
            daily = limit.field == "usd_per_day"
            suffix = f"usd:d:{day}" if daily else f"usd:m:{month}"
            end = day_end_ms(now_s) if daily else month_end_ms(now_s)
            key = scope_key(subject.tenant, limit.scope, suffix)
            maximum = math.floor(limit.value * NANO + 1e-3)
            checks.append(
                Check(limit, PERIOD, key, maximum, nano, f"{limit.scope}:usd", period_end_ms=end)
            )
    return checks


def inflight_adds(checks: Sequence[Check]) -> list[tuple[str, int]]:
    """What a reservation holds: one amount per in-flight field (a scope's day and
    month budgets share one), in the order first seen."""
    adds: dict[str, int] = {}
    for check in checks:
        if check.inflight_field and check.amount > 0:
            adds.setdefault(check.inflight_field, check.amount)
    return list(adds.items())


@dataclass(frozen=True, slots=True)
class SettleTarget:
    """Where a settled request's real use is counted."""

    kind: str  # TOKENS | PERIOD
    key: str
    period_end_ms: int = 0


def settle_targets(checks: Sequence[Check]) -> tuple[SettleTarget, ...]:
    return tuple(SettleTarget(c.kind, c.key, c.period_end_ms) for c in checks if c.kind != REQUESTS)


# -- what callers get ----------------------------------------------------------


def _usd(value: float) -> str:
    return f"{max(value, 0.0):.6f}".rstrip("0").rstrip(".") or "0"


def duration(ms: int) -> str:
    """A reset time as OpenAI writes it: `20ms`, `1s`, `6m0s`, `1h2m3s`."""
    if ms < 1000:
        return f"{max(ms, 0)}ms"
    seconds = math.ceil(ms / 1000)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


@dataclass(frozen=True, slots=True)
class LimitState:
    """One limit after the check: its value, what is left, when it resets (native units)."""

    limit: Applicable
    used: float  # settled + in-flight, before this request
    remaining: float  # after this request (if admitted)
    reset_ms: int


def limit_states(checks: Sequence[Check], outcome: Outcome) -> list[LimitState]:
    states = []
    for check, result in zip(checks, outcome.results, strict=True):
        used = result.settled + result.inflight
        taken = check.amount if outcome.admitted else 0
        remaining = check.maximum - used - taken
        if check.kind == PERIOD:
            states.append(
                LimitState(check.limit, from_nano(used), from_nano(remaining), result.reset_ms)
            )
        else:
            states.append(LimitState(check.limit, used, remaining, result.reset_ms))
    return states


def ratelimit_headers(states: Sequence[LimitState]) -> dict[str, str]:
    """`x-ratelimit-limit-*`, `-remaining-*`, `-reset-*` for each kind of limit
    (`requests`, `tokens`, `usd-day`, `usd-month`), from the tightest scope."""
    tightest: dict[str, LimitState] = {}
    for state in states:
        kind = HEADER_NAMES[state.limit.field]
        best = tightest.get(kind)
        if best is None or state.remaining / max(state.limit.value, 1e-12) < (
            best.remaining / max(best.limit.value, 1e-12)
        ):
            tightest[kind] = state
    headers: dict[str, str] = {}
    for kind, state in tightest.items():
        spend = state.limit.field in SPEND_FIELDS
        value = _usd(state.limit.value) if spend else str(int(state.limit.value))
        remaining = _usd(state.remaining) if spend else str(max(int(state.remaining), 0))
        headers[f"x-ratelimit-limit-{kind}"] = value
        headers[f"x-ratelimit-remaining-{kind}"] = remaining
        headers[f"x-ratelimit-reset-{kind}"] = duration(state.reset_ms)
    return headers


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request was refused: the limit, how long to wait, the headers."""

    limit: Applicable
    tenant: str
    retry_after_s: int
    headers: Mapping[str, str]

    @property
    def code(self) -> str:
        return "budget_exceeded" if self.limit.field in SPEND_FIELDS else "rate_limit_exceeded"

    @property
    def limit_id(self) -> str:
        return self.limit.limit_id

    def message(self) -> str:
        unit = {
            "requests_per_minute": "requests per minute",
            "tokens_per_minute": "tokens per minute",
            "usd_per_day": "USD per UTC day",
            "usd_per_month": "USD per UTC month",
        }[self.limit.field]
        value = (
            _usd(self.limit.value)
            if self.limit.field in SPEND_FIELDS
            else str(int(self.limit.value))
        )
        what = "budget exceeded" if self.code == "budget_exceeded" else "rate limit exceeded"
        return (
            f"{what}: {self.limit.describe(self.tenant)} is {value} {unit}; "
            f"retry after {self.retry_after_s} s"
        )


def refusal(
    tenant: str, checks: Sequence[Check], outcome: Outcome, states: Sequence[LimitState]
) -> Refusal:
    """The refusing limit that takes longest to clear (retrying sooner cannot help)."""
    worst: tuple[int, Check] | None = None
    for check, result in zip(checks, outcome.results, strict=True):
        used = result.settled + result.inflight
        if used + check.amount <= check.maximum:
            continue
        wait_s = (
            IN_FLIGHT_RETRY_S if result.wait_ms < 0 else max(1, math.ceil(result.wait_ms / 1000))
        )
        if worst is None or wait_s > worst[0]:
            worst = (wait_s, check)
    assert worst is not None, "a refused outcome has a check over its limit"
    headers = {"Retry-After": str(worst[0]), **ratelimit_headers(states)}
    return Refusal(worst[1].limit, tenant, worst[0], headers)


@dataclass(slots=True)
class Reservation:
    """What an admitted request holds until it is settled or released.

    `headers` are the `x-ratelimit-*` values after this reservation, for the
    answer. A reservation made while the limiter was unreachable in fail-open
    mode holds nothing (`enforced` false); settling it does nothing.
    """

    id: str
    subject: Subject
    estimate: Estimate
    targets: tuple[SettleTarget, ...] = ()
    holds: tuple[tuple[str, int], ...] = ()
    headers: Mapping[str, str] = field(default_factory=dict)
    states: tuple[LimitState, ...] = ()
    enforced: bool = True
    done: bool = False  # settled or released

    @staticmethod
    def new_id() -> str:
        return uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    """The subject's tightest spend limit: what share of it is left (0..1)."""

    remaining_share: float
    remaining_usd: float
    limit_usd: float
    limit_id: str  # e.g. tenant.usd_per_day


def budget_status(states: Sequence[LimitState]) -> BudgetStatus | None:
    best: BudgetStatus | None = None
    for state in states:
        if state.limit.field not in SPEND_FIELDS:
            continue
        limit = float(state.limit.value)
        remaining = max(state.remaining, 0.0)
        share = min(1.0, remaining / limit) if limit > 0 else 0.0
        if best is None or share < best.remaining_share:
            best = BudgetStatus(round(share, 6), remaining, limit, state.limit.limit_id)
    return best
