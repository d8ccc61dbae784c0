"""The forwarding engine against fake OpenAI-compatible upstreams on loopback.

A minimal aiohttp app plays the gateway's handler (as gateway.app will): it
calls Forwarder.complete()/stream() and turns UpstreamError into the
OpenAI error shape. Clients are aiohttp and the official `openai` SDK.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any
from unittest.mock import ANY

import aiohttp
import openai
import pytest
from aiohttp import web
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from gateway.errors import UpstreamError
from gateway.forwarding import (
    Attempt,
    BreakerPolicy,
    ClientDisconnectedError,
    Forwarder,
    ForwardResult,
    ForwardTrace,
)
from gateway.forwarding.transport import write_tail
from gateway.providers.adapter import Call
from tests.fake_upstream import Behavior, FakeUpstream
from tests.processes import free_port, serve_app
from tests.test_openai_compatible import validate_request
from translator.errors import Position
from translator.registry import Endpoint, Pricing, Registry, Timeouts

TOKEN_A = "sk-canary-aaaa-0123456789"
TOKEN_B = "sk-canary-bbbb-9876543210"
ENV = {"TOKEN_A": TOKEN_A, "TOKEN_B": TOKEN_B}
MESSAGES = [{"role": "user", "content": "Say hello to the gateway."}]
BODY: dict[str, Any] = {"model": "client-model", "messages": MESSAGES}
SBODY: dict[str, Any] = {**BODY, "stream": True}
FAST = Timeouts(connect_ms=500, first_token_ms=2000, total_ms=5000)

StartFake = Callable[..., Awaitable[FakeUpstream]]


def endpoint(name: str, url: str, token_env: str = "TOKEN_A", **kwargs: Any) -> Endpoint:
    values: dict[str, Any] = {
        "name": name,
        "type": "openai-compatible",
        "pos": Position("endpoints.yaml", 1, 1),
        "base_url": url,
        "model": f"{name}-model",
        "auth": {"bearer_token_env": token_env},
        "pricing": Pricing(input_per_1k=1.0, output_per_1k=2.0),
        "timeouts": FAST,
        "options": {"flavor": "vllm"},
    }
    values.update(kwargs)
    return Endpoint(**values)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def CHAT_CODEC(adapter: Any) -> Any:
    return adapter.codec("chat")


class Gateway:
    """A stand-in for the real /v1/route handler around one Forwarder."""

    def __init__(
        self, forwarder: Forwarder, route: list[str], *, handler_cancellation: bool = True
    ) -> None:
        self.forwarder = forwarder
        self.route = route
        self.handler_cancellation = handler_cancellation
        self.results: list[ForwardResult] = []
        self.errors: list[BaseException] = []
        self.traces: list[ForwardTrace] = []
        self.handler_done = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> Gateway:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.handle)
        self._runner, port = await serve_app(app, handler_cancellation=self.handler_cancellation)
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        trace = ForwardTrace()
        self.traces.append(trace)
        holder: list[web.StreamResponse] = []

        async def start_response(endpoint_name: str) -> web.StreamResponse:
            response = web.StreamResponse(
                headers={"Content-Type": "text/event-stream", "X-Kamiwaza-Endpoint": endpoint_name}
            )
            await response.prepare(request)
            holder.append(response)
            return response

        call = Call("chat", body, stream=bool(body.get("stream")), request_id="req-1")
        try:
            if call.stream:
                result = await self.forwarder.stream(
                    self.route,
                    call,
                    CHAT_CODEC,
                    start_response=start_response,
                    client_headers=request.headers,
                    trace=trace,
                )
                self.results.append(result)
                await write_tail(holder[0], result.tail)
                return holder[0]
            result = await self.forwarder.complete(
                self.route, call, CHAT_CODEC, client_headers=request.headers, trace=trace
            )
            self.results.append(result)
            assert result.response is not None
            return web.json_response(
                result.response, headers={"X-Kamiwaza-Endpoint": result.endpoint}
            )
        except UpstreamError as err:
            self.errors.append(err)
            return web.json_response(err.body(), status=err.status, headers=err.headers)
        except BaseException as err:
            self.errors.append(err)
            raise
        finally:
            self.handler_done.set()


@pytest.fixture
async def make_gateway() -> AsyncIterator[Callable[..., Awaitable[Gateway]]]:
    forwarders: list[Forwarder] = []
    gateways: list[Gateway] = []

    async def make(
        endpoints: list[Endpoint],
        route: list[str] | None = None,
        *,
        handler_cancellation: bool = True,
        **kwargs: Any,
    ) -> Gateway:
        kwargs.setdefault("environ", ENV)
        forwarder = Forwarder(endpoints, **kwargs)
        await forwarder.start()
        forwarders.append(forwarder)
        gateway = Gateway(
            forwarder,
            route or [e.name for e in endpoints],
            handler_cancellation=handler_cancellation,
        )
        gateways.append(await gateway.start())
        return gateway

    yield make
    for gateway in gateways:
        await gateway.close()
    for forwarder in forwarders:
        await forwarder.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def sse_events(response: aiohttp.ClientResponse) -> AsyncIterator[Any]:
    """Independent, simple reader of the gateway's SSE output (it writes `\\n`)."""
    while line := await response.content.readline():
        assert line.endswith(b"\n")
        line = line.rstrip(b"\n")
        if not line:
            continue
        assert line.startswith(b"data: "), line
        payload = line[len(b"data: ") :]
        yield "[DONE]" if payload == b"[DONE]" else json.loads(payload)


