"""Shared pieces for adapters that translate OpenAI Chat Completions to a
provider's native API and back (Anthropic, Gemini on Vertex AI; Bedrock uses
the answer-writing half and keeps its own request reader).

The client always speaks OpenAI Chat Completions. Reading its request (system
prompts, content parts, images as data URLs, tool definitions and calls, limits)
and writing OpenAI answers (a `chat.completion`, or `chat.completion.chunk` SSE
frames) is the same work whatever the provider, so it lives here; each provider
module only maps these neutral pieces to its own wire format. Everything here is
pure: no I/O.

A request the provider cannot express (an audio part, `n > 1`, a malformed tool
call) is refused with :func:`unsupported`, a 400 that does not fail over: the
request itself is at fault, and counting it against the endpoint's circuit
breaker would let one client open it.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from gateway.providers.adapter import StreamTranslator
from gateway.providers.failures import BAD_UPSTREAM_RESPONSE, AttemptFailed, AttemptFailure
from gateway.providers.sse import SseParser, SseProtocolError
from gateway.providers.usage import Usage, estimate_prompt_tokens, estimate_text_tokens
from gateway.providers.wire import DONE_FRAME, sse_frame

UNSUPPORTED_REQUEST: Final = "unsupported_request"
STREAM_TRUNCATED: Final = "upstream_stream_truncated"

# Model names go into URL paths (Vertex AI): letters, digits and `._@:-` only,
# never a path separator or a dot segment.
_MODEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@:-]*$")
_DATA_URL_RE = re.compile(r"^data:([\w.+-]+/[\w.+-]+)((?:;[\w.+-]+=[\w.+-]+)*);base64,(.*)$", re.S)


def unsupported(message: str) -> AttemptFailed:
    """The client's request cannot be sent to this provider: 400, no failover."""
    return AttemptFailed(AttemptFailure(400, UNSUPPORTED_REQUEST, message, False))


def bad_response(message: str) -> AttemptFailure:
    """The upstream's answer breaks its own protocol: 502, fail over."""
    return AttemptFailure(502, BAD_UPSTREAM_RESPONSE, message, True)


def stream_truncated() -> AttemptFailed:
    """The upstream's stream ended before the answer was complete: 502, fail over."""
    return AttemptFailed(
        AttemptFailure(
            502,
            STREAM_TRUNCATED,
            "the upstream's stream ended before the answer was complete",
            True,
        )
    )


def check_model_name(model: str | None) -> str:
    if not model:
        raise unsupported("no model: the endpoint names none and neither does the request")
    if not _MODEL_RE.match(model) or len(model) > 200:
        raise unsupported("the model name may only use letters, digits and '._@:-'")
    return model


# ---------------------------------------------------------------------------
# Reading the client's request.


@dataclass(frozen=True, slots=True)
class TextPart:
    text: str


@dataclass(frozen=True, slots=True)
class ImagePart:
    """An image: inline (`data` is base64) from a data URL, or by reference (`url`)."""

    media_type: str | None
    data: str | None = None
    url: str | None = None


Part = TextPart | ImagePart


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True, slots=True)
class FunctionTool:
    name: str
    description: str | None
    parameters: dict[str, Any]


ToolChoice = (
    tuple[Literal["auto"], None]
    | tuple[Literal["none"], None]
    | tuple[Literal["required"], None]
    | tuple[Literal["function"], str]
)


def parse_data_url(url: str) -> tuple[str, str]:
    """(media type, base64 data) of a `data:<type>;base64,<data>` URL."""
    match = _DATA_URL_RE.match(url)
    if match is None:
        raise unsupported("an image data URL must look like data:<media type>;base64,<data>")
    data = match.group(3).strip()
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise unsupported("an image data URL does not hold valid base64") from None
    return match.group(1).lower(), data


