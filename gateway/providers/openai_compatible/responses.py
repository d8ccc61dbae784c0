"""The native Responses codec of OpenAI (and, in :mod:`..azure_openai.responses`,
Azure OpenAI): the client's Responses body passes through with only the model
replaced, and the Responses API's shapes the bridge shares.

`POST {base}/responses` (`https://api.openai.com/v1/responses`). The body is the
client's JSON object, key order kept, `model` replaced by the endpoint's (when
the registry names one); `previous_response_id`, `store`, `conversation` and
`background` are the client's to use, since OpenAI keeps that state. The answer
(a `response`) and the stream's semantic events (`event: response.*` with
`data:` bytes untouched) go back as they came; usage comes from the response
object (`response.completed` in streams).

Like the chat translators, the stream holds the lifecycle events
(`response.created`, `response.queued`, `response.in_progress`) until the first
event of the answer itself, so that a failure reported before any output still
lets the forwarder fail over.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

from gateway.providers.adapter import RESPONSES, Call, Codec, StreamTranslator, UpstreamRequest
from gateway.providers.chat import (
    bad_response,
    count,
    feed_sse,
    flush_sse,
    json_answer,
    json_event,
    stream_truncated,
)
from gateway.providers.failures import (
    MAX_ERROR_MESSAGE,
    UPSTREAM_STREAM_ERROR,
    AttemptFailed,
    AttemptFailure,
)
from gateway.providers.sse import SseParser
from gateway.providers.usage import (
    TOKENS_PER_MESSAGE,
    TOKENS_REPLY_PRIMING,
    Usage,
    estimate_text_tokens,
)
from gateway.providers.wire import encode_body, event_frame, passthrough_body, raw_event_frame

if TYPE_CHECKING:
    from gateway.providers.openai_compatible.adapter import OpenAICompatibleAdapter

LIFECYCLE: Final = frozenset({"response.created", "response.queued", "response.in_progress"})
TERMINAL: Final = frozenset({"response.completed", "response.incomplete"})

# ResponseError.code is a closed set; the gateway's failures map onto two of them.
RATE_LIMITED: Final = "rate_limit_exceeded"
SERVER_ERROR: Final = "server_error"


# ---------------------------------------------------------------------------
# Shapes shared with the Responses bridge.


def usage_object(usage: Usage) -> dict[str, Any]:
    """A Responses `usage` object for these counts."""
    return {
        "input_tokens": usage.input_tokens,
        "input_tokens_details": {
            "cache_write_tokens": usage.cache_write_tokens,
            "cached_tokens": usage.cache_read_tokens,
        },
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.total_tokens,
    }


def parse_usage(usage: Any) -> Usage | None:
    """A Responses `usage` object as Usage (`input_tokens` counts the cached part)."""
    if not isinstance(usage, Mapping) or "input_tokens" not in usage:
        return None
    details = usage.get("input_tokens_details")
    cached = count(details.get("cached_tokens")) if isinstance(details, Mapping) else 0
    written = count(details.get("cache_write_tokens")) if isinstance(details, Mapping) else 0
    return Usage(
        count(usage.get("input_tokens")),
        count(usage.get("output_tokens")),
        cache_read_tokens=cached,
        cache_write_tokens=written,
    )


def error_object(failure: AttemptFailure) -> dict[str, Any]:
    """A Responses `error` object (its `code` is one of the API's own)."""
    code = RATE_LIMITED if failure.status_for_client == 429 else SERVER_ERROR
    return {"code": code, "message": failure.message}


def failed_event(
    snapshot: Mapping[str, Any] | None, failure: AttemptFailure, sequence_number: int
) -> bytes:
    """`response.failed`: how a Responses stream ends when it fails after its first byte."""
    response = dict(snapshot or minimal_response("resp_gateway", ""))
    response.update(status="failed", error=error_object(failure), usage=None)
    return event_frame(
        "response.failed",
        {"type": "response.failed", "response": response, "sequence_number": sequence_number},
    )


def minimal_response(response_id: str, model: str) -> dict[str, Any]:
    """The fields every Response object carries, for an answer the gateway writes."""
    return {
        "id": response_id,
        "object": "response",
        "created_at": int(time.time()),
        "model": model,
        "output": [],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
    }


def _error_failure(payload: Mapping[str, Any], redact: Callable[[str], str]) -> AttemptFailure:
    """The failure an `error` or `response.failed` event reports."""
    error: Any = payload
    if payload.get("type") == "response.failed":
        response = payload.get("response")
        error = response.get("error") if isinstance(response, Mapping) else None
    elif isinstance(payload.get("error"), Mapping):
        error = payload["error"]
    message = error.get("message") if isinstance(error, Mapping) else None
    code = error.get("code") if isinstance(error, Mapping) else None
    text = redact(message)[:MAX_ERROR_MESSAGE] if isinstance(message, str) else None
    status = 429 if code == RATE_LIMITED else 502
    return AttemptFailure(
        status,
        code if isinstance(code, str) and code else UPSTREAM_STREAM_ERROR,
        text or "the upstream reported an error",
        True,
    )


# ---------------------------------------------------------------------------
# Token estimates.


def _chars(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(_chars(item) for item in value)
    if isinstance(value, Mapping):
        total = 0
        for key in ("text", "content", "arguments", "output", "name"):
            total += _chars(value.get(key))
        return total
    return 0


def estimate_responses_tokens(body: Mapping[str, Any]) -> int:
    """Approximate input tokens of a Responses body (instructions, input, tools)."""
    chars = _chars(body.get("instructions"))
    items = body.get("input")
    turns = 1 if isinstance(items, str) else len(items) if isinstance(items, list) else 0
    chars += _chars(items)
    tools = body.get("tools")
    if isinstance(tools, list) and tools:
        chars += len(json.dumps(tools, separators=(",", ":")))
    return estimate_text_tokens(chars) + TOKENS_PER_MESSAGE * turns + TOKENS_REPLY_PRIMING


def estimate_response_usage(body: Mapping[str, Any], answer: Mapping[str, Any] | None) -> Usage:
    output = estimate_text_tokens(_chars(answer.get("output"))) if answer is not None else 0
    return Usage(estimate_responses_tokens(body), output, estimated=True)


# ---------------------------------------------------------------------------
# The passthrough.


def parse_response(
    raw: bytes, *, redact: Callable[[str], str]
) -> tuple[dict[str, Any], Usage | None]:
    """A 2xx `response` answer as it came, and its usage."""
    answer = json_answer(raw)
    if "error" in answer and answer.get("object") != "response":
        raise AttemptFailed(_error_failure(answer, redact))
    if answer.get("object") != "response" or not isinstance(answer.get("output"), list):
        raise AttemptFailed(bad_response("the upstream's answer is not a response"))
    return answer, parse_usage(answer.get("usage"))


class ResponsesStream(StreamTranslator):
    """The Responses API's semantic events passed through one by one."""

    def __init__(self, *, prompt_estimate: int, redact: Callable[[str], str]) -> None:
        self.redact = redact
        self._parser = SseParser()
        self._prompt_estimate = prompt_estimate
        self._held: list[bytes] = []
        self._started = False
        self._snapshot: dict[str, Any] | None = None
        self._sequence = -1
        self._reported: Usage | None = None
        self._chars = 0
        self._chunks = 0
        self.done = False

    @property
    def usage(self) -> Usage:
        if self._reported is not None:
            return self._reported
        output = max(self._chunks, estimate_text_tokens(self._chars))
        return Usage(self._prompt_estimate, output, estimated=True)

    def feed(self, data: bytes) -> list[bytes]:
        return feed_sse(self._parser, data, self._event)

    def finish(self) -> list[bytes]:
        frames = flush_sse(self._parser, self._event)
        if not self.done:
            raise stream_truncated()
        return frames

    def error_frames(self, failure: AttemptFailure) -> list[bytes]:
        return [failed_event(self._snapshot, failure, self._sequence + 1)]

    def _event(self, name: str | None, data: bytes, frames: list[bytes]) -> None:
        if self.done:
            return
        payload = json_event(data)
        kind = payload.get("type") if isinstance(payload.get("type"), str) else name
        if kind in ("error", "response.failed") or name == "error":
            raise AttemptFailed(_error_failure(payload, self.redact))
        sequence = payload.get("sequence_number")
        if isinstance(sequence, int) and not isinstance(sequence, bool):
            self._sequence = sequence
        response = payload.get("response")
        if isinstance(response, dict):
            self._snapshot = response
        delta = payload.get("delta")
        if isinstance(delta, str) and delta:
            self._chars += len(delta)
            self._chunks += 1
        if kind in TERMINAL:
            self.done = True
            if isinstance(response, Mapping):
                self._reported = parse_usage(response.get("usage"))
        frame = raw_event_frame(name or str(kind or "message"), data)
        if not self._started and kind in LIFECYCLE:
            self._held.append(frame)
            return
        if not self._started:
            self._started = True
            frames.extend(self._held)
            self._held.clear()
        frames.append(frame)


class OpenAIResponsesCodec(Codec):
    """`POST {base}/responses`: the client's Responses body, only the model replaced."""

    operation = RESPONSES

    def __init__(self, adapter: OpenAICompatibleAdapter) -> None:
        self.adapter = adapter

    def upstream_model(self, call: Call) -> str | None:
        return self.adapter.upstream_model(call.body)

    def url(self) -> str:
        return self.adapter.base_url + "/responses"

    def model(self, call: Call) -> str | None:
        return self.adapter.endpoint.model

    async def headers(self) -> dict[str, str]:
        return {"Content-Type": "application/json", **self.adapter.auth_headers()}

    async def prepare(self, call: Call) -> UpstreamRequest:
        body = passthrough_body(call.body, self.model(call))
        return UpstreamRequest("POST", self.url(), await self.headers(), encode_body(body))

    def parse_response(
        self, call: Call, status: int, headers: Mapping[str, str], raw: bytes
    ) -> tuple[dict[str, Any], Usage | None]:
        return parse_response(raw, redact=self.adapter.redact)

    def classify_error(self, status: int, headers: Mapping[str, str], raw: bytes) -> AttemptFailure:
        return self.adapter.classify_error(status, headers, raw)

    def stream_translator(self, call: Call) -> StreamTranslator:
        return ResponsesStream(
            prompt_estimate=estimate_responses_tokens(call.body), redact=self.adapter.redact
        )

    def estimate_usage(self, call: Call, answer: Mapping[str, Any] | None) -> Usage:
        return estimate_response_usage(call.body, answer)
