"""The native Messages codecs of Anthropic's API: the client's Messages body passes
through with only the model replaced.

`POST {base}/v1/messages` (and `/v1/messages/count_tokens`) with the endpoint's
key in `x-api-key`; the client's `anthropic-version` and `anthropic-beta`
headers are forwarded unchanged (the endpoint's `anthropic_version` when the
client sends none). The body is the client's JSON object re-encoded compactly
with its key order kept and only `model` replaced, so thinking blocks and their
signatures, `cache_control`, tool use, images, documents and `metadata` reach
Anthropic as written. The answer (a `message`) and the stream's events go back
as they came; usage, cache tokens included, is read from them for the audit
record and the cost.

:class:`MessagesStream` is the passthrough translator Claude on Vertex AI and on
Bedrock reuse: it holds `message_start` (and pings) until the first event that
is the answer's own, so that an `overloaded_error` right after `message_start`
still lets the forwarder fail over, then passes every event on as it comes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

from gateway.providers.adapter import MESSAGES, Call, Codec, StreamTranslator, UpstreamRequest
from gateway.providers.anthropic.translate import error_event_failure, parse_usage
from gateway.providers.anthropic.wire import error_event, event_frame, raw_event_frame
from gateway.providers.chat import (
    bad_response,
    check_model_name,
    count,
    feed_sse,
    flush_sse,
    json_answer,
    json_event,
    stream_truncated,
)
from gateway.providers.failures import AttemptFailed, AttemptFailure
from gateway.providers.sse import SseParser
from gateway.providers.usage import (
    TOKENS_PER_MESSAGE,
    TOKENS_REPLY_PRIMING,
    Usage,
    estimate_text_tokens,
)
from gateway.providers.wire import encode_body, passthrough_body

if TYPE_CHECKING:
    from gateway.providers.anthropic.adapter import AnthropicAdapter

COUNT_TOKENS: Final = "count_tokens"
"""The codec key of `POST /v1/messages/count_tokens` (policy sees operation `messages`)."""

__all__ = [
    "COUNT_TOKENS",
    "AnthropicCountTokensCodec",
    "AnthropicMessagesCodec",
    "MessagesStream",
    "passthrough_body",
]

# Client headers a native Messages codec forwards (lower-case, as Call.headers has them).
VERSION_HEADER: Final = "anthropic-version"
BETA_HEADER: Final = "anthropic-beta"
FORWARDED_HEADERS: Final = (VERSION_HEADER, BETA_HEADER)

# Anthropic bills an image by its size, (width * height) / 750 tokens, at most
# about 1600 for the largest it accepts; the size is not known without decoding.
IMAGE_TOKENS: Final = 1600


# ---------------------------------------------------------------------------
# Request.


def client_headers(call: Call, *, default_version: str | None) -> dict[str, str]:
    """The client's `anthropic-version` (else `default_version`) and `anthropic-beta`."""
    headers: dict[str, str] = {}
    version = call.headers.get(VERSION_HEADER) or default_version
    if version:
        headers[VERSION_HEADER] = version
    beta = call.headers.get(BETA_HEADER)
    if beta:
        headers[BETA_HEADER] = beta
    return headers


def betas(call: Call) -> list[str]:
    """The client's `anthropic-beta` header as a list (Bedrock takes it in the body)."""
    raw = call.headers.get(BETA_HEADER) or ""
    return [b.strip() for b in raw.split(",") if b.strip()]


# ---------------------------------------------------------------------------
# Token estimates (for answers without usage, and count_tokens without an API).


def _block_chars(block: Any) -> tuple[int, int]:
    """(characters, images) of one content block."""
    if isinstance(block, str):
        return len(block), 0
    if not isinstance(block, Mapping):
        return 0, 0
    kind = block.get("type")
    if kind == "image":
        return 0, 1
    chars, images = 0, 0
    for key in ("text", "thinking"):
        value = block.get(key)
        if isinstance(value, str):
            chars += len(value)
    if kind in ("tool_use", "server_tool_use"):
        chars += len(str(block.get("name", ""))) + len(
            json.dumps(block.get("input", {}), separators=(",", ":"))
        )
    content = block.get("content")
    if isinstance(content, list | str):
        sub_chars, sub_images = _content_chars(content)
        chars += sub_chars
        images += sub_images
    source = block.get("source")
    if kind == "document" and isinstance(source, Mapping) and isinstance(source.get("data"), str):
        if source.get("type") == "text":
            chars += len(source["data"])
        else:
            # A base64 PDF: about a token per 3 bytes of page text is unknowable;
            # count the decoded size at the text rate as an upper-side guess.
            chars += len(source["data"]) * 3 // 4
    return chars, images


