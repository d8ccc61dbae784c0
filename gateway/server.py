"""The HTTP server of `kamiwaza serve`: aiohttp's, with the limits a gateway
facing a network needs.

aiohttp alone holds a connection whose client sends its headers one byte a
second for as long as its keep-alive timer (75 s), takes any number of
connections, and answers requests its parser refuses (oversized or too many
headers, a bad `Content-Length`, `Content-Length` with `Transfer-Encoding`, a
bad chunk size, a bad method) with `text/plain` bodies that quote the offending
bytes. Those answers come from its protocol, before any middleware runs, so the
limits live here, in a subclass of its protocol (:class:`GuardedRequestHandler`):

- **Header timeout** (`header_timeout_s`): from a connection's start, and from
  the first byte of each later request, the headers must be complete within
  this time, else the client gets a 408 and the connection is closed.
- **Body timeout** (the `body_timeout_s` setting): the pipeline reads a body
  within this time (:func:`read_body`), else 408.
- **Keep-alive idle timeout** (`keepalive_timeout_s`): an idle connection
  between requests is closed after this long (aiohttp's own timer).
- **Connection cap** (`max_connections`): a connection past it is answered
  503 `too_many_connections` (with `Retry-After`) to its first request and
  closed, without reaching the pipeline; connections within it are served
  as usual.
- **Parser errors**: in the OpenAI JSON error shape, with a fixed message per
  kind of error that echoes nothing of the request.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import (
    BadHttpMethod,
    BadStatusLine,
    ContentLengthError,
    HttpProcessingError,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
    TransferEncodingError,
)
from aiohttp.http_parser import RawRequestMessage
from aiohttp.web_protocol import RequestHandler, RequestPayloadError
from aiohttp.web_request import BaseRequest

from gateway.errors import BadRequestError, RequestTimeoutError
from gateway.settings import Settings

log = logging.getLogger("kamiwaza.server")

# How long a connection shed at the cap may take to send its request line and
# headers before it is closed without an answer.
SHED_HEADER_TIMEOUT_S = 2.0
# How long aiohttp keeps reading (and discarding) a body the answer did not
# need before it closes the connection (aiohttp's default: 10 s).
LINGERING_TIME_S = 2.0
# How long a connection closed at its header timeout discards what still comes.
LINGERING_CLOSE_S = 1.0


@dataclass(frozen=True, slots=True)
class ServerLimits:
    header_timeout_s: float = 10.0
    keepalive_timeout_s: float = 75.0
    max_connections: int = 4096


def limits_of(settings: Settings) -> ServerLimits:
    return ServerLimits(
        header_timeout_s=settings.header_timeout_s,
        keepalive_timeout_s=settings.keepalive_timeout_s,
        max_connections=settings.max_connections,
    )


def error_bytes(status: int, reason: str, code: str, message: str, **headers: str) -> bytes:
    """A complete HTTP/1.1 answer carrying an OpenAI-shaped error, closing the connection."""
    body = json.dumps(
        {"error": {"message": message, "type": _type(status), "code": code}},
        separators=(",", ":"),
    ).encode()
    lines = [
        f"HTTP/1.1 {status} {reason}",
        "Content-Type: application/json; charset=utf-8",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _type(status: int) -> str:
    return "invalid_request_error" if status < 500 else "server_error"


def json_error(status: int, code: str, message: str, **headers: str) -> web.Response:
    response = web.json_response(
        {"error": {"message": message, "type": _type(status), "code": code}},
        status=status,
        headers=headers,
    )
    response.force_close()
    return response


def parser_error(exc: BaseException | None) -> tuple[int, str, str]:
    """(status, code, message) for an error of aiohttp's request parser.

    The message is fixed per kind: the parser's own quotes the request's bytes.
    """
    if isinstance(exc, LineTooLong):
        return 431, "header_too_large", "a request line or header is too long"
    if isinstance(exc, BadHttpMethod):
        return 400, "bad_method", "the request method is not valid HTTP"
    if isinstance(exc, ContentLengthError):
        return 400, "bad_content_length", "the Content-Length header is not valid"
    if isinstance(exc, TransferEncodingError):
        return 400, "bad_transfer_encoding", "the chunked body or Transfer-Encoding is not valid"
    if isinstance(exc, InvalidURLError):
        return 400, "bad_url", "the request target is not a valid URL"
    if isinstance(exc, InvalidHeader):
        return 400, "bad_header", "a request header is not valid"
    if isinstance(exc, BadStatusLine):
        return 400, "bad_request_line", "the request line is not valid HTTP"
    if isinstance(exc, HttpProcessingError):
        # llhttp reports most errors as BadHttpMessage; its text says which.
        text = (exc.message or "").lower()
        if "content-length" in text:
            return 400, "bad_content_length", "the Content-Length header is not valid"
        if "transfer-encoding" in text or "chunk" in text:
            return (
                400,
                "bad_transfer_encoding",
                "the chunked body or Transfer-Encoding is not valid",
            )
        if "too many headers" in text or ("header" in text and "too" in text):
            return 431, "header_too_large", "the request has too many or too large headers"
        if "header" in text:
            return 400, "bad_header", "a request header is not valid"
        if "method" in text:
            return 400, "bad_method", "the request method is not valid HTTP"
        return 400, "malformed_request", "the request is not valid HTTP"
    return 500, "internal_error", "internal error"


class GuardedRequestHandler(RequestHandler):
    """aiohttp's protocol with a header timeout, shedding past the connection
    cap, and JSON errors for what its parser refuses."""

    __slots__ = ("_begun", "_discarding", "_header_timer", "_limits", "_shed")

    def __init__(self, manager: GuardedServer, *, limits: ServerLimits, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._limits = limits
        self._header_timer: asyncio.TimerHandle | None = None
        self._shed = False
        self._discarding = False
        self._begun = False  # bytes of a request whose headers are not complete yet

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        manager = self._manager
        timeout = self._limits.header_timeout_s
        if isinstance(manager, GuardedServer) and manager.open > self._limits.max_connections:
            self._shed = True
            self._request_handler = _shed_handler
            timeout = min(timeout, SHED_HEADER_TIMEOUT_S)
        self._arm_header_timer(timeout)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            return
        reading = self._current_request if self._request_in_progress else None
        queued = len(self._messages)
        waiting = not self._messages and not self._request_in_progress
        if (
            waiting
            and data
            and self._header_timer is None
            and self._payload_parser is None
            and not self._shed
        ):
            # The first byte of a new request on a kept-alive connection.
            self._arm_header_timer(self._limits.header_timeout_s)
        if waiting and data:
            self._begun = True
        super().data_received(data)
        if reading is not None and len(self._messages) > queued:
            message, _ = self._messages[-1]
            if not isinstance(message, RawRequestMessage):
                # The parser failed inside the body the handler is reading (a bad
                # chunk size): aiohttp would queue the error as a next request and
                # leave the handler waiting; the handler gets it instead.
                self._messages.pop()
                reading.content.set_exception(getattr(message, "exc", TransferEncodingError("")))
                self.close()
        if self._messages or self._request_in_progress:
            self._cancel_header_timer()  # the headers are in
            self._begun = False

    def _process_keepalive(self) -> None:
        # A request that has begun is not idle: its end is the header timeout's
        # (with a 408), not a silent close by aiohttp's keep-alive timer.
        if self._begun and self._header_timer is not None:
            self._keepalive_handle = None  # fired: re-armed after the next answer
            return
        super()._process_keepalive()

    def _arm_header_timer(self, timeout: float) -> None:
        if timeout > 0:
            self._header_timer = self._loop.call_later(timeout, self._header_timeout)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self._messages or self._request_in_progress or self._force_close:
            return
        transport = self.transport
        if transport is None or transport.is_closing() or self._shed:
            self.force_close()
            return
        with suppress(Exception):
            transport.write(
                error_bytes(
                    408,
                    "Request Timeout",
                    "header_timeout",
                    f"the request headers did not arrive within "
                    f"{self._limits.header_timeout_s:g} s",
                )
            )
            if transport.can_write_eof():
                transport.write_eof()
        # A lingering close: what the client still sends is read and discarded for
        # a moment, since closing on unread bytes would reset the connection and
        # could destroy the 408 before the client reads it.
        self._discarding = True
        self._loop.call_later(LINGERING_CLOSE_S, self.force_close)

    def log_exception(self, *args: Any, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info")
        if isinstance(exc, HttpProcessingError | RequestPayloadError):
            # A body whose framing broke while it was read: answered already (400).
            log.info("malformed HTTP request body: %s", type(exc).__name__)
            return
        super().log_exception(*args, **kwargs)

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """aiohttp's parser errors (and any error its protocol catches) as JSON
        that echoes nothing of the request."""
        if status == 500 and exc is None:
            code, text = "internal_error", "internal error"
        elif status == 504:
            code, text = "timeout", "the request timed out"
        else:
            status, code, text = (
                parser_error(exc)
                if exc is not None
                else (status, "malformed_request", "the request is not valid HTTP")
            )
        if isinstance(exc, HttpProcessingError):
            log.info("malformed HTTP request from %s: %s", request.remote, code)
        elif exc is not None:
            log.error("error handling a request: %s", type(exc).__name__)
        if request.writer.output_size > 0:
            raise ConnectionError("the answer had started; the connection is closed")
        return json_error(status, code, text)


async def _shed_handler(request: BaseRequest) -> web.StreamResponse:
    return json_error(
        503,
        "too_many_connections",
        "the gateway is at its connection limit; retry shortly",
        **{"Retry-After": "1"},
    )


class GuardedServer(web.Server):
    """aiohttp's low-level server, building :class:`GuardedRequestHandler`s and
    counting open connections for the cap."""

    def __init__(
        self,
        handler: Callable[[BaseRequest], Awaitable[web.StreamResponse]],
        *,
        limits: ServerLimits,
        loop: asyncio.AbstractEventLoop,
        request_factory: Any = None,
        handler_cancellation: bool = False,
        **protocol_kwargs: Any,
    ) -> None:
        super().__init__(
            handler,
            request_factory=request_factory,
            handler_cancellation=handler_cancellation,
            loop=loop,
            **protocol_kwargs,
        )
        self.limits = limits
        self.open = 0
        self._protocol_loop = loop
        self._protocol_kwargs = protocol_kwargs

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        self.open += 1
        super().connection_made(handler, transport)

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        self.open -= 1
        super().connection_lost(handler, exc)

    def __call__(self) -> RequestHandler:
        return GuardedRequestHandler(
            self, loop=self._protocol_loop, limits=self.limits, **self._protocol_kwargs
        )


class GatewayRunner(web.AppRunner):
    """An AppRunner whose server is a :class:`GuardedServer`.

    A client that goes away cancels its handler (`handler_cancellation`), and so
    its upstream request, at once rather than at the next write; aiohttp's
    access log stays off (the audit record is the log of every request).
    """

    def __init__(
        self,
        app: web.Application,
        *,
        limits: ServerLimits,
        handle_signals: bool = False,
        shutdown_timeout: float = 60.0,
    ) -> None:
        super().__init__(
            app,
            handle_signals=handle_signals,
            access_log=None,
            handler_cancellation=True,
            shutdown_timeout=shutdown_timeout,
        )
        self.limits = limits

    async def _make_server(self) -> web.Server:
        # The app's own server (building it runs the app's start-up), rebuilt as
        # a guarded one with the same request handler and factory.
        server = await super()._make_server()
        return GuardedServer(
            _json_http_errors(server.request_handler),
            limits=self.limits,
            loop=asyncio.get_running_loop(),
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            access_log=None,
            lingering_time=LINGERING_TIME_S,
            keepalive_timeout=self.limits.keepalive_timeout_s,
        )


def _json_http_errors(
    handler: Callable[[BaseRequest], Awaitable[web.StreamResponse]],
) -> Callable[[BaseRequest], Awaitable[web.StreamResponse]]:
    """The app's handler, with the HTTP errors aiohttp raises before any middleware
    runs (a 417 for an `Expect` it does not know, quoting it) as JSON."""

    async def handle(request: BaseRequest) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            try:
                phrase = HTTPStatus(exc.status).phrase.lower()
            except ValueError:
                phrase = "error"
            return json_error(exc.status, f"http_{exc.status}", phrase)

    return handle


async def read_body(request: web.BaseRequest, timeout_s: float) -> bytes:
    """The request's body, read within `timeout_s` (408 past it), or a 400 when
    its framing is broken (a bad chunk size, a body shorter than its length)."""
    try:
        async with asyncio.timeout(timeout_s if timeout_s > 0 else None):
            return await request.read()
    except TimeoutError:
        raise RequestTimeoutError(
            f"the request body did not arrive within {timeout_s:g} s", code="body_timeout"
        ) from None
    except (RequestPayloadError, HttpProcessingError) as err:
        cause = err.__cause__ if isinstance(err, RequestPayloadError) else err
        _, code, message = parser_error(cause if cause is not None else err)
        if code in ("malformed_request", "internal_error"):
            code, message = "bad_body", "the request body is not framed correctly"
        raise BadRequestError(message, code=code) from None


async def serve(
    app: web.Application,
    *,
    host: str,
    port: int,
    limits: ServerLimits,
    shutdown_timeout: float = 60.0,
) -> None:
    """Serve `app` until cancelled (web.run_app's loop, with the guarded server)."""
    runner = GatewayRunner(
        app, limits=limits, handle_signals=True, shutdown_timeout=shutdown_timeout
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        while True:
            await asyncio.sleep(3600)
    finally:
        await runner.cleanup()


def run(
    app: web.Application,
    *,
    host: str,
    port: int,
    limits: ServerLimits,
    loop: asyncio.AbstractEventLoop,
) -> None:
    """Run `app` on `loop` until SIGINT/SIGTERM, as web.run_app does."""
    main = loop.create_task(serve(app, host=host, port=port, limits=limits))
    try:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        try:
            if not main.done():
                main.cancel()
                with suppress(asyncio.CancelledError):
                    loop.run_until_complete(main)
        finally:
            _cancel_all(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    tasks = asyncio.all_tasks(loop)
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
