"""Pure wire translation between OpenAI Chat Completions and Anthropic's
Messages API (no I/O). Anthropic models on Vertex AI use the same translation;
only the URL, the auth and two body fields differ (see the Vertex adapter).

Request: `system`/`developer` messages become the top-level `system`; user,
assistant and tool messages become alternating `user`/`assistant` turns
(consecutive ones merged, tool results as `tool_result` blocks in a user turn,
assistant `tool_calls` as `tool_use` blocks); images given as data URLs become
base64 image blocks; `max_tokens` is required by Anthropic, so the endpoint's
default fills in when the client gives none. API version 2026-10-21 removed the
sampling parameters (`temperature`, `top_p`), so they are sent only to the
legacy versions that accept them.

Answer: a `message` becomes a `chat.completion`; the SSE events
(`message_start`, `content_block_start`/`_delta`/`_stop`, `message_delta`,
`message_stop`, `ping`, `error`) become `chat.completion.chunk` frames.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any, Final

from gateway.providers.chat import (
    ChunkStreamTranslator,
    ImagePart,
    Part,
    TextPart,
    ToolCall,
    answerable,
    bad_response,
    completion,
    content_parts,
    count,
    feed_sse,
    flush_sse,
    function_tools,
    json_answer,
    json_event,
    json_schema_format,
    max_output_tokens,
    number,
    single_choice,
    stop_sequences,
    system_and_turns,
    text_of,
    tool_calls_of,
    tool_choice,
    unsupported,
)
from gateway.providers.failures import (
    MAX_ERROR_MESSAGE,
    AttemptFailed,
    AttemptFailure,
    failure_for_status,
    parse_retry_after,
)
from gateway.providers.sse import SseParser
from gateway.providers.usage import Usage

# What the official SDK sends today; the registry's `anthropic_version` overrides it.
DEFAULT_VERSION: Final = "2026-10-21"
# Versions that still accept temperature and top_p ("vertex-2023-10-16" is
# Vertex AI's name for the 2023-06-01 Messages API).
SAMPLING_VERSIONS: Final = frozenset({"2023-06-01", "vertex-2023-10-16"})
DEFAULT_MAX_TOKENS: Final = 4096
IMAGE_MEDIA_TYPES: Final = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})

FINISH_REASONS: Final[Mapping[str, str]] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

# The HTTP status each error type comes with (for errors reported inside a stream).
ERROR_STATUS: Final[Mapping[str, int]] = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}

_CONTEXT_TOO_LONG = re.compile(
    r"prompt is too long|exceed(?:s|ed)? (?:the )?context (?:limit|window)|context window",
    re.IGNORECASE,
)


def accepts_sampling(version: str) -> bool:
    return version in SAMPLING_VERSIONS


def finish_reason(stop_reason: Any) -> str:
    return FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


# ---------------------------------------------------------------------------
# Request.


def build_request(
    body: Mapping[str, Any],
    *,
    model: str,
    max_tokens_default: int,
    stream: bool,
    sampling: bool,
) -> dict[str, Any]:
    """The Messages API body for the client's OpenAI Chat Completions `body`.

    Raises AttemptFailed (400, no failover) for what Anthropic cannot express.
    """
    single_choice(body)
    answerable(body, "Anthropic")
    system, turns = system_and_turns(body)
    out: dict[str, Any] = {
        "model": model,
        "max_tokens": max_output_tokens(body) or max_tokens_default,
        "messages": _messages(turns),
    }
    if system:
        out["system"] = "\n\n".join(system)
    if stops := stop_sequences(body):
        out["stop_sequences"] = stops
    if sampling:
        if (temperature := number(body, "temperature")) is not None:
            # OpenAI's range is 0-2, Anthropic's 0-1.
            out["temperature"] = min(max(temperature, 0.0), 1.0)
        if (top_p := number(body, "top_p")) is not None:
            out["top_p"] = top_p
    tools = function_tools(body)
    if tools:
        out["tools"] = [
            {
                "name": tool.name,
                **({"description": tool.description} if tool.description else {}),
                "input_schema": tool.parameters,
            }
            for tool in tools
        ]
        choice = _tool_choice(body)
        if choice is not None:
            out["tool_choice"] = choice
    wants_json, schema = json_schema_format(body)
    if wants_json and schema is not None:
        out["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
    user = body.get("user")
    if isinstance(user, str) and user:
        out["metadata"] = {"user_id": user}
    if stream:
        out["stream"] = True
    return out


def _tool_choice(body: Mapping[str, Any]) -> dict[str, Any] | None:
    choice = tool_choice(body)
    result: dict[str, Any] | None
    if choice is None:
        result = None
    elif choice[0] == "function":
        result = {"type": "tool", "name": choice[1]}
    elif choice[0] == "required":
        result = {"type": "any"}
    else:
        result = {"type": choice[0]}
    if body.get("parallel_tool_calls") is False and (result is None or result["type"] != "none"):
        result = result or {"type": "auto"}
        result["disable_parallel_tool_use"] = True
    return result


def _image_block(part: ImagePart) -> dict[str, Any]:
    if part.data is not None:
        if part.media_type not in IMAGE_MEDIA_TYPES:
            raise unsupported(
                f"images must be one of {', '.join(sorted(IMAGE_MEDIA_TYPES))}, "
                f"got {part.media_type}"
            )
        return {
            "type": "image",
            "source": {"type": "base64", "media_type": part.media_type, "data": part.data},
        }
    if part.url is None or not part.url.startswith(("https://", "http://")):
        raise unsupported("image URLs must be data: or https:// URLs for this endpoint")
    return {"type": "image", "source": {"type": "url", "url": part.url}}


def _block(part: Part) -> dict[str, Any]:
    if isinstance(part, TextPart):
        return {"type": "text", "text": part.text}
    return _image_block(part)


def _messages(turns: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    merged: list[tuple[str, list[dict[str, Any]]]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if not blocks:
            return
        if merged and merged[-1][0] == role:
            merged[-1][1].extend(blocks)
        else:
            merged.append((role, blocks))

    for message in turns:
        role = message["role"]
        if role == "user":
            add("user", [_block(p) for p in content_parts(message.get("content"), role="user")])
        elif role == "assistant":
            blocks = [_block(p) for p in content_parts(message.get("content"), role="assistant")]
            blocks += [_tool_use(call) for call in tool_calls_of(message)]
            add("assistant", blocks)
        else:  # tool
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str) or not call_id:
                raise unsupported("a tool message needs a 'tool_call_id'")
            result: dict[str, Any] = {"type": "tool_result", "tool_use_id": call_id}
            if text := text_of(message.get("content"), role="tool"):
                result["content"] = text
            add("user", [result])
    if not merged:
        raise unsupported("the request's messages have no content")
    return [{"role": role, "content": _compact(blocks)} for role, blocks in merged]


def _tool_use(call: ToolCall) -> dict[str, Any]:
    return {"type": "tool_use", "id": call.id, "name": call.name, "input": call.arguments}


def _compact(blocks: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """A turn of a single text block is sent as a plain string."""
    if len(blocks) == 1 and blocks[0]["type"] == "text":
        text: str = blocks[0]["text"]
        return text
    return blocks


# ---------------------------------------------------------------------------
# Answer.


def parse_usage(usage: Any) -> Usage | None:
    """Anthropic's usage: `input_tokens` excludes the cached parts, which Usage counts."""
    if not isinstance(usage, Mapping) or "input_tokens" not in usage:
        return None
    cache_read = count(usage.get("cache_read_input_tokens"))
    cache_write = count(usage.get("cache_creation_input_tokens"))
    return Usage(
        count(usage.get("input_tokens")) + cache_read + cache_write,
        count(usage.get("output_tokens")),
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
    )


