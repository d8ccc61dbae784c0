"""The forwarding engine: sends a routed request upstream, with failover.

:class:`Forwarder` owns one pooled aiohttp session per endpoint and, for each
request, tries the endpoints of the policy's route in order through their
provider adapters (:mod:`gateway.providers`). It enforces each endpoint's
timeouts, fails over on connection errors, timeouts before the first byte, 429
and 5xx, keeps a circuit breaker per endpoint, and streams SSE to the client
frame by frame as the upstream produces it. Every attempt is recorded for the
audit record.

Upstream requests carry only what the gateway decides: the adapter's body and
credential, an `X-Request-Id`, and client headers on a short allow-list (never a
credential, never a hop-by-hop header or one named in `Connection`). URLs come
from the registry only and redirects are never followed.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

from gateway.errors import UpstreamError
from gateway.providers.base import (
    BAD_UPSTREAM_RESPONSE,
    CIRCUIT_OPEN,
    CLIENT_DISCONNECTED,
    CONNECT_ERROR,
    CONNECT_TIMEOUT,
    ENDPOINT_UNAVAILABLE,
    FIRST_TOKEN_TIMEOUT,
    TOTAL_TIMEOUT,
    UPSTREAM_DISCONNECTED,
    ProviderAdapter,
    ProviderConfigError,
    StreamTranslator,
    UpstreamFailure,
    UpstreamFailureError,
    Usage,
    adapter_for,
    error_frame,
    estimate_completion_usage,
    estimate_prompt_tokens,
)
from observability.tracing import TRACE_HEADERS, W3C
from translator.registry import Endpoint, Registry

log = logging.getLogger(__name__)

DEFAULT_USER_AGENT: Final = "kamiwaza-gateway/0.1"

# RFC 9110 §7.6.1 hop-by-hop headers, plus the non-standard ones proxies use.
HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# Never taken from the client, whatever the allow-list says: credentials (the
# client's must never leave), and headers the gateway itself sets.
NEVER_FROM_CLIENT: Final = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "api-key",
        "x-api-key",
        "x-goog-api-key",
        "cookie",
        "host",
        "content-length",
        "content-type",
        "content-encoding",
        "accept-encoding",
        "x-request-id",
        # Trace context: the gateway sends its own attempt span's (tracing on)
        # and continues the client's in its server span, never forwards it.
        *TRACE_HEADERS,
    }
)
DEFAULT_CLIENT_HEADERS: Final = ("user-agent",)

# An error body is read only this far: enough for the message.
ERROR_BODY_LIMIT: Final = 64 * 1024
# Writing the final error event to a client that does not read must not hang.
ERROR_EVENT_WRITE_TIMEOUT_S: Final = 5.0


# ---------------------------------------------------------------------------
# Results and errors.


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try of one endpoint (or one skipped, e.g. with its circuit open)."""

    endpoint: str
    status: int | None  # the upstream's HTTP status; None when none arrived
    error: str | None  # None on success; else a code, e.g. "timeout", "circuit_open"
    message: str | None
    latency_ms: float


@dataclass(slots=True)
class ForwardTrace:
    """What the forwarder did so far; pass one in to know it even when the
    call ends with an exception (client disconnect, cancellation)."""

    attempts: list[Attempt] = field(default_factory=list)
    endpoint: str | None = None  # the endpoint that answered (streams: that started)
    model: str | None = None
    usage: Usage | None = None
    ttft_ms: float | None = None


@dataclass(frozen=True, slots=True)
class ForwardResult:
    """The outcome of a forwarded request that an endpoint answered."""

    endpoint: str
    model: str | None  # the model the upstream was asked for
    status: int  # the HTTP status the client gets (200)
    response: dict[str, Any] | None  # the `chat.completion` JSON; None for streams
    usage: Usage
    cost_usd: float
    attempts: tuple[Attempt, ...]
    upstream_latency_ms: float  # from the first attempt's start to the answer's end
    ttft_ms: float | None  # streams: from the first attempt's start to the first frame
    # A stream that failed after its first byte ended with this error event.
    stream_error: UpstreamFailure | None = None


