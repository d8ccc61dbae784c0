"""Pure wire translation between OpenAI Chat Completions and Gemini's
`generateContent` / `streamGenerateContent` on Vertex AI (no I/O).

Request: system prompts become `systemInstruction`; user and tool messages
become `user` contents, assistant messages `model` contents (consecutive ones
merged); images become `inlineData` (data URLs) or `fileData` (gs:// or https
URLs); tool definitions become `functionDeclarations` with their JSON schema in
`parametersJsonSchema`; assistant `tool_calls` become `functionCall` parts and
tool results `functionResponse` parts (Gemini matches them by function name, so
the name is looked up from the call the result answers); limits and sampling go
to `generationConfig`.

Answer: a `GenerateContentResponse` becomes a `chat.completion`; with
`alt=sse`, each SSE event is a partial response, turned into chunks.

Tool call ids: Gemini's function calls have no id the OpenAI protocol could
rely on, so the gateway makes one (`call_<hex>`). Gemini 3 models attach a
`thoughtSignature` to function calls that must come back with the call in the
next request; it rides in the id (`call_<hex>.<signature>`), which clients echo
verbatim, so the gateway stays stateless.
"""

from __future__ import annotations

import json
import mimetypes
import re
import secrets
from collections.abc import Callable, Mapping
from typing import Any, Final
from urllib.parse import urlsplit

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

FILTERED: Final = frozenset(
    {
        "SAFETY",
        "RECITATION",
        "BLOCKLIST",
        "PROHIBITED_CONTENT",
        "SPII",
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "IMAGE_RECITATION",
    }
)
_SIGNATURE_SEPARATOR: Final = "."
_CONTEXT_TOO_LONG = re.compile(
    r"input token count.*exceeds|exceeds the maximum number of tokens|context (?:window|length)",
    re.IGNORECASE,
)
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)s$")


# ---------------------------------------------------------------------------
# Tool call ids.


def new_call_id(signature: str | None = None) -> str:
    call_id = "call_" + secrets.token_hex(12)
    return f"{call_id}{_SIGNATURE_SEPARATOR}{signature}" if signature else call_id


def signature_of(call_id: str) -> str | None:
    _, sep, signature = call_id.partition(_SIGNATURE_SEPARATOR)
    return signature if sep and signature else None


# ---------------------------------------------------------------------------
# Request.


