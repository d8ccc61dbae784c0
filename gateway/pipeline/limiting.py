"""The per-tenant limiter in the request path: a line or two in each stage.

The pipeline (:mod:`gateway.pipeline.stages`) calls, when a limits file is set
(`Pipeline.limits`, a :class:`~gateway.limits.stage.LimitsStage`):

- decide: ``await add_budget(limits, identity, doc)`` puts the subject's
  remaining budget share into OPA's input (`input.budget`), so that a policy can
  route a tenant near its cap to a cheaper endpoint;
- forward, before the first attempt: ``held = await reserve(limits, ctx,
  request, decision)`` reserves the worst case on the route, or refuses with a
  RateLimitedError (429, nothing forwarded) or, the store being down in
  fail-closed mode, a LimitsUnavailableError (503, nothing forwarded);
- ``held.served(result)`` when the answer or stream has ended, and
  ``held.close()`` in a `finally`: settle at the final usage, or release
  (in a task of its own, so that the answer does not wait for the store).

What the limiter did is in the audit record's `limits` object::

    {"reserved_usd": 0.0151, "reserved_tokens": 1010, "capped": false,
     "settled_usd": 0.0042, "settled_tokens": 310, "basis": "usage"}

`basis` is `usage` (the upstream's report), `estimate` (a stream or answer
without usage, or a client that left mid-stream: the gateway counted what was
streamed) or `released` (nothing used: every attempt failed, the client left
before any output). A refused request has ``{"refused_by":
"tenant.usd_per_day", "wanted_usd": ..., "wanted_tokens": ...}``; one let
through while the store was unreachable (fail-open) has ``{"enforced": false}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from gateway.auth import Identity
from gateway.errors import RateLimitedError
from gateway.forwarding import ForwardResult
from gateway.fronts.base import ModelRequest
from gateway.limits.model import Reservation
from gateway.limits.opa import FIELD
from gateway.limits.stage import LimitsStage
from gateway.pipeline.context import RequestContext
from gateway.policy import Decision
from gateway.providers.usage import Usage


async def add_budget(limits: LimitsStage | None, identity: Identity, doc: dict[str, Any]) -> None:
    """`input.budget` for the routing decision (left out without a spend limit)."""
    if limits is None:
        return
    budget = await limits.budget(identity)
    if budget is not None:
        doc[FIELD] = budget


class Held:
    """One request's reservation while it is forwarded; see the module docstring."""

    __slots__ = ("_closed", "ctx", "limits", "reservation", "result")

    def __init__(
        self,
        limits: LimitsStage | None,
        ctx: RequestContext,
        reservation: Reservation | None,
    ) -> None:
        self.limits = limits
        self.ctx = ctx
        self.reservation = reservation
        self.result: ForwardResult | None = None
        self._closed = False

    @property
    def headers(self) -> Mapping[str, str]:
        """`x-ratelimit-*` for the answer (empty without limits)."""
        return self.reservation.headers if self.reservation is not None else {}

    def label(self, response: web.Response) -> web.Response:
        """`response` (not yet sent) with the `x-ratelimit-*` headers."""
        response.headers.update(self.headers)
        return response

    def served(self, result: ForwardResult) -> None:
        """The answer or stream has ended with `result`: it settles at its usage.
        Called before the audit record is written, so that the record says so."""
        self.result = result
        self._note(result.usage, result.cost_usd)

    def _note(self, usage: Usage | None, cost_usd: float) -> None:
        record = self.ctx.record.limits
        if record is None or not record.get("enforced", True):
            return
        if usage is None or (usage.total_tokens == 0 and cost_usd == 0):
            record.update(settled_usd=0.0, settled_tokens=0, basis="released")
        else:
            record.update(
                settled_usd=round(cost_usd, 9),
                settled_tokens=usage.total_tokens,
                basis="estimate" if usage.estimated else "usage",
            )

    def close(self) -> None:
        """Settle at the served result's usage; else (every attempt failed, the
        client left, a cancellation) at what was streamed, or release. In a task
        of its own (LimitsStage.finish_soon): the answer does not wait for the
        store, and a cancellation cannot leave the reservation held."""
        if self._closed or self.limits is None or self.reservation is None:
            return
        self._closed = True
        usage, cost = self._final()
        if self.result is None:
            self._note(usage, cost)
        if not self.reservation.done:
            self.limits.finish_soon(self.reservation, usage, cost)

    def _final(self) -> tuple[Usage | None, float]:
        if self.result is not None:
            return self.result.usage, self.result.cost_usd
        trace = self.ctx.trace
        if trace is None or trace.endpoint is None or trace.usage is None or self.limits is None:
            return None, 0.0  # nothing reached the client: nothing was used
        # The client left mid-stream: the upstream produced what was streamed.
        pricing = self.limits.pricing(trace.endpoint)
        usage = Usage(trace.usage.input_tokens, trace.usage.output_tokens, estimated=True)
        return usage, usage.cost_usd(pricing) if pricing is not None else 0.0


async def reserve(
    limits: LimitsStage | None,
    ctx: RequestContext,
    request: ModelRequest,
    decision: Decision,
) -> Held:
    """Reserve the request's worst case on `decision.route` before anything is sent."""
    if limits is None:
        return Held(None, ctx, None)
    assert ctx.identity is not None
    estimate = limits.estimate(decision.route, request.body, request.operation)
    try:
        reservation = await limits.reserve(
            ctx.identity, decision.route, request.body, request.operation, estimate=estimate
        )
    except RateLimitedError as err:
        ctx.record.limits = {
            "refused_by": err.limit,
            "wanted_usd": round(estimate.cost_usd, 9),
            "wanted_tokens": estimate.tokens,
        }
        raise
    if not reservation.enforced:
        ctx.record.limits = {"enforced": False}
    else:
        ctx.record.limits = {
            "reserved_usd": round(estimate.cost_usd, 9),
            "reserved_tokens": estimate.tokens,
            "capped": estimate.capped,
        }
    return Held(limits, ctx, reservation)


__all__ = ["Held", "add_budget", "reserve"]
