"""OpenAI's Responses API as the fake OpenAI and Azure OpenAI servers speak it.

`POST .../responses` takes a body checked strictly against the `openai`
package's `ResponseCreateParams` (tests/typed_check.py): one it would refuse
gets OpenAI's 400. The simulated model answers like the Claude simulator:
"You said: <the last user text>"; a `function_call` of a tool the text names
(arguments: the JSON object in the text); "The tool said: <output>" after a
`function_call_output`; a JSON object of the schema's properties under a
`json_schema` text format. Responses are stored (unless `store: false`) so that
`previous_response_id` works as on OpenAI. Answers are `response` objects, or
the semantic SSE events with `sequence_number`, each validated with the
package's response models.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from openai.types.responses import Response, ResponseStreamEvent
from openai.types.responses.response_create_params import (
    ResponseCreateParamsNonStreaming,
    ResponseCreateParamsStreaming,
)
from pydantic import TypeAdapter

from tests.typed_check import TypeMismatch, check

_EVENT: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
_JSON_OBJECT = re.compile(r"\{.*\}", re.S)


@dataclass
class ResponsesFailure:
    status: int
    message: str
    type: str = "server_error"
    code: str | None = None
    in_stream: bool = False  # HTTP 200, then `response.failed` after response.created


def openai_error(status: int, message: str, type_: str, code: str | None = None) -> web.Response:
    return web.json_response(
        {"error": {"message": message, "type": type_, "param": None, "code": code}}, status=status
    )


def validate_responses_request(body: Any) -> str | None:
    if not isinstance(body, dict):
        return "the body must be a JSON object"
    params = (
        ResponseCreateParamsStreaming if body.get("stream") else ResponseCreateParamsNonStreaming
    )
    try:
        check(body, params)
    except TypeMismatch as err:
        return str(err)
    return None


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return " ".join(str(part.get("text", "")) for part in content or () if isinstance(part, dict))


class ResponsesSimulator:
    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self.stored: dict[str, dict[str, Any]] = {}
        self.queue: deque[ResponsesFailure] = deque()
        self.invalid: list[str] = []

    def _id(self, prefix: str) -> str:
        return f"{prefix}_fake{next(self._ids):04d}"

    def output(self, body: dict[str, Any]) -> tuple[list[dict[str, Any]], int]:
        items = body.get("input")
        items = [{"role": "user", "content": items}] if isinstance(items, str) else list(items)
        last = items[-1]
        words_in = len(_text(body.get("instructions")).split()) + sum(
            len(_text(i.get("content") or i.get("output") or "").split()) for i in items
        )
        if last.get("type") == "function_call_output":
            return [self._message("The tool said: " + _text(last["output"]))], words_in
        user = _text(last.get("content"))
        names = [t["name"] for t in body.get("tools") or () if t.get("type") == "function"]
        named = [n for n in names if n in user]
        if named and body.get("tool_choice") != "none":
            match = _JSON_OBJECT.search(user)
            return [
                {
                    "id": self._id("fc"),
                    "type": "function_call",
                    "status": "completed",
                    "call_id": self._id("call"),
                    "name": named[0],
                    "arguments": match.group(0) if match else "{}",
                }
            ], words_in
        fmt = (body.get("text") or {}).get("format") or {}
        if fmt.get("type") == "json_schema":
            keys = (fmt.get("schema") or {}).get("properties") or {}
            text = json.dumps(dict.fromkeys(keys, user))
        else:
            text = "You said: " + user
        previous = body.get("previous_response_id")
        if previous:
            text = f"(after {previous}) " + text
        return [self._message(text)], words_in

    def _message(self, text: str) -> dict[str, Any]:
        return {
            "id": self._id("msg"),
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
        }

    def response(self, body: dict[str, Any], model: str) -> dict[str, Any]:
        output, words_in = self.output(body)
        words_out = (
            sum(
                len(c["text"].split())
                for i in output
                if i["type"] == "message"
                for c in i["content"]
            )
            or 12
        )
        response = {
            "id": self._id("resp"),
            "object": "response",
            "created_at": int(time.time()),
            "status": "completed",
            "completed_at": int(time.time()),
            "error": None,
            "incomplete_details": None,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "model": model,
            "output": output,
            "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "previous_response_id": body.get("previous_response_id"),
            "store": body.get("store", True),
            "temperature": 1.0,
            "text": body.get("text") or {"format": {"type": "text"}},
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": [{"strict": True, **t} for t in body.get("tools") or ()],
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": {
                "input_tokens": words_in,
                "input_tokens_details": {"cache_write_tokens": 0, "cached_tokens": 0},
                "output_tokens": words_out,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": words_in + words_out,
            },
            "user": body.get("user"),
            "metadata": body.get("metadata") or {},
        }
        Response.model_validate(response)
        if response["store"]:
            self.stored[response["id"]] = response
        return response

    def events(self, final: dict[str, Any]) -> list[dict[str, Any]]:
        start = {
            **final,
            "status": "in_progress",
            "output": [],
            "usage": None,
            "completed_at": None,
        }
        events: list[dict[str, Any]] = [
            {"type": "response.created", "response": start},
            {"type": "response.in_progress", "response": start},
        ]
        for index, item in enumerate(final["output"]):
            if item["type"] == "message":
                text = item["content"][0]["text"]
                events.append(
                    {
                        "type": "response.output_item.added",
                        "output_index": index,
                        "item": {**item, "status": "in_progress", "content": []},
                    }
                )
                part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
                events.append(
                    {
                        "type": "response.content_part.added",
                        "item_id": item["id"],
                        "output_index": index,
                        "content_index": 0,
                        "part": part,
                    }
                )
                words = text.split(" ")
                for i, word in enumerate(words):
                    events.append(
                        {
                            "type": "response.output_text.delta",
                            "item_id": item["id"],
                            "output_index": index,
                            "content_index": 0,
                            "delta": word if i == 0 else " " + word,
                            "logprobs": [],
                        }
                    )
                events.append(
                    {
                        "type": "response.output_text.done",
                        "item_id": item["id"],
                        "output_index": index,
                        "content_index": 0,
                        "text": text,
                        "logprobs": [],
                    }
                )
                events.append(
                    {
                        "type": "response.content_part.done",
                        "item_id": item["id"],
                        "output_index": index,
                        "content_index": 0,
                        "part": {**part, "text": text},
                    }
                )
            else:
                events.append(
                    {
                        "type": "response.output_item.added",
                        "output_index": index,
                        "item": {**item, "status": "in_progress", "arguments": ""},
                    }
                )
                half = len(item["arguments"]) // 2
                for piece in (item["arguments"][:half], item["arguments"][half:]):
                    events.append(
                        {
                            "type": "response.function_call_arguments.delta",
                            "item_id": item["id"],
                            "output_index": index,
                            "delta": piece,
                        }
                    )
                events.append(
                    {
                        "type": "response.function_call_arguments.done",
                        "item_id": item["id"],
                        "output_index": index,
                        "name": item["name"],
                        "arguments": item["arguments"],
                    }
                )
            events.append(
                {"type": "response.output_item.done", "output_index": index, "item": item}
            )
        events.append({"type": "response.completed", "response": final})
        for number, payload in enumerate(events):
            payload["sequence_number"] = number
            _EVENT.validate_python(payload)
        return events

    async def handle(
        self, request: web.Request, body: Any, *, model: str | None = None
    ) -> web.StreamResponse:
        """Answer one validated-or-not Responses request (auth already checked)."""
        problem = validate_responses_request(body)
        if problem is not None:
            self.invalid.append(problem)
            return openai_error(400, problem, "invalid_request_error")
        previous = body.get("previous_response_id")
        if previous and previous not in self.stored:
            return openai_error(
                400,
                f"Previous response with id '{previous}' not found.",
                "invalid_request_error",
                "previous_response_not_found",
            )
        failure = self.queue.popleft() if self.queue else None
        if failure is not None and not (failure.in_stream and body.get("stream")):
            return openai_error(failure.status, failure.message, failure.type, failure.code)
        final = self.response(body, model or body["model"])
        if not body.get("stream"):
            return web.json_response(final)
        events = self.events(final)
        if failure is not None:
            failed = {
                **events[0]["response"],
                "status": "failed",
                "error": {"code": failure.code or "server_error", "message": failure.message},
            }
            events = [
                events[0],
                {"type": "response.failed", "response": failed, "sequence_number": 1},
            ]
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        await response.prepare(request)
        for payload in events:
            await response.write(
                f"event: {payload['type']}\ndata: {json.dumps(payload)}\n\n".encode()
            )
            await asyncio.sleep(0)
        await response.write_eof()
        return response