def build_request(body: Mapping[str, Any], *, max_tokens_default: int | None) -> dict[str, Any]:
    """The `generateContent` body for the client's OpenAI Chat Completions `body`.

    Raises AttemptFailed (400, no failover) for what Gemini cannot express.
    """
    single_choice(body)
    # Gemini can return log probabilities, but this translation does not carry
    # them back: refused like every translated provider.
    answerable(body, "Gemini on Vertex AI")
    system, turns = system_and_turns(body)
    out: dict[str, Any] = {"contents": _contents(turns)}
    if system:
        out["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
    config: dict[str, Any] = {}
    if (limit := max_output_tokens(body) or max_tokens_default) is not None:
        config["maxOutputTokens"] = limit
    for source, target in (
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
    ):
        if (value := number(body, source)) is not None:
            config[target] = value
    seed = body.get("seed")
    if isinstance(seed, int) and not isinstance(seed, bool):
        config["seed"] = seed
    if stops := stop_sequences(body):
        config["stopSequences"] = stops
    wants_json, schema = json_schema_format(body)
    if wants_json:
        config["responseMimeType"] = "application/json"
        if schema is not None:
            config["responseJsonSchema"] = schema
    if config:
        out["generationConfig"] = config
    tools = function_tools(body)
    if tools:
        out["tools"] = [
            {
                "functionDeclarations": [
                    {
                        "name": tool.name,
                        **({"description": tool.description} if tool.description else {}),
                        "parametersJsonSchema": tool.parameters,
                    }
                    for tool in tools
                ]
            }
        ]
        if (choice := tool_choice(body)) is not None:
            mode = {"auto": "AUTO", "none": "NONE", "required": "ANY", "function": "ANY"}
            calling: dict[str, Any] = {"mode": mode[choice[0]]}
            if choice[0] == "function":
                calling["allowedFunctionNames"] = [choice[1]]
            out["toolConfig"] = {"functionCallingConfig": calling}
    return out


def _image(part: ImagePart) -> dict[str, Any]:
    if part.data is not None:
        return {"inlineData": {"mimeType": part.media_type, "data": part.data}}
    assert part.url is not None
    media_type, _ = mimetypes.guess_type(urlsplit(part.url).path)
    if media_type is None or not media_type.startswith("image/"):
        raise unsupported("cannot tell the image type of an image URL: use a data: URL")
    return {"fileData": {"mimeType": media_type, "fileUri": part.url}}


def _part(part: Part) -> dict[str, Any]:
    return {"text": part.text} if isinstance(part, TextPart) else _image(part)


def _function_call(call: ToolCall) -> dict[str, Any]:
    part: dict[str, Any] = {"functionCall": {"name": call.name, "args": call.arguments}}
    if (signature := signature_of(call.id)) is not None:
        part["thoughtSignature"] = signature
    return part


def _function_response(name: str, content: str) -> dict[str, Any]:
    try:
        parsed = json.loads(content)
    except ValueError:
        parsed = None
    response = parsed if isinstance(parsed, dict) else {"content": content}
    return {"functionResponse": {"name": name, "response": response}}


def _contents(turns: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    merged: list[dict[str, Any]] = []
    call_names: dict[str, str] = {}

    def add(role: str, parts: list[dict[str, Any]]) -> None:
        if not parts:
            return
        if merged and merged[-1]["role"] == role:
            merged[-1]["parts"].extend(parts)
        else:
            merged.append({"role": role, "parts": parts})

    for message in turns:
        role = message["role"]
        if role == "user":
            add("user", [_part(p) for p in content_parts(message.get("content"), role="user")])
        elif role == "assistant":
            parts = [_part(p) for p in content_parts(message.get("content"), role="assistant")]
            for call in tool_calls_of(message):
                call_names[call.id] = call.name
                parts.append(_function_call(call))
            add("model", parts)
        else:  # tool
            call_id = message.get("tool_call_id")
            name = call_names.get(call_id) if isinstance(call_id, str) else None
            if name is None:
                raise unsupported("a tool message must answer a tool call of an earlier message")
            add("user", [_function_response(name, text_of(message.get("content"), role="tool"))])
    if not merged:
        raise unsupported("the request's messages have no content")
    return merged


# ---------------------------------------------------------------------------
# Answer.


def parse_usage(metadata: Any) -> Usage | None:
    """`usageMetadata`: the prompt count includes cached tokens; thoughts are output."""
    if not isinstance(metadata, Mapping) or "promptTokenCount" not in metadata:
        return None
    return Usage(
        count(metadata.get("promptTokenCount")) + count(metadata.get("toolUsePromptTokenCount")),
        count(metadata.get("candidatesTokenCount")) + count(metadata.get("thoughtsTokenCount")),
        cache_read_tokens=count(metadata.get("cachedContentTokenCount")),
    )


def finish_reason(reason: Any, *, tool_calls: bool) -> str:
    if reason == "MAX_TOKENS":
        return "length"
    if reason in FILTERED:
        return "content_filter"
    return "tool_calls" if tool_calls else "stop"


def _candidate_parts(response: Mapping[str, Any]) -> tuple[Mapping[str, Any] | None, list[Any]]:
    candidates = response.get("candidates")
    if not isinstance(candidates, list) or not candidates:
        return None, []
    candidate = candidates[0]
    if not isinstance(candidate, Mapping):
        return None, []
    content = candidate.get("content")
    parts = content.get("parts") if isinstance(content, Mapping) else None
    return candidate, parts if isinstance(parts, list) else []


def _texts_and_calls(parts: list[Any]) -> tuple[list[str], list[ToolCall]]:
    texts: list[str] = []
    calls: list[ToolCall] = []
    for part in parts:
        if not isinstance(part, Mapping):
            continue
        if isinstance(part.get("text"), str) and not part.get("thought"):
            texts.append(part["text"])
        call = part.get("functionCall")
        if isinstance(call, Mapping):
            args = call.get("args")
            signature = part.get("thoughtSignature")
            calls.append(
                ToolCall(
                    new_call_id(signature if isinstance(signature, str) else None),
                    str(call.get("name", "")),
                    args if isinstance(args, dict) else {},
                )
            )
    return texts, calls


def _blocked(response: Mapping[str, Any]) -> bool:
    feedback = response.get("promptFeedback")
    return isinstance(feedback, Mapping) and bool(feedback.get("blockReason"))


def parse_response(
    raw: bytes, *, model: str, redact: Callable[[str], str]
) -> tuple[dict[str, Any], Usage | None]:
    """A 2xx non-streamed `GenerateContentResponse` as a `chat.completion`."""
    response = json_answer(raw)
    if "error" in response:
        raise AttemptFailed(error_object_failure(response, redact=redact))
    candidate, parts = _candidate_parts(response)
    if candidate is None and not _blocked(response):
        raise AttemptFailed(bad_response("the upstream's answer has no candidate"))
    texts, calls = _texts_and_calls(parts)
    reason = candidate.get("finishReason") if candidate is not None else "PROHIBITED_CONTENT"
    usage = parse_usage(response.get("usageMetadata"))
    return (
        completion(
            completion_id=str(response.get("responseId") or new_call_id()),
            model=str(response.get("modelVersion") or model),
            text="".join(texts),
            tool_calls=calls,
            finish_reason=finish_reason(reason, tool_calls=bool(calls)),
            usage=usage,
        ),
        usage,
    )


def error_details(parsed: Any) -> tuple[int | None, str | None, str | None, float | None]:
    """(code, status, message, retry delay) of a Google API error object.

    `{"error": {"code": 429, "message", "status": "RESOURCE_EXHAUSTED", "details":
    [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "30s"}]}}`;
    a JSON array around it (non-SSE streams) is accepted too.
    """
    if isinstance(parsed, list) and parsed:
        parsed = parsed[0]
    error = parsed.get("error") if isinstance(parsed, Mapping) else None
    if not isinstance(error, Mapping):
        return None, None, None, None
    code, status, message = error.get("code"), error.get("status"), error.get("message")
    delay: float | None = None
    for detail in error.get("details") or ():
        if (
            isinstance(detail, Mapping)
            and str(detail.get("@type", "")).endswith("google.rpc.RetryInfo")
            and isinstance(detail.get("retryDelay"), str)
            and (match := _DURATION.match(detail["retryDelay"]))
        ):
            delay = float(match.group(1))
    return (
        code if isinstance(code, int) and not isinstance(code, bool) else None,
        status if isinstance(status, str) else None,
        message if isinstance(message, str) else None,
        delay,
    )


def failure_for(
    status: int, google_status: str | None, message: str | None, *, retry_after: float | None
) -> AttemptFailure:
    """Map a Vertex AI error to the gateway's failure.

    Quota (429), unavailable (503), deadline (504), internal errors and refused
    credentials fail over; invalid arguments (context too long included) go
    back to the client.
    """
    text = (message or "").strip()[:MAX_ERROR_MESSAGE]
    if status == 429 or google_status == "RESOURCE_EXHAUSTED":
        return failure_for_status(429, message=text, code=None, retry_after=retry_after)
    if status in (401, 403):
        return failure_for_status(status, message=None, code=None, retry_after=None)
    if status == 503 or google_status == "UNAVAILABLE":
        return AttemptFailure(
            503,
            "upstream_unavailable",
            text or "the upstream is unavailable",
            True,
            retry_after,
            status,
        )
    if status == 504 or google_status == "DEADLINE_EXCEEDED":
        return AttemptFailure(
            504,
            "upstream_timeout",
            text or "the upstream timed out",
            True,
            retry_after,
            status,
            timeout=True,
        )
    if status == 400 and _CONTEXT_TOO_LONG.search(text):
        return AttemptFailure(400, "context_length_exceeded", text, False, None, status)
    code = google_status.lower() if google_status else None
    return failure_for_status(status, message=text, code=code, retry_after=retry_after)


def classify_error(
    status: int, headers: Mapping[str, str], body: bytes, *, redact: Callable[[str], str]
) -> AttemptFailure:
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    _, google_status, message, delay = error_details(parsed)
    if message is None and parsed is None:
        message = body.decode("utf-8", "replace").strip() or None
    retry_after = parse_retry_after(headers)
    return failure_for(
        status,
        google_status,
        redact(message) if message else None,
        retry_after=retry_after if retry_after is not None else delay,
    )


def error_object_failure(payload: Any, *, redact: Callable[[str], str]) -> AttemptFailure:
    """The failure for an error object inside a 2xx answer or a stream."""
    code, google_status, message, delay = error_details(payload)
    return failure_for(
        code or 500, google_status, redact(message) if message else None, retry_after=delay
    )


# ---------------------------------------------------------------------------
# Streams.


class GeminiStreamTranslator(ChunkStreamTranslator):
    """`streamGenerateContent?alt=sse` events as OpenAI `chat.completion.chunk` frames.

    Gemini ends its stream by closing it; the final event carries the
    `finishReason` and the usage.
    """

    def __init__(
        self, body: Mapping[str, Any], *, model: str, redact: Callable[[str], str]
    ) -> None:
        super().__init__(body, model=model, redact=redact)
        self._parser = SseParser()
        self._calls = 0
        self._pending_reason: str | None = None
        self._id_set = False

    def feed(self, data: bytes) -> list[bytes]:
        return feed_sse(self._parser, data, self._event)

    def finish(self) -> list[bytes]:
        frames = flush_sse(self._parser, self._event)
        if self.finish_reason is None:
            if self._pending_reason is None:
                raise self.truncated()
            self.finish_with(
                finish_reason(self._pending_reason, tool_calls=self._calls > 0), frames
            )
        self.end(frames)
        return frames

    def _event(self, _name: str | None, data: bytes, frames: list[bytes]) -> None:
        response = json_event(data)
        if "error" in response:
            raise AttemptFailed(error_object_failure(response, redact=self.redact))
        if not self._id_set and isinstance(response.get("responseId"), str):
            self.id, self._id_set = response["responseId"], True
        if isinstance(response.get("modelVersion"), str) and response["modelVersion"]:
            self.model = response["modelVersion"]
        if (usage := parse_usage(response.get("usageMetadata"))) is not None:
            self.report_usage(usage)
        candidate, parts = _candidate_parts(response)
        texts, calls = _texts_and_calls(parts)
        for text in texts:
            self.text(text, frames)
        for call in calls:
            self.tool_call_start(
                self._calls, call.id, call.name, json.dumps(call.arguments), frames
            )
            self._calls += 1
        if candidate is not None and candidate.get("finishReason"):
            # Usage may still follow in a last event: the finish chunk waits for the end.
            self._pending_reason = str(candidate["finishReason"])
        elif candidate is None and _blocked(response):
            self._pending_reason = "PROHIBITED_CONTENT"
