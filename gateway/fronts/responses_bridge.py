"""OpenAI Responses to an endpoint reached through its Chat Completions
translation, and back.

Request (:func:`to_chat`): `instructions` becomes the first `system` message;
`input` (a string, or items: messages with `input_text` / `input_image` /
`input_file` parts, earlier `function_call` and `function_call_output` items)
becomes chat messages (a turn's function calls as one assistant message with
`tool_calls`, each output as a `tool` message); function `tools`,
`tool_choice`, `parallel_tool_calls`, `text.format` (json_schema, json_object),
`max_output_tokens`, `temperature`, `top_p` and `user` map to their chat
equivalents, `reasoning.effort` to `reasoning_effort` where the target has it.

The gateway keeps no conversation state: `store` is false whatever the client
asked (noted when it asked for true), and what needs stored state
(`previous_response_id`, `conversation`, `background`, `item_reference` items,
stored prompts) is refused with a 400 that says so; such requests work through
an OpenAI or Azure OpenAI endpoint, where they pass through. Hosted tools
(web search, file search, code interpreter, MCP, ...) are refused; hints that do
not change the answer (`include`, `truncation`, `service_tier`, prompt-cache
keys, ...) are dropped and noted.

Answer (:func:`to_response`): the `chat.completion` becomes a `response` with a
`message` output item (`output_text`, or `refusal`) and a `function_call` item
per tool call; `finish_reason` `length` makes it `incomplete`
(`max_output_tokens`). The stream is in :mod:`.responses_stream`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any, Final

from gateway.fronts.bridge import (
    ChatTarget,
    Notes,
    Refused,
    chat_call,
    first_choice,
    model_of,
)
from gateway.fronts.responses_stream import ResponsesBridgeStream, base_response
from gateway.providers.adapter import RESPONSES, Call, Codec, StreamTranslator, UpstreamRequest
from gateway.providers.chat import unsupported
from gateway.providers.failures import AttemptFailed, AttemptFailure
from gateway.providers.openai_compatible.responses import (
    estimate_response_usage,
    estimate_responses_tokens,
    usage_object,
)
from gateway.providers.usage import Usage

STATEFUL: Final[Mapping[str, str]] = {
    "previous_response_id": "continues a stored response",
    "conversation": "continues a stored conversation",
    "background": "runs in the background and is fetched later",
    "prompt": "uses a stored prompt",
}
HINTS: Final[Mapping[str, str]] = {
    "include": "extra output data is not available by translation",
    "truncation": "the endpoint truncates as it does",
    "service_tier": "no service tiers on this endpoint",
    "prompt_cache_key": "prompt caching is OpenAI's",
    "prompt_cache_retention": "prompt caching is OpenAI's",
    "prompt_cache_options": "prompt caching is OpenAI's",
    "stream_options": "the gateway streams as it does",
    "top_logprobs": "log probabilities are not available by translation",
    "max_tool_calls": "the endpoint has no tool call limit",
    "safety_identifier": "no safety identifier on this endpoint",
}
MAPPED: Final = frozenset(
    {
        "model",
        "input",
        "instructions",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "text",
        "max_output_tokens",
        "temperature",
        "top_p",
        "reasoning",
        "store",
        "stream",
        "metadata",
        "user",
    }
)
STATE_HINT: Final = (
    "the gateway keeps no conversation state; send the whole conversation in 'input', "
    "or route to an OpenAI or Azure OpenAI endpoint, where the request passes through"
)


# ---------------------------------------------------------------------------
# Request.


def to_chat(body: Mapping[str, Any], target: ChatTarget) -> tuple[dict[str, Any], list[str]]:
    """The Chat Completions body for a Responses body, and what was dropped or changed."""
    notes = Notes()
    for key, what in STATEFUL.items():
        if body.get(key):
            raise unsupported(
                f"'{key}' {what}, which this endpoint (type {target.endpoint_type}, reached "
                f"by translation) cannot do: {STATE_HINT}"
            )
    unknown = sorted(set(body) - MAPPED - set(HINTS) - set(STATEFUL))
    if unknown:
        raise unsupported(
            f"this endpoint is reached by translation, which cannot carry {', '.join(unknown)}"
        )
    for key, why in HINTS.items():
        if body.get(key) is not None:
            notes.dropped(key, why)
    if body.get("store") is True:
        notes.changed("store", "not stored (the gateway keeps no conversation state)")
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "system", "content": instructions})
    items = body.get("input")
    if isinstance(items, str):
        messages.append({"role": "user", "content": items})
    else:
        for index, item in enumerate(items or ()):
            _item(item, index, messages, notes, target)
    out: dict[str, Any] = {"model": body.get("model"), "messages": messages}
    if isinstance(body.get("max_output_tokens"), int):
        out[target.max_tokens_field] = body["max_output_tokens"]
    for key in ("temperature", "top_p", "parallel_tool_calls", "user"):
        if body.get(key) is not None:
            out[key] = body[key]
    tools = [_tool(tool) for tool in body.get("tools") or ()]
    if tools:
        out["tools"] = tools
    choice = _tool_choice(body.get("tool_choice"))
    if choice is not None and (tools or choice == "none"):
        out["tool_choice"] = choice
    _text(body.get("text"), out, notes)
    _reasoning(body.get("reasoning"), out, target, notes)
    return out, notes.as_list()


def _parts(content: Any, role: str, index: int, target: ChatTarget) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    parts: list[dict[str, Any]] = []
    for part in content or ():
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind in ("input_text", "output_text", "text"):
            parts.append({"type": "text", "text": str(part.get("text", ""))})
        elif kind == "refusal":
            continue  # an earlier refusal is not part of the conversation
        elif kind == "input_image" and role == "user":
            url = part.get("image_url")
            if not isinstance(url, str) or not url:
                raise unsupported(
                    f"input[{index}]: images must be given by 'image_url' (file ids need "
                    "OpenAI's file storage)"
                )
            image: dict[str, Any] = {"url": url}
            if part.get("detail") in ("low", "high", "auto"):
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        elif kind == "input_file" and role == "user" and target.files and part.get("file_data"):
            file: dict[str, Any] = {"file_data": part["file_data"]}
            if isinstance(part.get("filename"), str):
                file["filename"] = part["filename"]
            parts.append({"type": "file", "file": file})
        else:
            raise unsupported(
                f"input[{index}]: '{kind}' content cannot be sent to this endpoint "
                f"(type {target.endpoint_type})"
            )
    return parts


def _content(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    if all(p["type"] == "text" for p in parts):
        return "\n\n".join(p["text"] for p in parts)
    return parts


def _item(
    item: Any, index: int, messages: list[dict[str, Any]], notes: Notes, target: ChatTarget
) -> None:
    if not isinstance(item, Mapping):
        raise unsupported(f"input[{index}] must be an object")
    kind = item.get("type", "message")
    if kind == "message":
        role = item.get("role")
        if role not in ("user", "assistant", "system", "developer"):
            raise unsupported(f"input[{index}]: messages with role '{role}' are not supported")
        parts = _parts(item.get("content"), str(role), index, target)
        if role in ("system", "developer"):
            if any(p["type"] != "text" for p in parts):
                raise unsupported(f"input[{index}]: a {role} message may only hold text")
            messages.append({"role": "system", "content": _content(parts)})
        elif role == "assistant":
            messages.append({"role": "assistant", "content": _content(parts)})
        else:
            messages.append({"role": "user", "content": _content(parts)})
    elif kind == "function_call":
        call_id, name = item.get("call_id"), item.get("name")
        if not isinstance(call_id, str) or not isinstance(name, str):
            raise unsupported(f"input[{index}]: a function_call needs a 'call_id' and a 'name'")
        arguments = item.get("arguments")
        call = {
            "id": call_id,
            "type": "function",
            "function": {
                "name": name,
                "arguments": arguments if isinstance(arguments, str) else "{}",
            },
        }
        last = messages[-1] if messages else None
        if last is not None and last["role"] == "assistant":
            last.setdefault("tool_calls", []).append(call)
            if last.get("content") == "":
                last["content"] = None
        else:
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
    elif kind == "function_call_output":
        call_id = item.get("call_id")
        if not isinstance(call_id, str):
            raise unsupported(f"input[{index}]: a function_call_output needs a 'call_id'")
        output = item.get("output")
        if not isinstance(output, str):
            parts = _parts(output, "tool", index, target)
            if any(p["type"] != "text" for p in parts):
                raise unsupported(f"input[{index}]: function outputs may only hold text here")
            output = "\n\n".join(p["text"] for p in parts)
        messages.append({"role": "tool", "tool_call_id": call_id, "content": output})
    elif kind == "reasoning":
        notes.dropped("reasoning items", "Chat Completions takes no earlier reasoning")
    elif kind == "item_reference":
        raise unsupported(f"input[{index}]: an item_reference names a stored item: {STATE_HINT}")
    else:
        raise unsupported(f"input[{index}]: '{kind}' items cannot be sent to this endpoint")


def _tool(tool: Any) -> dict[str, Any]:
    kind = tool.get("type") if isinstance(tool, Mapping) else None
    if kind != "function":
        raise unsupported(
            f"hosted tools ('{kind}') need an OpenAI endpoint; only function tools are translated"
        )
    function: dict[str, Any] = {"name": tool.get("name")}
    if isinstance(tool.get("description"), str):
        function["description"] = tool["description"]
    function["parameters"] = tool.get("parameters") or {"type": "object", "properties": {}}
    if tool.get("strict") is True:
        function["strict"] = True
    return {"type": "function", "function": function}


def _tool_choice(choice: Any) -> Any:
    if choice is None or choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, Mapping) and choice.get("type") == "function":
        return {"type": "function", "function": {"name": choice.get("name")}}
    kind = choice.get("type") if isinstance(choice, Mapping) else choice
    raise unsupported(f"tool_choice '{kind}' cannot be sent to this endpoint")


def _text(text: Any, out: dict[str, Any], notes: Notes) -> None:
    if not isinstance(text, Mapping):
        return
    fmt = text.get("format")
    if isinstance(fmt, Mapping):
        if fmt.get("type") == "json_schema":
            schema: dict[str, Any] = {"name": fmt.get("name") or "output"}
            for key in ("description", "schema", "strict"):
                if fmt.get(key) is not None:
                    schema[key] = fmt[key]
            out["response_format"] = {"type": "json_schema", "json_schema": schema}
        elif fmt.get("type") == "json_object":
            out["response_format"] = {"type": "json_object"}
    if text.get("verbosity") is not None:
        notes.dropped("text.verbosity", "this endpoint takes no verbosity setting")


def _reasoning(reasoning: Any, out: dict[str, Any], target: ChatTarget, notes: Notes) -> None:
    if not isinstance(reasoning, Mapping):
        return
    effort = reasoning.get("effort")
    if effort is not None:
        if target.reasoning_effort:
            out["reasoning_effort"] = effort
        else:
            notes.dropped("reasoning.effort", "this endpoint takes no reasoning settings")
    if reasoning.get("summary") is not None or reasoning.get("generate_summary") is not None:
        notes.dropped("reasoning.summary", "reasoning summaries are not available by translation")


# ---------------------------------------------------------------------------
# Answer.


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def output_items(message: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A chat assistant message as Responses output items."""
    items: list[dict[str, Any]] = []
    text, refusal = message.get("content"), message.get("refusal")
    content: list[dict[str, Any]] = []
    if isinstance(text, str) and text:
        content.append({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
    elif isinstance(refusal, str) and refusal:
        content.append({"type": "refusal", "refusal": refusal})
    if content:
        items.append(
            {
                "id": new_id("msg"),
                "type": "message",
                "status": "completed",
                "role": "assistant",
                "content": content,
            }
        )
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        arguments = function.get("arguments")
        items.append(
            {
                "id": new_id("fc"),
                "type": "function_call",
                "status": "completed",
                "call_id": str(call.get("id", "")),
                "name": str(function.get("name", "")),
                "arguments": arguments if isinstance(arguments, str) else "{}",
            }
        )
    return items


def incomplete_reason(finish_reason: Any) -> str | None:
    return {"length": "max_output_tokens", "content_filter": "content_filter"}.get(
        finish_reason if isinstance(finish_reason, str) else ""
    )


def to_response(
    completion: Mapping[str, Any], body: Mapping[str, Any], usage: Usage
) -> dict[str, Any]:
    """A `chat.completion` as a Responses `response`."""
    choice = first_choice(completion)
    created = completion.get("created")
    created_at = created if isinstance(created, int) else int(time.time())
    model = completion.get("model")
    response = base_response(
        body,
        new_id("resp"),
        model if isinstance(model, str) and model else str(body.get("model", "")),
        created_at,
    )
    reason = incomplete_reason(choice.get("finish_reason"))
    response.update(
        status="incomplete" if reason else "completed",
        incomplete_details={"reason": reason} if reason else None,
        output=output_items(choice["message"]),
        usage=usage_object(usage),
        completed_at=None if reason else int(time.time()),
    )
    return response


# ---------------------------------------------------------------------------
# The codec.


class ResponsesBridge(Codec):
    """Responses over an endpoint's chat codec."""

    operation = RESPONSES

    def __init__(self, inner: Codec, target: ChatTarget) -> None:
        self.inner = inner
        self.target = target

    def chat_call(self, call: Call) -> Call:
        body, _ = to_chat(call.body, self.target)
        return chat_call(call, body)

    def dropped(self, call: Call) -> list[str]:
        """What the translation of `call` drops or changes (for the audit record)."""
        try:
            return to_chat(call.body, self.target)[1]
        except AttemptFailed:
            return []

    def upstream_model(self, call: Call) -> str | None:
        try:
            inner_call = self.chat_call(call)
        except AttemptFailed:
            return model_of(self.inner, call)  # prepare() refuses the request
        return self.inner.upstream_model(inner_call)

    async def prepare(self, call: Call) -> UpstreamRequest:
        return await self.inner.prepare(self.chat_call(call))

    async def prepare_all(self, call: Call) -> list[UpstreamRequest]:
        return await self.inner.prepare_all(self.chat_call(call))

    def parse_response(
        self, call: Call, status: int, headers: Mapping[str, str], raw: bytes
    ) -> tuple[dict[str, Any], Usage | None]:
        inner_call = self.chat_call(call)
        completion, usage = self.inner.parse_response(inner_call, status, headers, raw)
        usage = usage or self.inner.estimate_usage(inner_call, completion)
        return to_response(completion, call.body, usage), usage

    def classify_error(self, status: int, headers: Mapping[str, str], raw: bytes) -> AttemptFailure:
        return self.inner.classify_error(status, headers, raw)

    def stream_translator(self, call: Call) -> StreamTranslator:
        try:
            inner_call = self.chat_call(call)
        except AttemptFailed as err:
            return Refused(err.failure)  # prepare() refuses the request
        return ResponsesBridgeStream(
            self.inner.stream_translator(inner_call),
            body=call.body,
            prompt_estimate=estimate_responses_tokens(call.body),
        )

    def estimate_usage(self, call: Call, answer: Mapping[str, Any] | None) -> Usage:
        return estimate_response_usage(call.body, answer)
