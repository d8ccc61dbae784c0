"""The limiter's counters in this process: for a single replica only.

Every replica would count on its own, so N replicas would let a tenant spend N
times its budget: run this only when one gateway process serves the tenant
(the README says so). It implements the steps of the Redis scripts
(:mod:`gateway.limits.lua`) in Python, under no lock: each step runs without an
`await`, so on one event loop it is atomic as the scripts are on Redis.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.limits.backend import LimitsBackend
from gateway.limits.config import LimitsConfig
from gateway.limits.keys import BUCKET_MS, BUCKETS, PERIOD_GRACE_MS
from gateway.limits.model import (
    PERIOD,
    REQUESTS,
    CheckResult,
    Outcome,
    ReserveStep,
    SettleTarget,
)


@dataclass(slots=True)
class _Tenant:
    records: dict[str, tuple[tuple[str, int], ...]] = field(default_factory=dict)
    expiries: dict[str, int] = field(default_factory=dict)
    sums: dict[str, int] = field(default_factory=dict)
    windows: dict[str, dict[int, int]] = field(default_factory=dict)
    periods: dict[str, tuple[int, int]] = field(default_factory=dict)  # key -> (nano, end ms)


class InProcessLimits(LimitsBackend):
    """Counters in memory; not shared between replicas."""

    name = "in-process"
    shared = False

    def __init__(self, config: LimitsConfig, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self._tenants: dict[str, _Tenant] = {}

    def _state(self, tenant: str) -> _Tenant:
        state = self._tenants.get(tenant)
        if state is None:
            state = self._tenants[tenant] = _Tenant()
        return state

    @staticmethod
    def _release(state: _Tenant, res_id: str) -> bool:
        record = state.records.pop(res_id, None)
        state.expiries.pop(res_id, None)
        if record is None:
            return False
        for name, amount in record:
            left = state.sums.get(name, 0) - amount
            if left <= 0:
                state.sums.pop(name, None)
            else:
                state.sums[name] = left
        return True

    def _purge(self, state: _Tenant, now_ms: int) -> None:
        for res_id in [r for r, exp in state.expiries.items() if exp <= now_ms]:
            self._release(state, res_id)
        for key in [k for k, (_, end) in state.periods.items() if end + PERIOD_GRACE_MS < now_ms]:
            del state.periods[key]

    async def _reserve(self, step: ReserveStep) -> Outcome:
        state = self._state(step.tenant)
        now_ms = step.now_ms
        self._purge(state, now_ms)
        cur = now_ms // BUCKET_MS
        admitted = True
        results: list[CheckResult] = []
        for check in step.checks:
            inflight = state.sums.get(check.inflight_field, 0) if check.inflight_field else 0
            over = False
            if check.kind == PERIOD:
                settled = state.periods.get(check.key, (0, 0))[0]
                reset = check.period_end_ms - now_ms
                wait = 0
                if settled + inflight + check.amount > check.maximum:
                    over = True
                    wait = -1 if settled + check.amount <= check.maximum else reset
            else:
                window = state.windows.get(check.key, {})
                nums = [window.get(cur - BUCKETS + i, 0) for i in range(1, BUCKETS + 1)]
                settled = sum(nums)
                reset = 0
                for i in range(BUCKETS, 0, -1):
                    if nums[i - 1] > 0:
                        reset = (cur + i) * BUCKET_MS - now_ms
                        break
                if check.amount > 0:
                    reset = (cur + BUCKETS) * BUCKET_MS - now_ms
                wait = 0
                if settled + inflight + check.amount > check.maximum:
                    over = True
                    wait, freed = -1, 0
                    for i in range(1, BUCKETS + 1):
                        freed += nums[i - 1]
                        if settled - freed + inflight + check.amount <= check.maximum:
                            wait = (cur + i) * BUCKET_MS - now_ms
                            break
            admitted = admitted and not over
            results.append(CheckResult(settled, inflight, wait, reset))
        if admitted and not step.status:
            for check in step.checks:
                if check.kind == REQUESTS and check.amount > 0:
                    self._bump(state, check.key, cur, check.amount)
            for name, amount in step.holds:
                state.sums[name] = state.sums.get(name, 0) + amount
            if step.holds:
                state.records[step.res_id] = tuple(step.holds)
                state.expiries[step.res_id] = step.expires_ms
        return Outcome(admitted, tuple(results))

    @staticmethod
    def _bump(state: _Tenant, key: str, cur: int, amount: int) -> None:
        window = state.windows.setdefault(key, {})
        window[cur] = window.get(cur, 0) + amount
        if len(window) > BUCKETS + 2:
            for bucket in [b for b in window if b <= cur - BUCKETS]:
                del window[bucket]

    async def _settle(
        self,
        tenant: str,
        res_id: str,
        targets: Sequence[tuple[SettleTarget, int]],
        now_ms: int,
    ) -> bool:
        state = self._state(tenant)
        held = self._release(state, res_id)
        self._purge(state, now_ms)
        cur = now_ms // BUCKET_MS
        for target, amount in targets:
            if amount <= 0:
                continue
            if target.kind == PERIOD:
                spent, _ = state.periods.get(target.key, (0, target.period_end_ms))
                state.periods[target.key] = (spent + amount, target.period_end_ms)
            else:
                self._bump(state, target.key, cur, amount)
        return held

    def tenants(self) -> list[str]:
        return sorted(self._tenants)
