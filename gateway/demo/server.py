"""The demo upstream: an OpenAI-compatible server with canned answers.

Every answer is a function of the endpoint's name and the request only (no
clock, no randomness except ids), so the quick start and its test can say
what comes back: a reply naming the demo endpoint that answered, usage counted
in words, embeddings derived from a hash of the input. Errors are answered in
OpenAI's error shape.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

DEMO_MODEL = "demo-model"
EMBEDDING_DIMENSIONS = 16
# Seconds between streamed words: a stream that visibly streams, still quick.
STREAM_DELAY_S = 0.005


def reply_text(name: str, messages: list[Any]) -> str:
    """The canned answer of demo endpoint `name`."""
    last = next(
        (m for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "user"), None
    )
    words = len(_text_of(last.get("content") if last else None).split())
    return (
        f"Hello from the demo endpoint {name}. This is a canned reply from a demo server, "
        f"not a model: the gateway routed your request ({words} word"
        f"{'' if words == 1 else 's'}) here."
    )


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def _prompt_tokens(messages: list[Any]) -> int:
    """Words of every message, as the demo's token count (at least one)."""
    words = sum(len(_text_of(m.get("content")).split()) for m in messages if isinstance(m, dict))
    return max(words, 1)


def embedding(name: str, text: str) -> list[float]:
    """A unit vector made from SHA-256 of the endpoint's name and the text."""
    digest = hashlib.sha256(f"{name}\0{text}".encode()).digest()
    raw = [(byte - 127.5) / 127.5 for byte in digest[:EMBEDDING_DIMENSIONS]]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [round(x / norm, 6) for x in raw]


def _error(status: int, message: str, code: str) -> web.Response:
    body = {"error": {"message": message, "type": "invalid_request_error", "code": code}}
    return web.json_response(body, status=status)


class DemoUpstream:
    """The demo server of one named demo endpoint."""

    def __init__(self, name: str, model: str = DEMO_MODEL) -> None:
        self.name = name
        self.model = model
        self.requests = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/healthz", self._health)
        return app

    async def _body(self, request: web.Request) -> dict[str, Any] | web.Response:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "the body is not valid JSON", "invalid_json")
        if not isinstance(body, dict):
            return _error(400, "the body must be a JSON object", "invalid_body")
        self.requests += 1
        return body

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return _error(400, "'messages' must be a non-empty list", "invalid_body")
        model = str(body.get("model") or self.model)
        text = reply_text(self.name, messages)
        usage = {
            "prompt_tokens": _prompt_tokens(messages),
            "completion_tokens": len(text.split()),
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        completion_id = f"chatcmpl-demo-{uuid.uuid4().hex[:12]}"
        if body.get("stream"):
            options = body.get("stream_options")
            with_usage = isinstance(options, dict) and bool(options.get("include_usage"))
            return await self._stream(
                request,
                completion_id=completion_id,
                model=model,
                text=text,
                usage=usage,
                with_usage=with_usage,
            )
        return web.json_response(
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": 0,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage,
                "system_fingerprint": f"kamiwaza-demo-{self.name}",
            }
        )

    async def _stream(
        self,
        request: web.Request,
        *,
        completion_id: str,
        model: str,
        text: str,
        usage: dict[str, int],
        with_usage: bool,
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)

        def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
            return {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": 0,
                "model": model,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }

        async def send(doc: dict[str, Any] | str) -> None:
            data = doc if isinstance(doc, str) else json.dumps(doc, separators=(",", ":"))
            await response.write(f"data: {data}\n\n".encode())

        await send(chunk({"role": "assistant", "content": ""}, None))
        words = text.split(" ")
        for index, word in enumerate(words):
            await send(chunk({"content": word if index == 0 else " " + word}, None))
            await asyncio.sleep(STREAM_DELAY_S)
        await send(chunk({}, "stop"))
        if with_usage:  # as vLLM does: a last chunk with no choices
            await send({**chunk({}, None), "choices": [], "usage": usage})
        await send("[DONE]")
        await response.write_eof()
        return response

    async def _embeddings(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        inputs = body.get("input")
        if isinstance(inputs, str):
            inputs = [inputs]
        if (
            not isinstance(inputs, list)
            or not inputs
            or not all(isinstance(i, str) for i in inputs)
        ):
            return _error(400, "'input' must be a string or a list of strings", "invalid_body")
        return web.json_response(
            {
                "object": "list",
                "model": str(body.get("model") or self.model),
                "data": [
                    {"object": "embedding", "index": i, "embedding": embedding(self.name, text)}
                    for i, text in enumerate(inputs)
                ],
                "usage": {
                    "prompt_tokens": sum(max(len(t.split()), 1) for t in inputs),
                    "total_tokens": sum(max(len(t.split()), 1) for t in inputs),
                },
            }
        )

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {"id": self.model, "object": "model", "created": 0, "owned_by": "kamiwaza-demo"}
                ],
            }
        )

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "demo_endpoint": self.name})


async def watch_parent(parent: int, on_gone: Callable[[], Awaitable[None]]) -> None:
    """Call `on_gone` once the process that started this one has exited (it is
    then no longer our parent): the demo servers of `make run` end with it."""
    while os.getppid() == parent:
        await asyncio.sleep(0.5)
    await on_gone()
