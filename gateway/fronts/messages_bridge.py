"""Anthropic Messages to an endpoint that has only Chat Completions, and back.

Request (:func:`to_chat`): `system` becomes the first `system` message; each
user turn becomes `tool` messages for its `tool_result` blocks (first: they
answer the previous assistant turn's calls) and a `user` message for the rest
(text and images; PDFs as `file` parts where the target takes them); an
assistant turn becomes one assistant message with its text and its `tool_use`
blocks as `tool_calls`; a system turn becomes a `system` message where it
stands. `tools`, `tool_choice` (with `disable_parallel_tool_use`),
`max_tokens`, `stop_sequences`, `temperature`,
`top_p`, `metadata.user_id` and `output_config.format` map to their chat
equivalents; `thinking` / `output_config.effort` become `reasoning_effort`
where the target has it. Prompt-caching marks (`cache_control`), thinking
blocks of earlier turns, `top_k`, `service_tier` and other hints are dropped
and noted; what would change the answer if dropped (documents the target
cannot read, server tools, MCP servers, containers, unknown fields) is refused
with a 400 `unsupported_request`.

Answer (:func:`to_message`): the `chat.completion` becomes a `message` with a
text block and `tool_use` blocks; `finish_reason` becomes `stop_reason`
(`stop_sequence` when vLLM names the stop string that ended the answer).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

from gateway.fronts.bridge import (
    ChatTarget,
    Notes,
    Refused,
    chat_call,
    first_choice,
    model_of,
    tool_arguments,
)
from gateway.fronts.messages_stream import (
    MessagesBridgeStream,
    matched_stop,
    message_id,
    message_usage,
    stop_reason,
)
from gateway.providers.adapter import MESSAGES, Call, Codec, StreamTranslator, UpstreamRequest
from gateway.providers.anthropic.messages import estimate_message_usage, estimate_messages_tokens
from gateway.providers.chat import unsupported
from gateway.providers.failures import AttemptFailed, AttemptFailure
from gateway.providers.usage import Usage

# Top-level fields dropped (with a note) because they only tune how Anthropic serves.
HINTS: Final[Mapping[str, str]] = {
    "cache_control": "prompt caching is Anthropic's",
    "service_tier": "no service tiers on this endpoint",
    "inference_geo": "no inference geography on this endpoint",
    "speed": "no speed setting on this endpoint",
    "top_k": "Chat Completions has no top_k",
    "diagnostics": "no diagnostics on this endpoint",
}
# Top-level fields that need Anthropic's own platform.
REFUSED: Final[Mapping[str, str]] = {
    "mcp_servers": "MCP servers",
    "container": "code-execution containers",
    "context_management": "context management",
}
MAPPED: Final = frozenset(
    {
        "model",
        "messages",
        "system",
        "max_tokens",
        "stop_sequences",
        "temperature",
        "top_p",
        "tools",
        "tool_choice",
        "metadata",
        "stream",
        "thinking",
        "output_config",
    }
)
IMAGE_TYPES: Final = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})


# ---------------------------------------------------------------------------
# Request.


def to_chat(body: Mapping[str, Any], target: ChatTarget) -> tuple[dict[str, Any], list[str]]:
    """The Chat Completions body for a Messages body, and what was dropped."""
    notes = Notes()
    unknown = sorted(set(body) - MAPPED - set(HINTS) - set(REFUSED))
    if unknown:
        raise unsupported(
            f"this endpoint is reached by translation, which cannot carry {', '.join(unknown)}"
        )
    for key, what in REFUSED.items():
        if body.get(key):
            raise unsupported(f"{what} ('{key}') need an Anthropic endpoint")
    for key, why in HINTS.items():
        if key in body:
            notes.dropped(key, why)
    messages: list[dict[str, Any]] = []
    system = _system_text(body.get("system"), notes)
    if system:
        messages.append({"role": "system", "content": system})
    for index, message in enumerate(body.get("messages") or ()):
        content = message.get("content")
        if message.get("role") == "assistant":
            messages.append(_assistant(content, notes, index))
        elif message.get("role") == "system":
            messages.append({"role": "system", "content": _system_text(content, notes)})
        else:
            messages.extend(_user(content, notes, target, index))
    out: dict[str, Any] = {"model": body.get("model"), "messages": messages}
    if isinstance(body.get("max_tokens"), int):
        out[target.max_tokens_field] = body["max_tokens"]
    if stops := body.get("stop_sequences"):
        out["stop"] = list(stops)
    for key in ("temperature", "top_p"):
        if body.get(key) is not None:
            out[key] = body[key]
    tools = _tools(body.get("tools"), notes)
    if tools:
        out["tools"] = tools
    _tool_choice(body.get("tool_choice"), out, bool(tools))
    metadata = body.get("metadata")
    if isinstance(metadata, Mapping) and isinstance(metadata.get("user_id"), str):
        out["user"] = metadata["user_id"]
    _thinking(body, out, target, notes)
    _output_config(body.get("output_config"), out, target, notes)
    return out, notes.as_list()


def _text_of_blocks(blocks: Any, notes: Notes, where: str) -> str:
    if isinstance(blocks, str):
        return blocks
    texts: list[str] = []
    for block in blocks or ():
        if not isinstance(block, Mapping) or block.get("type") != "text":
            raise unsupported(f"{where} may only hold text blocks on this endpoint")
        if "cache_control" in block:
            notes.dropped("cache_control", "prompt caching is Anthropic's")
        texts.append(str(block.get("text", "")))
    return "\n\n".join(t for t in texts if t)


def _system_text(system: Any, notes: Notes) -> str:
    return _text_of_blocks(system, notes, "'system'") if system else ""


def _image_part(block: Mapping[str, Any]) -> dict[str, Any]:
    source = block.get("source")
    if not isinstance(source, Mapping):
        raise unsupported("an image block needs a 'source'")
    if source.get("type") == "base64":
        media = source.get("media_type")
        if media not in IMAGE_TYPES:
            raise unsupported(f"images must be one of {', '.join(sorted(IMAGE_TYPES))}")
        url = f"data:{media};base64,{source.get('data', '')}"
    elif source.get("type") == "url" and isinstance(source.get("url"), str):
        url = source["url"]
    else:
        raise unsupported("images must be base64 or URL sources on this endpoint")
    return {"type": "image_url", "image_url": {"url": url}}


def _document_part(block: Mapping[str, Any], target: ChatTarget) -> dict[str, Any]:
    source = block.get("source")
    kind = source.get("type") if isinstance(source, Mapping) else None
    if isinstance(source, Mapping) and kind == "text":
        return {"type": "text", "text": str(source.get("data", ""))}
    if (
        target.files
        and isinstance(source, Mapping)
        and kind == "base64"
        and source.get("media_type") == "application/pdf"
    ):
        title = block.get("title")
        return {
            "type": "file",
            "file": {
                "filename": title if isinstance(title, str) and title else "document.pdf",
                "file_data": f"data:application/pdf;base64,{source.get('data', '')}",
            },
        }
    raise unsupported(
        f"documents ({kind or 'unknown'} source) cannot be sent to this endpoint "
        f"(type {target.endpoint_type}); send the text instead or use an Anthropic endpoint"
    )


def _tool_result(block: Mapping[str, Any], notes: Notes) -> dict[str, Any]:
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str) or not call_id:
        raise unsupported("a tool_result block needs a 'tool_use_id'")
    content = block.get("content")
    if isinstance(content, list) and any(
        isinstance(b, Mapping) and b.get("type") != "text" for b in content
    ):
        raise unsupported("tool results may only hold text on this endpoint")
    if block.get("is_error"):
        notes.changed("tool_result.is_error", "sent as a plain tool result")
    if "cache_control" in block:
        notes.dropped("cache_control", "prompt caching is Anthropic's")
    text = _text_of_blocks(content, notes, "a tool_result") if content else ""
    return {"role": "tool", "tool_call_id": call_id, "content": text}


def _user(content: Any, notes: Notes, target: ChatTarget, index: int) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    tools: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for block in content or ():
        kind = block.get("type") if isinstance(block, Mapping) else None
        if isinstance(block, Mapping) and "cache_control" in block:
            notes.dropped("cache_control", "prompt caching is Anthropic's")
        if kind == "text":
            parts.append({"type": "text", "text": str(block.get("text", ""))})
        elif kind == "image":
            parts.append(_image_part(block))
        elif kind == "document":
            parts.append(_document_part(block, target))
            citations = block.get("citations")
            if isinstance(citations, Mapping) and citations.get("enabled"):
                notes.dropped("citations", "Chat Completions answers carry no citations")
        elif kind == "tool_result":
            tools.append(_tool_result(block, notes))
        else:
            raise unsupported(f"messages[{index}]: '{kind}' blocks cannot be sent to this endpoint")
    out = list(tools)
    if parts:
        if all(p["type"] == "text" for p in parts):
            out.append({"role": "user", "content": "\n\n".join(p["text"] for p in parts)})
        else:
            out.append({"role": "user", "content": parts})
    return out


def _assistant(content: Any, notes: Notes, index: int) -> dict[str, Any]:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in content or ():
        kind = block.get("type") if isinstance(block, Mapping) else None
        if kind == "text":
            texts.append(str(block.get("text", "")))
        elif kind == "tool_use":
            calls.append(
                {
                    "id": str(block.get("id", "")),
                    "type": "function",
                    "function": {
                        "name": str(block.get("name", "")),
                        "arguments": json.dumps(
                            block.get("input", {}), separators=(",", ":"), ensure_ascii=False
                        ),
                    },
                }
            )
        elif kind in ("thinking", "redacted_thinking"):
            notes.dropped("thinking blocks", "Chat Completions takes no earlier reasoning")
        else:
            raise unsupported(f"messages[{index}]: '{kind}' blocks cannot be sent to this endpoint")
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if calls:
        message["tool_calls"] = calls
    return message


def _tools(tools: Any, notes: Notes) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for tool in tools or ():
        kind = tool.get("type") if isinstance(tool, Mapping) else None
        if kind not in (None, "custom"):
            raise unsupported(f"server tools ('{kind}') need an Anthropic endpoint")
        if "cache_control" in tool:
            notes.dropped("cache_control", "prompt caching is Anthropic's")
        function: dict[str, Any] = {"name": tool.get("name")}
        if isinstance(tool.get("description"), str):
            function["description"] = tool["description"]
        function["parameters"] = tool.get("input_schema") or {"type": "object"}
        if tool.get("strict") is True:
            function["strict"] = True
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: Any, out: dict[str, Any], has_tools: bool) -> None:
    if not isinstance(choice, Mapping):
        return
    kind = choice.get("type")
    if kind == "auto":
        mapped: Any = "auto"
    elif kind == "any":
        mapped = "required"
    elif kind == "none":
        mapped = "none"
    elif kind == "tool":
        mapped = {"type": "function", "function": {"name": choice.get("name")}}
    else:
        raise unsupported(f"tool_choice '{kind}' cannot be sent to this endpoint")
    if has_tools or kind == "none":
        out["tool_choice"] = mapped
    if choice.get("disable_parallel_tool_use") is True and has_tools:
        out["parallel_tool_calls"] = False


def _effort_for_budget(budget: Any) -> str:
    if not isinstance(budget, int) or budget < 4096:
        return "low"
    return "medium" if budget < 16384 else "high"


def _thinking(
    body: Mapping[str, Any], out: dict[str, Any], target: ChatTarget, notes: Notes
) -> None:
    thinking = body.get("thinking")
    if not isinstance(thinking, Mapping) or thinking.get("type") == "disabled":
        return
    if target.reasoning_effort:
        out["reasoning_effort"] = _effort_for_budget(thinking.get("budget_tokens"))
        notes.changed("thinking", f"sent as reasoning_effort {out['reasoning_effort']}")
    else:
        notes.dropped("thinking", "this endpoint takes no reasoning settings")


def _output_config(config: Any, out: dict[str, Any], target: ChatTarget, notes: Notes) -> None:
    if not isinstance(config, Mapping):
        return
    fmt = config.get("format")
    if isinstance(fmt, Mapping) and fmt.get("type") == "json_schema":
        out["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": fmt.get("schema") or {}, "strict": True},
        }
    effort = config.get("effort")
    if isinstance(effort, str):
        if target.reasoning_effort and effort in ("low", "medium", "high"):
            out["reasoning_effort"] = effort
        else:
            notes.dropped("output_config.effort", "this endpoint takes no effort setting")


# ---------------------------------------------------------------------------
# Answer.


def to_message(
    completion: Mapping[str, Any], body: Mapping[str, Any], usage: Usage
) -> dict[str, Any]:
    """A `chat.completion` as a Messages `message`."""
    choice = first_choice(completion)
    message = choice["message"]
    content: list[dict[str, Any]] = []
    text = message.get("content")
    refusal = message.get("refusal")
    if isinstance(text, str) and text:
        content.append({"type": "text", "text": text})
    elif isinstance(refusal, str) and refusal:
        content.append({"type": "text", "text": refusal})
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        call_id = str(call.get("id", ""))
        content.append(
            {
                "type": "tool_use",
                "id": call_id,
                "name": str(function.get("name", "")),
                "input": tool_arguments(function.get("arguments"), call_id),
            }
        )
    finish = choice.get("finish_reason")
    stop = matched_stop(choice.get("stop_reason"), body)
    reason = "stop_sequence" if stop else stop_reason(finish if isinstance(finish, str) else None)
    if isinstance(refusal, str) and refusal and not text:
        reason = "refusal"
    model = completion.get("model")
    return {
        "id": message_id(completion.get("id")),
        "type": "message",
        "role": "assistant",
        "model": model if isinstance(model, str) and model else str(body.get("model", "")),
        "content": content,
        "stop_reason": reason,
        "stop_sequence": stop,
        "usage": message_usage(usage),
    }


# ---------------------------------------------------------------------------
# The codec.


class MessagesBridge(Codec):
    """Messages over an endpoint's chat codec."""

    operation = MESSAGES

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
        return to_message(completion, call.body, usage), usage

    def classify_error(self, status: int, headers: Mapping[str, str], raw: bytes) -> AttemptFailure:
        return self.inner.classify_error(status, headers, raw)

    def stream_translator(self, call: Call) -> StreamTranslator:
        try:
            inner_call = self.chat_call(call)
        except AttemptFailed as err:
            return Refused(err.failure)  # prepare() refuses the request
        return MessagesBridgeStream(
            self.inner.stream_translator(inner_call),
            body=call.body,
            prompt_estimate=estimate_messages_tokens(call.body),
        )

    def estimate_usage(self, call: Call, answer: Mapping[str, Any] | None) -> Usage:
        return estimate_message_usage(call.body, answer)