def parse_message(
    raw: bytes, *, redact: Callable[[str], str]
) -> tuple[dict[str, Any], Usage | None]:
    """A 2xx non-streamed answer (a `message`) as a `chat.completion`."""
    message = json_answer(raw)
    if message.get("type") == "error":
        raise AttemptFailed(error_event_failure(message, redact=redact))
    content = message.get("content")
    if message.get("type") != "message" or not isinstance(content, list):
        raise AttemptFailed(bad_response("the upstream's answer is not a message"))
    texts: list[str] = []
    calls: list[ToolCall] = []
    for block in content:
        if not isinstance(block, Mapping):
            continue
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind == "tool_use":
            arguments = block.get("input")
            calls.append(
                ToolCall(
                    str(block.get("id", "")),
                    str(block.get("name", "")),
                    arguments if isinstance(arguments, dict) else {},
                )
            )
        # thinking, redacted_thinking and server tool blocks have no OpenAI equivalent.
    usage = parse_usage(message.get("usage"))
    return (
        completion(
            completion_id=str(message.get("id") or "msg"),
            model=str(message.get("model") or ""),
            text="".join(texts),
            tool_calls=calls,
            finish_reason=finish_reason(message.get("stop_reason")),
            usage=usage,
        ),
        usage,
    )