def content_parts(content: Any, *, role: str) -> list[Part]:
    """The parts of a message's `content` (a string or a list of parts)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [TextPart(content)] if content else []
    if not isinstance(content, list):
        raise unsupported(f"a {role} message's content must be a string or a list of parts")
    parts: list[Part] = []
    for item in content:
        if not isinstance(item, Mapping):
            raise unsupported(f"a {role} message's content parts must be objects")
        kind = item.get("type")
        if kind == "text":
            text = item.get("text")
            if not isinstance(text, str):
                raise unsupported("a text part needs a string 'text'")
            if text:
                parts.append(TextPart(text))
        elif kind == "image_url" and role == "user":
            image = item.get("image_url")
            url = image.get("url") if isinstance(image, Mapping) else image
            if not isinstance(url, str) or not url:
                raise unsupported("an image_url part needs a 'url'")
            if url.startswith("data:"):
                media_type, data = parse_data_url(url)
                parts.append(ImagePart(media_type, data=data))
            elif url.startswith(("https://", "http://", "gs://")):
                parts.append(ImagePart(None, url=url))
            else:
                raise unsupported("an image URL must be a data: or https:// URL")
        elif kind == "refusal" and role == "assistant":
            continue  # a refusal is not part of the conversation's content
        else:
            raise unsupported(f"content parts of type '{kind}' are not supported here")
    return parts


def text_of(content: Any, *, role: str) -> str:
    """The text of a message whose content may only be text (system, tool)."""
    texts: list[str] = []
    for part in content_parts(content, role=role):
        if not isinstance(part, TextPart):
            raise unsupported(f"a {role} message may only hold text")
        texts.append(part.text)
    return "\n".join(texts)


def tool_calls_of(message: Mapping[str, Any]) -> list[ToolCall]:
    """An assistant message's `tool_calls`, with their JSON arguments parsed."""
    calls = message.get("tool_calls")
    if calls is None:
        return []
    if not isinstance(calls, list):
        raise unsupported("'tool_calls' must be a list")
    result: list[ToolCall] = []
    for call in calls:
        function = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(function, Mapping):
            raise unsupported("a tool call needs a 'function'")
        call_id, name = call.get("id"), function.get("name")
        if not isinstance(call_id, str) or not call_id or not isinstance(name, str) or not name:
            raise unsupported("a tool call needs an 'id' and a function 'name'")
        raw = function.get("arguments") or "{}"
        try:
            arguments = json.loads(raw) if isinstance(raw, str) else None
        except ValueError:
            arguments = None
        if not isinstance(arguments, dict):
            raise unsupported(f"the arguments of tool call '{call_id}' are not a JSON object")
        result.append(ToolCall(call_id, name, arguments))
    return result