class UpstreamFailedError(UpstreamError):
    """No endpoint of the route answered (or one refused the request itself).

    `status` is 504 when the last failure was a timeout, 429 (with Retry-After)
    when rate limited, the upstream's status for a client error (4xx, no
    failover), 503 when every endpoint was skipped, else 502.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str,
        status: int,
        attempts: Sequence[Attempt],
        failure: UpstreamFailure | None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, code=code, status=status, headers=headers)
        if 400 <= status < 500 and status != 429:
            self.type = "invalid_request_error"
        self.attempts: tuple[Attempt, ...] = tuple(attempts)
        self.failure = failure


class ClientDisconnectedError(ConnectionResetError):
    """The client went away mid-stream; the upstream request was closed.

    A ConnectionResetError, so handlers that catch those still do; `trace`
    tells what was sent and used (for the audit record).
    """

    def __init__(self, trace: ForwardTrace) -> None:
        super().__init__("the client disconnected")
        self.trace = trace


class _ClientGone(Exception):
    """Internal: writing to the client failed (kept apart from upstream errors)."""


# ---------------------------------------------------------------------------
# Circuit breaker.


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    failure_threshold: int = 5  # consecutive failures that open the circuit
    cooldown_s: float = 30.0  # how long an open circuit skips the endpoint


BreakerState = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """Per-endpoint breaker: closed → open after N consecutive failures → after
    the cooldown, half-open lets one trial request through → closed on its
    success, open again on its failure.

    State is per process (per replica): it protects this replica from waiting on
    a dead endpoint and needs no coordination.
    """

    def __init__(self, policy: BreakerPolicy, clock: Callable[[], float]) -> None:
        self._policy = policy
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_in_flight = False

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return "closed"
        if self._clock() - self._opened_at < self._policy.cooldown_s:
            return "open"
        return "half_open"

    def retry_after(self) -> float | None:
        """Seconds until an open circuit lets a trial through."""
        if self._opened_at is None:
            return None
        return max(self._policy.cooldown_s - (self._clock() - self._opened_at), 0.0)

    def allow(self) -> bool:
        """Whether to send a request now; in half-open, reserves the one trial."""
        state = self.state
        if state == "closed":
            return True
        if state == "open" or self._trial_in_flight:
            return False
        self._trial_in_flight = True
        return True

    def success(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._trial_in_flight = False

    def failure(self) -> None:
        self._failures += 1
        if self._trial_in_flight or self._failures >= self._policy.failure_threshold:
            self._opened_at = self._clock()
        self._trial_in_flight = False

    def abandon(self) -> None:
        """An allowed request ended without a verdict (cancelled): free the trial."""
        self._trial_in_flight = False


# ---------------------------------------------------------------------------
# Headers.


def forwardable_client_headers(
    headers: Mapping[str, str] | None, allowed: frozenset[str]
) -> list[tuple[str, str]]:
    """The client headers that may go upstream: on `allowed`, not hop-by-hop,
    not named in `Connection`, never a credential."""
    if not headers:
        return []
    picked: list[tuple[str, str, str]] = []
    named: set[str] = set()
    for key, value in headers.items():
        low = key.lower()
        if low == "connection":
            named.update(token.strip().lower() for token in value.split(","))
        elif low in allowed and low not in HOP_BY_HOP and low not in NEVER_FROM_CLIENT:
            picked.append((low, key, value))
    return [(key, value) for low, key, value in picked if low not in named]


# ---------------------------------------------------------------------------
# The forwarder.


@dataclass(slots=True)
class _Target:
    endpoint: Endpoint
    adapter: ProviderAdapter
    breaker: CircuitBreaker
    session: aiohttp.ClientSession | None = None


@dataclass(slots=True)
class _Success:
    status: int
    response: dict[str, Any] | None
    usage: Usage
    model: str | None
    stream_error: UpstreamFailure | None = None


# What one attempt gives: an answer or a failure, and the upstream's HTTP status.
_Outcome = tuple[_Success | UpstreamFailure, int | None]


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 3)


class Forwarder:
    """Forwards chat completions to the endpoints of a route, with failover.

    Build it at startup (this reads every endpoint's credentials and fails on a
    missing one), `await start()` inside the running loop, `await close()` at
    shutdown; `Forwarder.cleanup_ctx` fits `app.cleanup_ctx`.
    """

    def __init__(
        self,
        endpoints: Iterable[Endpoint],
        *,
        adapters: Mapping[str, ProviderAdapter] | None = None,
        environ: Mapping[str, str] | None = None,
        skip_unavailable: bool = False,
        breaker: BreakerPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        user_agent: str = DEFAULT_USER_AGENT,
        client_headers: Iterable[str] = DEFAULT_CLIENT_HEADERS,
        proxy: str | None = None,
        pool_limit: int = 256,
        keepalive_s: float = 4.0,
        max_response_bytes: int = 32 * 1024 * 1024,
        tracer: Tracer | None = None,
    ) -> None:
        """
        `adapters` replaces adapter_for() per endpoint name (tests, custom
        providers). With `skip_unavailable`, an endpoint whose adapter cannot be
        built (type not implemented yet, credential missing) is left out and
        recorded in `unavailable` instead of failing startup; routes to it record
        an "endpoint_unavailable" attempt and fail over. `keepalive_s` stays
        below the usual 5 s server keep-alive (uvicorn, i.e. vLLM) so that a
        pooled connection is not reused just as the server closes it. With a
        `tracer`, each attempt is a span whose W3C context goes upstream.
        """
        allowed = frozenset(h.lower() for h in client_headers)
        if bad := sorted(allowed & (NEVER_FROM_CLIENT | HOP_BY_HOP)):
            raise ValueError(f"these headers are never forwarded from clients: {', '.join(bad)}")
        self._allowed_client_headers = allowed
        self._policy = breaker or BreakerPolicy()
        self._clock = clock
        self._user_agent = user_agent
        self._proxy = proxy
        self._pool_limit = pool_limit
        self._keepalive_s = keepalive_s
        self._max_response_bytes = max_response_bytes
        self._tracer = tracer
        self._targets: dict[str, _Target] = {}
        self.unavailable: dict[str, str] = {}
        for endpoint in endpoints:
            adapter = (adapters or {}).get(endpoint.name)
            if adapter is None:
                try:
                    adapter = adapter_for(endpoint, environ=environ)
                except ProviderConfigError as err:
                    if not skip_unavailable:
                        raise
                    log.warning("endpoint unavailable: %s", err)
                    self.unavailable[endpoint.name] = str(err)
                    continue
            self._targets[endpoint.name] = _Target(
                endpoint, adapter, CircuitBreaker(self._policy, clock)
            )
        self._started = False

    @classmethod
    def from_registry(cls, registry: Registry, **kwargs: Any) -> Forwarder:
        return cls(registry.endpoints.values(), **kwargs)

    # -- lifecycle ----------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            return
        try:
            await self._open_sessions()
        except BaseException:
            await self.close()
            raise
        self._started = True

    async def _open_sessions(self) -> None:
        for target in self._targets.values():
            connect_s = target.endpoint.timeouts.connect_ms / 1000.0
            connector = aiohttp.TCPConnector(
                limit=self._pool_limit,
                limit_per_host=0,
                keepalive_timeout=self._keepalive_s,
                ttl_dns_cache=60,
            )
            target.session = aiohttp.ClientSession(
                connector=connector,
                # Only the socket connect is bounded here; first token and total
                # deadlines are enforced per request by the forwarder.
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_s),
                auto_decompress=True,
                trust_env=False,  # no proxy from the environment; `proxy` if configured
                # Cookies an upstream sets must never flow into another
                # tenant's request over the shared session.
                cookie_jar=aiohttp.DummyCookieJar(),
                raise_for_status=False,
            )
            await target.adapter.start()

    async def close(self) -> None:
        for target in self._targets.values():
            if target.session is not None:
                await target.session.close()
                target.session = None
            await target.adapter.close()
        self._started = False

    async def __aenter__(self) -> Forwarder:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def cleanup_ctx(self, app: web.Application) -> AsyncIterator[None]:
        """For `app.cleanup_ctx.append(forwarder.cleanup_ctx)`."""
        await self.start()
        yield
        await self.close()

    # -- introspection ------------------------------------------------------

    @property
    def endpoint_names(self) -> tuple[str, ...]:
        return tuple(self._targets)

    def adapter(self, name: str) -> ProviderAdapter:
        return self._targets[name].adapter

    def breaker(self, name: str) -> CircuitBreaker:
        return self._targets[name].breaker

    # -- forwarding ---------------------------------------------------------

    async def complete(
        self,
        route: Sequence[str],
        body: Mapping[str, Any],
        *,
        request_id: str,
        client_headers: Mapping[str, str] | None = None,
        trace: ForwardTrace | None = None,
    ) -> ForwardResult:
        """Forward a non-streamed request; the answer is a `chat.completion`.

        Raises UpstreamFailedError when no endpoint answers (with every attempt).
        """

        async def once(target: _Target, started: float) -> _Outcome:
            return await self._complete_once(target, body, request_id, client_headers)

        return await self._forward(route, request_id, trace or ForwardTrace(), once)

    async def stream(
        self,
        route: Sequence[str],
        body: Mapping[str, Any],
        *,
        request_id: str,
        start_response: Callable[[str], Awaitable[web.StreamResponse]],
        client_headers: Mapping[str, str] | None = None,
        trace: ForwardTrace | None = None,
    ) -> ForwardResult:
        """Forward a streamed request, writing OpenAI SSE frames to the client.

        `start_response(endpoint_name)` is awaited once the first frame from an
        upstream is ready (so that failover stays possible until then) and must
        return the prepared client response. The stream ends with `[DONE]`, or
        after the first byte with a final `data: {"error": ...}` event; the
        response is then `write_eof()`-ed. Raises UpstreamFailedError when no
        endpoint produced a first frame, ClientDisconnectedError when writing to
        the client fails; a cancellation propagates. Either way the upstream
        response is closed at once.
        """
        trace = trace or ForwardTrace()

        async def once(target: _Target, started: float) -> _Outcome:
            return await self._stream_once(
                target,
                body,
                request_id=request_id,
                client_headers=client_headers,
                start_response=start_response,
                trace=trace,
                started=started,
            )

        return await self._forward(route, request_id, trace, once)

    # -- internals ----------------------------------------------------------

    async def _forward(
        self,
        route: Sequence[str],
        request_id: str,
        trace: ForwardTrace,
        once: Callable[[_Target, float], Awaitable[_Outcome]],
    ) -> ForwardResult:
        """Try the route's endpoints in order until one answers or refuses."""
        started = time.perf_counter()
        last: UpstreamFailure | None = None
        for target in self._candidates(route, trace):
            attempt_start = time.perf_counter()
            try:
                outcome, status = await (
                    once(target, started)
                    if self._tracer is None
                    else self._traced(self._tracer, once, target, started)
                )
            except _ClientGone as gone:
                # The upstream was serving fine; the client left.
                target.breaker.success()
                self._record(
                    trace,
                    target,
                    status=200,
                    error=CLIENT_DISCONNECTED,
                    message="the client disconnected",
                    started=attempt_start,
                )
                raise ClientDisconnectedError(trace) from gone.__cause__
            except BaseException as exc:
                self._abandon(trace, target, exc, attempt_start)
                raise
            failure = outcome.stream_error if isinstance(outcome, _Success) else outcome
            if failure is not None and failure.retryable:
                target.breaker.failure()
            else:
                # Answered, or refused the request itself: the endpoint is fine.
                target.breaker.success()
            self._record(
                trace,
                target,
                status=status,
                error=failure.code if failure else None,
                message=failure.message if failure else None,
                started=attempt_start,
            )
            if failure is not None:
                self._log_failure(request_id, target, failure, status)
            if isinstance(outcome, _Success):
                return self._result(trace, target, outcome, started)
            last = outcome
            if not outcome.retryable:
                break
        raise self._final_error(last, trace, route)

    @staticmethod
    async def _traced(
        tracer: Tracer,
        once: Callable[[_Target, float], Awaitable[_Outcome]],
        target: _Target,
        started: float,
    ) -> _Outcome:
        """One attempt inside its span (current, so that _headers injects it)."""
        with tracer.start_as_current_span(
            "kamiwaza.upstream.attempt",
            kind=SpanKind.CLIENT,
            attributes={"kamiwaza.endpoint": target.endpoint.name},
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                outcome, status = await once(target, started)
            except _ClientGone:
                span.set_attribute("kamiwaza.outcome", CLIENT_DISCONNECTED)
                raise
            except BaseException as exc:
                code = "cancelled" if isinstance(exc, asyncio.CancelledError) else "aborted"
                span.set_attribute("kamiwaza.outcome", code)
                raise
            failure = outcome.stream_error if isinstance(outcome, _Success) else outcome
            span.set_attribute("kamiwaza.outcome", failure.code if failure else "ok")
            if status is not None:
                span.set_attribute("http.response.status_code", status)
            if failure is not None:
                span.set_attribute("error.type", failure.code)
                span.set_status(Status(StatusCode.ERROR, failure.code))
            return outcome, status

    def _candidates(self, route: Sequence[str], trace: ForwardTrace) -> Iterator[_Target]:
        if not self._started:
            raise RuntimeError("Forwarder.start() was not awaited")
        seen: set[str] = set()
        for name in route:
            if name in seen:
                continue
            seen.add(name)
            target = self._targets.get(name)
            if target is None:
                reason = self.unavailable.get(name, "the endpoint is not in the registry")
                trace.attempts.append(Attempt(name, None, ENDPOINT_UNAVAILABLE, reason, 0.0))
                continue
            if not target.breaker.allow():
                trace.attempts.append(
                    Attempt(name, None, CIRCUIT_OPEN, "skipped: the circuit is open", 0.0)
                )
                continue
            yield target

    def _abandon(
        self, trace: ForwardTrace, target: _Target, exc: BaseException, attempt_start: float
    ) -> None:
        """An attempt ended by cancellation or an unexpected error: no verdict on
        the endpoint unless it had already started answering."""
        if trace.endpoint == target.endpoint.name:
            target.breaker.success()
        else:
            target.breaker.abandon()
        code = "cancelled" if isinstance(exc, asyncio.CancelledError) else "aborted"
        status = 200 if trace.endpoint == target.endpoint.name else None
        self._record(trace, target, status=status, error=code, message=None, started=attempt_start)

    @staticmethod
    def _record(
        trace: ForwardTrace,
        target: _Target,
        *,
        status: int | None,
        error: str | None,
        message: str | None,
        started: float,
    ) -> None:
        trace.attempts.append(Attempt(target.endpoint.name, status, error, message, _ms(started)))

    @staticmethod
    def _log_failure(
        request_id: str, target: _Target, failure: UpstreamFailure, status: int | None
    ) -> None:
        # The message is already redacted by the adapter; no headers are logged.
        log.warning(
            "upstream attempt failed request_id=%s endpoint=%s status=%s code=%s: %s",
            request_id,
            target.endpoint.name,
            status,
            failure.code,
            failure.message,
        )

    def _result(
        self, trace: ForwardTrace, target: _Target, outcome: _Success, started: float
    ) -> ForwardResult:
        trace.endpoint = target.endpoint.name
        trace.model = outcome.model
        trace.usage = outcome.usage
        return ForwardResult(
            endpoint=target.endpoint.name,
            model=outcome.model,
            status=outcome.status,
            response=outcome.response,
            usage=outcome.usage,
            cost_usd=outcome.usage.cost_usd(target.endpoint.pricing),
            attempts=tuple(trace.attempts),
            upstream_latency_ms=_ms(started),
            ttft_ms=trace.ttft_ms,
            stream_error=outcome.stream_error,
        )

    def _final_error(
        self, last: UpstreamFailure | None, trace: ForwardTrace, route: Sequence[str]
    ) -> UpstreamFailedError:
        headers: dict[str, str] = {}
        if last is None:
            waits = [
                wait
                for name in route
                if (target := self._targets.get(name)) is not None
                and (wait := target.breaker.retry_after()) is not None
            ]
            if waits:
                headers["Retry-After"] = str(max(1, math.ceil(min(waits))))
            return UpstreamFailedError(
                "no endpoint of the route is available",
                code="no_upstream_available",
                status=503,
                attempts=trace.attempts,
                failure=None,
                headers=headers,
            )
        status = 504 if last.timeout else last.status_for_client
        if status == 429 and last.retry_after is not None:
            headers["Retry-After"] = str(max(0, math.ceil(last.retry_after)))
        return UpstreamFailedError(
            last.message,
            code=last.code,
            status=status,
            attempts=trace.attempts,
            failure=last,
            headers=headers,
        )

    def _headers(
        self,
        adapter_headers: Mapping[str, str],
        client_headers: Mapping[str, str] | None,
        request_id: str,
        *,
        stream: bool,
    ) -> CIMultiDict[str]:
        headers: CIMultiDict[str] = CIMultiDict()
        for key, value in forwardable_client_headers(client_headers, self._allowed_client_headers):
            if key not in headers:
                headers[key] = value
        headers.setdefault("User-Agent", self._user_agent)
        if stream:
            headers["Accept"] = "text/event-stream"
            # Compressed SSE would be buffered by the compressor, not streamed.
            headers["Accept-Encoding"] = "identity"
        else:
            headers["Accept"] = "application/json"
        headers["X-Request-Id"] = request_id
        if self._tracer is not None:
            W3C.inject(headers)  # the current attempt span's traceparent/tracestate
        # The adapter's own headers (credential, content type) win over all else.
        headers.update(adapter_headers)
        return headers

    async def _send(
        self,
        target: _Target,
        body: Mapping[str, Any],
        request_id: str,
        client_headers: Mapping[str, str] | None,
        *,
        stream: bool,
    ) -> aiohttp.ClientResponse:
        session = target.session
        if session is None:
            raise RuntimeError("Forwarder.start() was not awaited")
        try:
            request = await target.adapter.prepare(body, stream=stream)
        except UpstreamFailureError:
            raise
        except Exception:
            log.exception("adapter for endpoint %s failed to prepare", target.endpoint.name)
            raise UpstreamFailureError(
                UpstreamFailure(
                    502, "adapter_error", "the gateway could not build the request", True
                )
            ) from None
        return await session.request(
            request.method,
            request.url,
            data=request.body,
            headers=self._headers(request.headers, client_headers, request_id, stream=stream),
            allow_redirects=False,
            proxy=self._proxy,
        )

    async def _complete_once(
        self,
        target: _Target,
        body: Mapping[str, Any],
        request_id: str,
        client_headers: Mapping[str, str] | None,
    ) -> _Outcome:
        timeouts = target.endpoint.timeouts
        status: int | None = None
        try:
            # A non-streamed answer only arrives once it is fully generated, so
            # its headers come at the end: first_token_ms does not apply here,
            # total_ms bounds the whole exchange.
            async with asyncio.timeout(timeouts.total_ms / 1000.0):
                resp = await self._send(target, body, request_id, client_headers, stream=False)
                try:
                    status = resp.status
                    if not 200 <= status < 300:
                        raw = await _read_prefix(resp, ERROR_BODY_LIMIT)
                        return target.adapter.classify_error(status, resp.headers, raw), status
                    raw = await _read_limited(resp, self._max_response_bytes)
                    completion, usage = _parse(target.adapter, status, resp.headers, raw)
                finally:
                    resp.release()
        except UpstreamFailureError as err:
            return err.failure, status
        except Exception as err:
            return _transport_failure(err, None), status
        model = target.adapter.upstream_model(body) or _str(completion.get("model"))
        return _Success(
            200, completion, usage or estimate_completion_usage(body, completion), model
        ), status

    async def _stream_once(
        self,
        target: _Target,
        body: Mapping[str, Any],
        *,
        request_id: str,
        client_headers: Mapping[str, str] | None,
        start_response: Callable[[str], Awaitable[web.StreamResponse]],
        trace: ForwardTrace,
        started: float,
    ) -> _Outcome:
        timeouts = target.endpoint.timeouts
        translator = target.adapter.stream_translator(body)
        model = target.adapter.upstream_model(body)
        resp: aiohttp.ClientResponse | None = None
        client: web.StreamResponse | None = None
        pending: list[bytes] = []
        status: int | None = None
        clean = False
        first_cm = asyncio.timeout(timeouts.first_token_ms / 1000.0)
        try:
            try:
                async with asyncio.timeout(timeouts.total_ms / 1000.0):
                    async with first_cm:
                        resp = await self._send(
                            target, body, request_id, client_headers, stream=True
                        )
                        status = resp.status
                        if not 200 <= status < 300:
                            raw = await _read_prefix(resp, ERROR_BODY_LIMIT)
                            return target.adapter.classify_error(status, resp.headers, raw), status
                        frames, eof = await _first_frames(resp, translator)
                    # The first frame is ready: this endpoint is committed.
                    trace.ttft_ms = _ms(started)
                    trace.endpoint = target.endpoint.name
                    trace.model = model
                    try:
                        client = await start_response(target.endpoint.name)
                    except (ConnectionResetError, aiohttp.ClientConnectionResetError) as err:
                        raise _ClientGone from err
                    await _write(client, frames)
                    while not eof:
                        chunk = await resp.content.readany()
                        if chunk:
                            frames = translator.feed(chunk)
                        else:
                            frames, eof = translator.finish(), True
                        if frames:
                            await _write(client, frames)
                    clean = True
            except (_ClientGone, asyncio.CancelledError):
                trace.usage = translator.usage
                raise
            except UpstreamFailureError as err:
                failure = err.failure
                # Before the commit these are dropped: the next endpoint answers
                # in full instead. After it, they go out before the error event.
                pending = err.frames
            except Exception as err:
                failure = _transport_failure(err, first_cm if client is None else None)
            if clean:
                assert client is not None
                await _end(client)
                usage = translator.usage or Usage(estimate_prompt_tokens(body), 0, estimated=True)
                return _Success(200, None, usage, model), status
            if client is None:
                return failure, status
            # After the first byte there is no failover: end the stream with an
            # error event the client's SDK understands.
            await _write_error_event(client, [*pending, error_frame(failure)])
            usage = translator.usage or Usage(estimate_prompt_tokens(body), 0, estimated=True)
            return _Success(200, None, usage, model, stream_error=failure), status
        finally:
            if resp is not None:
                if clean:
                    resp.release()  # fully read: the connection goes back to the pool
                else:
                    # Closing the connection is how the upstream learns that the
                    # request was abandoned (vLLM and TGI abort generation).
                    resp.close()


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _parse(
    adapter: ProviderAdapter, status: int, headers: Mapping[str, str], raw: bytes
) -> tuple[dict[str, Any], Usage | None]:
    try:
        return adapter.parse_response(status, headers, raw)
    except UpstreamFailureError:
        raise
    except Exception:
        log.exception("adapter for endpoint %s failed to parse an answer", adapter.name)
        raise UpstreamFailureError(
            UpstreamFailure(502, BAD_UPSTREAM_RESPONSE, "the upstream's answer was malformed", True)
        ) from None


def _transport_failure(err: Exception, first_cm: asyncio.Timeout | None) -> UpstreamFailure:
    """Classify an exception raised while talking to the upstream."""
    if isinstance(err, aiohttp.ConnectionTimeoutError):
        return UpstreamFailure(
            504, CONNECT_TIMEOUT, "connecting to the upstream timed out", True, timeout=True
        )
    if isinstance(err, TimeoutError):
        if first_cm is not None and first_cm.expired():
            return UpstreamFailure(
                504,
                FIRST_TOKEN_TIMEOUT,
                "the upstream did not start answering in time",
                True,
                timeout=True,
            )
        return UpstreamFailure(
            504, TOTAL_TIMEOUT, "the upstream did not finish answering in time", True, timeout=True
        )
    if isinstance(err, aiohttp.ClientConnectorError):
        # Only the errno's text: the OS message names the upstream's address,
        # which is the operator's business, not the client's.
        errno = err.os_error.errno
        reason = os.strerror(errno) if errno else type(err.os_error).__name__
        return UpstreamFailure(
            502, CONNECT_ERROR, f"cannot connect to the upstream: {reason}", True
        )
    if isinstance(err, aiohttp.ClientResponseError | aiohttp.ClientPayloadError):
        return UpstreamFailure(
            502, BAD_UPSTREAM_RESPONSE, "the upstream's answer was malformed or cut short", True
        )
    if isinstance(err, aiohttp.ClientError):
        return UpstreamFailure(
            502, UPSTREAM_DISCONNECTED, "the upstream closed the connection", True
        )
    log.exception("unexpected error while forwarding", exc_info=err)
    return UpstreamFailure(502, "forwarding_error", "the gateway failed to forward", True)


async def _read_limited(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    if resp.content_length is not None and resp.content_length > limit:
        raise UpstreamFailureError(
            UpstreamFailure(502, BAD_UPSTREAM_RESPONSE, "the upstream's answer is too large", True)
        )
    parts: list[bytes] = []
    size = 0
    while chunk := await resp.content.readany():
        size += len(chunk)
        if size > limit:
            raise UpstreamFailureError(
                UpstreamFailure(
                    502, BAD_UPSTREAM_RESPONSE, "the upstream's answer is too large", True
                )
            )
        parts.append(chunk)
    return b"".join(parts)


async def _read_prefix(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """Up to `limit` bytes of an error body; the rest is not worth waiting for."""
    parts: list[bytes] = []
    size = 0
    while size < limit and (chunk := await resp.content.readany()):
        parts.append(chunk)
        size += len(chunk)
    return b"".join(parts)[:limit]


async def _first_frames(
    resp: aiohttp.ClientResponse, translator: StreamTranslator
) -> tuple[list[bytes], bool]:
    """Read until the translator has frames for the client; (frames, at EOF)."""
    while True:
        chunk = await resp.content.readany()
        if not chunk:
            return translator.finish(), True
        frames = translator.feed(chunk)
        if frames:
            return frames, False


async def _write(client: web.StreamResponse, frames: list[bytes]) -> None:
    try:
        await client.write(frames[0] if len(frames) == 1 else b"".join(frames))
    except (ConnectionResetError, aiohttp.ClientConnectionResetError) as err:
        raise _ClientGone from err


async def _end(client: web.StreamResponse) -> None:
    try:
        await client.write_eof()
    except (ConnectionResetError, aiohttp.ClientConnectionResetError) as err:
        raise _ClientGone from err


async def _write_error_event(client: web.StreamResponse, frames: list[bytes]) -> None:
    try:
        async with asyncio.timeout(ERROR_EVENT_WRITE_TIMEOUT_S):
            await _write(client, frames)
            await _end(client)
    except TimeoutError:
        log.warning("client did not take the final error event in time")
