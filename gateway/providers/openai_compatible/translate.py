"""Pure wire translation for OpenAI-compatible upstreams (no I/O).

OpenAI, vLLM, TGI and TensorRT-LLM (and Azure OpenAI, which adds only its URL
and auth) speak the Chat Completions protocol the client already speaks, so the
"translation" is small: the request body gets the endpoint's model and asks for
usage in streams; the answer passes through, frame by frame for streams, while
usage is picked up (or estimated when the upstream reports none) and errors in
the various servers' shapes are classified.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

from gateway.providers.adapter import StreamTranslator
from gateway.providers.chat import (
    bad_response,
    client_wants_usage,
    estimated_usage,
    feed_sse,
    json_answer,
    json_event,
    stream_truncated,
    usage_chunk,
)
from gateway.providers.failures import (
    BAD_UPSTREAM_RESPONSE,
    MAX_ERROR_MESSAGE,
    UPSTREAM_STREAM_ERROR,
    AttemptFailed,
    AttemptFailure,
    failure_for_status,
    parse_retry_after,
)
from gateway.providers.openai_compatible.fields import CHAT_FIELDS, known_fields
from gateway.providers.sse import SseParser
from gateway.providers.usage import Usage, estimate_prompt_tokens
from gateway.providers.wire import DONE_FRAME

_DONE = b"[DONE]"


def build_request_body(
    body: Mapping[str, Any],
    *,
    model: str | None,
    stream: bool,
    fields: frozenset[str] = CHAT_FIELDS,
) -> dict[str, Any]:
    """The body to send upstream for the client's `body`.

    Only `fields` of the client's body are sent (:mod:`.fields`). The endpoint's
    model (when set) replaces the client's: the registry decides what runs
    where. Streams always ask for usage in their last chunk, so that tokens and
    cost come from the upstream rather than an estimate; `stream_options` is
    dropped for non-streamed requests, where OpenAI rejects it.
    """
    out = known_fields(body, fields)
    if model:
        out["model"] = model
    out["stream"] = stream
    if stream:
        options = out.get("stream_options")
        merged = dict(options) if isinstance(options, Mapping) else {}
        merged["include_usage"] = True
        out["stream_options"] = merged
    else:
        out.pop("stream_options", None)
    return out


def _int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value) if value >= 0 else None


def parse_usage(usage: Any, *, prompt_estimate: int | None = None) -> Usage | None:
    """An OpenAI `usage` object as Usage; None when it carries no counts."""
    if not isinstance(usage, Mapping):
        return None
    prompt = _int(usage.get("prompt_tokens"))
    completion = _int(usage.get("completion_tokens"))
    if prompt is None and completion is None:
        return None
    cached = 0
    details = usage.get("prompt_tokens_details")
    if isinstance(details, Mapping):
        cached = _int(details.get("cached_tokens")) or 0
    estimated = prompt is None or completion is None
    if prompt is None:
        prompt = prompt_estimate or 0
    return Usage(prompt, completion or 0, cache_read_tokens=cached, estimated=estimated)


def _unredacted(text: str) -> str:
    return text


def parse_completion(
    raw: bytes, *, redact: Callable[[str], str] = _unredacted
) -> tuple[dict[str, Any], Usage | None]:
    """A 2xx non-streamed answer: the `chat.completion` object and its usage.

    A 200 carrying an error object instead (some proxies answer a refused key
    that way, quoting it) fails the attempt with the message `redact`ed.
    """
    completion = json_answer(raw)
    if "error" in completion and "choices" not in completion:
        raise AttemptFailed(_error_object_failure(completion["error"], 502, redact))
    if not isinstance(completion.get("choices"), list):
        raise AttemptFailed(
            bad_response("the upstream's answer is not a chat completion (no 'choices')")
        )
    _stringify_tool_arguments(completion["choices"])
    return completion, parse_usage(completion.get("usage"))


def _stringify_tool_arguments(choices: list[Any]) -> None:
    """TGI answers tool calls with `arguments` as a JSON object; OpenAI (and every
    SDK) has a JSON string there. Rewritten in place, only where needed."""
    for choice in choices:
        message = choice.get("message") if isinstance(choice, dict) else None
        calls = message.get("tool_calls") if isinstance(message, dict) else None
        for call in calls if isinstance(calls, list) else ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict) and not isinstance(function.get("arguments"), str):
                arguments = function.get("arguments")
                function["arguments"] = json.dumps(
                    {} if arguments is None else arguments, separators=(",", ":")
                )


def error_details(body: bytes) -> tuple[str | None, str | None]:
    """(message, code) from an error body in any of the servers' shapes.

    OpenAI and recent vLLM: `{"error": {"message", "type", "code"}}`; older vLLM:
    `{"object": "error", "message", "type", "code": 400}`; TGI: `{"error": "text",
    "error_type": "validation"}`; anything else: the text itself.
    """
    text = body.decode("utf-8", "replace").strip()
    try:
        parsed = json.loads(text)
    except (ValueError, RecursionError):
        return (text or None), None
    if not isinstance(parsed, dict):
        return _canonical(parsed), None
    error = parsed.get("error", parsed)
    if isinstance(error, str):
        return error, None
    if isinstance(error, dict):
        message = error.get("message")
        # Only a string `code` is a code; `type` is a category (and old vLLM
        # puts the HTTP status in `code`), so neither stands in for one.
        code = error.get("code")
        if isinstance(message, str):
            return message, code if isinstance(code, str) else None
    return _canonical(parsed), None


def _canonical(parsed: Any) -> str:
    """Parsed JSON written back without escapes, so that a secret the upstream
    spelled with JSON escapes (`\\/`, `\\uXXXX`) is plain text for redaction."""
    return json.dumps(parsed, ensure_ascii=False, separators=(",", ":"))


def classify_error(
    status: int, headers: Mapping[str, str], body: bytes, *, redact: Callable[[str], str]
) -> AttemptFailure:
    """Classify a non-2xx answer of an OpenAI-compatible server."""
    message, code = error_details(body)
    if message is not None:
        message = redact(message)[:MAX_ERROR_MESSAGE]
    if code is not None:
        code = redact(code)[:100]
    return failure_for_status(
        status, message=message, code=code, retry_after=parse_retry_after(headers)
    )


# Messages of the servers' "prompt too long" errors: OpenAI and vLLM ("maximum
# context length is N tokens"), TGI ("`inputs` tokens + `max_new_tokens` must
# be <= N"), TensorRT-LLM ("exceeds ... max_seq_len" / "max_num_tokens").
_CONTEXT_TOO_LONG = re.compile(
    r"maximum context length|context length|context window|must be <= \d+"
    r"|max_seq_len|max_num_tokens|prompt is too long|too many (input )?tokens",
    re.IGNORECASE,
)
CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"


def classify_server_error(
    flavor: str,
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    redact: Callable[[str], str],
) -> AttemptFailure:
    """classify_error, plus what differs between the self-hosted servers.

    - A prompt longer than the model's context is `context_length_exceeded`
      (400, no failover) whatever words the server uses; TGI reports input
      validation errors as 422, which clients expect as 400.
    - TGI answers 424 when generation itself failed: a server fault, so 502 and
      fail over, not a 4xx passed through.
    """
    failure = classify_error(status, headers, body, redact=redact)
    if flavor == "tgi" and status == 424:
        return AttemptFailure(
            502, "upstream_generation_failed", failure.message, True, None, status
        )
    if status in (400, 413, 422) and _CONTEXT_TOO_LONG.search(failure.message):
        return AttemptFailure(400, CONTEXT_LENGTH_EXCEEDED, failure.message, False, None, status)
    if flavor == "tgi" and status == 422:
        return AttemptFailure(400, failure.code, failure.message, False, None, status)
    return failure


def _error_object_failure(error: Any, status: int, redact: Callable[[str], str]) -> AttemptFailure:
    """The failure an error object in a 2xx answer (or a stream event) stands for,
    its message and code redacted before they are cut to length."""
    message: str | None = None
    code: str | None = None
    if isinstance(error, str):
        message = error
    elif isinstance(error, Mapping):
        if isinstance(error.get("message"), str):
            message = error["message"]
        elif error.get("message") is not None:
            message = _canonical(error["message"])
        if isinstance(error.get("code"), str):
            code = redact(error["code"])[:100]
    return AttemptFailure(
        status,
        code or UPSTREAM_STREAM_ERROR,
        redact(message or "the upstream reported an error")[:MAX_ERROR_MESSAGE],
        True,
    )


class OpenAIStreamTranslator(StreamTranslator):
    """Passes an OpenAI-compatible SSE stream through, frame by frame.

    Each upstream `data:` event is re-framed as `data: <payload>\\n\\n` with the
    payload's bytes untouched (line endings normalised, comments dropped). The
    usage chunk the gateway asked for is forwarded only when the client asked
    for it too: a client that did not may index `choices[0]` of every chunk.
    When the upstream reports no usage, output tokens are estimated from the
    streamed text: at least one token per content-bearing chunk (servers stream
    about one token per chunk) and at least one per four characters.
    """

    def __init__(
        self,
        *,
        prompt_tokens_estimate: int,
        client_wants_usage: bool,
        redact: Callable[[str], str],
    ) -> None:
        self._parser = SseParser()
        self._prompt_estimate = prompt_tokens_estimate
        self._client_wants_usage = client_wants_usage
        self._redact = redact
        self._reported: Usage | None = None
        self._chars = 0
        self._content_chunks = 0
        self._finished_choice = False
        self._done = False
        self._last_id: Any = None
        self._last_model: Any = None
        self._last_created: Any = None

    @classmethod
    def for_body(
        cls, body: Mapping[str, Any], redact: Callable[[str], str]
    ) -> OpenAIStreamTranslator:
        return cls(
            prompt_tokens_estimate=estimate_prompt_tokens(body),
            client_wants_usage=client_wants_usage(body),
            redact=redact,
        )

    @property
    def done(self) -> bool:
        """Whether the upstream's `[DONE]` (or the translator's own) was emitted."""
        return self._done

    @property
    def usage(self) -> Usage:
        if self._reported is not None:
            return self._reported
        return estimated_usage(self._prompt_estimate, self._chars, self._content_chunks)

    def feed(self, data: bytes) -> list[bytes]:
        return feed_sse(self._parser, data, self._event)

    def finish(self) -> list[bytes]:
        frames: list[bytes] = []
        for event in self._parser.flush():
            try:
                self._event(event.event, event.data, frames)
            except AttemptFailed as err:
                # An event cut off by the end of the stream is discarded (as
                # the SSE specification says); the check below reports it.
                if err.failure.code != BAD_UPSTREAM_RESPONSE:
                    err.frames = frames
                    raise
        if not self._done:
            if not self._finished_choice:
                raise stream_truncated()
            # A complete answer (a finish_reason arrived) without `[DONE]`:
            # some servers close without it; end the client's stream properly.
            self._end(frames)
        return frames

    def _event(self, name: str | None, data: bytes, frames: list[bytes]) -> None:
        if self._done:
            return
        payload = data.strip()
        if payload == _DONE:
            self._end(frames)
            return
        chunk = json_event(payload)
        if name == "error" or ("error" in chunk and "choices" not in chunk):
            raise AttemptFailed(_error_object_failure(chunk.get("error", chunk), 502, self._redact))
        self._last_id = chunk.get("id", self._last_id)
        self._last_model = chunk.get("model", self._last_model)
        self._last_created = chunk.get("created", self._last_created)
        usage = parse_usage(chunk.get("usage"), prompt_estimate=self._prompt_estimate)
        if usage is not None:
            self._reported = usage
        choices = chunk.get("choices")
        if isinstance(choices, list):
            self._count(choices)
        if usage is not None and not choices and not self._client_wants_usage:
            return
        frames.append(b"data: " + payload + b"\n\n")

    def _count(self, choices: list[Any]) -> None:
        chars = 0
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            if choice.get("finish_reason"):
                self._finished_choice = True
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                continue
            for key in ("content", "reasoning_content", "reasoning", "refusal"):
                value = delta.get(key)
                if isinstance(value, str):
                    chars += len(value)
            for call in delta.get("tool_calls") or ():
                function = call.get("function") if isinstance(call, dict) else None
                if isinstance(function, dict):
                    for key in ("name", "arguments"):
                        value = function.get(key)
                        if isinstance(value, str):
                            chars += len(value)
        if chars:
            self._chars += chars
            self._content_chunks += 1

    def _end(self, frames: list[bytes]) -> None:
        if self._client_wants_usage and self._reported is None:
            # The client asked for a usage chunk the upstream did not send.
            frames.append(
                usage_chunk(
                    completion_id=self._last_id or "chatcmpl-gateway",
                    created=self._last_created or int(time.time()),
                    model=self._last_model or "",
                    usage=self.usage,
                )
            )
        frames.append(DONE_FRAME)
        self._done = True