def closed_port() -> int:
    return free_port()  # nothing listens there: connection refused


@pytest.fixture
def blackhole() -> Iterator[str]:
    """A URL whose TCP connect never completes: a listener with a full backlog."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    filler = socket.socket()
    filler.setblocking(False)
    filler.connect_ex(("127.0.0.1", port))
    yield f"http://127.0.0.1:{port}/v1"
    filler.close()
    server.close()


def attempts(
    outcome: UpstreamError | ForwardResult | ForwardTrace,
) -> list[tuple[Any, ...]]:
    return [(a.endpoint, a.status, a.error) for a in outcome.attempts]


# ---------------------------------------------------------------------------
# Pass-through


async def test_json_pass_through(fake_upstream: StartFake, make_gateway: Any, http: Any) -> None:
    up = await fake_upstream(token=TOKEN_A)
    gw = await make_gateway([endpoint("a", up.url)])
    async with http.post(gw.url + "/v1/chat/completions", json=BODY) as resp:
        assert resp.status == 200
        assert resp.headers["X-Kamiwaza-Endpoint"] == "a"
        completion = ChatCompletion.model_validate(await resp.json())
    assert completion.model == "a-model"  # the endpoint's model replaced the client's
    assert (
        completion.choices[0].message.content
        == "Hello from the fake upstream, streamed word by word."
    )
    (request,) = up.requests
    assert request.path == "/v1/chat/completions"
    assert request.json["model"] == "a-model"
    assert request.json["stream"] is False
    validate_request(request.json, stream=False)
    (result,) = gw.results
    assert result.endpoint == "a"
    assert result.model == "a-model"
    assert result.status == 200
    assert result.response == completion.model_dump(exclude_unset=True)
    assert result.usage.input_tokens == 5
    assert result.usage.output_tokens == 9
    assert not result.usage.estimated
    assert result.cost_usd == pytest.approx((5 * 1.0 + 9 * 2.0) / 1000)
    assert result.attempts == (Attempt("a", 200, None, ANY),)
    assert result.ttft_ms is None
    assert result.upstream_latency_ms > 0


async def test_json_without_upstream_usage_is_estimated(
    fake_upstream: StartFake, make_gateway: Any, http: Any
) -> None:
    up = await fake_upstream(token=TOKEN_A)
    up.behavior = Behavior(include_usage=False, reply="one two three four")
    gw = await make_gateway([endpoint("a", up.url)])
    async with http.post(gw.url + "/v1/chat/completions", json=BODY) as resp:
        assert resp.status == 200
    usage = gw.results[0].usage
    assert usage.estimated
    assert usage.output_tokens == 5  # ceil(18 characters / 4)
    assert usage.input_tokens > 0


async def test_stream_is_passed_through_chunk_by_chunk(
    fake_upstream: StartFake, make_gateway: Any, http: Any
) -> None:
    up = await fake_upstream(token=TOKEN_A)
    up.behavior = Behavior(gate_after_chunks=2)
    gw = await make_gateway([endpoint("a", up.url)])
    async with http.post(gw.url + "/v1/chat/completions", json=SBODY) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/event-stream"
        assert resp.headers["X-Kamiwaza-Endpoint"] == "a"
        events = sse_events(resp)
        first = [await anext(events) for _ in range(3)]
        # The client holds the role chunk and two words while the upstream is
        # still waiting at its gate: nothing was buffered.
        assert up.active_streams == 1
        assert up.completed_streams == 0
        up.gate.set()
        rest = [event async for event in events]
    received = first + rest
    assert received[-1] == "[DONE]"
    chunks = [ChatCompletionChunk.model_validate(e) for e in received[:-1]]
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == "Hello from the fake upstream, streamed word by word."
    # The usage chunk the gateway asked for is not forwarded: the client did not ask.
    assert all(c.choices for c in chunks)
    (request,) = up.requests
    assert request.json["stream_options"] == {"include_usage": True}
    validate_request(request.json, stream=True)
    (result,) = gw.results
    assert result.usage.output_tokens == 9
    assert not result.usage.estimated
    assert result.ttft_ms is not None
    assert result.ttft_ms <= result.upstream_latency_ms
    assert result.stream_error is None
    assert result.attempts == (Attempt("a", 200, None, ANY),)


async def test_stream_with_crlf_comments_and_split_writes(
    fake_upstream: StartFake, make_gateway: Any, http: Any
) -> None:
    up = await fake_upstream(token=TOKEN_A)
    up.behavior = Behavior(line_ending="\r\n", keepalive_comments=True, split_writes=True)
    gw = await make_gateway([endpoint("a", up.url)])
    body = {**SBODY, "stream_options": {"include_usage": True}}
    async with http.post(gw.url + "/v1/chat/completions", json=body) as resp:
        received = [event async for event in sse_events(resp)]
    assert received[-1] == "[DONE]"
    chunks = [ChatCompletionChunk.model_validate(e) for e in received[:-1]]
    assert chunks[-1].usage is not None  # asked for by the client: forwarded
    assert chunks[-1].usage.completion_tokens == 9
    assert len(chunks) == 1 + 9 + 1 + 1  # role, words, finish, usage


async def test_stream_without_upstream_usage_is_estimated(
    fake_upstream: StartFake, make_gateway: Any, http: Any
) -> None:
    up = await fake_upstream(token=TOKEN_A)
    up.behavior = Behavior(include_usage=False)
    gw = await make_gateway([endpoint("a", up.url)])
    body = {**SBODY, "stream_options": {"include_usage": True}}
    async with http.post(gw.url + "/v1/chat/completions", json=body) as resp:
        received = [event async for event in sse_events(resp)]
    usage = ChatCompletionChunk.model_validate(received[-2]).usage
    assert usage is not None
    result = gw.results[0]
    assert result.usage.estimated
    assert result.usage.output_tokens == usage.completion_tokens >= 9


async def test_openai_sdk_through_the_forwarder(
    fake_upstream: StartFake, make_gateway: Any
) -> None:
    up = await fake_upstream(token=TOKEN_A)
    gw = await make_gateway([endpoint("a", up.url)])
    async with openai.AsyncOpenAI(
        base_url=gw.url + "/v1", api_key="client-key", max_retries=0
    ) as client:
        completion = await client.chat.completions.create(
            model="client-model", messages=[{"role": "user", "content": "hi"}]
        )
        assert completion.choices[0].message.content
        stream = await client.chat.completions.create(
            model="client-model",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
        assert chunks[-1].usage is not None
        up.next(stream_error_after_chunks=2, chunk_delay=0.01)
        stream = await client.chat.completions.create(
            model="client-model", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        with pytest.raises(openai.APIError, match="fake upstream overloaded"):
            _ = [chunk async for chunk in stream]
        up.fail(400, {"error": {"message": "bad temperature", "code": "invalid_value"}})
        with pytest.raises(openai.BadRequestError) as info:
            await client.chat.completions.create(
                model="client-model", messages=[{"role": "user", "content": "hi"}]
            )
        assert info.value.code == "invalid_value"
    for request in up.requests:
        validate_request(request.json, stream=bool(request.json.get("stream")))


# ---------------------------------------------------------------------------
# Headers


async def test_upstream_headers_come_from_the_allow_list(
    fake_upstream: StartFake, make_gateway: Any, http: Any
) -> None:
    up = await fake_upstream(token=TOKEN_A)
    gw = await make_gateway(
        [endpoint("a", up.url)], client_headers=("user-agent", "x-trace", "x-hop")
    )
    client_headers = {
        "Authorization": "Bearer client-secret-key",
        "api-key": "client-azure-key",
        "X-Api-Key": "client-anthropic-key",
        "Cookie": "session=1",
        "User-Agent": "my-app/1.0",
        "X-Trace": "t-1",
        "X-Hop": "named-in-connection",
        "Connection": "keep-alive, X-Hop",
        "Keep-Alive": "timeout=5",
        "X-Forwarded-For": "10.0.0.1",
        "X-Tenant": "someone-else",
        "X-Request-Id": "client-chosen",
        "TE": "trailers",
    }
    async with http.post(
        gw.url + "/v1/chat/completions", json=BODY, headers=client_headers
    ) as resp:
        assert resp.status == 200
    async with http.post(
        gw.url + "/v1/chat/completions", json=SBODY, headers=client_headers
    ) as resp:
        assert resp.status == 200
        await resp.read()
    for request in up.requests:
        headers = request.headers
        assert headers["Authorization"] == f"Bearer {TOKEN_A}"
        assert headers["User-Agent"] == "my-app/1.0"
        assert headers["X-Trace"] == "t-1"
        assert headers["X-Request-Id"] == "req-1"
        assert headers["Content-Type"] == "application/json"
        for name in ("api-key", "X-Api-Key", "Cookie", "X-Hop", "Keep-Alive", "X-Forwarded-For"):
            assert name not in headers, name
        assert "X-Tenant" not in headers
        assert "TE" not in headers
        assert "client-secret-key" not in str(headers)
        assert headers.get("Connection", "keep-alive").lower() == "keep-alive"
    assert up.requests[0].headers["Accept"] == "application/json"
    assert up.requests[1].headers["Accept"] == "text/event-stream"
    assert up.requests[1].headers["Accept-Encoding"] == "identity"


def test_credential_headers_cannot_be_allowed() -> None:
    with pytest.raises(ValueError, match="authorization"):
        Forwarder([], client_headers=("Authorization",))


async def test_redirects_are_not_followed(
    fake_upstream: StartFake, make_gateway: Any, http: Any
) -> None:
    up = await fake_upstream(token=TOKEN_A)
    # The redirect target is another loopback server: following the redirect
    # would show up there (tests never send traffic off this machine).
    elsewhere = await fake_upstream(token=TOKEN_A)
    up.next(redirect_to=elsewhere.url + "/chat/completions")
    gw = await make_gateway([endpoint("a", up.url)])
    async with http.post(gw.url + "/v1/chat/completions", json=BODY) as resp:
        assert resp.status == 502
        assert (await resp.json())["error"]["code"] == "upstream_redirect"
    assert len(up.requests) == 1
    assert elsewhere.requests == []


# ---------------------------------------------------------------------------
# Timeouts


async def test_connect_timeout(blackhole: str, make_gateway: Any, http: Any) -> None:
    timeouts = Timeouts(connect_ms=200, first_token_ms=5000, total_ms=5000)
    gw = await make_gateway([endpoint("a", blackhole, timeouts=timeouts)])
    async with http.post(gw.url + "/v1/chat/completions", json=BODY) as resp:
        assert resp.status == 504
        assert (await resp.json())["error"]["code"] == "connect_timeout"
    (err,) = gw.errors
    assert isinstance(err, UpstreamError)
    assert attempts(err) == [("a", None, "connect_timeout")]
    assert 150 <= err.attempts[0].latency_ms < 2000


async def test_first_token_timeout_on_headers(
    fake_upstream: StartFake, make_gateway: Any, http: Any
) -> None:
    up = await fake_upstream(token=TOKEN_A)
    up.behavior = Behavior(hang=True)
    timeouts = Timeouts(connect_ms=500, first_token_ms=200, total_ms=5000)
    gw = await make_gateway([endpoint("a", up.url, timeouts=timeouts)])
    async with http.post(gw.url + "/v1/chat/completions", json=SBODY) as resp:
        assert resp.status == 504
        assert (await resp.json())["error"]["code"] == "first_token_timeout"
    assert attempts(gw.errors[0]) == [("a", None, "first_token_timeout")]
    # The upstream saw the request abandoned.
    await _eventually(lambda: up.cancelled_requests == 1)


async def test_first_token_timeout_after_headers(
    fake_upstream: StartFake, make_gateway: Any, http: Any
) -> None:
    up = await fake_upstream(token=TOKEN_A)
    up.behavior = Behavior(delay_first_chunk=3.0)
    timeouts = Timeouts(connect_ms=500, first_token_ms=200, total_ms=5000)
    gw = await make_gateway([endpoint("a", up.url, timeouts=timeouts)])
    async with http.post(gw.url + "/v1/chat/completions", json=SBODY) as resp:
        assert resp.status == 504
    assert attempts(gw.errors[0]) == [("a", 200, "first_token_timeout")]
    await _eventually(lambda: up.cancelled_streams == 1)


async def test_total_timeout_json(fake_upstream: StartFake, make_gateway: Any, http: Any) -> None:
    up = await fake_upstream(token=TOKEN_A)
    up.behavior = Behavior(delay_headers=3.0)
    # first_token_ms does not bound a JSON answer (it only arrives once complete).
    timeouts = Timeouts(connect_ms=500, first_token_ms=50, total_ms=300)
    gw = await make_gateway([endpoint("a", up.url, timeouts=timeouts)])
    async with http.post(gw.url + "/v1/chat/completions", json=BODY) as resp:
        assert resp.status == 504
        assert (await resp.json())["error"]["code"] == "timeout"
    (err,) = gw.errors
    assert attempts(err) == [("a", None, "timeout")]
    assert 250 <= err.attempts[0].latency_ms < 2000


async def test_total_timeout_mid_stream_ends_with_error_event(
    fake_upstream: StartFake, make_gateway: Any, http: Any
) -> None:
    up = await fake_upstream(token=TOKEN_A)
    up.behavior = Behavior(hang_after_chunks=2)
    timeouts = Timeouts(connect_ms=500, first_token_ms=1000, total_ms=400)
    gw = await make_gateway([endpoint("a", up.url, timeouts=timeouts)])
    async with http.post(gw.url + "/v1/chat/completions", json=SBODY) as resp:
        assert resp.status == 200
        received = [event async for event in sse_events(resp)]
    assert received[-1] == {
        "error": {
            "message": "the upstream did not finish answering in time",
            "type": "upstream_error",
            "code": "timeout",
        }
    }
    assert "[DONE]" not in received
    (result,) = gw.results
    assert result.stream_error is not None
    assert result.stream_error.code == "timeout"
    assert attempts(result) == [("a", 200, "timeout")]
    await _eventually(lambda: up.cancelled_streams == 1)


# ---------------------------------------------------------------------------
# Failover


async def test_failover_on_connect_error(
    fake_upstream: StartFake, make_gateway: Any, http: Any
) -> None:
    b = await fake_upstream(token=TOKEN_B)
    gw = await make_gateway(
        [
            endpoint("a", f"http://127.0.0.1:{closed_port()}/v1"),
            endpoint("b", b.url, token_env="TOKEN_B"),
        ]
    )
    async with http.post(gw.url + "/v1/chat/completions", json=BODY) as resp:
        assert resp.status == 200
        assert resp.headers["X-Kamiwaza-Endpoint"] == "b"
    (result,) = gw.results
    assert result.attempts == (
        Attempt("a", None, "connect_refused", ANY),
        Attempt("b", 200, None, ANY),
    )
    assert b.requests[0].json["model"] == "b-model"


@pytest.mark.parametrize(
    ("status", "code"),
    [(500, "upstream_unavailable"), (503, "upstream_unavailable"), (429, "rate_limit_exceeded")],
)
async def test_failover_on_5xx_and_429(
    fake_upstream: StartFake, make_gateway: Any, http: Any, status: int, code: str
) -> None:
    a = await fake_upstream(token=TOKEN_A)
    b = await fake_upstream(token=TOKEN_B)
    a.behavior = Behavior(status=status, error_body={"error": {"message": "nope"}})
    gw = await make_gateway([endpoint("a", a.url), endpoint("b", b.url, token_env="TOKEN_B")])
    for body in (BODY, SBODY):
        async with http.post(gw.url + "/v1/chat/completions", json=body) as resp:
            assert resp.status == 200
            assert resp.headers["X-Kamiwaza-Endpoint"] == "b"
            await resp.read()
    for result in gw.results:
        assert result.attempts == (
            Attempt("a", status, code, ANY),
            Attempt("b", 200, None, ANY),
        )
    assert len(a.requests) == len(b.requests) == 2


async def test_failover_on_timeout_before_first_byte(
    fake_upstream: StartFake, make_gateway: Any, http: Any
) -> None:
    a = await fake_upstream(token=TOKEN_A)
    b = await fake_upstream(token=TOKEN_B)
    a.behavior = Behavior(delay_first_chunk=3.0)
    slow = Timeouts(connect_ms=500, first_token_ms=200, total_ms=5000)
    gw = await make_gateway(
        [endpoint("a", a.url, timeouts=slow), endpoint("b", b.url, token_env="TOKEN_B")]
    )
    async with http.post(gw.url + "/v1/chat/completions", json=SBODY) as resp:
        assert resp.headers["X-Kamiwaza-Endpoint"] == "b"
        received = [event async for event in sse_events(resp)]
    assert received[-1] == "[DONE]"
    assert attempts(gw.results[0]) == [("a", 200, "first_token_timeout"), ("b", 200, None)]


async def test_failover_when_upstream_refuses_gateway_credential(
    fake_upstream: StartFake, make_gateway: Any, http: Any
) -> None:
    a = await fake_upstream(token="a-different-token")
    b = await fake_upstream(token=TOKEN_B)
    gw = await make_gateway([endpoint("a", a.url), endpoint("b", b.url, token_env="TOKEN_B")])
    async with http.post(gw.url + "/v1/chat/completions", json=BODY) as resp:
        assert resp.status == 200
    assert attempts(gw.results[0]) == [("a", 401, "upstream_auth_failed"), ("b", 200, None)]


async def test_no_failover_on_400(fake_upstream: StartFake, make_gateway: Any, http: Any) -> None:
    a = await fake_upstream(token=TOKEN_A)
    b = await fake_upstream(token=TOKEN_B)
    a.fail(400, {"error": {"message": "max_tokens is too large", "code": "invalid_value"}})
    gw = await make_gateway([endpoint("a", a.url), endpoint("b", b.url, token_env="TOKEN_B")])
    async with http.post(gw.url + "/v1/chat/completions", json=BODY) as resp:
        assert resp.status == 400
        assert await resp.json() == {
            "error": {
                "message": "max_tokens is too large",
                "type": "invalid_request_error",
                "code": "invalid_value",
            }
        }
    (err,) = gw.errors
    assert isinstance(err, UpstreamError)
    assert err.attempts == (Attempt("a", 400, "invalid_value", ANY),)
    assert b.requests == []
    # A client error says nothing bad about the endpoint.
    assert gw.forwarder.breaker("a").state == "closed"


async def test_all_fail_429_passes_retry_after(
    fake_upstream: StartFake, make_gateway: Any, http: Any
) -> None:
    a = await fake_upstream(token=TOKEN_A)
    b = await fake_upstream(token=TOKEN_B)
    a.fail(503)
    b.fail(429, {"error": {"message": "slow down"}}, headers={"Retry-After": "12"})
    gw = await make_gateway([endpoint("a", a.url), endpoint("b", b.url, token_env="TOKEN_B")])
    async with http.post(gw.url + "/v1/chat/completions", json=SBODY) as resp:
        assert resp.status == 429
        assert resp.headers["Retry-After"] == "12"
        error = (await resp.json())["error"]
        assert (
            error["message"] == "slow down (tried a: upstream_unavailable; b: rate_limit_exceeded)"
        )
        assert error["attempts"] == [
            {"endpoint": "a", "status": 503, "error": "upstream_unavailable"},
            {"endpoint": "b", "status": 429, "error": "rate_limit_exceeded"},
        ]
    (err,) = gw.errors
    assert isinstance(err, UpstreamError)
    assert attempts(err) == [("a", 503, "upstream_unavailable"), ("b", 429, "rate_limit_exceeded")]


async def test_all_fail_last_timeout_is_504(
    fake_upstream: StartFake, make_gateway: Any, http: Any
) -> None:
    a = await fake_upstream(token=TOKEN_A)
    b = await fake_upstream(token=TOKEN_B)
    a.fail(502)
    b.behavior = Behavior(hang=True)
    slow = Timeouts(connect_ms=500, first_token_ms=200, total_ms=300)
    gw = await make_gateway(
        [endpoint("a", a.url), endpoint("b", b.url, token_env="TOKEN_B", timeouts=slow)]
    )
    async with http.post(gw.url + "/v1/chat/completions", json=BODY) as resp:
        assert resp.status == 504
    assert attempts(gw.errors[0]) == [("a", 502, "upstream_unavailable"), ("b", None, "timeout")]


async def test_all_fail_5xx_is_502(fake_upstream: StartFake, make_gateway: Any, http: Any) -> None:
    a = await fake_upstream(token=TOKEN_A)
    a.behavior = Behavior(status=500)
    gw = await make_gateway([endpoint("a", a.url)])
    async with http.post(gw.url + "/v1/chat/completions", json=BODY) as resp:
        assert resp.status == 502
        body = await resp.json()
    assert body["error"]["type"] == "upstream_error"


async def test_unavailable_endpoint_is_skipped(
    fake_upstream: StartFake, make_gateway: Any, http: Any
) -> None:
    b = await fake_upstream(token=TOKEN_B)
    anthropic = endpoint("claude", None, type="anthropic", options={})
    missing_key = endpoint("a", b.url, token_env="UNSET_TOKEN")
    with pytest.raises(Exception, match="needs a credential"):  # no auth.api_key_*
        Forwarder([anthropic], environ=ENV)
    gw = await make_gateway(
        [anthropic, missing_key, endpoint("b", b.url, token_env="TOKEN_B")],
        skip_unavailable=True,
    )
    assert set(gw.forwarder.unavailable) == {"claude", "a"}
    assert "UNSET_TOKEN" in gw.forwarder.unavailable["a"]
    async with http.post(gw.url + "/v1/chat/completions", json=BODY) as resp:
        assert resp.status == 200
    assert attempts(gw.results[0]) == [
        ("claude", None, "credential_missing"),
        ("a", None, "credential_missing"),
        ("b", 200, None),
    ]


# ---------------------------------------------------------------------------
# Mid-stream failure and client disconnect


async def test_mid_stream_break_ends_with_error_event_without_failover(
    fake_upstream: StartFake, make_gateway: Any, http: Any
) -> None:
    a = await fake_upstream(token=TOKEN_A)
    b = await fake_upstream(token=TOKEN_B)
    a.behavior = Behavior(break_after_chunks=3)
    gw = await make_gateway([endpoint("a", a.url), endpoint("b", b.url, token_env="TOKEN_B")])
    async with http.post(gw.url + "/v1/chat/completions", json=SBODY) as resp:
        assert resp.status == 200
        received = [event async for event in sse_events(resp)]
    chunks = [ChatCompletionChunk.model_validate(e) for e in received[:-1]]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello from the"
    assert received[-1]["error"]["code"] == "bad_upstream_response"
    assert b.requests == []
    (result,) = gw.results
    assert result.endpoint == "a"
    assert result.stream_error is not None
    assert attempts(result) == [("a", 200, "bad_upstream_response")]
    assert result.usage.estimated
    assert result.usage.output_tokens >= 3


async def test_upstream_error_event_mid_stream(
    fake_upstream: StartFake, make_gateway: Any, http: Any
) -> None:
    a = await fake_upstream(token=TOKEN_A)
    # Delayed chunks: the role chunk is committed before the error arrives.
    a.behavior = Behavior(stream_error_after_chunks=2, chunk_delay=0.02)
    gw = await make_gateway([endpoint("a", a.url)])
    async with http.post(gw.url + "/v1/chat/completions", json=SBODY) as resp:
        received = [event async for event in sse_events(resp)]
    assert received[-1] == {
        "error": {
            "message": "fake upstream overloaded",
            "type": "upstream_error",
            "code": "overloaded",
        }
    }
    # The chunk that arrived with the error still reached the client, before it.
    chunks = [ChatCompletionChunk.model_validate(e) for e in received[:-1]]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello from"
    assert attempts(gw.results[0]) == [("a", 200, "overloaded")]


async def test_error_event_before_the_first_frame_fails_over(
    fake_upstream: StartFake, make_gateway: Any, http: Any
) -> None:
    a = await fake_upstream(token=TOKEN_A)
    b = await fake_upstream(token=TOKEN_B)
    a.behavior = Behavior(stream_error_first=True)
    gw = await make_gateway([endpoint("a", a.url), endpoint("b", b.url, token_env="TOKEN_B")])
    async with http.post(gw.url + "/v1/chat/completions", json=SBODY) as resp:
        assert resp.headers["X-Kamiwaza-Endpoint"] == "b"
        received = [event async for event in sse_events(resp)]
    assert received[-1] == "[DONE]"
    assert attempts(gw.results[0]) == [("a", 200, "overloaded"), ("b", 200, None)]


@pytest.mark.parametrize("handler_cancellation", [True, False])
async def test_client_disconnect_cancels_upstream(
    fake_upstream: StartFake, make_gateway: Any, handler_cancellation: bool
) -> None:
    up = await fake_upstream(token=TOKEN_A)
    up.behavior = Behavior(chunk_delay=0.05, reply=" ".join(["word"] * 400))
    gw = await make_gateway([endpoint("a", up.url)], handler_cancellation=handler_cancellation)
    async with aiohttp.ClientSession() as session:
        resp = await session.post(gw.url + "/v1/chat/completions", json=SBODY)
        events = sse_events(resp)
        await anext(events)
        await anext(events)
        resp.close()  # the client goes away mid-stream
    await up.wait_cancelled()
    await asyncio.wait_for(gw.handler_done.wait(), 5)
    assert up.cancelled_streams == 1
    assert up.completed_streams == 0
    (err,) = gw.errors
    if handler_cancellation:
        # aiohttp cancels the handler at once; the cancellation propagates.
        assert isinstance(err, asyncio.CancelledError)
        assert attempts(gw.traces[0]) == [("a", 200, "cancelled")]
    else:
        # aiohttp notices at the next write; the forwarder says so.
        assert isinstance(err, ClientDisconnectedError)
        assert isinstance(err, ConnectionResetError)
        assert err.trace is gw.traces[0]
        assert attempts(err.trace) == [("a", 200, "client_disconnected")]
    trace = gw.traces[0]
    assert trace.endpoint == "a"
    assert trace.usage is not None
    assert trace.usage.output_tokens >= 1
    assert gw.forwarder.breaker("a").state == "closed"


# ---------------------------------------------------------------------------
# Circuit breaker


async def test_circuit_breaker_open_half_open_close(
    fake_upstream: StartFake, make_gateway: Any, http: Any
) -> None:
    a = await fake_upstream(token=TOKEN_A)
    b = await fake_upstream(token=TOKEN_B)
    clock = FakeClock()
    gw = await make_gateway(
        [endpoint("a", a.url), endpoint("b", b.url, token_env="TOKEN_B")],
        breaker=BreakerPolicy(failure_threshold=2, cooldown_s=30.0),
        clock=clock,
    )
    breaker = gw.forwarder.breaker("a")

    async def send() -> list[tuple[Any, ...]]:
        async with http.post(gw.url + "/v1/chat/completions", json=BODY) as resp:
            assert resp.status == 200
        return attempts(gw.results[-1])

    a.fail(503, times=2)
    assert await send() == [("a", 503, "upstream_unavailable"), ("b", 200, None)]
    assert breaker.state == "closed"
    assert await send() == [("a", 503, "upstream_unavailable"), ("b", 200, None)]
    assert breaker.state == "open"
    # Open: "a" is skipped without a request.
    assert await send() == [("a", None, "circuit_open"), ("b", 200, None)]
    assert len(a.requests) == 2
    assert gw.results[-1].attempts[0].latency_ms == 0.0
    clock.now += 29.9
    assert await send() == [("a", None, "circuit_open"), ("b", 200, None)]
    # Cooldown over: half-open, one trial; it fails, so the circuit opens again.
    clock.now += 0.2
    assert breaker.state == "half_open"
    a.fail(500)
    assert await send() == [("a", 500, "upstream_unavailable"), ("b", 200, None)]
    assert breaker.state == "open"
    assert await send() == [("a", None, "circuit_open"), ("b", 200, None)]
    # Next trial succeeds: closed again, "a" serves.
    clock.now += 30.0
    assert await send() == [("a", 200, None)]
    assert breaker.state == "closed"
    assert await send() == [("a", 200, None)]
    assert len(a.requests) == 5


async def test_half_open_allows_one_trial_at_a_time(
    fake_upstream: StartFake, make_gateway: Any, http: Any
) -> None:
    a = await fake_upstream(token=TOKEN_A)
    b = await fake_upstream(token=TOKEN_B)
    clock = FakeClock()
    gw = await make_gateway(
        [endpoint("a", a.url), endpoint("b", b.url, token_env="TOKEN_B")],
        breaker=BreakerPolicy(failure_threshold=1, cooldown_s=5.0),
        clock=clock,
    )
    a.fail(503)
    async with http.post(gw.url + "/v1/chat/completions", json=BODY) as resp:
        assert resp.status == 200
    clock.now += 5.0
    a.next(delay_headers=0.3)  # the trial is slow
    replies = await asyncio.gather(
        *(http.post(gw.url + "/v1/chat/completions", json=BODY) for _ in range(3))
    )
    for reply in replies:
        assert reply.status == 200
        reply.release()
    firsts = sorted(r.attempts[0].error or "ok" for r in gw.results[1:])
    assert firsts == ["circuit_open", "circuit_open", "ok"]
    assert gw.forwarder.breaker("a").state == "closed"


async def test_every_circuit_open_is_503_with_retry_after(
    fake_upstream: StartFake, make_gateway: Any, http: Any
) -> None:
    a = await fake_upstream(token=TOKEN_A)
    a.behavior = Behavior(status=503)
    clock = FakeClock()
    gw = await make_gateway(
        [endpoint("a", a.url)],
        breaker=BreakerPolicy(failure_threshold=1, cooldown_s=20.0),
        clock=clock,
    )
    async with http.post(gw.url + "/v1/chat/completions", json=BODY) as resp:
        assert resp.status == 502
    clock.now += 4.5
    async with http.post(gw.url + "/v1/chat/completions", json=SBODY) as resp:
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "16"
        assert (await resp.json())["error"]["code"] == "no_upstream_available"
    assert attempts(gw.errors[-1]) == [("a", None, "circuit_open")]


# ---------------------------------------------------------------------------
# Secrets and lifecycle


async def test_provider_keys_never_leak(
    fake_upstream: StartFake, make_gateway: Any, http: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    a = await fake_upstream(token=TOKEN_A)
    b = await fake_upstream(token=TOKEN_B)
    # Upstreams echo the key in their error messages and stream errors.
    a.fail(401, {"error": {"message": f"Incorrect API key provided: {TOKEN_A}"}})
    a.fail(400, {"error": {"message": f"bad request from {TOKEN_A}", "code": TOKEN_A}})
    b.behavior = Behavior(status=503, error_body={"error": {"message": f"down ({TOKEN_B})"}})
    gw = await make_gateway([endpoint("a", a.url), endpoint("b", b.url, token_env="TOKEN_B")])
    outputs: list[str] = []
    for _ in range(2):
        async with http.post(gw.url + "/v1/chat/completions", json=BODY) as resp:
            outputs.append(await resp.text())
            outputs.append(str(dict(resp.headers)))
    assert len(gw.errors) == 2
    for err in gw.errors:
        assert isinstance(err, UpstreamError)
        outputs += [str(err), repr(err), json.dumps(err.body()), repr(err.failure)]
        outputs += [repr(a) for a in err.attempts]
    outputs.append(repr(gw.forwarder.adapter("a").__dict__))
    outputs.append(caplog.text)
    for text in outputs:
        assert TOKEN_A not in text
        assert TOKEN_B not in text


async def test_forwarder_requires_start_and_builds_from_registry(
    fake_upstream: StartFake,
) -> None:
    up = await fake_upstream(token=TOKEN_A)
    registry = Registry("endpoints.yaml", {"a": endpoint("a", up.url)})
    forwarder = Forwarder.from_registry(registry, environ=ENV)
    with pytest.raises(RuntimeError, match="start"):
        await forwarder.complete(["a"], Call("chat", BODY, request_id="r"), CHAT_CODEC)
    async with forwarder:
        result = await forwarder.complete(["a"], Call("chat", BODY, request_id="r"), CHAT_CODEC)
        assert result.endpoint == "a"
    assert forwarder.endpoint_names == ("a",)


async def _eventually(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)