def system_and_turns(body: Mapping[str, Any]) -> tuple[list[str], list[Mapping[str, Any]]]:
    """The system prompts (`system` and `developer` messages) and the other messages."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise unsupported("'messages' must be a non-empty list")
    system: list[str] = []
    turns: list[Mapping[str, Any]] = []
    for message in messages:
        if not isinstance(message, Mapping):
            raise unsupported("every message must be an object")
        role = message.get("role")
        if role in ("system", "developer"):
            if text := text_of(message.get("content"), role="system"):
                system.append(text)
        elif role in ("user", "assistant", "tool"):
            turns.append(message)
        else:
            raise unsupported(f"messages with role '{role}' are not supported here")
    if not turns:
        raise unsupported("the request has no user message")
    return system, turns


def max_output_tokens(body: Mapping[str, Any]) -> int | None:
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise unsupported(f"'{key}' must be a positive integer")
        return value
    return None


def stop_sequences(body: Mapping[str, Any]) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return [s for s in stop if s]
    raise unsupported("'stop' must be a string or a list of strings")


def number(body: Mapping[str, Any], key: str) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise unsupported(f"'{key}' must be a number")
    return float(value)


def unanswerable_option(body: Mapping[str, Any], provider: str) -> str | None:
    """Why `provider` cannot answer `body` as asked, or None.

    Options that change what the answer holds (log probabilities, spoken
    audio) have no equivalent in the translated APIs; answering without them
    would hand the client less than it asked for, with nothing to say so. Every
    translating adapter refuses them (400 `unsupported_request`, no failover).
    Options that only tune sampling are left out where the provider has none;
    the README lists them per provider.
    """
    if body.get("logprobs"):
        return f"'logprobs' cannot be honoured: {provider} does not return log probabilities"
    if body.get("top_logprobs") is not None:
        return f"'top_logprobs' cannot be honoured: {provider} does not return log probabilities"
    modalities = body.get("modalities")
    if body.get("audio") is not None or (
        isinstance(modalities, list) and any(m != "text" for m in modalities)
    ):
        return f"audio output cannot be honoured: {provider} answers with text only"
    return None


def answerable(body: Mapping[str, Any], provider: str) -> None:
    """Refuse a request `provider` cannot answer as asked (see :func:`unanswerable_option`)."""
    reason = unanswerable_option(body, provider)
    if reason is not None:
        raise unsupported(reason)


def single_choice(body: Mapping[str, Any]) -> None:
    n = body.get("n")
    if n is not None and n != 1:
        raise unsupported("only one choice per request (n = 1) is supported by this endpoint")


def function_tools(body: Mapping[str, Any]) -> list[FunctionTool]:
    tools = body.get("tools")
    if not tools:
        return []
    if not isinstance(tools, list):
        raise unsupported("'tools' must be a list")
    result: list[FunctionTool] = []
    for tool in tools:
        if not isinstance(tool, Mapping) or tool.get("type") != "function":
            raise unsupported("only tools of type 'function' are supported")
        function = tool.get("function")
        if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
            raise unsupported("a function tool needs a 'function' with a 'name'")
        description = function.get("description")
        parameters = function.get("parameters")
        if parameters is None:
            parameters = {"type": "object", "properties": {}}
        if not isinstance(parameters, dict):
            raise unsupported("a function's 'parameters' must be a JSON schema object")
        result.append(
            FunctionTool(
                function["name"],
                description if isinstance(description, str) and description else None,
                parameters,
            )
        )
    return result


def tool_choice(body: Mapping[str, Any]) -> ToolChoice | None:
    choice = body.get("tool_choice")
    if choice is None:
        return None
    if choice == "auto":
        return ("auto", None)
    if choice == "none":
        return ("none", None)
    if choice == "required":
        return ("required", None)
    if isinstance(choice, Mapping) and choice.get("type") == "function":
        function = choice.get("function")
        name = function.get("name") if isinstance(function, Mapping) else None
        if isinstance(name, str) and name:
            return ("function", name)
    raise unsupported("'tool_choice' must be auto, none, required or a named function")


def json_schema_format(body: Mapping[str, Any]) -> tuple[bool, dict[str, Any] | None]:
    """(whether JSON output is asked for, its schema) from `response_format`."""
    fmt = body.get("response_format")
    if not isinstance(fmt, Mapping):
        return False, None
    kind = fmt.get("type")
    if kind == "json_object":
        return True, None
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, Mapping) else None
        return True, schema if isinstance(schema, dict) else None
    return False, None


def client_wants_usage(body: Mapping[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, Mapping) and options.get("include_usage") is True


# ---------------------------------------------------------------------------
# Reading the upstream's answer.


def count(value: Any) -> int:
    """A token count from an upstream's usage: a non-negative number, else 0."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        return 0
    return int(value)


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        payload = json.loads(data)
    except ValueError:
        raise AttemptFailed(bad_response(f"{what} is not JSON")) from None
    if not isinstance(payload, dict):
        raise AttemptFailed(bad_response(f"{what} is not a JSON object"))
    return payload


def json_event(data: bytes) -> dict[str, Any]:
    """A stream event's JSON object; a bad response (502, fail over) when it is not one."""
    return _json_object(data, "the upstream sent a stream event that")


def json_answer(raw: bytes) -> dict[str, Any]:
    """A non-streamed answer's JSON object; a bad response (502, fail over) when it is not one."""
    return _json_object(raw, "the upstream's answer")


EventHandler = Callable[[str | None, bytes, list[bytes]], None]


def feed_sse(parser: SseParser, data: bytes, handle: EventHandler) -> list[bytes]:
    """The frames `handle(event name, data, frames)` makes of the SSE events `data` completes.

    An unparseable stream is a bad response; a failure raised by `handle`
    carries the frames that preceded it in this read (they are still the answer's).
    """
    try:
        events = parser.feed(data)
    except SseProtocolError as err:
        raise AttemptFailed(bad_response(str(err))) from None
    frames: list[bytes] = []
    try:
        for event in events:
            handle(event.event, event.data, frames)
    except AttemptFailed as err:
        err.frames = frames
        raise
    return frames


def flush_sse(parser: SseParser, handle: EventHandler) -> list[bytes]:
    """The frames of the event the end of the stream completes (see :func:`feed_sse`)."""
    frames: list[bytes] = []
    try:
        for event in parser.flush():
            handle(event.event, event.data, frames)
    except AttemptFailed as err:
        err.frames = frames
        raise
    return frames


def estimated_usage(prompt_estimate: int, chars: int, content_chunks: int) -> Usage:
    """Usage when the upstream reports none: output tokens from the streamed text,
    at least one per content-bearing chunk and one per four characters."""
    return Usage(prompt_estimate, max(content_chunks, estimate_text_tokens(chars)), estimated=True)


# ---------------------------------------------------------------------------
# Writing OpenAI answers.