def error_details(body: bytes) -> tuple[str | None, str | None]:
    """(error type, message) of an Anthropic error body, `{"type": "error", "error": {...}}`."""
    try:
        parsed = json.loads(body)
    except ValueError:
        text = body.decode("utf-8", "replace").strip()
        return None, text or None
    return _error_object(parsed)


def _error_object(parsed: Any) -> tuple[str | None, str | None]:
    error = parsed.get("error") if isinstance(parsed, Mapping) else None
    if not isinstance(error, Mapping):
        return None, None
    kind, message = error.get("type"), error.get("message")
    return (kind if isinstance(kind, str) else None), (
        message if isinstance(message, str) else None
    )


def failure_for(
    status: int,
    kind: str | None,
    message: str | None,
    *,
    retry_after: float | None,
) -> AttemptFailure:
    """Map an Anthropic error (HTTP status and error type) to the gateway's failure.

    Overloaded (529), API errors (500), timeouts, rate limits and refused
    credentials fail over; invalid requests (context too long included) and
    oversized ones go back to the client as they are.
    """
    text = (message or "").strip()[:MAX_ERROR_MESSAGE]
    if kind == "overloaded_error" or status == 529:
        return AttemptFailure(
            503,
            "upstream_overloaded",
            text or "the upstream is overloaded",
            True,
            retry_after,
            status,
        )
    if kind == "rate_limit_error" or status == 429:
        return failure_for_status(429, message=text, code=None, retry_after=retry_after)
    if kind in ("authentication_error", "permission_error") or status in (401, 403):
        return failure_for_status(
            status if status in (401, 403) else 401, message=None, code=None, retry_after=None
        )
    if kind == "billing_error" or status == 402:
        # The gateway's account, not the client's request: another endpoint may serve it.
        return AttemptFailure(
            502,
            "upstream_billing_error",
            "the upstream refused the gateway's account (billing)",
            True,
            None,
            status,
        )
    if kind == "timeout_error" or status == 504:
        return AttemptFailure(
            504,
            "upstream_timeout",
            text or "the upstream timed out",
            True,
            retry_after,
            status,
            timeout=True,
        )
    if kind == "invalid_request_error" and _CONTEXT_TOO_LONG.search(text):
        return AttemptFailure(400, "context_length_exceeded", text, False, None, status)
    if kind == "request_too_large" or status == 413:
        return AttemptFailure(
            413, "request_too_large", text or "the request is too large", False, None, status
        )
    return failure_for_status(status, message=text, code=kind, retry_after=retry_after)


def classify_error(
    status: int, headers: Mapping[str, str], body: bytes, *, redact: Callable[[str], str]
) -> AttemptFailure:
    kind, message = error_details(body)
    return failure_for(
        status,
        kind,
        redact(message) if message else None,
        retry_after=parse_retry_after(headers),
    )


