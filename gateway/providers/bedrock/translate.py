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
    ChunkStreamTranslator,
    ImagePart,
    Part,
    TextPart,
    ToolCall,
    bad_response,
    completion,
    content_parts,
    count,
    function_tools,
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
    unanswerable_option,
    unsupported,
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


# ---------------------------------------------------------------------------
# Requests: the shared reader of the OpenAI request (providers/chat.py), written
# as Converse blocks.


def build_converse_request(body: Mapping[str, Any]) -> dict[str, Any]:
    """The Converse request body (everything but `modelId`, which is in the URL).

    Raises AttemptFailed (400 `unsupported_request`, no failover) for what
    Converse cannot express.
    """
    single_choice(body)
    if (reason := unanswerable_option(body, "Bedrock")) is not None:
        raise unsupported(reason)
    system, turns = system_and_turns(body)
    converse_turns = _turns(turns)
    request: dict[str, Any] = {"messages": converse_turns}
    if system:
        request["system"] = [{"text": text} for text in system]
    inference: dict[str, Any] = {}
    if (max_tokens := max_output_tokens(body)) is not None:
        inference["maxTokens"] = max_tokens
    if (temperature := number(body, "temperature")) is not None:
        inference["temperature"] = temperature
    if (top_p := number(body, "top_p")) is not None:
        inference["topP"] = top_p
    if stops := stop_sequences(body):
        inference["stopSequences"] = stops
    if inference:
        request["inferenceConfig"] = inference
    tool_config = _tool_config(body, converse_turns)
    if tool_config is not None:
        request["toolConfig"] = tool_config
    output_config = _output_config(body)
    if output_config is not None:
        request["outputConfig"] = output_config
    return request


def _image_block(part: ImagePart) -> dict[str, Any]:
    if part.data is None:
        # The gateway never fetches URLs on a client's behalf.
        raise unsupported("Bedrock takes images only as base64 data URLs (data:image/...)")
    fmt = (part.media_type or "").removeprefix("image/")
    if fmt == "jpg":
        fmt = "jpeg"
    if fmt not in IMAGE_FORMATS:
        raise unsupported(f"Bedrock takes images as {', '.join(IMAGE_FORMATS)}, not '{fmt}'")
    # Blobs travel base64-encoded in Bedrock's JSON protocol.
    return {"image": {"format": fmt, "source": {"bytes": part.data}}}


def _block(part: Part) -> dict[str, Any]:
    if isinstance(part, TextPart):
        return {"text": part.text}
    return _image_block(part)


def _tool_use(call: ToolCall) -> dict[str, Any]:
    return {"toolUse": {"toolUseId": call.id, "name": call.name, "input": call.arguments}}


def _turns(turns: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Converse turns: they alternate, so consecutive messages of a role fold
    into one turn, and tool results lead their turn."""
    out: list[dict[str, Any]] = []
    for message in turns:
        role = message["role"]
        if role == "user":
            bedrock_role = "user"
            blocks = [_block(p) for p in content_parts(message.get("content"), role="user")]
        elif role == "assistant":
            bedrock_role = "assistant"
            parts = content_parts(message.get("content"), role="assistant")
            blocks = [_block(p) for p in parts if not _blank(p)]
            blocks += [_tool_use(call) for call in tool_calls_of(message)]
        else:  # tool
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str) or not call_id:
                raise unsupported("a tool message needs a 'tool_call_id'")
            text = text_of(message.get("content"), role="tool")
            bedrock_role = "user"
            blocks = [
                {"toolResult": {"toolUseId": call_id, "content": [{"text": text or "(empty)"}]}}
            ]
        if not blocks:
            continue
        if out and out[-1]["role"] == bedrock_role:
            previous = out[-1]["content"]
            if "toolResult" in blocks[0]:
                results = [b for b in previous if "toolResult" in b]
                others = [b for b in previous if "toolResult" not in b]
                out[-1]["content"] = [*results, *blocks, *others]
            else:
                previous.extend(blocks)
        else:
            out.append({"role": bedrock_role, "content": blocks})
    if not out:
        raise unsupported("the conversation has no user or assistant message with content")
    return out


def _blank(part: Part) -> bool:
    # Converse refuses blank text blocks; assistants often send "" with tool calls.
    return isinstance(part, TextPart) and not part.text.strip()


def _tool_config(body: Mapping[str, Any], turns: list[dict[str, Any]]) -> dict[str, Any] | None:
    tools = function_tools(body)
    if not tools:
        return None
    specs: list[dict[str, Any]] = []
    for tool in tools:
        spec: dict[str, Any] = {"name": tool.name, "inputSchema": {"json": tool.parameters}}
        if tool.description:
            spec["description"] = tool.description
        specs.append({"toolSpec": spec})
    config: dict[str, Any] = {"tools": specs}
    choice = tool_choice(body)
    if choice is None or choice[0] == "auto":
        config["toolChoice"] = {"auto": {}}
    elif choice[0] == "required":
        config["toolChoice"] = {"any": {}}
    elif choice[0] == "none":
        # Converse has no "none": without tool blocks in the conversation the
        # tools are left out; with them Converse needs the tool definitions.
        uses_tools = any(
            "toolUse" in block or "toolResult" in block
            for turn in turns
            for block in turn["content"]
        )
        return {"tools": specs} if uses_tools else None
    else:
        config["toolChoice"] = {"tool": {"name": choice[1]}}
    return config


def _output_config(body: Mapping[str, Any]) -> dict[str, Any] | None:
    fmt = body.get("response_format")
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, Mapping) else None
    if kind == "text":
        return None
    wants_json, schema = json_schema_format(body)
    if not wants_json or schema is None:
        raise unsupported(
            f"Bedrock does not support response_format type '{kind}'; use json_schema"
        )
    spec = fmt["json_schema"]
    structure: dict[str, Any] = {"schema": json.dumps(schema, separators=(",", ":"))}
    for key in ("name", "description"):
        if isinstance(spec.get(key), str):
            structure[key] = spec[key]
    return {"textFormat": {"type": "json_schema", "structure": {"jsonSchema": structure}}}


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


def stream_failure(
    message: EventStreamMessage, *, redact: Callable[[str], str]
) -> AttemptFailure | None:
    """The failure an exception or error message of an AWS event stream reports."""
    kind = message.header(":message-type")
    if kind == "exception":
        exception = message.header(":exception-type")
        text: str | None = None
        try:
            payload = json.loads(message.payload) if message.payload else {}
        except ValueError:
            payload = {}
        if isinstance(payload, dict) and isinstance(payload.get("message"), str):
            text = redact(payload["message"])
        return classify(exception, text, status=None)
    if kind == "error":
        code = message.header(":error-code")
        text = message.header(":error-message")
        return classify(code, redact(text) if text else None, status=None)
    return None


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
        failure = stream_failure(message, redact=self.redact)
        if failure is not None:
            raise AttemptFailed(failure)
        if message.header(":message-type") != "event":
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
