"""A fake Anthropic Messages API on a loopback port, and the Claude simulator it
shares with the fake Vertex AI server.

The server speaks the real wire protocol: `POST /v1/messages`, the key in
`x-api-key` (or `Authorization: Bearer`, as the 2.x SDKs send it; `x-api-key`
wins when both are there), a required `anthropic-version` header, a `message`
JSON answer or named SSE events (`message_start`, `content_block_start`,
`ping`, `content_block_delta` with `text_delta` / `input_json_delta`,
`content_block_stop`, `message_delta` with usage, `message_stop`), and errors
as `{"type": "error", "error": {"type", "message"}, "request_id"}` with the
real statuses (401, 400, 429 with `retry-after`, 500, 529).

Every request body is checked against the `anthropic` package's own
`MessageCreateParams` (strictly, see tests/typed_check.py): a body the real API
would refuse gets the same 400 `invalid_request_error`, and the mismatch is
kept in `invalid` so that tests can assert there was none. API version
2026-10-21 takes no sampling parameters; 2023-06-01 does. Every answer the fake
sends is validated against the package's response models too.

The simulated Claude (:class:`ClaudeSimulator`) answers deterministically from
the request:
- the last user turn holds tool results: "The tool said: <their content>";
- the request has tools and the last user text names one: a `tool_use` of it,
  with the JSON object written in the text (if any) as input;
- under an `output_config.format` of type `json_schema`: a JSON object of the
  schema's properties, each holding the last user text;
- otherwise: "You said: <the last user text>";
and then honours `stop_sequences` (stop_reason `stop_sequence`) and
`max_tokens` (one token a word; stop_reason `max_tokens`). Usage counts words.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from anthropic.types import (
    Message,
    MessageCountTokensParams,
    MessageTokensCount,
    RawMessageStreamEvent,
)
from anthropic.types.message_create_params import (
    MessageCreateParamsNonStreaming,
    MessageCreateParamsStreaming,
)
from anthropic.types.shared import ErrorResponse
from multidict import CIMultiDict
from pydantic import TypeAdapter

from tests.processes import serve_app
from tests.typed_check import TypeMismatch, check

API_VERSIONS = ("2023-06-01", "2026-10-21")
SIGNED = "EqQBCkgIARABGAIiQL2thinking-signature-of-the-fake"
SAMPLING_KEYS = ("temperature", "top_p", "top_k")
_EVENT = TypeAdapter(RawMessageStreamEvent)
_JSON_OBJECT = re.compile(r"\{.*\}", re.S)


@dataclass
class Failure:
    """Answer the next request with an Anthropic error (or in-stream error event)."""

    status: int
    error_type: str
    message: str
    headers: dict[str, str] = field(default_factory=dict)
    in_stream: bool = False  # for streams: HTTP 200, then an `error` event after message_start


@dataclass
class Answer:
    """What the simulated model produces for one request."""

    text: str | None
    tool_use: tuple[str, str, dict[str, Any]] | None  # (id, name, input)
    stop_reason: str
    stop_sequence: str | None
    input_tokens: int
    output_tokens: int


def _words(text: str) -> int:
    return len(text.split())


def _texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    texts = []
    for block in content or ():
        if block.get("type") == "text":
            texts.append(block["text"])
        elif block.get("type") == "tool_result":
            texts += _texts(block.get("content"))
    return texts


class ClaudeSimulator:
    """A deterministic stand-in for Claude, driven by the request body."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)

    def answer(self, body: dict[str, Any]) -> Answer:
        messages = body["messages"]
        last = messages[-1]
        content = last["content"]
        blocks = content if isinstance(content, list) else [{"type": "text", "text": content}]
        results = [b for b in blocks if b.get("type") == "tool_result"]
        user_text = " ".join(_texts([b for b in blocks if b.get("type") == "text"]))
        tool_use = None
        if results:
            text: str | None = "The tool said: " + " ".join(
                " ".join(_texts(r.get("content"))) for r in results
            )
        else:
            tools = [t["name"] for t in body.get("tools") or ()]
            named = [name for name in tools if name in user_text]
            choice = (body.get("tool_choice") or {}).get("type")
            if named and choice != "none":
                match = _JSON_OBJECT.search(user_text)
                arguments = json.loads(match.group(0)) if match else {}
                tool_use = (f"toolu_{next(self._ids):024d}", named[0], arguments)
                text = None
            else:
                fmt = (body.get("output_config") or {}).get("format") or {}
                if fmt.get("type") == "json_schema":
                    keys = (fmt.get("schema") or {}).get("properties") or {}
                    text = json.dumps(dict.fromkeys(keys, user_text))
                else:
                    text = "You said: " + user_text
        input_tokens = _words(str(body.get("system", ""))) + sum(
            _words(" ".join(_texts(m["content"]))) for m in messages
        )
        if tool_use is not None:
            return Answer(None, tool_use, "tool_use", None, input_tokens, 12)
        assert text is not None
        stop_reason, stop_sequence = "end_turn", None
        for sequence in body.get("stop_sequences") or ():
            if sequence in text:
                text, stop_reason, stop_sequence = (
                    text[: text.index(sequence)],
                    "stop_sequence",
                    sequence,
                )
                break
        words = text.split(" ")
        if len(words) > body["max_tokens"]:
            text, stop_reason, stop_sequence = (
                " ".join(words[: body["max_tokens"]]),
                "max_tokens",
                None,
            )
        return Answer(text, None, stop_reason, stop_sequence, input_tokens, _words(text))


