"""The one path of every model request, as named stages.

    admit → authenticate → read body → parse (the front) → metadata → decide
          → forward (with failover) → answer → audit record (→ metrics, access log)

Each stage is a method of :class:`Pipeline` that reads and fills the request's
:class:`~gateway.pipeline.context.RequestContext`; a stage that refuses raises
a :class:`gateway.errors.GatewayError`, which the middleware renders in the
front's shape. Every front (:mod:`gateway.fronts`) goes through all of them: a
change to how requests are admitted, decided, forwarded or recorded is made here
once, for every API.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web

from gateway.auth import Authenticator
from gateway.errors import (
    AuditUnavailableError,
    BadRequestError,
    PayloadTooLargeError,
    PermissionDeniedError,
    PolicyUnavailableError,
    UpstreamError,
)
from gateway.forwarding import Forwarder, ForwardResult, ForwardTrace
from gateway.forwarding.transport import ClientGone, write_tail
from gateway.fronts.base import Front, ModelRequest
from gateway.health.monitor import HealthMonitor
from gateway.health.stage import add_health_input, note_decision
from gateway.limits.stage import LimitsStage
from gateway.metadata import BODY_FIELD, opa_input, resolve_metadata
from gateway.pipeline.context import RequestContext
from gateway.pipeline.limiting import Held, add_budget, reserve
from gateway.pipeline.record import (
    fill_decision,
    fill_identity,
    fill_metadata,
    fill_result,
    write_record,
)
from gateway.policy import Decision, PolicyClient
from gateway.providers.adapter import Call, Codec, ProviderAdapter
from gateway.server import read_body
from gateway.settings import Settings
from observability.audit import AuditRecord
from observability.pipeline import AuditPipeline

log = logging.getLogger("gateway.pipeline")

Observer = Callable[[AuditRecord], None]


class Pipeline:
    """The stages, bound to the components they use (one per application)."""

    def __init__(
        self,
        settings: Settings,
        *,
        authenticator: Authenticator,
        forwarder: Forwarder,
        audit: AuditPipeline,
        observers: Sequence[Observer],
        limits: LimitsStage | None = None,
    ) -> None:
        self.settings = settings
        self.authenticator = authenticator
        self.forwarder = forwarder
        self.audit = audit
        self.observers = observers
        self.limits = limits  # per-tenant limits (gateway.pipeline.limiting); None: off
        # Set when the OPA client is open (gateway.app's policy context).
        self.policy: PolicyClient | None = None
        self.health: HealthMonitor | None = None  # gateway.health; None: off

    def handler(self, front: Front) -> Callable[[web.Request], Any]:
        """The aiohttp handler of `front`'s paths."""

        async def handle(request: web.Request) -> web.StreamResponse:
            from gateway.pipeline.middleware import context_of

            return await self.run(context_of(request))

        handle.__name__ = f"{type(front).__name__}_handler"
        return handle

    async def run(self, ctx: RequestContext) -> web.StreamResponse:
        """Every stage, in order."""
        self.admit(ctx)
        await self.authenticate(ctx)
        body = await self.read_body(ctx)
        request = self.parse(ctx, body)
        self.metadata(ctx, request)
        decision = await self.decide(ctx, request)
        return await self.forward(ctx, request, decision)

    # -- the stages -----------------------------------------------------------

    def admit(self, ctx: RequestContext) -> None:
        """Refuse new work while the audit spool cannot take its record."""
        if not self.audit.admits():
            raise AuditUnavailableError(
                "audit spool full: requests are refused until the audit sink catches up"
            )

    async def authenticate(self, ctx: RequestContext) -> None:
        """Tenant, user and roles from a verified credential only."""
        ctx.identity = await self.authenticator.authenticate(ctx.request.headers)
        fill_identity(ctx.record, ctx.identity)

    async def read_body(self, ctx: RequestContext) -> dict[str, Any]:
        """The body, bounded in size, as a JSON object of valid Unicode."""
        request = ctx.request
        limit = self.settings.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise PayloadTooLargeError(f"request body too large (limit {limit} bytes)")
        raw = await read_body(request, self.settings.body_timeout_s)
        return parse_json_object(raw)

    def parse(self, ctx: RequestContext, body: dict[str, Any]) -> ModelRequest:
        """The front reads its wire format; the gateway's metadata is taken out."""
        request = ctx.front.parse(body, ctx.request.headers)
        ctx.model_request = request
        record = ctx.record
        record.stream = request.stream
        record.requested_model = request.model
        record.prompt_hash = self.audit.prompt_hash(request.prompt)
        return request

    def metadata(self, ctx: RequestContext, request: ModelRequest) -> None:
        """Data class (never below the tenant's floor), latency budget, cost cap, labels."""
        assert ctx.identity is not None
        ctx.meta = resolve_metadata(ctx.identity, ctx.request.headers, request.body, self.settings)
        fill_metadata(ctx.record, ctx.meta)
        request.body.pop(BODY_FIELD, None)  # the gateway's metadata never goes upstream

    async def decide(self, ctx: RequestContext, request: ModelRequest) -> Decision:
        """Ask OPA which endpoints may serve the request; a deny is a 403."""
        assert ctx.identity is not None
        assert ctx.meta is not None
        if self.policy is None:
            raise PolicyUnavailableError("the policy client is not running")
        doc = opa_input(
            ctx.identity,
            ctx.meta,
            operation=request.operation,
            model=request.model,
            request_id=ctx.request_id,
            path=ctx.request.path,
            stream=request.stream,
        )
        await add_budget(self.limits, ctx.identity, doc)
        add_health_input(self.health, doc)
        decision = await self.policy.decide(doc)
        ctx.decision = decision
        fill_decision(ctx.record, decision)
        note_decision(self.health, decision, ctx.record)
        if decision.deny:
            no_route = all(reason.startswith("no route") for reason in decision.deny)
            raise PermissionDeniedError(
                ("no route for this request: " if no_route else "request denied by policy: ")
                + "; ".join(decision.deny),
                code="no_route" if no_route else "policy_denied",
                headers={"X-Kamiwaza-Decision-Id": decision.decision_id or ""},
                details={"deny": list(decision.deny)},
            )
        return decision

    async def forward(
        self, ctx: RequestContext, request: ModelRequest, decision: Decision
    ) -> web.StreamResponse:
        """Send the request to the route's endpoints in order and answer the client."""
        ctx.trace = trace = ForwardTrace()
        call = Call(
            operation=request.operation,
            body=request.body,
            stream=request.stream,
            request_id=ctx.request_id,
            headers=request.headers,
        )
        codec_for = ctx.front.codec_for
        if not any(self.forwarder.codec(name, codec_for) for name in decision.route):
            local = ctx.front.local_answer(request)
            if local is not None:
                # No endpoint of the route serves this natively (count_tokens on
                # vLLM): the gateway's own answer, marked as such by the front.
                ctx.record.notes = ["answered by the gateway: no endpoint of the route serves it"]
                return web.json_response(
                    local, headers=routing_headers(ctx.request_id, decision, "")
                )
        held = await reserve(self.limits, ctx, request, decision)  # 429 / 503: nothing sent
        try:
            if not request.stream:
                result = await self.forwarder.complete(
                    decision.route,
                    call,
                    codec_for,
                    client_headers=ctx.request.headers,
                    trace=trace,
                )
                held.served(result)
                return held.label(self.answer(ctx, decision, result))
            return await self.stream(ctx, decision, call, codec_for, trace, held=held)
        except UpstreamError as err:
            err.headers.update(decision_headers(decision))
            raise
        finally:
            held.close()  # settle, or release what was not used (in the background)

    def answer(
        self, ctx: RequestContext, decision: Decision, result: ForwardResult
    ) -> web.Response:
        """A JSON answer; the middleware records it before aiohttp sends it."""
        fill_result(ctx.record, result)
        self.note_translation(ctx, result.endpoint)
        assert result.response is not None
        return web.json_response(
            result.response,
            status=result.status,
            headers=routing_headers(ctx.request_id, decision, result.endpoint),
        )

    async def stream(
        self,
        ctx: RequestContext,
        decision: Decision,
        call: Call,
        codec_for: Callable[[ProviderAdapter], Codec | None],
        trace: ForwardTrace,
        *,
        held: Held,
    ) -> web.StreamResponse:
        """A streamed answer: frames as they come, the record before the end."""
        response: web.StreamResponse | None = None

        async def start_response(endpoint: str) -> web.StreamResponse:
            nonlocal response
            response = web.StreamResponse(
                status=200,
                headers={
                    "Content-Type": "text/event-stream",
                    "Cache-Control": "no-cache",
                    **routing_headers(ctx.request_id, decision, endpoint),
                    **held.headers,
                },
            )
            await response.prepare(ctx.request)
            return response

        result = await self.forwarder.stream(
            decision.route,
            call,
            codec_for,
            start_response=start_response,
            client_headers=ctx.request.headers,
            trace=trace,
        )
        assert response is not None
        fill_result(ctx.record, result)
        held.served(result)
        self.note_translation(ctx, result.endpoint)
        ctx.record.status = response.status
        # Durable before the client sees the end: a crash after this loses nothing.
        write_record(ctx, self.observers)
        try:
            await write_tail(response, result.tail)
        except ClientGone:
            log.info("client left before the end of stream %s", ctx.request_id)
        return response

    def note_translation(self, ctx: RequestContext, endpoint: str) -> None:
        """What a bridge dropped or changed for the endpoint that served, in the record."""
        request = ctx.model_request
        if request is None:
            return
        codec = self.forwarder.codec(endpoint, ctx.front.codec_for)
        dropped = getattr(codec, "dropped", None)
        if dropped is None:
            return
        call = Call(
            request.operation, request.body, request.stream, ctx.request_id, request.headers
        )
        ctx.record.notes = list(dropped(call))


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """A request body as a JSON object, or a 400 that says what is wrong."""
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise BadRequestError("request body must be a JSON object", code="invalid_body")
    return body


