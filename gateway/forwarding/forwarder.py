"""The forwarding engine: sends a routed request upstream, with failover.

:class:`Forwarder` owns one pooled aiohttp session per endpoint and, for each
request, tries the endpoints of the policy's route in order through the codec
the front picks for each endpoint's adapter (:mod:`gateway.providers`). It
enforces each endpoint's timeouts, fails over on connection errors, timeouts
before the first byte, 429 and 5xx, keeps a circuit breaker per endpoint, and
streams SSE to the client frame by frame as the upstream produces it. Every
attempt is recorded for the audit record.

Upstream requests carry only what the gateway decides (:mod:`.headers`). URLs
come from the registry only and redirects are never followed.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any

import aiohttp
from aiohttp import web
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

from gateway.errors import ProviderConfigError, UpstreamError
from gateway.forwarding.attempts import (
    Attempt,
    ClientDisconnectedError,
    ForwardResult,
    ForwardTrace,
)
from gateway.forwarding.breaker import BreakerPolicy, CircuitBreaker
from gateway.forwarding.exchange import Exchange, Outcome, StartResponse, Success, Target, ms
from gateway.forwarding.headers import DEFAULT_CLIENT_HEADERS, DEFAULT_USER_AGENT, HeaderPolicy
from gateway.forwarding.transport import (
    ClientGone,
)
from gateway.providers.adapter import Call, Codec, ProviderAdapter
from gateway.providers.failures import (
    CIRCUIT_OPEN,
    CLIENT_DISCONNECTED,
    CREDENTIAL_MISSING,
    ENDPOINT_UNAVAILABLE,
    OPERATION_UNSUPPORTED,
    AttemptFailure,
)
from gateway.providers.registry import adapter_for
from translator.registry import Endpoint, Registry

log = logging.getLogger("gateway.forwarding")


# Picks the codec for one endpoint's adapter (the front decides: native or bridged).
CodecFor = Callable[[ProviderAdapter], Codec | None]
# Told of every finished attempt: (endpoint, attempt, failure or None, ttft ms or
# None: a stream's first frame, from this attempt's start).
AttemptObserver = Callable[[str, Attempt, AttemptFailure | None, float | None], None]
# Told of every attempt about to be sent (endpoint); each ends with an AttemptObserver call.
AttemptStarter = Callable[[str], None]


class Forwarder:
    """Forwards requests to the endpoints of a route, with failover.

    Build it at start-up (this reads every endpoint's credentials and fails on
    a missing one), `await start()` inside the running loop, `await close()` at
    shutdown; `Forwarder.cleanup_ctx` fits `app.cleanup_ctx`.
    """

    def __init__(
        self,
        endpoints: Iterable[Endpoint],
        *,
        adapters: Mapping[str, ProviderAdapter] | None = None,
        environ: Mapping[str, str] | None = None,
        skip_unavailable: bool = False,
        unavailable: Mapping[str, str] | None = None,
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
        built (credential missing) is left out and recorded in `unavailable`
        instead of failing start-up; routes to it record a "credential_missing"
        attempt and fail over. `keepalive_s` stays below the usual 5 s server
        keep-alive (uvicorn, i.e. vLLM) so that a pooled connection is not
        reused just as the server closes it. With a `tracer`, each attempt is a
        span whose W3C context goes upstream. `unavailable` names endpoints
        already known to be unusable, with why (not built again).
        """
        self._headers = HeaderPolicy(
            client_headers, user_agent=user_agent, inject_trace=tracer is not None
        )
        self._policy = breaker or BreakerPolicy()
        self._clock = clock
        self._proxy = proxy
        self._pool_limit = pool_limit
        self._keepalive_s = keepalive_s
        self._max_response_bytes = max_response_bytes
        self._tracer = tracer
        self._exchange = Exchange(self._headers, proxy=proxy, max_response_bytes=max_response_bytes)
        self._targets: dict[str, Target] = {}
        self.unavailable: dict[str, str] = dict(unavailable or {})
        self.observers: list[AttemptObserver] = []
        self.starters: list[AttemptStarter] = []
        # Told of every upstream response's headers: (endpoint, headers).
        self.response_observers = self._exchange.response_observers
        for endpoint in endpoints:
            if endpoint.name in self.unavailable:
                continue
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
            self._targets[endpoint.name] = Target(
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

    def codec(self, name: str, codec_for: CodecFor) -> Codec | None:
        """The codec endpoint `name` would be sent through (None: unusable or unserved)."""
        target = self._targets.get(name)
        return None if target is None else codec_for(target.adapter)

    # -- forwarding ---------------------------------------------------------

    async def complete(
        self,
        route: Iterable[str],
        call: Call,
        codec_for: CodecFor,
        *,
        client_headers: Mapping[str, str] | None = None,
        trace: ForwardTrace | None = None,
    ) -> ForwardResult:
        """Forward a non-streamed request; the answer is in the front's shape.

        Raises UpstreamError when no endpoint answers (with every attempt).
        """

        async def once(target: Target, codec: Codec, started: float) -> Outcome:
            return await self._exchange.complete_once(target, codec, call, client_headers)

        return await self._forward(route, call, codec_for, trace or ForwardTrace(), once)

    async def stream(
        self,
        route: Iterable[str],
        call: Call,
        codec_for: CodecFor,
        *,
        start_response: StartResponse,
        client_headers: Mapping[str, str] | None = None,
        trace: ForwardTrace | None = None,
    ) -> ForwardResult:
        """Forward a streamed request, writing SSE frames to the client.

        `start_response(endpoint_name)` is awaited once the first frame from an
        upstream is ready (so that failover stays possible until then) and must
        return the prepared client response. The stream's last frames (its end,
        or after the first byte an error event) are returned in `tail`, not
        written: the caller records the request, then writes them and ends the
        response (:func:`gateway.forwarding.transport.write_tail`). Raises
        UpstreamError when no endpoint produced a first frame,
        ClientDisconnectedError when writing to the client fails; a
        cancellation propagates. Either way the upstream response is closed.
        """
        trace = trace or ForwardTrace()

        async def once(target: Target, codec: Codec, started: float) -> Outcome:
            return await self._exchange.stream_once(
                target,
                codec,
                call,
                client_headers=client_headers,
                start_response=start_response,
                trace=trace,
                started=started,
            )

        return await self._forward(route, call, codec_for, trace, once)

    # -- the attempt loop ---------------------------------------------------

    async def _forward(
        self,
        route: Iterable[str],
        call: Call,
        codec_for: CodecFor,
        trace: ForwardTrace,
        once: Callable[[Target, Codec, float], Awaitable[Outcome]],
    ) -> ForwardResult:
        """Try the route's endpoints in order until one answers or refuses."""
        started = time.perf_counter()
        route = list(route)
        last: AttemptFailure | None = None
        for target, codec in self._candidates(route, codec_for, trace):
            attempt_start = time.perf_counter()
            offset_ms = (attempt_start - started) * 1000.0
            self._started_attempt(target.endpoint.name)
            try:
                outcome, status = await (
                    once(target, codec, started)
                    if self._tracer is None
                    else self._traced(self._tracer, once, target, codec, started)
                )
            except ClientGone as gone:
                # The upstream was serving fine; the client left.
                target.breaker.success()
                self._record(
                    trace,
                    target,
                    200,
                    error=CLIENT_DISCONNECTED,
                    started=attempt_start,
                    failure=None,
                    offset_ms=offset_ms,
                )
                raise ClientDisconnectedError(trace) from gone.__cause__
            except BaseException as exc:
                self._abandon(trace, target, exc, attempt_start)
                raise
            failure = outcome.stream_error if isinstance(outcome, Success) else outcome
            if failure is not None and failure.retryable:
                target.breaker.failure()
            else:
                # Answered, or refused the request itself: the endpoint is fine.
                target.breaker.success()
            self._record(
                trace,
                target,
                status,
                error=failure.code if failure else None,
                started=attempt_start,
                failure=failure,
                offset_ms=offset_ms,
            )
            if failure is not None:
                self._log_failure(call.request_id, target, failure, status)
            if isinstance(outcome, Success):
                return self._result(trace, target, outcome, started)
            if status is None and not outcome.retryable and last is not None and last.retryable:
                # A fallback that cannot carry this request (refused before
                # anything was sent) does not turn the earlier endpoint's
                # outage into the client's fault: that failure stays the answer.
                continue
            last = outcome
            if not outcome.retryable:
                break
        raise self._final_error(last, trace, route)

    def _started_attempt(self, name: str) -> None:
        for begin in self.starters:
            try:
                begin(name)
            except Exception:
                log.exception("attempt starter %r failed", begin)

    @staticmethod
    async def _traced(
        tracer: Tracer,
        once: Callable[[Target, Codec, float], Awaitable[Outcome]],
        target: Target,
        codec: Codec,
        started: float,
    ) -> Outcome:
        """One attempt inside its span (current, so that the headers carry it)."""
        with tracer.start_as_current_span(
            "kamiwaza.upstream.attempt",
            kind=SpanKind.CLIENT,
            attributes={"kamiwaza.endpoint": target.endpoint.name},
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                outcome, status = await once(target, codec, started)
            except ClientGone:
                span.set_attribute("kamiwaza.outcome", CLIENT_DISCONNECTED)
                raise
            except BaseException as exc:
                code = "cancelled" if isinstance(exc, asyncio.CancelledError) else "aborted"
                span.set_attribute("kamiwaza.outcome", code)
                raise
            failure = outcome.stream_error if isinstance(outcome, Success) else outcome
            span.set_attribute("kamiwaza.outcome", failure.code if failure else "ok")
            if status is not None:
                span.set_attribute("http.response.status_code", status)
            if failure is not None:
                span.set_attribute("error.type", failure.code)
                span.set_status(Status(StatusCode.ERROR, failure.code))
            return outcome, status

    def _candidates(
        self, route: list[str], codec_for: CodecFor, trace: ForwardTrace
    ) -> Iterator[tuple[Target, Codec]]:
        if not self._started:
            raise RuntimeError("Forwarder.start() was not awaited")
        seen: set[str] = set()
        for name in route:
            if name in seen:
                continue
            seen.add(name)
            target = self._targets.get(name)
            if target is None:
                code = CREDENTIAL_MISSING if name in self.unavailable else ENDPOINT_UNAVAILABLE
                trace.attempts.append(Attempt(name, None, code, 0.0))
                continue
            codec = codec_for(target.adapter)
            if codec is None:
                # The operation guard keeps these out of decisions; a defence in depth.
                trace.attempts.append(Attempt(name, None, OPERATION_UNSUPPORTED, 0.0))
                continue
            if not target.breaker.allow():
                trace.attempts.append(Attempt(name, None, CIRCUIT_OPEN, 0.0))
                continue
            yield target, codec

    def _abandon(
        self, trace: ForwardTrace, target: Target, exc: BaseException, attempt_start: float
    ) -> None:
        """An attempt ended by cancellation or an unexpected error: no verdict on
        the endpoint unless it had already started answering."""
        if trace.endpoint == target.endpoint.name:
            target.breaker.success()
        else:
            target.breaker.abandon()
        code = "cancelled" if isinstance(exc, asyncio.CancelledError) else "aborted"
        status = 200 if trace.endpoint == target.endpoint.name else None
        self._record(trace, target, status, error=code, started=attempt_start, failure=None)

    def _record(
        self,
        trace: ForwardTrace,
        target: Target,
        status: int | None,
        *,
        error: str | None,
        started: float,
        failure: AttemptFailure | None,
        offset_ms: float = 0.0,
    ) -> None:
        """`offset_ms`: when this attempt started, from the first attempt's start."""
        attempt = Attempt(target.endpoint.name, status, error, ms(started))
        trace.attempts.append(attempt)
        ttft = None
        if trace.endpoint == target.endpoint.name and trace.ttft_ms is not None:
            # trace.ttft_ms counts from the first attempt's start: this attempt's part.
            ttft = round(max(0.0, trace.ttft_ms - offset_ms), 3)
        for observe in self.observers:
            try:
                observe(target.endpoint.name, attempt, failure, ttft)
            except Exception:
                log.exception("attempt observer %r failed", observe)

    @staticmethod
    def _log_failure(
        request_id: str, target: Target, failure: AttemptFailure, status: int | None
    ) -> None:
        # The message is already redacted by the codec; no headers are logged.
        log.warning(
            "upstream attempt failed request_id=%s endpoint=%s status=%s code=%s: %s",
            request_id,
            target.endpoint.name,
            status,
            failure.code,
            failure.message,
        )

    def _result(
        self, trace: ForwardTrace, target: Target, outcome: Success, started: float
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
            upstream_latency_ms=ms(started),
            ttft_ms=trace.ttft_ms,
            stream_error=outcome.stream_error,
            tail=outcome.tail,
        )

    def _final_error(
        self, last: AttemptFailure | None, trace: ForwardTrace, route: list[str]
    ) -> UpstreamError:
        headers: dict[str, str] = {}
        tried = "; ".join(f"{a.endpoint}: {a.error}" for a in trace.attempts)
        details = {
            "attempts": [
                {"endpoint": a.endpoint, "status": a.status, "error": a.error}
                for a in trace.attempts
            ]
        }
        if last is None:
            waits = [
                wait
                for name in route
                if (target := self._targets.get(name)) is not None
                and (wait := target.breaker.retry_after()) is not None
            ]
            if waits:
                headers["Retry-After"] = str(max(1, math.ceil(min(waits))))
            return UpstreamError(
                f"no endpoint of the route is available ({tried or 'the route is empty'})",
                code="no_upstream_available",
                status=503,
                attempts=trace.attempts,
                headers=headers,
                details=details,
            )
        status = 504 if last.timeout else last.status_for_client
        if status == 429 and last.retry_after is not None:
            headers["Retry-After"] = str(max(0, math.ceil(last.retry_after)))
        message = last.message
        if not last.retryable:
            # The request itself was refused: the upstream's answer, as it said it.
            details = {}
        elif len(trace.attempts) > 1:
            message = f"{message} (tried {tried})"
        return UpstreamError(
            message,
            code=last.code,
            status=status,
            attempts=trace.attempts,
            failure=last,
            headers=headers,
            details=details,
        )