def _content_chars(content: Any) -> tuple[int, int]:
    if isinstance(content, str):
        return len(content), 0
    chars, images = 0, 0
    for block in content if isinstance(content, list) else ():
        block_chars, block_images = _block_chars(block)
        chars += block_chars
        images += block_images
    return chars, images


def estimate_messages_tokens(body: Mapping[str, Any]) -> int:
    """Approximate input tokens of a Messages body (system, turns, tools, images)."""
    chars, images = _content_chars(body.get("system"))
    messages = body.get("messages")
    turns = 0
    for message in messages if isinstance(messages, list) else ():
        if isinstance(message, Mapping):
            turns += 1
            turn_chars, turn_images = _content_chars(message.get("content"))
            chars += turn_chars
            images += turn_images
    tools = body.get("tools")
    if isinstance(tools, list) and tools:
        chars += len(json.dumps(tools, separators=(",", ":")))
    return (
        estimate_text_tokens(chars)
        + IMAGE_TOKENS * images
        + TOKENS_PER_MESSAGE * turns
        + TOKENS_REPLY_PRIMING
    )


def estimate_message_usage(body: Mapping[str, Any], message: Mapping[str, Any] | None) -> Usage:
    """Usage of a Messages answer when the upstream reported none (flagged estimated)."""
    output = 0
    if message is not None:
        chars, _ = _content_chars(message.get("content"))
        output = estimate_text_tokens(chars)
    return Usage(estimate_messages_tokens(body), output, estimated=True)


def count_tokens_estimate(body: Mapping[str, Any]) -> dict[str, Any]:
    """A count_tokens answer the gateway computed itself, marked as an estimate."""
    return {"input_tokens": estimate_messages_tokens(body), "estimated": True}


# ---------------------------------------------------------------------------
# Answers.


def parse_message(
    raw: bytes, *, redact: Callable[[str], str]
) -> tuple[dict[str, Any], Usage | None]:
    """A 2xx `message` answer as it came, and its usage."""
    message = json_answer(raw)
    if message.get("type") == "error":
        raise AttemptFailed(error_event_failure(message, redact=redact))
    if message.get("type") != "message" or not isinstance(message.get("content"), list):
        raise AttemptFailed(bad_response("the upstream's answer is not a message"))
    return message, parse_usage(message.get("usage"))


def parse_token_count(raw: bytes, *, redact: Callable[[str], str]) -> tuple[dict[str, Any], Usage]:
    """A count_tokens answer as it came; counting tokens consumes none."""
    answer = json_answer(raw)
    if answer.get("type") == "error":
        raise AttemptFailed(error_event_failure(answer, redact=redact))
    tokens = answer.get("input_tokens")
    if isinstance(tokens, bool) or not isinstance(tokens, int):
        raise AttemptFailed(bad_response("the upstream's token count has no 'input_tokens'"))
    return answer, Usage(0, 0)


# ---------------------------------------------------------------------------
# Streams.


