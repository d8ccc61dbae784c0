"""Pure wire translation between OpenAI Chat Completions and Bedrock Converse (no I/O).

Requests: OpenAI `messages` become Converse `system` blocks and `messages` of
content blocks (`text`, `image`, `toolUse`, `toolResult`), with consecutive
messages of one role merged because Converse requires user and assistant turns
to alternate (several OpenAI `tool` messages answer one assistant turn).
`tools` / `tool_choice` become `toolConfig`; `max_tokens`, `temperature`,
`top_p` and `stop` become `inferenceConfig`; a `json_schema` response format
becomes `outputConfig`. Sampling options Converse has no field for
(`frequency_penalty`, `presence_penalty`, `seed`, `logit_bias`, `user`, ...) are
left out; options that would change the shape of the answer (`n` > 1,
`logprobs`, `top_logprobs`, audio output) are refused with a 400 rather than
silently ignored, as by every translating adapter
(:func:`gateway.providers.chat.unanswerable_option`).

Answers: a Converse response becomes a `chat.completion`; ConverseStream's
events (decoded by :mod:`.eventstream`) become `chat.completion.chunk` frames;
`stopReason` maps to `finish_reason`; usage comes from `usage` (Converse) or the
`metadata` event (ConverseStream); AWS errors, as HTTP answers or as exception
events mid-stream, are classified for the client and for failover.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Final

from gateway.providers.bedrock.eventstream import (
    EventStreamDecoder,
    EventStreamError,
    EventStreamMessage,
)
from gateway.providers.chat import (
    UNSUPPORTED_REQUEST,
    ChunkStreamTranslator,
    ToolCall,
    bad_response,
    completion,
    count,
    json_event,
    unanswerable_option,
)
from gateway.providers.failures import (
    MAX_ERROR_MESSAGE,
    AttemptFailed,
    AttemptFailure,
    header,
    parse_retry_after,
)
from gateway.providers.usage import Usage

# Converse stopReason -> OpenAI finish_reason.
FINISH_REASONS: Final[Mapping[str, str]] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
    "malformed_model_output": "stop",
    "malformed_tool_use": "tool_calls",
}

IMAGE_FORMATS: Final = ("png", "jpeg", "gif", "webp")
_DATA_URL = re.compile(r"^data:image/([a-zA-Z0-9.+-]+);base64,(.*)$", re.DOTALL)

# OpenAI options without a Converse equivalent that change nothing about the
# answer's shape: left out.
DROPPED_OPTIONS: Final = frozenset(
    {
        "frequency_penalty",
        "presence_penalty",
        "seed",
        "logit_bias",
        "user",
        "parallel_tool_calls",
        "metadata",
        "store",
        "service_tier",
        "stream_options",
        "prediction",
        "reasoning_effort",
        "verbosity",
        "safety_identifier",
        "prompt_cache_key",
    }
)

# ValidationException messages that mean "the prompt does not fit".
_CONTEXT_TOO_LONG = re.compile(
    r"too long|too many (input )?tokens|context (length|window)|maximum (context|input)"
    r"|input length|exceeds? .*tokens",
    re.IGNORECASE,
)

CONTEXT_LENGTH_EXCEEDED: Final = "context_length_exceeded"


class RequestError(ValueError):
    """The client's body cannot be expressed as a Converse request (a 400)."""


def invalid_request(message: str) -> AttemptFailed:
    """A client error found before sending: 400 `unsupported_request` (as every
    translating adapter says it), and no failover (the request is at fault)."""
    return AttemptFailed(AttemptFailure(400, UNSUPPORTED_REQUEST, message, False))


# ---------------------------------------------------------------------------
# Requests


