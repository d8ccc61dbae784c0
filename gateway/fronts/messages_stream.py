"""The Messages bridge's stream: the inner chat translator's
`chat.completion.chunk` frames as Anthropic's SSE events.

    message_start, ping                      with the first content
    content_block_start / _delta / _stop     text (`text_delta`) and tool use
                                             (`input_json_delta`), one block each
    message_delta                            stop_reason, stop_sequence, usage
    message_stop                             at the chat stream's `[DONE]`

Nothing goes out before the inner translator's first frame, which it holds
until the upstream produced content: an error before that still fails over. A
failure after it ends the stream with Anthropic's `error` event.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any, Final

from gateway.fronts.bridge import ChatDelta, ChatFrames
from gateway.providers.adapter import StreamTranslator
from gateway.providers.anthropic.wire import error_event, event_frame
from gateway.providers.failures import AttemptFailed, AttemptFailure
from gateway.providers.usage import Usage

STOP_REASONS: Final[Mapping[str, str]] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def stop_reason(finish_reason: str | None) -> str:
    return STOP_REASONS.get(finish_reason or "stop", "end_turn")


def message_id(chat_id: Any) -> str:
    if isinstance(chat_id, str) and chat_id.startswith("msg_"):
        return chat_id
    return "msg_" + (chat_id if isinstance(chat_id, str) and chat_id else uuid.uuid4().hex)


def message_usage(usage: Usage) -> dict[str, Any]:
    """Anthropic's usage: `input_tokens` excludes what was read from or written to cache."""
    uncached = usage.input_tokens - usage.cache_read_tokens - usage.cache_write_tokens
    return {
        "input_tokens": max(uncached, 0),
        "output_tokens": usage.output_tokens,
        "cache_creation_input_tokens": usage.cache_write_tokens,
        "cache_read_input_tokens": usage.cache_read_tokens,
    }


def matched_stop(stop: Any, body: Mapping[str, Any]) -> str | None:
    """The client's stop sequence that ended the answer, when the server says which."""
    stops = body.get("stop_sequences") or ()
    return stop if isinstance(stop, str) and stop in stops else None


class MessagesBridgeStream(StreamTranslator):
    """Chat chunk frames in, Anthropic events out."""

    def __init__(
        self, inner: StreamTranslator, *, body: Mapping[str, Any], prompt_estimate: int
    ) -> None:
        self.inner = inner
        self.body = body
        self.id = "msg_" + uuid.uuid4().hex
        self.model = str(body.get("model", ""))
        self._frames = ChatFrames()
        self._prompt_estimate = prompt_estimate
        self._started = False
        self._index = -1  # the open content block, -1: none
        self._open_kind: str | None = None
        self._tool_blocks: dict[int, int] = {}  # chat tool call index -> block index
        self._finish: str | None = None
        self._stop: str | None = None
        self._usage: Usage | None = None
        self.done = False

    @property
    def usage(self) -> Usage | None:
        return self._usage or self.inner.usage

    def feed(self, data: bytes) -> list[bytes]:
        try:
            inner = self.inner.feed(data)
        except AttemptFailed as err:
            err.frames = self._translate(err.frames)
            raise
        return self._translate(inner)

    def finish(self) -> list[bytes]:
        try:
            inner = self.inner.finish()
        except AttemptFailed as err:
            err.frames = self._translate(err.frames)
            raise
        frames = self._translate(inner)
        if not self.done:
            self._end(frames)
        return frames

    def error_frames(self, failure: AttemptFailure) -> list[bytes]:
        return [error_event(failure)]

    # -- frames -------------------------------------------------------------

    def _translate(self, inner: list[bytes]) -> list[bytes]:
        frames: list[bytes] = []
        for delta in self._frames.read(inner):
            self._delta(delta, frames)
        return frames

    def _delta(self, delta: ChatDelta, frames: list[bytes]) -> None:
        if self.done:
            return
        if delta.usage is not None:
            self._usage = delta.usage
        if delta.model and not self._started:
            self.model = delta.model
        if delta.text:
            self._text(delta.text, frames)
        for call in delta.tool_calls:
            self._tool(call, frames)
        if delta.finish_reason is not None and self._finish is None:
            self._finish = delta.finish_reason
            self._stop = matched_stop(delta.stop_reason, self.body)
        if delta.done:
            self._end(frames)

    def _start(self, frames: list[bytes]) -> None:
        if self._started:
            return
        self._started = True
        frames.append(
            event_frame(
                "message_start",
                {
                    "type": "message_start",
                    "message": {
                        "id": self.id,
                        "type": "message",
                        "role": "assistant",
                        "model": self.model,
                        "content": [],
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": {"input_tokens": self._prompt_estimate, "output_tokens": 0},
                    },
                },
            )
        )
        frames.append(event_frame("ping", {"type": "ping"}))

    def _open(self, kind: str, block: dict[str, Any], frames: list[bytes]) -> int:
        self._start(frames)
        self._close(frames)
        self._index += 1
        self._open_kind = kind
        frames.append(
            event_frame(
                "content_block_start",
                {"type": "content_block_start", "index": self._index, "content_block": block},
            )
        )
        return self._index

    def _close(self, frames: list[bytes]) -> None:
        if self._open_kind is not None:
            frames.append(
                event_frame(
                    "content_block_stop", {"type": "content_block_stop", "index": self._index}
                )
            )
            self._open_kind = None

    def _block_delta(self, index: int, delta: dict[str, Any], frames: list[bytes]) -> None:
        frames.append(
            event_frame(
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": delta},
            )
        )

    def _text(self, text: str, frames: list[bytes]) -> None:
        if self._open_kind != "text":
            self._open("text", {"type": "text", "text": ""}, frames)
        self._block_delta(self._index, {"type": "text_delta", "text": text}, frames)

    def _tool(self, call: Mapping[str, Any], frames: list[bytes]) -> None:
        position = call.get("index")
        position = position if isinstance(position, int) else len(self._tool_blocks)
        function = call.get("function")
        function = function if isinstance(function, Mapping) else {}
        arguments = function.get("arguments")
        index = self._tool_blocks.get(position)
        if index is None:
            block = {
                "type": "tool_use",
                "id": str(call.get("id") or f"toolu_{uuid.uuid4().hex[:24]}"),
                "name": str(function.get("name") or ""),
                "input": {},
            }
            index = self._tool_blocks[position] = self._open("tool_use", block, frames)
        if isinstance(arguments, str) and arguments:
            self._block_delta(
                index, {"type": "input_json_delta", "partial_json": arguments}, frames
            )

    def _end(self, frames: list[bytes]) -> None:
        self._start(frames)
        self._close(frames)
        usage = self.usage or Usage(self._prompt_estimate, 0, estimated=True)
        reason = "stop_sequence" if self._stop else stop_reason(self._finish)
        frames.append(
            event_frame(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": reason, "stop_sequence": self._stop},
                    "usage": message_usage(usage),
                },
            )
        )
        frames.append(event_frame("message_stop", {"type": "message_stop"}))
        self.done = True
