"""The limiter's one async interface, whatever keeps its counters.

A request goes through the limiter in three steps (README, "Budgets and rate
limits"):

1. :meth:`LimitsBackend.remaining_share` before the routing decision: the
   subject's remaining budget share, for OPA's input (`gateway.limits.opa`).
2. :meth:`LimitsBackend.reserve` before anything is forwarded: every limit that
   applies is checked and the worst case reserved in one atomic step, or the
   request is refused with a :class:`~gateway.errors.RateLimitedError` (429)
   that names the limit.
3. :meth:`LimitsBackend.settle` when the answer (or stream) has ended, with the
   real use; :meth:`LimitsBackend.release` when nothing was used (every attempt
   failed, the client went away before any output). A reservation never settled
   (the replica was killed) expires after `reservation.ttl_s`.

Subclasses keep the counters: :class:`gateway.limits.redis_backend.RedisLimits`
(shared by every replica) and :class:`gateway.limits.memory.InProcessLimits`
(one replica only). When the store cannot be reached the limiter fails closed
(503 `limits_unavailable`, nothing forwarded) or, configured so, fails open:
the request goes through unlimited, logged and counted.
"""

from __future__ import annotations

import abc
import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from gateway.errors import LimitsUnavailableError, RateLimitedError
from gateway.limits.config import LimitsConfig, load_limits
from gateway.limits.estimate import Estimate
from gateway.limits.keys import to_nano_rounded
from gateway.limits.model import (
    PERIOD,
    BudgetStatus,
    LimitState,
    Outcome,
    Reservation,
    ReserveStep,
    SettleTarget,
    Subject,
    budget_status,
    build_checks,
    inflight_adds,
    limit_states,
    ratelimit_headers,
    refusal,
    settle_targets,
)

log = logging.getLogger("kamiwaza.limits")

# A store that is down would log on every request; once per interval is enough.
UNAVAILABLE_LOG_INTERVAL_S = 10.0


class StoreUnavailable(Exception):
    """The counters' store cannot be reached; raised by backends, mapped here."""


class LimitsObserver(Protocol):
    """What the limiter reports (observability.limit_metrics.LimitMetrics fits)."""

    def refused(self, tenant: str, limit: str) -> None: ...

    def unavailable(self, mode: str) -> None: ...

    def settled(self, tenant: str, basis: str) -> None: ...

    def budget(
        self, tenant: str, window: str, spent_usd: float, remaining_usd: float, share: float
    ) -> None: ...


