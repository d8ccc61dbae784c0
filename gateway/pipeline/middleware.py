"""The one request middleware: request ids, errors in the front's shape, and
exactly one audit record per model request, whatever happens to it."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web
from aiohttp.typedefs import Middleware

from gateway.drain import cancel_reason
from gateway.errors import GatewayError, NotFoundError, PayloadTooLargeError
from gateway.forwarding import ClientDisconnectedError
from gateway.fronts.base import Front
from gateway.pipeline.context import CONTEXT, REQUEST_ID, RequestContext
from gateway.pipeline.record import fail, write_record
from gateway.pipeline.stages import Pipeline
from observability.audit import AuditRecord, utc_now
from observability.tracing import GatewayTracing

log = logging.getLogger("gateway.pipeline")

# Status recorded when the client goes away before the answer is complete.
CLIENT_CLOSED = 499

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def context_of(request: web.Request) -> RequestContext:
    return request[CONTEXT]


def request_middleware(
    pipeline: Pipeline,
    fronts: Mapping[str, Front],
    tracing: GatewayTracing,
    default_front: Front,
) -> Middleware:
    """The middleware for an app whose model paths are `fronts` (path → front)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        request_id = "req-" + uuid.uuid4().hex
        request[REQUEST_ID] = request_id
        front = fronts.get(request.path) if request.method == "POST" else None
        ctx: RequestContext | None = None
        if front is not None:
            record = AuditRecord(
                request_id=request_id,
                timestamp=utc_now(),
                path=request.path,
                operation=front.operation,
            )
            ctx = RequestContext(request, front, request_id, record)
            ctx.span = tracing.start_request("POST", request.path, request.headers, request_id)
            request[CONTEXT] = ctx
        shape = front or _shape_for(request.path, fronts, default_front)
        try:
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                # aiohttp's own errors (404, 405, 413 from the body limit) in our shape.
                raise _from_http_exception(exc) from exc
            except (ClientDisconnectedError, ConnectionResetError, asyncio.CancelledError):
                # aiohttp cancels the handler when the client goes away (and the
                # drain does past its deadline: gateway/drain.py).
                if ctx is not None:
                    _fail(ctx, *cancel_reason(request, CLIENT_CLOSED))
                raise
            if not response.prepared:
                response.headers["X-Request-Id"] = request_id
            if ctx is not None and not ctx.recorded:
                ctx.record.status = response.status
            return response
        except GatewayError as err:
            if ctx is not None:
                _fail(ctx, err.status, err.code, err.message, type_=err.type)
            return _error_response(shape, err, request_id)
        except Exception:
            # Never a traceback to the client; the log has it, keyed by request id.
            log.exception("unhandled error in request %s", request_id)
            if ctx is not None:
                _fail(ctx, 500, "internal_error", "internal error")
            internal = GatewayError(f"internal error (request {request_id})")
            return _error_response(shape, internal, request_id)
        finally:
            if ctx is not None:
                write_record(ctx, pipeline.observers)

    return middleware


def _shape_for(path: str, fronts: Mapping[str, Front], default: Front) -> Front:
    """The error shape of a request that is no model request (a GET, an unknown
    path): the front whose path it is or lies under, so that an Anthropic SDK
    calling `/v1/messages/batches` gets its own 404 class and shape."""
    best: tuple[int, Front] | None = None
    for prefix, front in fronts.items():
        if (path == prefix or path.startswith(prefix + "/")) and (
            best is None or len(prefix) > best[0]
        ):
            best = (len(prefix), front)
    return best[1] if best is not None else default


def _fail(
    ctx: RequestContext, status: int, code: str, message: str, *, type_: str = "server_error"
) -> None:
    if not ctx.recorded:
        fail(ctx.record, status, code, message, type_=type_)


def _error_response(front: Front, err: GatewayError, request_id: str) -> web.Response:
    headers = {**err.headers, "X-Request-Id": request_id}
    return web.json_response(front.error_body(err), status=err.status, headers=headers)


def _from_http_exception(exc: web.HTTPException) -> GatewayError:
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return PayloadTooLargeError(
            f"request body too large (limit {exc.max_size} bytes)"
            if hasattr(exc, "max_size")
            else "request body too large"
        )
    if isinstance(exc, web.HTTPNotFound):
        return NotFoundError("no such route")
    err = GatewayError(exc.reason or "error", status=exc.status, code=f"http_{exc.status}")
    err.type = "invalid_request_error" if exc.status < 500 else "server_error"
    return err