def anthropic_error(status: int, error_type: str, message: str, **headers: str) -> web.Response:
    body = {
        "type": "error",
        "error": {"type": error_type, "message": message},
        "request_id": "req_fake0001",
    }
    ErrorResponse.model_validate(body)
    return web.json_response(body, status=status, headers=headers)


def count_tokens(body: dict[str, Any]) -> int:
    """The fake's token count of a count_tokens body: words, as its usage counts them."""
    return _words(str(body.get("system", ""))) + sum(
        _words(" ".join(_texts(m["content"]))) for m in body["messages"]
    )


def validate_count_tokens(body: Any) -> str | None:
    """Why the real API would refuse a count_tokens `body` (None when it would not)."""
    if not isinstance(body, dict):
        return "the body must be a JSON object"
    try:
        check(body, MessageCountTokensParams)
    except TypeMismatch as err:
        return str(err)
    return None


def validate_request(body: Any, *, version: str, model_in_body: bool = True) -> str | None:
    """Why the real API would refuse `body` (None when it would not)."""
    if not isinstance(body, dict):
        return "the body must be a JSON object"
    candidate = dict(body)
    if version not in ("2026-10-21",):
        # The legacy versions still take the sampling parameters.
        for key in SAMPLING_KEYS:
            if key in candidate:
                value = candidate.pop(key)
                if isinstance(value, bool) or not isinstance(value, int | float):
                    return f"{key}: Input should be a valid number"
                if key != "top_k" and not 0 <= value <= 1:
                    return f"{key}: range: 0..1"
    if not model_in_body:
        candidate["model"] = "model-from-the-url"
    params = (
        MessageCreateParamsStreaming if candidate.get("stream") else MessageCreateParamsNonStreaming
    )
    try:
        check(candidate, params)
    except TypeMismatch as err:
        return str(err)
    return None


@dataclass(frozen=True)
class Recorded:
    path: str
    headers: CIMultiDict[str]
    json: Any
    raw: bytes = b""


class ClaudeResponder:
    """Builds Claude's answer to a validated body, as JSON or as SSE events."""

    def __init__(self, simulator: ClaudeSimulator) -> None:
        self.simulator = simulator
        self._ids = itertools.count(1)
        self.cache_read = 0  # reported cache_read_input_tokens
        self.cache_write = 0  # reported cache_creation_input_tokens
        self.thinking: str | None = None  # when set, answers start with this thinking block

    def _usage(self, answer: Answer) -> dict[str, Any]:
        return {
            "input_tokens": answer.input_tokens,
            "output_tokens": answer.output_tokens,
            "cache_creation_input_tokens": self.cache_write,
            "cache_read_input_tokens": self.cache_read,
        }

    def message(self, body: dict[str, Any], model: str) -> dict[str, Any]:
        answer = self.simulator.answer(body)
        content: list[dict[str, Any]] = []
        if self.thinking is not None:
            content.append({"type": "thinking", "thinking": self.thinking, "signature": SIGNED})
        if answer.text is not None:
            content.append({"type": "text", "text": answer.text})
        if answer.tool_use is not None:
            tool_id, name, arguments = answer.tool_use
            content.append({"type": "tool_use", "id": tool_id, "name": name, "input": arguments})
        message = {
            "id": f"msg_fake{next(self._ids):04d}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": answer.stop_reason,
            "stop_sequence": answer.stop_sequence,
            "usage": self._usage(answer),
        }
        Message.model_validate(message)
        return message

    def events(
        self, body: dict[str, Any], model: str, failure: Failure | None = None
    ) -> list[tuple[str, dict[str, Any]]]:
        answer = self.simulator.answer(body)
        start_usage = {**self._usage(answer), "output_tokens": 1}
        events: list[tuple[str, dict[str, Any]]] = [
            (
                "message_start",
                {
                    "type": "message_start",
                    "message": {
                        "id": f"msg_fake{next(self._ids):04d}",
                        "type": "message",
                        "role": "assistant",
                        "model": model,
                        "content": [],
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": start_usage,
                    },
                },
            )
        ]
        if failure is not None:
            events.append(
                (
                    "error",
                    {
                        "type": "error",
                        "error": {"type": failure.error_type, "message": failure.message},
                    },
                )
            )
            return events
        index = 0
        if self.thinking is not None:
            events += [
                (
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": 0,
                        "content_block": {"type": "thinking", "thinking": "", "signature": ""},
                    },
                ),
                (
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "thinking_delta", "thinking": self.thinking},
                    },
                ),
                (
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "signature_delta", "signature": SIGNED},
                    },
                ),
                ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            ]
            index = 1
        if answer.text is not None:
            events.append(
                (
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": index,
                        "content_block": {"type": "text", "text": ""},
                    },
                )
            )
            events.append(("ping", {"type": "ping"}))
            words = answer.text.split(" ")
            for i, word in enumerate(words):
                piece = word if i == 0 else " " + word
                events.append(
                    (
                        "content_block_delta",
                        {
                            "type": "content_block_delta",
                            "index": index,
                            "delta": {"type": "text_delta", "text": piece},
                        },
                    )
                )
            events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
            index += 1
        if answer.tool_use is not None:
            tool_id, name, arguments = answer.tool_use
            events.append(
                (
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": index,
                        "content_block": {
                            "type": "tool_use",
                            "id": tool_id,
                            "name": name,
                            "input": {},
                        },
                    },
                )
            )
            raw = json.dumps(arguments)
            for piece in ("", raw[: len(raw) // 2], raw[len(raw) // 2 :]):
                events.append(
                    (
                        "content_block_delta",
                        {
                            "type": "content_block_delta",
                            "index": index,
                            "delta": {"type": "input_json_delta", "partial_json": piece},
                        },
                    )
                )
            events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
        events.append(
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {
                        "stop_reason": answer.stop_reason,
                        "stop_sequence": answer.stop_sequence,
                    },
                    "usage": {"output_tokens": answer.output_tokens},
                },
            )
        )
        events.append(("message_stop", {"type": "message_stop"}))
        for name, payload in events:
            if name != "ping":
                _EVENT.validate_python(payload)
        return events


