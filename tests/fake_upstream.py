"""A fake OpenAI-compatible upstream: a real aiohttp server on a loopback port.

It speaks the OpenAI Chat Completions wire protocol (a `chat.completion` JSON
answer, or `chat.completion.chunk` SSE events, a usage chunk when
`stream_options.include_usage` asks for one, then `data: [DONE]`) and the
embeddings API (`POST /v1/embeddings`: bodies checked against the openai
package's types, extra fields accepted as vLLM and text-embeddings-inference do,
vectors from tests/fake_embeddings.py, and TEI's 413 when a batch exceeds
`max_client_batch_size`), checks the bearer token, records every request, and
can misbehave on demand: fail with a status, delay its headers or its chunks,
break the connection mid-stream, hang, or pause at a gate until the test opens
it. `POST /v1/responses` is OpenAI's Responses API (tests/fake_responses.py). It
counts streams started, completed and cancelled, so that a test can
assert that a client disconnect reached the upstream.

    async with FakeUpstream(token="t") as up:
        up.behavior = Behavior(chunk_delay=0.01)   # every request
        up.queue.append(Behavior(status=503))      # the next request only
        ... up.url (the base URL, ending in /v1), up.requests, up.cancelled_streams
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from tests.fake_embeddings import openai_answer, openai_inputs, validate_openai_embeddings
from tests.fake_responses import ResponsesSimulator
from tests.processes import serve_app

DEFAULT_REPLY = "Hello from the fake upstream, streamed word by word."


@dataclass
class Behavior:
    """How the fake answers one request (the defaults answer correctly)."""

    status: int = 200
    error_body: Any = None  # JSON (or str) body for a non-2xx status; default OpenAI shape
    headers: dict[str, str] = field(default_factory=dict)  # extra response headers
    reply: str | None = None  # the answer text; default DEFAULT_REPLY
    delay_headers: float = 0.0  # seconds before the response starts
    chunk_delay: float = 0.0  # seconds between SSE chunks
    delay_first_chunk: float = 0.0  # seconds between the stream's headers and its first event
    hang: bool = False  # never answer (until the client goes away)
    hang_after_chunks: int | None = None  # stream this many content chunks, then hang
    break_after_chunks: int | None = None  # stream this many content chunks, then cut
    gate_after_chunks: int | None = None  # stream this many, then wait for FakeUpstream.gate
    include_usage: bool = True  # honour stream_options.include_usage / send usage in JSON
    send_done: bool = True  # end streams with data: [DONE]
    line_ending: str = "\n"  # "\r\n" to exercise CRLF parsing
    keepalive_comments: bool = False  # send ": keep-alive" comments between chunks
    split_writes: bool = False  # write each event in two pieces (split mid-line)
    stream_error_after_chunks: int | None = None  # send an in-stream error event
    stream_error_first: bool = False  # the stream's first event is an error event
    prompt_tokens: int | None = None  # reported usage; default: words in the prompt
    redirect_to: str | None = None  # answer 307 to this location


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: str
    headers: CIMultiDict[str]
    body: bytes
    json: Any


class FakeUpstream:
    def __init__(
        self,
        *,
        token: str | None = "test-upstream-token",
        model: str = "fake-model",
        host: str = "127.0.0.1",
        record: bool = True,
    ) -> None:
        """`record=False` keeps no requests (for benchmarks: memory stays flat)."""
        self.token = token
        self.record = record
        self.model = model
        self.host = host
        self.port = 0
        self.behavior = Behavior()
        self.queue: deque[Behavior] = deque()
        self.requests: list[RecordedRequest] = []
        self.gate = asyncio.Event()
        self.active_streams = 0
        self.started_streams = 0
        self.completed_streams = 0
        self.cancelled_streams = 0
        self.cancelled_requests = 0  # any request whose client went away, streams included
        self.stream_started = asyncio.Event()
        self.stream_cancelled = asyncio.Event()
        self._ids = itertools.count(1)
        self.responses = ResponsesSimulator()  # the Responses API (/v1/responses)
        self._runner: web.AppRunner | None = None
        self._hangers: set[asyncio.Event] = set()
        self.embedding_dimensions = 16  # when the request names no `dimensions`
        self.max_client_batch_size: int | None = None  # TEI's limit (None: no limit)
        # GET /metrics: a vLLM-style Prometheus exposition (None: 404).
        self.metrics_text: str | None = None

    @property
    def url(self) -> str:
        """The base URL, as a registry's `base_url` would hold it."""
        return f"http://{self.host}:{self.port}/v1"

    async def start(self) -> FakeUpstream:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_post("/v1/responses", self._responses)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/metrics", self._metrics)
        # handler_cancellation: a client that goes away cancels the handler at
        # once, which is how the fake observes the gateway's cancellation.
        self._runner, self.port = await serve_app(app, self.host, handler_cancellation=True)
        return self

    async def close(self) -> None:
        for hanger in self._hangers:
            hanger.set()
        self.gate.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeUpstream:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- helpers for tests --------------------------------------------------

    def fail(
        self, status: int, body: Any = None, headers: dict[str, str] | None = None, times: int = 1
    ) -> None:
        """The next `times` requests fail with `status`."""
        for _ in range(times):
            self.queue.append(Behavior(status=status, error_body=body, headers=headers or {}))

    def next(self, **kwargs: Any) -> None:
        """The next request behaves as `Behavior(**kwargs)`."""
        self.queue.append(Behavior(**kwargs))

    async def wait_cancelled(self, timeout: float = 5.0) -> None:
        await asyncio.wait_for(self.stream_cancelled.wait(), timeout)

    # -- handlers -------------------------------------------------------------

    async def _metrics(self, request: web.Request) -> web.Response:
        if self.metrics_text is None:
            raise web.HTTPNotFound()
        return web.Response(text=self.metrics_text, content_type="text/plain")

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"object": "list", "data": [{"id": self.model, "object": "model", "owned_by": "fake"}]}
        )

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            payload = json.loads(raw)
        except ValueError:
            payload = None
        if self.record:
            self.requests.append(
                RecordedRequest(
                    request.method,
                    request.path,
                    request.query_string,
                    CIMultiDict(request.headers),
                    raw,
                    payload,
                )
            )
        if self.token is not None and request.headers.get("Authorization") != (
            f"Bearer {self.token}"
        ):
            return _error(
                401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key"
            )
        return await self.responses.handle(request, payload)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._answer(request)
        except (asyncio.CancelledError, ConnectionResetError):
            self.cancelled_requests += 1
            raise

    async def _receive(self, request: web.Request) -> tuple[Any, Behavior, web.Response | None]:
        """Record the request; (its JSON, its behaviour, the 401 when unauthorized)."""
        raw = await request.read()
        try:
            payload = json.loads(raw)
        except ValueError:
            payload = None
        if self.record:
            self.requests.append(
                RecordedRequest(
                    request.method,
                    request.path,
                    request.query_string,
                    CIMultiDict(request.headers),
                    raw,
                    payload,
                )
            )
        behavior = self.queue.popleft() if self.queue else self.behavior
        if self.token is not None and request.headers.get("Authorization") != (
            f"Bearer {self.token}"
        ):
            unauthorized = _error(
                401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key"
            )
            return payload, behavior, unauthorized
        return payload, behavior, None

    async def _misbehave(self, behavior: Behavior) -> web.Response | None:
        """Delay, hang, redirect or fail as `behavior` says; None to answer normally."""
        if behavior.delay_headers:
            await asyncio.sleep(behavior.delay_headers)
        if behavior.hang:
            await self._hang()
        if behavior.redirect_to is not None:
            raise web.HTTPTemporaryRedirect(behavior.redirect_to)
        if behavior.status >= 300:
            body = behavior.error_body
            if body is None:
                body = {
                    "error": {
                        "message": f"fake upstream failure {behavior.status}",
                        "type": "server_error"
                        if behavior.status >= 500
                        else "invalid_request_error",
                        "code": None,
                    }
                }
            text = body if isinstance(body, str) else json.dumps(body)
            return web.Response(
                status=behavior.status,
                text=text,
                content_type="application/json",
                headers=behavior.headers,
            )
        return None

    async def _embeddings(self, request: web.Request) -> web.Response:
        try:
            payload, behavior, refused = await self._receive(request)
            if refused is not None:
                return refused
            problem = validate_openai_embeddings(payload)
            if problem is not None:
                return _error(400, problem, "invalid_request_error", None)
            inputs = openai_inputs(payload["input"])
            limit = self.max_client_batch_size
            if limit is not None and len(inputs) > limit:
                # text-embeddings-inference's answer to a batch over --max-client-batch-size.
                return web.json_response(
                    {
                        "error": f"batch size {len(inputs)} > maximum allowed batch size {limit}",
                        "error_type": "validation",
                    },
                    status=413,
                )
            failed = await self._misbehave(behavior)
            if failed is not None:
                return failed
            answer = openai_answer(
                payload,
                model=payload.get("model") or self.model,
                dimensions=self.embedding_dimensions,
                include_usage=behavior.include_usage,
                prompt_tokens=behavior.prompt_tokens,
            )
            return web.json_response(answer, headers=behavior.headers)
        except (asyncio.CancelledError, ConnectionResetError):
            self.cancelled_requests += 1
            raise

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        payload, behavior, refused = await self._receive(request)
        if refused is not None:
            return refused
        if not isinstance(payload, dict) or not isinstance(payload.get("messages"), list):
            return _error(400, "'messages' is a required property", "invalid_request_error", None)
        failed = await self._misbehave(behavior)
        if failed is not None:
            return failed
        model = payload.get("model") or self.model
        words = (behavior.reply if behavior.reply is not None else DEFAULT_REPLY).split(" ")
        pieces = [w if i == 0 else " " + w for i, w in enumerate(words)]
        prompt_tokens = (
            behavior.prompt_tokens
            if behavior.prompt_tokens is not None
            else sum(len(str(m.get("content", "")).split()) for m in payload["messages"])
        )
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(pieces),
            "total_tokens": prompt_tokens + len(pieces),
        }
        completion_id = f"chatcmpl-fake-{next(self._ids)}"
        created = int(time.time())
        if not payload.get("stream"):
            answer: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "".join(pieces)},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
            }
            if behavior.include_usage:
                answer["usage"] = usage
            return web.json_response(answer, headers=behavior.headers)
        return await self._stream(request, payload, behavior, pieces, usage, completion_id, model)

    async def _hang(self) -> None:
        hanger = asyncio.Event()
        self._hangers.add(hanger)
        try:
            await hanger.wait()
        finally:
            self._hangers.discard(hanger)

    async def _stream(
        self,
        request: web.Request,
        payload: dict[str, Any],
        behavior: Behavior,
        pieces: list[str],
        usage: dict[str, int],
        completion_id: str,
        model: str,
    ) -> web.StreamResponse:
        options = payload.get("stream_options") or {}
        want_usage = bool(options.get("include_usage")) and behavior.include_usage
        created = int(time.time())
        end = behavior.line_ending

        def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
            body: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }
            if want_usage:
                body["usage"] = None
            return body

        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                **behavior.headers,
            }
        )
        await response.prepare(request)
        self.active_streams += 1
        self.started_streams += 1
        self.stream_started.set()

        async def send(data: str) -> None:
            event = f"data: {data}{end}{end}".encode()
            if behavior.split_writes:
                # Split inside the line (and inside a CRLF pair where there is one).
                cut = len(event) - len(end) - 1 if end == "\r\n" else len(event) // 2
                await response.write(event[:cut])
                await asyncio.sleep(0.001)
                await response.write(event[cut:])
            else:
                await response.write(event)
            if behavior.keepalive_comments:
                await response.write(f": keep-alive{end}{end}".encode())

        try:
            if behavior.delay_first_chunk:
                await asyncio.sleep(behavior.delay_first_chunk)
            if behavior.stream_error_first:
                await send(json.dumps(_OVERLOADED))
                self.active_streams -= 1
                self.completed_streams += 1
                return response
            await send(json.dumps(chunk({"role": "assistant", "content": ""}, None)))
            for index, piece in enumerate(pieces):
                if behavior.gate_after_chunks is not None and index == behavior.gate_after_chunks:
                    await self.gate.wait()
                if behavior.hang_after_chunks is not None and index == behavior.hang_after_chunks:
                    await self._hang()
                if behavior.break_after_chunks is not None and index == behavior.break_after_chunks:
                    # Cut the connection without ending the chunked body.
                    assert request.transport is not None
                    request.transport.close()
                    self.active_streams -= 1
                    return response
                if (
                    behavior.stream_error_after_chunks is not None
                    and index == behavior.stream_error_after_chunks
                ):
                    await send(json.dumps(_OVERLOADED))
                    self.active_streams -= 1
                    self.completed_streams += 1
                    return response
                if behavior.chunk_delay:
                    await asyncio.sleep(behavior.chunk_delay)
                await send(json.dumps(chunk({"content": piece}, None)))
            await send(json.dumps(chunk({}, "stop")))
            if want_usage:
                await send(
                    json.dumps(
                        {
                            "id": completion_id,
                            "object": "chat.completion.chunk",
                            "created": created,
                            "model": model,
                            "choices": [],
                            "usage": usage,
                        }
                    )
                )
            if behavior.send_done:
                await send("[DONE]")
            await response.write_eof()
        except (asyncio.CancelledError, ConnectionResetError):
            self.active_streams -= 1
            self.cancelled_streams += 1
            self.stream_cancelled.set()
            raise
        self.active_streams -= 1
        self.completed_streams += 1
        return response


_OVERLOADED = {
    "error": {"message": "fake upstream overloaded", "type": "server_error", "code": "overloaded"}
}


def _error(status: int, message: str, type_: str, code: str | None) -> web.Response:
    return web.json_response(
        {"error": {"message": message, "type": type_, "param": None, "code": code}}, status=status
    )