class LimitsBackend(abc.ABC):
    """Checks, reserves and settles per-tenant limits; see the module docstring."""

    name = "abstract"
    shared = False  # whether replicas share the counters

    def __init__(
        self,
        config: LimitsConfig,
        *,
        fail_open: bool = False,
        clock: Callable[[], float] = time.time,
        observer: LimitsObserver | None = None,
    ) -> None:
        self._config = config
        self.fail_open = fail_open
        self.clock = clock
        self.observer = observer
        self._last_unavailable_log = -UNAVAILABLE_LOG_INTERVAL_S
        self.unavailable_count = 0  # requests that met an unreachable store

    @property
    def config(self) -> LimitsConfig:
        return self._config

    def reload(self) -> LimitsConfig:
        """Re-read the limits file (SIGHUP). On an error the previous limits stay
        in force and LimitsConfigError says why. Counters are kept: a changed
        limit applies to what was already used in the window or period."""
        self._config = load_limits(self._config.path)
        return self._config

    async def start(self) -> None:  # noqa: B027 (optional for a store)
        """Connect (and load scripts). A store down at start-up is not fatal."""

    async def close(self) -> None:  # noqa: B027
        """Release connections."""

    # -- the interface -----------------------------------------------------------

    async def reserve(self, subject: Subject, estimate: Estimate) -> Reservation:
        """Check every limit of `subject` and reserve `estimate`, atomically.

        Raises RateLimitedError (429) naming the refusing limit, or
        LimitsUnavailableError (503) when the store is unreachable in fail-closed mode.
        """
        now = self.clock()
        config = self._config
        checks = build_checks(config, subject, estimate, now)
        res_id = Reservation.new_id()
        if not checks:  # no limit applies: nothing to count, no round trip
            return Reservation(res_id, subject, estimate)
        holds = inflight_adds(checks)
        expires_ms = int((now + config.reservation.ttl_s) * 1000)
        try:
            outcome = await self._reserve(
                ReserveStep(
                    subject.tenant, checks, holds, res_id, expires_ms, int(now * 1000), False
                )
            )
        except StoreUnavailable as err:
            self._unavailable(err)
            return Reservation(res_id, subject, estimate, enforced=False, done=True)
        states = limit_states(checks, outcome)
        if not outcome.admitted:
            refused = refusal(subject.tenant, checks, outcome, states)
            if self.observer is not None:
                self.observer.refused(subject.tenant, refused.limit_id)
            raise RateLimitedError(
                refused.message(),
                code=refused.code,
                limit=refused.limit_id,
                retry_after_s=refused.retry_after_s,
                headers=dict(refused.headers),
            )
        self._report_budget(subject.tenant, states)
        return Reservation(
            res_id,
            subject,
            estimate,
            targets=settle_targets(checks),
            holds=tuple(holds),
            headers=ratelimit_headers(states),
            states=tuple(states),
        )

    async def settle(
        self,
        reservation: Reservation,
        actual_tokens: int,
        actual_cost: float,
        estimated: bool,
    ) -> None:
        """Replace the reservation by the real use (`estimated`: the upstream
        reported no usage and the gateway counted). Never raises: the answer has
        been sent; a store error leaves the reservation to expire."""
        if reservation.done:
            return
        reservation.done = True
        amounts = {PERIOD: to_nano_rounded(actual_cost)}
        targets = [
            (t, amounts.get(t.kind, max(int(actual_tokens), 0))) for t in reservation.targets
        ]
        await self._finish(reservation, targets)
        if self.observer is not None:
            self.observer.settled(reservation.subject.tenant, "estimate" if estimated else "usage")

    async def release(self, reservation: Reservation) -> None:
        """Give the reservation back unused (failed request, client gone). Never raises."""
        if reservation.done:
            return
        reservation.done = True
        await self._finish(reservation, [])

    async def remaining_share(self, subject: Subject) -> BudgetStatus | None:
        """The subject's tightest spend limit and the share of it left (None: no
        spend limit applies, or the store is down in fail-open mode)."""
        now = self.clock()
        checks = [
            c
            for c in build_checks(self._config, subject, None, now)
            if c.kind == PERIOD and c.limit.kind != "endpoint"
        ]
        if not checks:
            return None
        try:
            outcome = await self._reserve(
                ReserveStep(subject.tenant, checks, [], "", 0, int(now * 1000), True)
            )
        except StoreUnavailable as err:
            if self.fail_open:
                # The reservation that follows meets the same store and counts the
                # request (once): here it is only logged.
                self._log_unavailable(err, "failing open: requests go through unlimited")
                return None
            self._unavailable(err)
            return None
        states = limit_states(checks, outcome)
        self._report_budget(subject.tenant, states)
        return budget_status(states)

    async def status(self, subject: Subject) -> list[LimitState]:
        """Every limit of `subject` with its use (for `kamiwaza budgets`); raises
        StoreUnavailable rather than failing open."""
        now = self.clock()
        checks = build_checks(self._config, subject, None, now)
        if not checks:
            return []
        outcome = await self._reserve(
            ReserveStep(subject.tenant, checks, [], "", 0, int(now * 1000), True)
        )
        return limit_states(checks, outcome)

    # -- what a store implements -------------------------------------------------

    @abc.abstractmethod
    async def _reserve(self, step: ReserveStep) -> Outcome:
        """Run `step` atomically (see ReserveStep)."""

    @abc.abstractmethod
    async def _settle(
        self,
        tenant: str,
        res_id: str,
        targets: Sequence[tuple[SettleTarget, int]],
        now_ms: int,
    ) -> bool:
        """Drop reservation `res_id` and count `targets`; whether it was still held."""

    # -- helpers -----------------------------------------------------------------

    async def _finish(
        self, reservation: Reservation, targets: Sequence[tuple[SettleTarget, int]]
    ) -> None:
        if not reservation.enforced or not (reservation.holds or targets):
            return  # nothing held, nothing to count (e.g. only requests per minute)
        try:
            held = await self._settle(
                reservation.subject.tenant, reservation.id, targets, int(self.clock() * 1000)
            )
        except StoreUnavailable as err:
            self._log_unavailable(err, "cannot settle a reservation; it will expire")
            return
        if not held and reservation.holds:
            log.warning(
                "reservation %s of tenant %r had expired before it was settled "
                "(reservation.ttl_s is shorter than the request)",
                reservation.id,
                reservation.subject.tenant,
            )

    def _unavailable(self, err: Exception) -> None:
        self.unavailable_count += 1
        mode = "open" if self.fail_open else "closed"
        if self.observer is not None:
            self.observer.unavailable(mode)
        if self.fail_open:
            self._log_unavailable(err, "failing open: requests go through unlimited")
            return
        self._log_unavailable(err, "failing closed: requests are refused")
        raise LimitsUnavailableError(
            "the limits store is unreachable: requests are refused until it is back"
        ) from err

    def _log_unavailable(self, err: Exception, what: str) -> None:
        now = time.monotonic()
        if now - self._last_unavailable_log >= UNAVAILABLE_LOG_INTERVAL_S:
            self._last_unavailable_log = now
            log.error("limits store (%s) unavailable, %s: %s", self.name, what, err)

    def _report_budget(self, tenant: str, states: Sequence[LimitState]) -> None:
        if self.observer is None:
            return
        for state in states:
            if state.limit.kind == "tenant" and state.limit.field.startswith("usd_"):
                window = "day" if state.limit.field == "usd_per_day" else "month"
                limit = float(state.limit.value)
                remaining = max(state.remaining, 0.0)
                share = min(1.0, remaining / limit) if limit > 0 else 0.0
                self.observer.budget(tenant, window, limit - remaining, remaining, share)