def build_converse_request(body: Mapping[str, Any]) -> dict[str, Any]:
    """The Converse request body (everything but `modelId`, which is in the URL)."""
    n = body.get("n")
    if n is not None and n != 1:
        raise RequestError("Bedrock returns one choice: 'n' must be 1")
    if (reason := unanswerable_option(body, "Bedrock")) is not None:
        raise RequestError(reason)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty list")
    system, turns = _messages(messages)
    request: dict[str, Any] = {"messages": turns}
    if system:
        request["system"] = system
    inference = _inference_config(body)
    if inference:
        request["inferenceConfig"] = inference
    tool_config = _tool_config(body, turns)
    if tool_config is not None:
        request["toolConfig"] = tool_config
    output_config = _output_config(body.get("response_format"))
    if output_config is not None:
        request["outputConfig"] = output_config
    return request


def _text_of(content: Any, where: str) -> str:
    """The text of a system/tool message's content (a string or text parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts: list[str] = []
        for part in content:
            if not isinstance(part, Mapping) or part.get("type") != "text":
                raise RequestError(f"{where} content may only hold text parts")
            texts.append(str(part.get("text", "")))
        return "".join(texts)
    raise RequestError(f"{where} content must be a string or a list of parts")


def _image_block(part: Mapping[str, Any]) -> dict[str, Any]:
    image_url = part.get("image_url")
    url = image_url.get("url") if isinstance(image_url, Mapping) else image_url
    if not isinstance(url, str):
        raise RequestError("an image_url part needs a 'url'")
    match = _DATA_URL.match(url)
    if match is None:
        # The gateway never fetches URLs on a client's behalf.
        raise RequestError("Bedrock takes images only as base64 data URLs (data:image/...)")
    fmt = match.group(1).lower()
    if fmt == "jpg":
        fmt = "jpeg"
    if fmt not in IMAGE_FORMATS:
        raise RequestError(f"Bedrock takes images as {', '.join(IMAGE_FORMATS)}, not '{fmt}'")
    data = match.group(2).strip()
    try:
        base64.b64decode(data, validate=True)
    except ValueError:  # binascii.Error, or non-ASCII text
        raise RequestError("an image data URL is not valid base64") from None
    # Blobs travel base64-encoded in Bedrock's JSON protocol.
    return {"image": {"format": fmt, "source": {"bytes": data}}}


def _user_blocks(content: Any) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content else []
    if not isinstance(content, list):
        raise RequestError("user content must be a string or a list of parts")
    blocks: list[dict[str, Any]] = []
    for part in content:
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind == "text":
            text = str(part.get("text", ""))
            if text:
                blocks.append({"text": text})
        elif kind == "image_url":
            blocks.append(_image_block(part))
        else:
            raise RequestError(f"Bedrock does not take '{kind}' content parts")
    return blocks


def _arguments(raw: Any) -> Any:
    if isinstance(raw, Mapping):
        return dict(raw)
    if raw is None or raw == "":
        return {}
    if not isinstance(raw, str):
        raise RequestError("tool call arguments must be a JSON string")
    try:
        return json.loads(raw)
    except ValueError:
        raise RequestError("tool call arguments must be valid JSON") from None


def _assistant_blocks(message: Mapping[str, Any]) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    content = message.get("content")
    if isinstance(content, str):
        if content.strip():
            blocks.append({"text": content})
    elif isinstance(content, list):
        text = "".join(
            str(p.get("text", ""))
            for p in content
            if isinstance(p, Mapping) and p.get("type") in ("text", "output_text")
        )
        if text.strip():
            blocks.append({"text": text})
    elif content is not None:
        raise RequestError("assistant content must be a string or a list of parts")
    for call in message.get("tool_calls") or ():
        if not isinstance(call, Mapping):
            raise RequestError("'tool_calls' must hold objects")
        function = call.get("function")
        if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
            raise RequestError("a tool call needs a function name")
        call_id = call.get("id")
        if not isinstance(call_id, str) or not call_id:
            raise RequestError("a tool call needs an 'id'")
        blocks.append(
            {
                "toolUse": {
                    "toolUseId": call_id,
                    "name": function["name"],
                    "input": _arguments(function.get("arguments")),
                }
            }
        )
    return blocks


def _tool_result_block(message: Mapping[str, Any]) -> dict[str, Any]:
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise RequestError("a tool message needs a 'tool_call_id'")
    text = _text_of(message.get("content"), "tool message")
    return {"toolResult": {"toolUseId": call_id, "content": [{"text": text or "(empty)"}]}}


def _messages(messages: list[Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for message in messages:
        if not isinstance(message, Mapping):
            raise RequestError("every message must be an object")
        role = message.get("role")
        if role in ("system", "developer"):
            text = _text_of(message.get("content"), f"{role} message")
            if text:
                system.append({"text": text})
            continue
        if role == "user":
            bedrock_role, blocks = "user", _user_blocks(message.get("content"))
        elif role == "assistant":
            bedrock_role, blocks = "assistant", _assistant_blocks(message)
        elif role == "tool":
            bedrock_role, blocks = "user", [_tool_result_block(message)]
        else:
            raise RequestError(f"Bedrock does not take messages of role '{role}'")
        if not blocks:
            continue
        if turns and turns[-1]["role"] == bedrock_role:
            # Converse turns alternate: fold this message into the previous turn.
            previous = turns[-1]["content"]
            if bedrock_role == "user" and "toolResult" in blocks[0]:
                # Tool results lead their turn, before any text the user adds.
                results = [b for b in previous if "toolResult" in b]
                others = [b for b in previous if "toolResult" not in b]
                turns[-1]["content"] = [*results, *blocks, *others]
            else:
                previous.extend(blocks)
        else:
            turns.append({"role": bedrock_role, "content": blocks})
    if not turns:
        raise RequestError("the conversation has no user or assistant message with content")
    return system, turns


def _number(body: Mapping[str, Any], key: str) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RequestError(f"'{key}' must be a number")
    return value


def _inference_config(body: Mapping[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise RequestError("'max_tokens' must be a positive integer")
        config["maxTokens"] = max_tokens
    if (temperature := _number(body, "temperature")) is not None:
        config["temperature"] = temperature
    if (top_p := _number(body, "top_p")) is not None:
        config["topP"] = top_p
    stop = body.get("stop")
    if isinstance(stop, str):
        config["stopSequences"] = [stop]
    elif isinstance(stop, list) and stop:
        if not all(isinstance(s, str) for s in stop):
            raise RequestError("'stop' must be a string or a list of strings")
        config["stopSequences"] = list(stop)
    elif stop is not None and stop != []:
        raise RequestError("'stop' must be a string or a list of strings")
    return config


def _tool_config(body: Mapping[str, Any], turns: list[dict[str, Any]]) -> dict[str, Any] | None:
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if not tools:
        return None
    if not isinstance(tools, list):
        raise RequestError("'tools' must be a list")
    specs: list[dict[str, Any]] = []
    for tool in tools:
        function = tool.get("function") if isinstance(tool, Mapping) else None
        if not isinstance(tool, Mapping) or tool.get("type") != "function":
            raise RequestError("Bedrock takes only 'function' tools")
        if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
            raise RequestError("a function tool needs a name")
        parameters = function.get("parameters")
        spec: dict[str, Any] = {
            "name": function["name"],
            "inputSchema": {
                "json": dict(parameters)
                if isinstance(parameters, Mapping)
                else {"type": "object", "properties": {}}
            },
        }
        if isinstance(function.get("description"), str) and function["description"]:
            spec["description"] = function["description"]
        specs.append({"toolSpec": spec})
    config: dict[str, Any] = {"tools": specs}
    if choice is None or choice == "auto":
        config["toolChoice"] = {"auto": {}}
    elif choice == "required":
        config["toolChoice"] = {"any": {}}
    elif choice == "none":
        # Converse has no "none": without tool blocks in the conversation the
        # tools are left out; with them Converse needs the tool definitions.
        uses_tools = any(
            "toolUse" in block or "toolResult" in block
            for turn in turns
            for block in turn["content"]
        )
        return {"tools": specs} if uses_tools else None
    elif isinstance(choice, Mapping) and isinstance(choice.get("function"), Mapping):
        name = choice["function"].get("name")
        if not isinstance(name, str):
            raise RequestError("'tool_choice.function.name' must be a string")
        config["toolChoice"] = {"tool": {"name": name}}
    else:
        raise RequestError("unsupported 'tool_choice'")
    return config


def _output_config(response_format: Any) -> dict[str, Any] | None:
    if response_format is None:
        return None
    kind = response_format.get("type") if isinstance(response_format, Mapping) else None
    if kind == "text":
        return None
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, Mapping) or not isinstance(spec.get("schema"), Mapping):
            raise RequestError("'response_format.json_schema.schema' must be an object")
        schema: dict[str, Any] = {"schema": json.dumps(spec["schema"], separators=(",", ":"))}
        for key in ("name", "description"):
            if isinstance(spec.get(key), str):
                schema[key] = spec[key]
        return {"textFormat": {"type": "json_schema", "structure": {"jsonSchema": schema}}}
    raise RequestError(f"Bedrock does not support response_format type '{kind}'; use json_schema")


# ---------------------------------------------------------------------------
# Answers


def parse_usage(usage: Any) -> Usage | None:
    """Converse `usage` as Usage; `input_tokens` includes the cached prompt tokens."""
    if not isinstance(usage, Mapping):
        return None
    if "inputTokens" not in usage and "outputTokens" not in usage:
        return None
    cache_read = count(usage.get("cacheReadInputTokens"))
    cache_write = count(usage.get("cacheWriteInputTokens"))
    return Usage(
        count(usage.get("inputTokens")) + cache_read + cache_write,
        count(usage.get("outputTokens")),
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
    )


def finish_reason(stop_reason: Any) -> str:
    return FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def completion_id(request_id: str | None = None) -> str:
    return f"chatcmpl-{request_id or uuid.uuid4().hex}"


def parse_converse(
    raw: bytes, *, model: str | None, request_id: str | None = None
) -> tuple[dict[str, Any], Usage | None]:
    """A 2xx Converse answer as an OpenAI `chat.completion` and its usage."""
    try:
        answer = json.loads(raw)
    except ValueError:
        raise AttemptFailed(bad_response("the upstream's answer is not JSON")) from None
    output = answer.get("output") if isinstance(answer, dict) else None
    message = output.get("message") if isinstance(output, dict) else None
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, list):
        raise AttemptFailed(
            bad_response("the upstream's answer is not a Converse response (no output.message)")
        )
    texts: list[str] = []
    calls: list[ToolCall] = []
    for block in content:
        if not isinstance(block, dict):
            continue
        if isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif isinstance(block.get("toolUse"), dict):
            use = block["toolUse"]
            arguments = use.get("input")
            calls.append(
                ToolCall(
                    str(use.get("toolUseId", "")),
                    str(use.get("name", "")),
                    arguments if isinstance(arguments, dict) else {},
                )
            )
    usage = parse_usage(answer.get("usage"))
    return (
        completion(
            completion_id=completion_id(request_id),
            model=model or "",
            text="".join(texts),
            tool_calls=calls,
            finish_reason=finish_reason(answer.get("stopReason")),
            usage=usage,
        ),
        usage,
    )


# ---------------------------------------------------------------------------
# Errors


def _error_type(raw: str | None) -> str | None:
    """`ThrottlingException:http://internal...` or `com.amazon...#ThrottlingException`
    -> `ThrottlingException`."""
    if not raw:
        return None
    name = raw.split(":", 1)[0]
    return name.rsplit("#", 1)[-1] or None


def error_details(headers: Mapping[str, str], body: bytes) -> tuple[str | None, str | None]:
    """(AWS error type, message) of an error answer."""
    message: str | None = None
    kind = _error_type(header(headers, "x-amzn-ErrorType"))
    text = body.decode("utf-8", "replace").strip()
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        for key in ("message", "Message"):
            if isinstance(parsed.get(key), str):
                message = parsed[key]
                break
        if kind is None:
            for key in ("__type", "code"):
                if isinstance(parsed.get(key), str):
                    kind = _error_type(parsed[key])
                    break
    elif text:
        message = text
    return kind, message


def classify(
    kind: str | None,
    message: str | None,
    *,
    status: int | None,
    retry_after: float | None = None,
) -> AttemptFailure:
    """The gateway's failure for an AWS error type (HTTP answers and stream exceptions)."""
    name = (kind or "").lower()
    text = (message or "").strip()[:MAX_ERROR_MESSAGE]
    if name.endswith("exception"):
        name = name[: -len("exception")]
    if name in {"throttling", "servicequotaexceeded"}:
        return AttemptFailure(
            429,
            "rate_limit_exceeded",
            text or "Bedrock is throttling requests",
            True,
            retry_after,
            status,
        )
    if name in ("serviceunavailable", "modelnotready"):
        code = "model_not_ready" if name == "modelnotready" else "overloaded"
        return AttemptFailure(
            503, code, text or "Bedrock is unavailable", True, retry_after, status
        )
    if name == "modeltimeout":
        return AttemptFailure(
            504, "model_timeout", text or "the model timed out", True, None, status, timeout=True
        )
    if name in ("internalserver", "modelerror", "modelstreamerror"):
        code = {"internalserver": "upstream_error", "modelerror": "model_error"}.get(
            name, "model_stream_error"
        )
        return AttemptFailure(502, code, text or "the model failed", True, retry_after, status)
    if name in (
        "accessdenied",
        "unrecognizedclient",
        "invalidsignature",
        "expiredtoken",
        "incompletesignature",
        "missingauthenticationtoken",
        "invalidclienttokenid",
    ):
        # The gateway's AWS identity was refused: the operator's problem; another
        # endpoint (with its own identity) may serve the request.
        return AttemptFailure(
            502,
            "upstream_auth_failed",
            f"Bedrock refused the gateway's AWS credentials ({kind})",
            True,
            None,
            status,
        )
    if name == "resourcenotfound":
        return AttemptFailure(
            502,
            "upstream_model_not_found",
            text or "the model is not available on this Bedrock endpoint",
            True,
            None,
            status,
        )
    if name == "validation":
        if _CONTEXT_TOO_LONG.search(text):
            return AttemptFailure(400, CONTEXT_LENGTH_EXCEEDED, text, False, None, status)
        return AttemptFailure(
            400, "invalid_request", text or "Bedrock rejected the request", False, None, status
        )
    if status is not None and 400 <= status < 500 and status not in (401, 403, 408, 429):
        return AttemptFailure(
            status,
            "upstream_bad_request",
            text or f"Bedrock rejected the request ({kind})",
            False,
            None,
            status,
        )
    return AttemptFailure(
        502,
        "upstream_error",
        text or f"Bedrock failed ({kind or f'HTTP {status}'})",
        True,
        retry_after,
        status,
    )


