"""The Responses bridge's stream: the inner chat translator's
`chat.completion.chunk` frames as the Responses API's semantic events.

    response.created, response.in_progress                  with the first content
    response.output_item.added (message)
      response.content_part.added, response.output_text.delta ...,
      response.output_text.done, response.content_part.done
    response.output_item.done
    response.output_item.added (function_call)
      response.function_call_arguments.delta ..., response.function_call_arguments.done
    response.output_item.done
    response.completed (or response.incomplete) with usage  at the chat stream's `[DONE]`

Every event carries its `sequence_number` (0, 1, 2, ...) and its output item's
id, as the `openai` SDK's stream accumulator checks. A failure after the first
event ends the stream with `response.failed`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any

from gateway.fronts.bridge import ChatDelta, ChatFrames
from gateway.providers.adapter import StreamTranslator
from gateway.providers.failures import AttemptFailed, AttemptFailure
from gateway.providers.openai_compatible.responses import failed_event, usage_object
from gateway.providers.usage import Usage
from gateway.providers.wire import event_frame


def base_response(
    body: Mapping[str, Any], response_id: str, model: str, created_at: int
) -> dict[str, Any]:
    """A Response object echoing the request's settings, before any output."""
    reasoning = body.get("reasoning")
    tools = [
        {
            "type": "function",
            "name": tool.get("name"),
            "description": tool.get("description"),
            "parameters": tool.get("parameters"),
            "strict": tool.get("strict"),
        }
        for tool in body.get("tools") or ()
        if isinstance(tool, Mapping)
    ]
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": "in_progress",
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": model,
        "output": [],
        "parallel_tool_calls": body.get("parallel_tool_calls", True) is not False,
        "previous_response_id": None,
        "reasoning": {
            "effort": reasoning.get("effort") if isinstance(reasoning, Mapping) else None,
            "summary": None,
        },
        "store": False,
        "temperature": body.get("temperature"),
        "text": body.get("text") or {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice") or "auto",
        "tools": tools,
        "top_p": body.get("top_p"),
        "truncation": "disabled",
        "usage": None,
        "user": body.get("user"),
        "metadata": body.get("metadata") or {},
    }


class ResponsesBridgeStream(StreamTranslator):
    """Chat chunk frames in, Responses events out."""

    def __init__(
        self, inner: StreamTranslator, *, body: Mapping[str, Any], prompt_estimate: int
    ) -> None:
        self.inner = inner
        self.body = body
        self._frames = ChatFrames()
        self._prompt_estimate = prompt_estimate
        self._response = base_response(
            body, f"resp_{uuid.uuid4().hex}", str(body.get("model", "")), int(time.time())
        )
        self._sequence = 0
        self._started = False
        self._items: list[dict[str, Any]] = []  # output items, as they stand
        self._open: int | None = None  # index of the item being streamed
        self._text: list[str] = []  # the open message's text so far
        self._calls: dict[int, int] = {}  # chat tool call index -> output index
        self._finish: str | None = None
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
        self._response["output"] = list(self._items)
        return [failed_event(self._response, failure, self._next())]

    # -- events -------------------------------------------------------------

    def _next(self) -> int:
        number = self._sequence
        self._sequence += 1
        return number

    def _emit(self, kind: str, payload: dict[str, Any], frames: list[bytes]) -> None:
        frames.append(event_frame(kind, {"type": kind, **payload, "sequence_number": self._next()}))

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
            self._response["model"] = delta.model
        if delta.text:
            self._add_text(delta.text, frames)
        for call in delta.tool_calls:
            self._tool(call, frames)
        if delta.finish_reason is not None and self._finish is None:
            self._finish = delta.finish_reason
        if delta.done:
            self._end(frames)

    def _start(self, frames: list[bytes]) -> None:
        if self._started:
            return
        self._started = True
        self._emit("response.created", {"response": dict(self._response)}, frames)
        self._emit("response.in_progress", {"response": dict(self._response)}, frames)

    def _add_item(self, item: dict[str, Any], frames: list[bytes]) -> int:
        self._start(frames)
        self._close(frames)
        index = len(self._items)
        self._items.append(item)
        self._open = index
        self._emit(
            "response.output_item.added", {"output_index": index, "item": dict(item)}, frames
        )
        return index

    def _add_text(self, text: str, frames: list[bytes]) -> None:
        if self._open is None or self._items[self._open]["type"] != "message":
            item = {
                "id": f"msg_{uuid.uuid4().hex}",
                "type": "message",
                "status": "in_progress",
                "role": "assistant",
                "content": [],
            }
            index = self._add_item(item, frames)
            self._text = []
            self._emit(
                "response.content_part.added",
                {
                    "item_id": item["id"],
                    "output_index": index,
                    "content_index": 0,
                    "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []},
                },
                frames,
            )
        assert self._open is not None
        self._text.append(text)
        self._emit(
            "response.output_text.delta",
            {
                "item_id": self._items[self._open]["id"],
                "output_index": self._open,
                "content_index": 0,
                "delta": text,
                "logprobs": [],
            },
            frames,
        )

    def _tool(self, call: Mapping[str, Any], frames: list[bytes]) -> None:
        position = call.get("index")
        position = position if isinstance(position, int) else len(self._calls)
        function = call.get("function")
        function = function if isinstance(function, Mapping) else {}
        index = self._calls.get(position)
        if index is None:
            item = {
                "id": f"fc_{uuid.uuid4().hex}",
                "type": "function_call",
                "status": "in_progress",
                "call_id": str(call.get("id") or f"call_{uuid.uuid4().hex[:24]}"),
                "name": str(function.get("name") or ""),
                "arguments": "",
            }
            index = self._calls[position] = self._add_item(item, frames)
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            item = self._items[index]
            item["arguments"] += arguments
            self._emit(
                "response.function_call_arguments.delta",
                {"item_id": item["id"], "output_index": index, "delta": arguments},
                frames,
            )

    def _close(self, frames: list[bytes]) -> None:
        index = self._open
        if index is None:
            return
        self._open = None
        item = self._items[index]
        status = "incomplete" if self._finish == "length" else "completed"
        if item["type"] == "message":
            text = "".join(self._text)
            part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
            self._emit(
                "response.output_text.done",
                {
                    "item_id": item["id"],
                    "output_index": index,
                    "content_index": 0,
                    "text": text,
                    "logprobs": [],
                },
                frames,
            )
            self._emit(
                "response.content_part.done",
                {"item_id": item["id"], "output_index": index, "content_index": 0, "part": part},
                frames,
            )
            item["content"] = [part]
        else:
            self._emit(
                "response.function_call_arguments.done",
                {
                    "item_id": item["id"],
                    "output_index": index,
                    "name": item["name"],
                    "arguments": item["arguments"],
                },
                frames,
            )
        item["status"] = status
        self._emit("response.output_item.done", {"output_index": index, "item": dict(item)}, frames)

    def _end(self, frames: list[bytes]) -> None:
        self._start(frames)
        self._close(frames)
        usage = self.usage or Usage(self._prompt_estimate, 0, estimated=True)
        reason = {"length": "max_output_tokens", "content_filter": "content_filter"}.get(
            self._finish or ""
        )
        self._response.update(
            status="incomplete" if reason else "completed",
            incomplete_details={"reason": reason} if reason else None,
            output=[dict(item) for item in self._items],
            usage=usage_object(usage),
            completed_at=None if reason else int(time.time()),
        )
        kind = "response.incomplete" if reason else "response.completed"
        self._emit(kind, {"response": dict(self._response)}, frames)
        self.done = True
