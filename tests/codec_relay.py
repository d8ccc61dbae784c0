"""A loopback server that serves one front through one codec, for SDK tests of
codecs and bridges before the fronts are registered on the pipeline.

It does what the forwarder does for one attempt and nothing else (no policy,
no failover, no audit): the front parses the body, the front's codec for the
adapter builds the upstream request, a plain aiohttp ClientSession sends it,
and the answer, the stream frames (as they come) or the classified error go
back in the front's shape. Every upstream request, usage and stream failure is
kept for the test to assert on.

    async with CodecRelay(MessagesFront(), adapter) as relay:
        client = anthropic.AsyncAnthropic(base_url=relay.url, api_key="x")
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from gateway.errors import GatewayError
from gateway.fronts.base import Front
from gateway.providers.adapter import Call, Codec, ProviderAdapter, UpstreamRequest
from gateway.providers.failures import AttemptFailed, AttemptFailure
from gateway.providers.usage import Usage
from tests.processes import serve_app


@dataclass
class RelayLog:
    sent: list[UpstreamRequest] = field(default_factory=list)
    usages: list[Usage | None] = field(default_factory=list)
    failures: list[AttemptFailure] = field(default_factory=list)
    codecs: list[Codec] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)


class CodecRelay:
    def __init__(self, front: Front, adapter: ProviderAdapter, *, path: str | None = None) -> None:
        self.front = front
        self.adapter = adapter
        self.path = path or front.paths[0]
        self.log = RelayLog()
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> CodecRelay:
        await self.adapter.start()
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application()
        app.router.add_post(self.path, self._handle)
        self._runner, self.port = await serve_app(app)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()
        await self.adapter.close()

    def _error(self, failure: AttemptFailure) -> web.Response:
        self.log.failures.append(failure)
        err = GatewayError(failure.message, code=failure.code, status=failure.status_for_client)
        return web.json_response(self.front.error_body(err), status=err.status)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        try:
            parsed = self.front.parse(body, request.headers)
        except GatewayError as err:
            return web.json_response(self.front.error_body(err), status=err.status)
        codec = self.front.codec_for(self.adapter)
        assert codec is not None
        call = Call(parsed.operation, parsed.body, parsed.stream, "req-relay", parsed.headers)
        self.log.codecs.append(codec)
        self.log.calls.append(call)
        try:
            upstream = await codec.prepare(call)
        except AttemptFailed as err:
            return self._error(err.failure)
        self.log.sent.append(upstream)
        assert self._session is not None
        async with self._session.request(
            upstream.method, upstream.url, data=upstream.body, headers=dict(upstream.headers)
        ) as resp:
            if not 200 <= resp.status < 300:
                raw = await resp.read()
                return self._error(codec.classify_error(resp.status, resp.headers, raw))
            if not call.stream:
                raw = await resp.read()
                try:
                    answer, usage = codec.parse_response(call, resp.status, resp.headers, raw)
                except AttemptFailed as err:
                    return self._error(err.failure)
                self.log.usages.append(usage)
                return web.json_response(answer)
            return await self._stream(request, codec, call, resp)

    async def _stream(
        self, request: web.Request, codec: Codec, call: Call, resp: aiohttp.ClientResponse
    ) -> web.StreamResponse:
        translator = codec.stream_translator(call)
        out: web.StreamResponse | None = None
        pending: list[bytes] = []
        try:
            async for chunk in resp.content.iter_any():
                frames = translator.feed(chunk)
                if frames and out is None:
                    out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
                    await out.prepare(request)
                for frame in frames:
                    assert out is not None
                    await out.write(frame)
            pending = translator.finish()
        except AttemptFailed as err:
            self.log.usages.append(translator.usage)
            if out is None:
                return self._error(err.failure)
            self.log.failures.append(err.failure)
            pending = [*err.frames, *translator.error_frames(err.failure)]
        else:
            self.log.usages.append(translator.usage)
        if out is None:
            out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await out.prepare(request)
        for frame in pending:
            await out.write(frame)
        await out.write_eof()
        return out


def sse_events(raw: bytes) -> list[tuple[str | None, Any]]:
    """(event name, JSON data) of each event in an SSE body the relay wrote."""
    events: list[tuple[str | None, Any]] = []
    for block in raw.decode().split("\n\n"):
        if not block.strip():
            continue
        name = None
        data: list[str] = []
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
        text = "\n".join(data)
        events.append((name, text if text == "[DONE]" else json.loads(text)))
    return events


__all__ = ["CodecRelay", "RelayLog", "sse_events"]
