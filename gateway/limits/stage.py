"""The limiter as the request pipeline uses it: a few calls, in gateway terms.

    stage = LimitsStage(limiter, registry)   # composition root (limiter: factory.build_limits)
    await stage.start() / await stage.close()   # cleanup context
    stage.reload()                              # SIGHUP (raises LimitsConfigError)

    # decide, before asking OPA (LimitsUnavailableError: 503 in fail-closed mode)
    budget = await stage.budget(identity)
    if budget is not None:
        opa_doc["budget"] = budget

    # forward, before the first attempt: RateLimitedError (429), LimitsUnavailableError (503)
    reservation = await stage.reserve(identity, decision.route, request.body, request.operation)
    try:
        result = ...                            # complete or stream; add reservation.headers
    finally:                                    # settle; or release (every attempt failed)
        stage.finish_soon(reservation, result.usage if result else None, cost)

`finish` never raises: the answer has gone. `finish_soon` runs it in a task of
its own (the answer does not wait for the round trip; a cancelled request
cannot interrupt it; `close` waits for it). gateway/pipeline/limiting.py is the
pipeline's side. A replica killed in between leaves a reservation that expires
by itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from gateway.auth import Identity
from gateway.limits.backend import LimitsBackend
from gateway.limits.config import LimitsConfig
from gateway.limits.estimate import Estimate, estimate_request
from gateway.limits.model import Reservation, Subject
from gateway.limits.opa import budget_input
from gateway.providers.usage import Usage
from translator.registry import Pricing, Registry


def subject_of(identity: Identity, endpoint: str | None = None) -> Subject:
    return Subject(identity.tenant, identity.key_id, identity.user, endpoint)


class LimitsStage:
    """Budget for OPA, reservation before dispatch, settlement after."""

    def __init__(self, limiter: LimitsBackend, registry: Registry) -> None:
        self.limiter = limiter
        self.registry = registry
        self._settling: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        await self.limiter.start()

    async def close(self) -> None:
        """Wait for the settlements still running, then release the store."""
        if self._settling:
            await asyncio.gather(*self._settling, return_exceptions=True)
        await self.limiter.close()

    def reload(self) -> LimitsConfig:
        """Re-read the limits file; LimitsConfigError keeps the previous limits."""
        return self.limiter.reload()

    async def budget(self, identity: Identity) -> dict[str, Any] | None:
        """`input.budget` for the routing decision, or None to leave it out."""
        return budget_input(await self.limiter.remaining_share(subject_of(identity)))

    def _prices(self, route: Sequence[str]) -> list[Pricing]:
        endpoints = self.registry.endpoints
        return [endpoints[name].pricing for name in route if name in endpoints]

    def estimate(
        self, route: Sequence[str], body: Mapping[str, Any], operation: str = "chat"
    ) -> Estimate:
        """The request's worst case on the route (priced at its dearest endpoint)."""
        policy = self.limiter.config.reservation
        return estimate_request(body, self._prices(route), policy, operation)

    async def reserve(
        self,
        identity: Identity,
        route: Sequence[str],
        body: Mapping[str, Any],
        operation: str = "chat",
        *,
        estimate: Estimate | None = None,
    ) -> Reservation:
        """Check and reserve the request's worst case on the route (`estimate`, or
        worked out here); endpoint limits of the first endpoint apply."""
        if estimate is None:
            estimate = self.estimate(route, body, operation)
        subject = subject_of(identity, route[0] if route else None)
        return await self.limiter.reserve(subject, estimate)

    def pricing(self, endpoint: str) -> Pricing | None:
        found = self.registry.endpoints.get(endpoint)
        return found.pricing if found is not None else None

    def finish_soon(self, reservation: Reservation, usage: Usage | None, cost_usd: float) -> None:
        """`finish` in a task of its own: the answer does not wait for the store's
        round trip, and a cancelled request cannot interrupt it. `close` waits."""
        task = asyncio.ensure_future(self.finish(reservation, usage, cost_usd))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    @property
    def settling(self) -> int:
        """Settlements started and not yet done."""
        return len(self._settling)

    async def finish(self, reservation: Reservation, usage: Usage | None, cost_usd: float) -> None:
        """Settle at the real use, or release when nothing was used."""
        if usage is None or (usage.total_tokens == 0 and cost_usd == 0):
            await self.limiter.release(reservation)
            return
        await self.limiter.settle(reservation, usage.total_tokens, cost_usd, usage.estimated)