def error_event_failure(payload: Any, *, redact: Callable[[str], str]) -> AttemptFailure:
    """The failure for an `error` event (or error object in a 2xx body)."""
    kind, message = _error_object(payload)
    status = ERROR_STATUS.get(kind or "", 500)
    return failure_for(status, kind, redact(message) if message else None, retry_after=None)


# ---------------------------------------------------------------------------
# Streams.


class AnthropicStreamTranslator(ChunkStreamTranslator):
    """Anthropic's SSE events as OpenAI `chat.completion.chunk` frames."""

    def __init__(
        self, body: Mapping[str, Any], *, model: str, redact: Callable[[str], str]
    ) -> None:
        super().__init__(body, model=model, redact=redact)
        self._parser = SseParser()
        self._tool_index: dict[int, int] = {}  # content block index -> tool call index
        self._usage: dict[str, int] = {}

    def feed(self, data: bytes) -> list[bytes]:
        return feed_sse(self._parser, data, self._event)

    def finish(self) -> list[bytes]:
        frames = flush_sse(self._parser, self._event)
        if not self.done:
            if self.finish_reason is None:
                raise self.truncated()
            self.end(frames)  # message_delta arrived, message_stop did not
        return frames

    def _event(self, name: str | None, data: bytes, frames: list[bytes]) -> None:
        if self.done:
            return
        payload = json_event(data)
        kind = payload.get("type") or name
        if kind == "message_start":
            message = payload.get("message")
            if isinstance(message, Mapping):
                if isinstance(message.get("id"), str):
                    self.id = message["id"]
                if isinstance(message.get("model"), str) and message["model"]:
                    self.model = message["model"]
                self._update_usage(message.get("usage"))
        elif kind == "content_block_start":
            self._block_start(payload, frames)
        elif kind == "content_block_delta":
            self._block_delta(payload, frames)
        elif kind == "message_delta":
            self._update_usage(payload.get("usage"))
            delta = payload.get("delta")
            if isinstance(delta, Mapping) and delta.get("stop_reason"):
                self.finish_with(finish_reason(delta["stop_reason"]), frames)
        elif kind == "message_stop":
            self.finish_with("stop", frames)
            self.end(frames)
        elif kind == "error":
            raise AttemptFailed(error_event_failure(payload, redact=self.redact))
        # ping, content_block_stop and event types added later carry nothing to forward.

    def _block_start(self, payload: Mapping[str, Any], frames: list[bytes]) -> None:
        block = payload.get("content_block")
        index = payload.get("index")
        if not isinstance(block, Mapping) or not isinstance(index, int):
            return
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            self.text(block["text"], frames)
        elif block.get("type") == "tool_use":
            tool_index = len(self._tool_index)
            self._tool_index[index] = tool_index
            initial = block.get("input")
            self.tool_call_start(
                tool_index,
                str(block.get("id", "")),
                str(block.get("name", "")),
                json.dumps(initial) if isinstance(initial, dict) and initial else "",
                frames,
            )

    def _block_delta(self, payload: Mapping[str, Any], frames: list[bytes]) -> None:
        delta = payload.get("delta")
        index = payload.get("index")
        if not isinstance(delta, Mapping):
            return
        kind = delta.get("type")
        if kind == "text_delta" and isinstance(delta.get("text"), str):
            self.text(delta["text"], frames)
        elif kind == "input_json_delta" and isinstance(delta.get("partial_json"), str):
            tool_index = self._tool_index.get(index) if isinstance(index, int) else None
            if tool_index is None:
                raise AttemptFailed(
                    bad_response("the upstream sent tool input for a block it did not start")
                )
            self.tool_call_arguments(tool_index, delta["partial_json"], frames)
        # thinking_delta, signature_delta and citations_delta are not forwarded.

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
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                self._usage[key] = value
        if "input_tokens" in self._usage:
            parsed = parse_usage(self._usage)
            if parsed is not None:
                self.report_usage(parsed)
