"""One attempt at one endpoint: build the request(s), send them, read the answer.

:class:`Exchange` does the I/O of a single attempt for the forwarder
(:mod:`.forwarder`), which decides what to try and in which order; a
non-streamed attempt may send several requests (a codec's `prepare_all`), a
streamed one sends one and relays its frames as they come.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Final

import aiohttp
from aiohttp import web

from gateway.forwarding.attempts import ForwardTrace
from gateway.forwarding.breaker import CircuitBreaker
from gateway.forwarding.headers import HeaderPolicy
from gateway.forwarding.transport import (
    ERROR_BODY_LIMIT,
    ClientGone,
    first_frames,
    read_limited,
    read_prefix,
    transport_failure,
    write,
)
from gateway.providers.adapter import Call, Codec, ProviderAdapter, UpstreamRequest
from gateway.providers.failures import BAD_UPSTREAM_RESPONSE, AttemptFailed, AttemptFailure
from gateway.providers.usage import Usage
from translator.registry import Endpoint

log = logging.getLogger("gateway.forwarding")

# Requests of one attempt sent at once (a codec's prepare_all may build several).
PARALLEL_REQUESTS: Final = 4
# Awaited once the first frame of a stream is ready; returns the prepared response.
StartResponse = Callable[[str], Awaitable[web.StreamResponse]]


@dataclass(slots=True)
class Target:
    endpoint: Endpoint
    adapter: ProviderAdapter
    breaker: CircuitBreaker
    session: aiohttp.ClientSession | None = None


@dataclass(slots=True)
class Success:
    status: int
    response: dict[str, Any] | None
    usage: Usage
    model: str | None
    stream_error: AttemptFailure | None = None
    tail: tuple[bytes, ...] = ()


# What one attempt gives: an answer or a failure, and the upstream's HTTP status.
Outcome = tuple[Success | AttemptFailure, int | None]


def ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 3)


class Exchange:
    """The I/O of one attempt, shared by every request of a forwarder."""

    def __init__(
        self, headers: HeaderPolicy, *, proxy: str | None, max_response_bytes: int
    ) -> None:
        self.headers = headers
        self.proxy = proxy
        self.max_response_bytes = max_response_bytes
        # Told of each response's headers (endpoint health reads rate-limit headroom).
        self.response_observers: list[Callable[[str, Mapping[str, str]], None]] = []

    async def send(
        self,
        target: Target,
        request: UpstreamRequest,
        request_id: str,
        client_headers: Mapping[str, str] | None,
        *,
        stream: bool,
    ) -> aiohttp.ClientResponse:
        session = target.session
        if session is None:
            raise RuntimeError("Forwarder.start() was not awaited")
        resp = await session.request(
            request.method,
            request.url,
            data=request.body,
            headers=self.headers.build(request.headers, client_headers, request_id, stream=stream),
            allow_redirects=False,
            proxy=self.proxy,
        )
        for observe in self.response_observers:
            try:
                observe(target.endpoint.name, resp.headers)
            except Exception:
                log.exception("response observer %r failed", observe)
        return resp

    @staticmethod
    async def prepare(target: Target, codec: Codec, call: Call) -> list[UpstreamRequest]:
        try:
            return await codec.prepare_all(call)
        except AttemptFailed:
            raise
        except Exception:
            log.exception("codec for endpoint %s failed to prepare", target.endpoint.name)
            raise AttemptFailed(
                AttemptFailure(
                    502, "adapter_error", "the gateway could not build the request", True
                )
            ) from None

    async def exchange(
        self,
        target: Target,
        codec: Codec,
        request: UpstreamRequest,
        call: Call,
        client_headers: Mapping[str, str] | None,
    ) -> tuple[int, Mapping[str, str], bytes]:
        """One non-streamed request; a non-2xx answer raises its classified failure."""
        resp = await self.send(target, request, call.request_id, client_headers, stream=False)
        try:
            status = resp.status
            if not 200 <= status < 300:
                raw = await read_prefix(resp, ERROR_BODY_LIMIT)
                failure = codec.classify_error(status, resp.headers, raw)
                raise _StatusFailure(failure, status)
            raw = await read_limited(resp, self.max_response_bytes)
            return status, resp.headers, raw
        finally:
            resp.release()

    async def complete_once(
        self,
        target: Target,
        codec: Codec,
        call: Call,
        client_headers: Mapping[str, str] | None,
    ) -> Outcome:
        timeouts = target.endpoint.timeouts
        status: int | None = None
        try:
            # A non-streamed answer only arrives once it is fully generated, so
            # its headers come at the end: first_token_ms does not apply here,
            # total_ms bounds the whole exchange.
            async with asyncio.timeout(timeouts.total_ms / 1000.0):
                requests = await self.prepare(target, codec, call)
                if len(requests) == 1:
                    answers = [
                        await self.exchange(target, codec, requests[0], call, client_headers)
                    ]
                else:
                    answers = await self.exchange_all(target, codec, requests, call, client_headers)
                status = answers[-1][0]
                answer, usage = _parse(codec, call, answers)
        except _StatusFailure as err:
            return redacted(target, err.failure), err.status
        except AttemptFailed as err:
            return redacted(target, err.failure), status
        except Exception as err:
            return redacted(target, transport_failure(err, None)), status
        model = codec.upstream_model(call) or _str(answer.get("model"))
        return Success(200, answer, usage or codec.estimate_usage(call, answer), model), status

    async def exchange_all(
        self,
        target: Target,
        codec: Codec,
        requests: list[UpstreamRequest],
        call: Call,
        client_headers: Mapping[str, str] | None,
    ) -> list[tuple[int, Mapping[str, str], bytes]]:
        gate = asyncio.Semaphore(PARALLEL_REQUESTS)

        async def one(request: UpstreamRequest) -> tuple[int, Mapping[str, str], bytes]:
            async with gate:
                return await self.exchange(target, codec, request, call, client_headers)

        tasks = [asyncio.ensure_future(one(r)) for r in requests]
        try:
            return list(await asyncio.gather(*tasks))
        finally:
            # The first failure (or a cancellation) ends the rest: the attempt has failed.
            for task in tasks:
                task.cancel()

    async def stream_once(
        self,
        target: Target,
        codec: Codec,
        call: Call,
        *,
        client_headers: Mapping[str, str] | None,
        start_response: StartResponse,
        trace: ForwardTrace,
        started: float,
    ) -> Outcome:
        timeouts = target.endpoint.timeouts
        translator = codec.stream_translator(call)
        model = codec.upstream_model(call)
        resp: aiohttp.ClientResponse | None = None
        client: web.StreamResponse | None = None
        pending: list[bytes] = []
        tail: list[bytes] = []
        status: int | None = None
        clean = False
        first_cm = asyncio.timeout(timeouts.first_token_ms / 1000.0)
        try:
            try:
                async with asyncio.timeout(timeouts.total_ms / 1000.0):
                    async with first_cm:
                        request = (await self.prepare(target, codec, call))[0]
                        resp = await self.send(
                            target, request, call.request_id, client_headers, stream=True
                        )
                        status = resp.status
                        if not 200 <= status < 300:
                            raw = await read_prefix(resp, ERROR_BODY_LIMIT)
                            failure = codec.classify_error(status, resp.headers, raw)
                            return redacted(target, failure), status
                        frames, eof = await first_frames(resp, translator)
                    # The first frame is ready: this endpoint is committed.
                    trace.ttft_ms = ms(started)
                    trace.endpoint = target.endpoint.name
                    trace.model = model
                    try:
                        client = await start_response(target.endpoint.name)
                    except (ConnectionResetError, aiohttp.ClientConnectionResetError) as err:
                        raise ClientGone from err
                    if eof:
                        tail = frames  # the whole answer came at once
                    else:
                        await write(client, frames)
                    while not eof:
                        chunk = await resp.content.readany()
                        if chunk:
                            frames = translator.feed(chunk)
                            if frames:
                                await write(client, frames)
                        else:
                            tail, eof = translator.finish(), True
                    clean = True
            except (ClientGone, asyncio.CancelledError):
                trace.usage = translator.usage
                raise
            except AttemptFailed as err:
                failure = err.failure
                # Before the commit these are dropped: the next endpoint answers
                # in full instead. After it, they go out before the error event.
                pending = err.frames
            except Exception as err:
                failure = transport_failure(err, first_cm if client is None else None)
            usage = translator.usage or codec.estimate_usage(call, None)
            if clean:
                return Success(200, None, usage, model, tail=tuple(tail)), status
            failure = redacted(target, failure)
            if client is None:
                return failure, status
            # After the first byte there is no failover: the stream ends with an
            # error event the client's SDK understands.
            frames = [*pending, *translator.error_frames(failure)]
            return Success(200, None, usage, model, failure, tuple(frames)), status
        finally:
            if resp is not None:
                if clean:
                    resp.release()  # fully read: the connection goes back to the pool
                else:
                    # Closing the connection is how the upstream learns that the
                    # request was abandoned (vLLM and TGI abort generation).
                    resp.close()


def redacted(target: Target, failure: AttemptFailure) -> AttemptFailure:
    """`failure` with the endpoint's credentials taken out of its message and code.

    Codecs redact what they read from the upstream; this is the one place every
    failure passes on its way to the client, the audit record, the log and the
    stream's error event, so a codec that forgets cannot leak a key.
    """
    redact = target.adapter.redact
    message, code = redact(failure.message), redact(failure.code)
    if message == failure.message and code == failure.code:
        return failure
    return replace(failure, message=message, code=code)


class _StatusFailure(Exception):
    """A non-2xx answer inside one attempt, classified, with its status."""

    def __init__(self, failure: AttemptFailure, status: int) -> None:
        super().__init__(failure.message)
        self.failure = failure
        self.status = status


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _parse(
    codec: Codec, call: Call, answers: list[tuple[int, Mapping[str, str], bytes]]
) -> tuple[dict[str, Any], Usage | None]:
    try:
        return codec.parse_all(call, answers)
    except AttemptFailed:
        raise
    except Exception:
        log.exception("codec %s failed to parse an answer", type(codec).__name__)
        raise AttemptFailed(
            AttemptFailure(502, BAD_UPSTREAM_RESPONSE, "the upstream's answer was malformed", True)
        ) from None