async def write_events(
    request: web.Request, events: list[tuple[str, dict[str, Any]]], **headers: str
) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache",
            **headers,
        }
    )
    await response.prepare(request)
    for name, payload in events:
        await response.write(f"event: {name}\ndata: {json.dumps(payload)}\n\n".encode())
        await asyncio.sleep(0)
    await response.write_eof()
    return response


class FakeAnthropic:
    """`async with FakeAnthropic(api_key=...) as fake:` ... `fake.url` is a base_url."""

    def __init__(self, *, api_key: str, host: str = "127.0.0.1") -> None:
        self.api_key = api_key
        self.host = host
        self.port = 0
        self.requests: list[Recorded] = []
        self.invalid: list[str] = []  # validation failures of request bodies
        self.queue: deque[Failure] = deque()
        self.responder = ClaudeResponder(ClaudeSimulator())
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def fail(self, failure: Failure, times: int = 1) -> None:
        self.queue.extend([failure] * times)

    def reset(self) -> None:
        self.requests.clear()
        self.invalid.clear()
        self.queue.clear()
        self.responder.cache_read = self.responder.cache_write = 0
        self.responder.thinking = None

    async def start(self) -> FakeAnthropic:
        app = web.Application()
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_post("/v1/messages/count_tokens", self._count_tokens)
        self._runner, self.port = await serve_app(app, self.host)
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeAnthropic:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _authenticated(self, request: web.Request) -> bool:
        key = request.headers.get("x-api-key")
        if key is None:
            bearer = request.headers.get("Authorization", "")
            key = bearer[7:] if bearer.startswith("Bearer ") else None
        return key == self.api_key

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        self.requests.append(Recorded(request.path_qs, CIMultiDict(request.headers), body, raw))
        if not self._authenticated(request):
            return anthropic_error(401, "authentication_error", "invalid x-api-key")
        version = request.headers.get("anthropic-version")
        if version is None:
            return anthropic_error(
                400, "invalid_request_error", "anthropic-version: header is required"
            )
        if version not in API_VERSIONS:
            return anthropic_error(
                400, "invalid_request_error", f"anthropic-version: unknown version {version}"
            )
        problem = validate_request(body, version=version)
        if problem is not None:
            self.invalid.append(problem)
            return anthropic_error(400, "invalid_request_error", problem)
        failure = self.queue.popleft() if self.queue else None
        if failure is not None and not (failure.in_stream and body.get("stream")):
            return anthropic_error(
                failure.status, failure.error_type, failure.message, **failure.headers
            )
        if body.get("stream"):
            return await write_events(
                request,
                self.responder.events(body, body["model"], failure),
                **{"request-id": "req_fake"},
            )
        return web.json_response(
            self.responder.message(body, body["model"]), headers={"request-id": "req_fake"}
        )

    async def _count_tokens(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        self.requests.append(Recorded(request.path_qs, CIMultiDict(request.headers), body, raw))
        if not self._authenticated(request):
            return anthropic_error(401, "authentication_error", "invalid x-api-key")
        if request.headers.get("anthropic-version") not in API_VERSIONS:
            return anthropic_error(400, "invalid_request_error", "anthropic-version: unknown")
        problem = validate_count_tokens(body)
        if problem is not None:
            self.invalid.append(problem)
            return anthropic_error(400, "invalid_request_error", problem)
        answer = {"input_tokens": count_tokens(body)}
        MessageTokensCount.model_validate(answer)
        return web.json_response(answer)