def classify_error(
    status: int, headers: Mapping[str, str], body: bytes, *, redact: Callable[[str], str]
) -> AttemptFailure:
    kind, message = error_details(headers, body)
    if message is not None:
        message = redact(message)
    if kind is None:
        kind = {
            400: "ValidationException",
            403: "AccessDeniedException",
            404: "ResourceNotFoundException",
            408: "ModelTimeoutException",
            429: "ThrottlingException",
            503: "ServiceUnavailableException",
        }.get(status)
    return classify(kind, message, status=status, retry_after=parse_retry_after(headers))


# ---------------------------------------------------------------------------
# Streams


class ConverseStreamTranslator(ChunkStreamTranslator):
    """ConverseStream's event-stream messages -> OpenAI `chat.completion.chunk` frames.

    The client gets the role with the first content (as every chunk
    translator sends it, so that an exception event before any content still
    lets the forwarder fail over), a content or tool-call delta per
    `contentBlockDelta`, the finish reason at `messageStop`, the usage of the
    `metadata` event when it asked for one (`stream_options.include_usage`),
    and `[DONE]` when the upstream ends. An exception event raises
    AttemptFailed.
    """

    def __init__(
        self, body: Mapping[str, Any], *, model: str | None, redact: Callable[[str], str]
    ) -> None:
        super().__init__(body, model=model or "", redact=redact)
        self.id = completion_id()
        self._decoder = EventStreamDecoder()
        self._tool_index: dict[int, int] = {}  # contentBlockIndex -> OpenAI tool_calls index

    def feed(self, data: bytes) -> list[bytes]:
        try:
            messages = self._decoder.feed(data)
        except EventStreamError as err:
            raise AttemptFailed(bad_response(f"malformed Bedrock stream: {err}")) from None
        frames: list[bytes] = []
        try:
            for message in messages:
                self._message(message, frames)
        except AttemptFailed as err:
            err.frames = frames
            raise
        return frames

    def finish(self) -> list[bytes]:
        if self.done:
            return []
        if self.finish_reason is None or self._decoder.pending:
            raise self.truncated()
        frames: list[bytes] = []
        self.end(frames)
        return frames

    def _message(self, message: EventStreamMessage, frames: list[bytes]) -> None:
        kind = message.header(":message-type")
        if kind == "exception":
            exception = message.header(":exception-type")
            text: str | None = None
            try:
                payload = json.loads(message.payload) if message.payload else {}
            except ValueError:
                payload = {}
            if isinstance(payload, dict) and isinstance(payload.get("message"), str):
                text = self.redact(payload["message"])
            raise AttemptFailed(classify(exception, text, status=None))
        if kind == "error":
            code = message.header(":error-code")
            text = message.header(":error-message")
            raise AttemptFailed(classify(code, self.redact(text) if text else None, status=None))
        if kind != "event":
            return  # unknown message types are ignored, as AWS SDKs do
        event = message.header(":event-type")
        payload = json_event(message.payload) if message.payload else {}
        if event == "contentBlockStart":
            self._block_start(payload, frames)
        elif event == "contentBlockDelta":
            self._block_delta(payload, frames)
        elif event == "messageStop":
            self.finish_with(finish_reason(payload.get("stopReason")), frames)
        elif event == "metadata":
            usage = parse_usage(payload.get("usage"))
            if usage is not None:
                self.report_usage(usage)
        # messageStart, contentBlockStop and events added later carry nothing for the client.

    def _block_start(self, payload: dict[str, Any], frames: list[bytes]) -> None:
        start = payload.get("start")
        use = start.get("toolUse") if isinstance(start, dict) else None
        if not isinstance(use, dict):
            return
        index = len(self._tool_index)
        self._tool_index[count(payload.get("contentBlockIndex"))] = index
        self.tool_call_start(
            index, str(use.get("toolUseId", "")), str(use.get("name", "")), "", frames
        )

    def _block_delta(self, payload: dict[str, Any], frames: list[bytes]) -> None:
        delta = payload.get("delta")
        if not isinstance(delta, dict):
            return
        if isinstance(delta.get("text"), str):
            self.text(delta["text"], frames)
            return
        use = delta.get("toolUse")
        if isinstance(use, dict) and isinstance(use.get("input"), str):
            index = self._tool_index.get(count(payload.get("contentBlockIndex")))
            if index is None:
                raise AttemptFailed(
                    bad_response("the upstream sent tool input for a block it did not start")
                )
            self.tool_call_arguments(index, use["input"], frames)
        # Reasoning and citation deltas have no Chat Completions field: left out.