class MessagesStream(StreamTranslator):
    """Anthropic SSE events passed through one by one, usage read on the way.

    Each event goes out as `event: <name>` and `data:` with the upstream's data
    bytes untouched. Subclasses that receive the events in another framing
    (Bedrock's event stream) call :meth:`event` themselves.
    """

    def __init__(self, *, prompt_estimate: int, redact: Callable[[str], str]) -> None:
        self.redact = redact
        self._parser = SseParser()
        self._prompt_estimate = prompt_estimate
        self._held: list[bytes] = []
        self._started = False
        self._usage: dict[str, int] = {}
        self._reported: Usage | None = None
        self._chars = 0
        self._chunks = 0
        self.stop_reason: str | None = None
        self.done = False

    @property
    def usage(self) -> Usage:
        if self._reported is not None:
            return self._reported
        output = max(self._chunks, estimate_text_tokens(self._chars))
        return Usage(self._prompt_estimate, output, estimated=True)

    def feed(self, data: bytes) -> list[bytes]:
        return feed_sse(self._parser, data, self.event)

    def finish(self) -> list[bytes]:
        frames = flush_sse(self._parser, self.event)
        self.close(frames)
        return frames

    def close(self, frames: list[bytes]) -> None:
        """The upstream ended: a stream that said why it stopped gets its
        `message_stop` if it lacked one; any other is cut short."""
        if self.done:
            return
        if self.stop_reason is None:
            raise stream_truncated()
        self._release(frames)
        frames.append(event_frame("message_stop", {"type": "message_stop"}))
        self.done = True

    def error_frames(self, failure: AttemptFailure) -> list[bytes]:
        return [error_event(failure)]

    def event(self, name: str | None, data: bytes, frames: list[bytes]) -> None:
        """One upstream event (its SSE name, if any, and its JSON data)."""
        if self.done:
            return
        payload = json_event(data)
        kind = payload.get("type") if isinstance(payload.get("type"), str) else name
        if kind == "error" or name == "error":
            raise AttemptFailed(error_event_failure(payload, redact=self.redact))
        frame = raw_event_frame(name or str(kind or "message"), data)
        if kind == "message_start":
            message = payload.get("message")
            if isinstance(message, Mapping):
                self._update_usage(message.get("usage"))
        elif kind == "message_delta":
            self._update_usage(payload.get("usage"))
            delta = payload.get("delta")
            if isinstance(delta, Mapping) and isinstance(delta.get("stop_reason"), str):
                self.stop_reason = delta["stop_reason"]
        elif kind == "content_block_delta":
            self._count(payload.get("delta"))
        elif kind == "message_stop":
            self.done = True
        if not self._started and kind in ("message_start", "ping"):
            self._held.append(frame)
            return
        self._release(frames)
        frames.append(frame)

    def _release(self, frames: list[bytes]) -> None:
        if not self._started:
            self._started = True
            frames.extend(self._held)
            self._held.clear()

    def _count(self, delta: Any) -> None:
        if not isinstance(delta, Mapping):
            return
        for key in ("text", "partial_json", "thinking"):
            value = delta.get(key)
            if isinstance(value, str) and value:
                self._chars += len(value)
                self._chunks += 1

    def _update_usage(self, usage: Any) -> None:
        if not isinstance(usage, Mapping):
            return
        for key in (
            "input_tokens",
            "output_tokens",
            "cache_read_input_tokens",
            "cache_creation_input_tokens",
        ):
            value = usage.get(key)
            if value is not None:
                self._usage[key] = count(value)
        if "input_tokens" in self._usage:
            self._reported = parse_usage(self._usage)


# ---------------------------------------------------------------------------
# Codecs.


class AnthropicMessagesCodec(Codec):
    """`POST {base}/v1/messages`: the client's Messages body, only the model replaced."""

    operation = MESSAGES

    def __init__(self, adapter: AnthropicAdapter) -> None:
        self.adapter = adapter

    def upstream_model(self, call: Call) -> str | None:
        return self.adapter.upstream_model(call.body)

    def url(self, model: str, *, stream: bool) -> str:
        return self.adapter.url(model, stream=stream)

    def body(self, call: Call, model: str) -> dict[str, Any]:
        return passthrough_body(call.body, model)

    async def headers(self, call: Call) -> dict[str, str]:
        auth = await self.adapter.auth_headers()
        auth.pop(VERSION_HEADER, None)
        return {
            "Content-Type": "application/json",
            **auth,
            **client_headers(call, default_version=self.adapter.version),
        }

    async def prepare(self, call: Call) -> UpstreamRequest:
        model = check_model_name(self.upstream_model(call))
        return UpstreamRequest(
            "POST",
            self.url(model, stream=call.stream),
            await self.headers(call),
            encode_body(self.body(call, model)),
        )

    def parse_response(
        self, call: Call, status: int, headers: Mapping[str, str], raw: bytes
    ) -> tuple[dict[str, Any], Usage | None]:
        return parse_message(raw, redact=self.adapter.redact)

    def classify_error(self, status: int, headers: Mapping[str, str], raw: bytes) -> AttemptFailure:
        return self.adapter.classify_error(status, headers, raw)

    def stream_translator(self, call: Call) -> StreamTranslator:
        return MessagesStream(
            prompt_estimate=estimate_messages_tokens(call.body), redact=self.adapter.redact
        )

    def estimate_usage(self, call: Call, answer: Mapping[str, Any] | None) -> Usage:
        return estimate_message_usage(call.body, answer)


class AnthropicCountTokensCodec(AnthropicMessagesCodec):
    """`POST {base}/v1/messages/count_tokens`, the client's body with the model replaced."""

    operation = COUNT_TOKENS

    def url(self, model: str, *, stream: bool) -> str:
        return self.adapter.url(model, stream=False) + "/count_tokens"

    def parse_response(
        self, call: Call, status: int, headers: Mapping[str, str], raw: bytes
    ) -> tuple[dict[str, Any], Usage | None]:
        return parse_token_count(raw, redact=self.adapter.redact)

    def stream_translator(self, call: Call) -> StreamTranslator:
        raise AttemptFailed(
            AttemptFailure(400, "invalid_request", "count_tokens cannot be streamed", False)
        )

    def estimate_usage(self, call: Call, answer: Mapping[str, Any] | None) -> Usage:
        return Usage(0, 0)