def parse_json(raw: bytes) -> Any:
    """A request body as JSON of valid Unicode, or a 400 that says what is wrong."""
    try:
        body = json.loads(raw, parse_constant=_no_constant)
    except (UnicodeDecodeError, RecursionError, ValueError) as err:
        # ValueError covers JSONDecodeError and Python's digit limit on integers.
        reason = "nested too deeply" if isinstance(err, RecursionError) else str(err)
        raise BadRequestError(
            f"request body is not valid JSON: {reason}", code="invalid_json"
        ) from None
    if b"\\u" in raw or b"\\U" in raw:
        _check_unicode(body)
    return body


def _no_constant(name: str) -> Any:
    # Python's json reads NaN and Infinity, which are not JSON: no upstream would
    # take them back.
    raise ValueError(f"{name} is not a JSON value")


def _check_unicode(value: Any) -> None:
    """Refuse strings UTF-8 cannot carry (lone surrogates that JSON can spell)."""
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            _encodable(item)
        elif isinstance(item, dict):
            for key, sub in item.items():
                _encodable(key)
                stack.append(sub)
        elif isinstance(item, list):
            stack.extend(item)


def _encodable(text: str) -> None:
    try:
        text.encode()
    except UnicodeEncodeError:
        raise BadRequestError(
            "request body contains text that is not valid Unicode (a lone surrogate)",
            code="invalid_body",
        ) from None


def rule_header(decision: Decision) -> str:
    if decision.overridden_by:
        return f"override:{decision.overridden_by}"
    return str(decision.rule["name"]) if decision.rule else ""


def decision_headers(decision: Decision) -> dict[str, str]:
    return {
        "X-Kamiwaza-Rule": rule_header(decision),
        "X-Kamiwaza-Decision-Id": decision.decision_id or "",
    }


def routing_headers(request_id: str, decision: Decision, endpoint: str) -> dict[str, str]:
    return {
        "X-Request-Id": request_id,
        "X-Kamiwaza-Endpoint": endpoint,
        **decision_headers(decision),
    }


__all__ = ["Pipeline", "parse_json", "parse_json_object", "routing_headers"]
