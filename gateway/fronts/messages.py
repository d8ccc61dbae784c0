"""The Anthropic Messages fronts: `POST /v1/messages` and
`POST /v1/messages/count_tokens` (operation `messages`).

:class:`MessagesFront` reads the body as Anthropic's API would before policy
(model, a positive `max_tokens`, a non-empty `messages` list of user, assistant
and system turns with string or block content, `stream` a boolean, ...), and answers
errors in Anthropic's shape so that the `anthropic` SDKs raise their own
exception classes. The client's `anthropic-version` and `anthropic-beta`
headers ride along for the native codecs. An endpoint without a native
Messages codec is reached through :class:`~.messages_bridge.MessagesBridge`
over its chat codec.

:class:`CountTokensFront` takes the same body without `max_tokens`; an
endpoint that counts natively (Anthropic, Claude on Vertex AI and on Bedrock)
is asked, any other has no count_tokens codec and the front's
:meth:`CountTokensFront.estimate` answers instead, marked `"estimated": true`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from gateway.errors import GatewayError
from gateway.fronts.anthropic_errors import gateway_error_body
from gateway.fronts.base import Front, ModelRequest, invalid, optional_bool
from gateway.fronts.bridge import ChatTarget
from gateway.fronts.messages_bridge import MessagesBridge
from gateway.providers.adapter import CHAT, MESSAGES, Codec, ProviderAdapter
from gateway.providers.anthropic.messages import (
    COUNT_TOKENS,
    FORWARDED_HEADERS,
    count_tokens_estimate,
)

# The 2026-10-21 API (and the SDK's MessageParam) takes `system` turns in
# `messages` too, holding a string or text blocks only.
ROLES = ("user", "assistant", "system")


def _number(body: Mapping[str, Any], key: str) -> None:
    value = body.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise invalid(f"{key}: must be a number")


def _blocks(content: Any, where: str) -> None:
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise invalid(f"{where}: must be a string or a list of content blocks")
    for index, block in enumerate(content):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise invalid(f"{where}.{index}: a content block must be an object with a 'type'")


def read_messages_body(body: Mapping[str, Any], *, max_tokens: bool = True) -> None:
    """Check what Anthropic's API checks before it generates; a 400 naming the field."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("model: field required (a model name)")
    if max_tokens:
        limit = body.get("max_tokens")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise invalid("max_tokens: field required (an integer of at least 1)")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid("messages: field required (a non-empty list of messages)")
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise invalid(f"messages.{index}: must be an object")
        if message.get("role") not in ROLES:
            raise invalid(f"messages.{index}.role: must be 'user', 'assistant' or 'system'")
        if "content" not in message:
            raise invalid(f"messages.{index}.content: field required")
        _blocks(message["content"], f"messages.{index}.content")
        content = message["content"]
        if (
            message["role"] == "system"
            and isinstance(content, list)
            and any(block["type"] != "text" for block in content)
        ):
            raise invalid(f"messages.{index}.content: a system turn may only hold text blocks")
    system = body.get("system")
    if system is not None:
        _blocks(system, "system")
        if isinstance(system, list) and any(b.get("type") != "text" for b in system):
            raise invalid("system: may only hold text blocks")
    stops = body.get("stop_sequences")
    if stops is not None and (
        not isinstance(stops, list) or not all(isinstance(s, str) for s in stops)
    ):
        raise invalid("stop_sequences: must be a list of strings")
    for key in ("temperature", "top_p", "top_k"):
        _number(body, key)
    tools = body.get("tools")
    if tools is not None and (
        not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools)
    ):
        raise invalid("tools: must be a list of tool definitions")
    for key in ("tool_choice", "metadata", "thinking", "output_config"):
        value = body.get(key)
        if value is not None and not isinstance(value, dict):
            raise invalid(f"{key}: must be an object")
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and not isinstance(choice.get("type"), str):
        raise invalid("tool_choice.type: field required")


def messages_prompt(body: Mapping[str, Any]) -> list[Any]:
    """What the audit record's prompt hash covers: the system prompt and the turns."""
    messages = list(body.get("messages") or ())
    system = body.get("system")
    return [{"role": "system", "content": system}, *messages] if system else messages


def forwarded_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The client's `anthropic-version` / `anthropic-beta`, for the native codecs."""
    out: dict[str, str] = {}
    for name in FORWARDED_HEADERS:
        value = headers.get(name)
        if value is None:
            value = next((v for k, v in headers.items() if k.lower() == name), None)
        if value:
            out[name] = value
    return out


def messages_codec(adapter: ProviderAdapter) -> Codec | None:
    """The endpoint's native Messages codec, else a bridge over its chat codec."""
    native = adapter.codec(MESSAGES)
    if native is not None:
        return native
    chat = adapter.codec(CHAT)
    return MessagesBridge(chat, ChatTarget.of(adapter)) if chat is not None else None


class MessagesFront(Front):
    operation: ClassVar[str] = MESSAGES
    paths: ClassVar[tuple[str, ...]] = ("/v1/messages",)

    def parse(self, body: dict[str, Any], headers: Mapping[str, str]) -> ModelRequest:
        read_messages_body(body)
        return ModelRequest(
            operation=MESSAGES,
            body=body,
            stream=optional_bool(body, "stream"),
            model=body["model"],
            prompt=messages_prompt(body),
            headers=forwarded_headers(headers),
        )

    def codec_for(self, adapter: ProviderAdapter) -> Codec | None:
        return messages_codec(adapter)

    def error_body(self, err: GatewayError) -> dict[str, Any]:
        return gateway_error_body(err)


class CountTokensFront(MessagesFront):
    paths: ClassVar[tuple[str, ...]] = ("/v1/messages/count_tokens",)

    def parse(self, body: dict[str, Any], headers: Mapping[str, str]) -> ModelRequest:
        read_messages_body(body, max_tokens=False)
        if body.get("stream"):
            raise invalid("stream: count_tokens cannot be streamed")
        return ModelRequest(
            operation=MESSAGES,
            body=body,
            stream=False,
            model=body["model"],
            prompt=messages_prompt(body),
            headers=forwarded_headers(headers),
        )

    def codec_for(self, adapter: ProviderAdapter) -> Codec | None:
        return adapter.codec(COUNT_TOKENS)

    @staticmethod
    def estimate(body: Mapping[str, Any]) -> dict[str, Any]:
        """The answer when no endpoint of the route counts natively."""
        return count_tokens_estimate(body)

    def local_answer(self, request: ModelRequest) -> dict[str, Any] | None:
        return self.estimate(request.body)