def usage_chunk(*, completion_id: str, created: int, model: str, usage: Usage) -> bytes:
    """The `chat.completion.chunk` frame carrying a stream's usage (and no choices)."""
    return sse_frame(
        {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [],
            "usage": usage.as_openai(),
        }
    )


def completion(
    *,
    completion_id: str,
    model: str,
    text: str | None,
    tool_calls: list[ToolCall],
    finish_reason: str,
    usage: Usage | None,
    created: int | None = None,
) -> dict[str, Any]:
    """An OpenAI `chat.completion` with one choice."""
    message: dict[str, Any] = {
        "role": "assistant",
        "content": text if text or not tool_calls else None,
        "refusal": None,
    }
    if tool_calls:
        message["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {
                    "name": call.name,
                    "arguments": json.dumps(call.arguments, ensure_ascii=False),
                },
            }
            for call in tool_calls
        ]
    answer: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion",
        "created": created if created is not None else int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}
        ],
    }
    if usage is not None:
        answer["usage"] = usage.as_openai()
    return answer


class ChunkStreamTranslator(StreamTranslator):
    """Base of translators that build OpenAI chunks from a native event stream.

    Subclasses parse their provider's events and call :meth:`text`,
    :meth:`tool_call_start`, :meth:`tool_call_arguments`, :meth:`finish_with`
    and :meth:`end`. The assistant's role goes out with the first content, not
    before: until the upstream has produced something, an error it reports
    still lets the forwarder fail over to the next endpoint.
    """

    def __init__(
        self, body: Mapping[str, Any], *, model: str, redact: Callable[[str], str]
    ) -> None:
        """A translator for the answer to the client's `body`."""
        self.id = "chatcmpl-gateway"
        self.model = model
        self.created = int(time.time())
        self.redact = redact
        self._prompt_estimate = estimate_prompt_tokens(body)
        self._client_wants_usage = client_wants_usage(body)
        self._reported: Usage | None = None
        self._role_sent = False
        self._chars = 0
        self._content_chunks = 0
        self.finish_reason: str | None = None
        self.done = False

    # -- usage --------------------------------------------------------------

    @property
    def usage(self) -> Usage:
        if self._reported is not None:
            return self._reported
        return estimated_usage(self._prompt_estimate, self._chars, self._content_chunks)

    def report_usage(self, usage: Usage) -> None:
        self._reported = usage

    # -- frames -------------------------------------------------------------

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        return sse_frame(
            {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [
                    {
                        "index": 0,
                        "delta": delta,
                        "logprobs": None,
                        "finish_reason": finish_reason,
                    }
                ],
            }
        )

    def _delta(self, delta: dict[str, Any], frames: list[bytes]) -> None:
        if not self._role_sent:
            self._role_sent = True
            frames.append(self._chunk({"role": "assistant", "content": ""}))
        frames.append(self._chunk(delta))

    def text(self, text: str, frames: list[bytes]) -> None:
        if not text:
            return
        self._chars += len(text)
        self._content_chunks += 1
        self._delta({"content": text}, frames)

    def tool_call_start(
        self, index: int, call_id: str, name: str, arguments: str, frames: list[bytes]
    ) -> None:
        self._chars += len(name) + len(arguments)
        self._content_chunks += 1
        self._delta(
            {
                "tool_calls": [
                    {
                        "index": index,
                        "id": call_id,
                        "type": "function",
                        "function": {"name": name, "arguments": arguments},
                    }
                ]
            },
            frames,
        )

    def tool_call_arguments(self, index: int, arguments: str, frames: list[bytes]) -> None:
        if not arguments:
            return
        self._chars += len(arguments)
        self._content_chunks += 1
        self._delta(
            {"tool_calls": [{"index": index, "function": {"arguments": arguments}}]}, frames
        )

    def finish_with(self, finish_reason: str, frames: list[bytes]) -> None:
        if self.finish_reason is not None:
            return
        self.finish_reason = finish_reason
        if not self._role_sent:
            self._role_sent = True
            frames.append(self._chunk({"role": "assistant", "content": ""}))
        frames.append(self._chunk({}, finish_reason))

    def end(self, frames: list[bytes]) -> None:
        """The answer is complete: the usage chunk (when asked for), then `[DONE]`."""
        if self.done:
            return
        if self._client_wants_usage:
            frames.append(
                usage_chunk(
                    completion_id=self.id,
                    created=self.created,
                    model=self.model,
                    usage=self.usage,
                )
            )
        frames.append(DONE_FRAME)
        self.done = True

    def truncated(self) -> AttemptFailed:
        return stream_truncated()
