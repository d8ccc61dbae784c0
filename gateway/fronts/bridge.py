"""What the Messages and Responses bridges share: the target's Chat Completions
dialect, the record of what a translation dropped, and reading the chat frames
the inner codec's stream translator writes.

A bridge is a Codec that translates its front's body to Chat Completions, runs
the endpoint's `chat` codec on it, and translates the answer (or each stream
frame) back. It knows the endpoint only through the inner codec and a
:class:`ChatTarget`: which token-limit field the endpoint's chat API takes, and
whether it has an equivalent of reasoning effort. What a translation cannot
carry is either refused (:func:`gateway.providers.chat.unsupported`, a 400 that
never fails over) when it would change the answer, or dropped and noted in
:class:`Notes` when it is a hint (prompt caching, service tier) so that the
audit record can say what was not sent.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

from gateway.providers.adapter import CHAT, Call, Codec, ProviderAdapter, StreamTranslator
from gateway.providers.chat import bad_response
from gateway.providers.failures import (
    MAX_ERROR_MESSAGE,
    UPSTREAM_STREAM_ERROR,
    AttemptFailed,
    AttemptFailure,
)
from gateway.providers.openai_compatible.translate import parse_usage
from gateway.providers.sse import SseParser, SseProtocolError
from gateway.providers.usage import Usage

# Endpoint types whose Chat Completions API is OpenAI's own (reasoning models
# there take `max_completion_tokens` and `reasoning_effort`, not `max_tokens`).
OPENAI_TYPES: Final = frozenset({"openai", "azure-openai"})
REASONING_EFFORTS: Final = ("minimal", "low", "medium", "high", "xhigh")


@dataclass(frozen=True, slots=True)
class ChatTarget:
    """The Chat Completions dialect of the endpoint behind a bridge."""

    endpoint_type: str
    max_tokens_field: str = "max_tokens"
    reasoning_effort: bool = False  # takes `reasoning_effort`
    files: bool = False  # takes `file` content parts (PDFs)

    @classmethod
    def of(cls, adapter: ProviderAdapter) -> ChatTarget:
        kind = adapter.endpoint.type
        if kind in OPENAI_TYPES:
            return cls(kind, "max_completion_tokens", reasoning_effort=True, files=True)
        return cls(kind)


class Notes:
    """What a translation dropped or changed, in order, each once."""

    def __init__(self) -> None:
        self._items: dict[str, None] = {}

    def add(self, note: str) -> None:
        self._items.setdefault(note, None)

    def dropped(self, field: str, why: str) -> None:
        self.add(f"{field}: dropped ({why})")

    def changed(self, field: str, how: str) -> None:
        self.add(f"{field}: {how}")

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def as_list(self) -> list[str]:
        return list(self._items)


def chat_call(call: Call, body: dict[str, Any]) -> Call:
    """The inner codec's call for a translated body."""
    if call.stream:
        body["stream"] = True
        # Usage in the last chunk, whatever the inner translator: the bridge
        # puts it in its own closing event.
        body["stream_options"] = {"include_usage": True}
    return Call(CHAT, body, call.stream, call.request_id)


@dataclass(frozen=True, slots=True)
class ChatDelta:
    """What one `chat.completion.chunk` adds (only the first choice counts)."""

    text: str = ""
    tool_calls: tuple[Mapping[str, Any], ...] = ()
    finish_reason: str | None = None
    stop_reason: Any = None  # vLLM: the stop string that ended the answer
    usage: Usage | None = None
    model: str | None = None
    id: str | None = None
    done: bool = False  # the stream's `[DONE]`


DONE: Final = ChatDelta(done=True)


class ChatFrames:
    """Reads the inner translator's frames (`data: {chunk}`, `data: [DONE]`)."""

    def __init__(self) -> None:
        self._parser = SseParser()

    def read(self, frames: list[bytes]) -> list[ChatDelta]:
        if not frames:
            return []
        try:
            events = self._parser.feed(b"".join(frames))
        except SseProtocolError as err:  # pragma: no cover - our own frames are small
            raise AttemptFailed(bad_response(str(err))) from None
        return [delta_of(event.data) for event in events]


def delta_of(data: bytes) -> ChatDelta:
    payload = data.strip()
    if payload == b"[DONE]":
        return DONE
    try:
        chunk = json.loads(payload)
    except ValueError:
        raise AttemptFailed(bad_response("the chat stream sent a frame that is not JSON")) from None
    if not isinstance(chunk, dict):
        raise AttemptFailed(bad_response("the chat stream sent a frame that is not an object"))
    choices = chunk.get("choices")
    if "error" in chunk and not choices:
        raise AttemptFailed(error_failure(chunk["error"]))
    usage = parse_usage(chunk.get("usage"))
    model = chunk.get("model") if isinstance(chunk.get("model"), str) else None
    chunk_id = chunk.get("id") if isinstance(chunk.get("id"), str) else None
    choice = choices[0] if isinstance(choices, list) and choices else None
    if not isinstance(choice, Mapping):
        return ChatDelta(usage=usage, model=model, id=chunk_id)
    delta = choice.get("delta")
    delta = delta if isinstance(delta, Mapping) else {}
    text = delta.get("content")
    calls = delta.get("tool_calls")
    finish = choice.get("finish_reason")
    return ChatDelta(
        text=text if isinstance(text, str) else "",
        tool_calls=tuple(c for c in calls if isinstance(c, Mapping))
        if isinstance(calls, list)
        else (),
        finish_reason=finish if isinstance(finish, str) else None,
        stop_reason=choice.get("stop_reason"),
        usage=usage,
        model=model,
        id=chunk_id,
    )


def error_failure(error: Any) -> AttemptFailure:
    """The failure a chat stream's `{"error": ...}` frame reports."""
    message = error.get("message") if isinstance(error, Mapping) else error
    code = error.get("code") if isinstance(error, Mapping) else None
    return AttemptFailure(
        502,
        code if isinstance(code, str) and code else UPSTREAM_STREAM_ERROR,
        (message if isinstance(message, str) else "the upstream reported an error")[
            :MAX_ERROR_MESSAGE
        ],
        True,
    )


def first_choice(completion: Mapping[str, Any]) -> Mapping[str, Any]:
    """The first choice's message and finish reason of a `chat.completion`."""
    choices = completion.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else None
    if not isinstance(choice, Mapping) or not isinstance(choice.get("message"), Mapping):
        raise AttemptFailed(bad_response("the upstream's answer has no choice"))
    return choice


def tool_arguments(raw: Any, call_id: str) -> dict[str, Any]:
    """A chat tool call's JSON arguments as the object Messages and Responses carry."""
    if isinstance(raw, dict):
        return raw
    try:
        value = json.loads(raw) if isinstance(raw, str) and raw.strip() else {}
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise AttemptFailed(
            bad_response(f"the model's arguments for tool call '{call_id}' are not a JSON object")
        )
    return value


class Refused(StreamTranslator):
    """The translator of a request the bridge cannot translate: `prepare` refuses
    it first (a 400), so this is never fed; if it is, it refuses too."""

    def __init__(self, failure: AttemptFailure) -> None:
        self.failure = failure

    def feed(self, data: bytes) -> list[bytes]:
        raise AttemptFailed(self.failure)

    def finish(self) -> list[bytes]:
        raise AttemptFailed(self.failure)

    @property
    def usage(self) -> Usage | None:
        return None


def model_of(inner: Codec, call: Call) -> str | None:
    """The inner codec's model for a call whose body could not be translated."""
    return inner.upstream_model(Call(CHAT, {"model": call.body.get("model")}))
