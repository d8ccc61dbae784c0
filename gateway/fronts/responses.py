"""The OpenAI Responses front: `POST /v1/responses` (operation `responses`).

The body is checked as OpenAI's API checks it before generating (a model, an
`input` string or list of items, `instructions` a string, `tools` a list,
`max_output_tokens` a positive integer, `stream` and `store` booleans, ...);
errors are OpenAI's shape (the default). OpenAI and Azure OpenAI endpoints pass
the body through (:mod:`gateway.providers.openai_compatible.responses`); any
other is reached through :class:`~.responses_bridge.ResponsesBridge` over its
chat codec.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from gateway.fronts.base import Front, ModelRequest, invalid, optional_bool, optional_str
from gateway.fronts.bridge import ChatTarget
from gateway.fronts.responses_bridge import ResponsesBridge
from gateway.providers.adapter import CHAT, RESPONSES, Codec, ProviderAdapter


def read_responses_body(body: Mapping[str, Any]) -> None:
    """Check what OpenAI's API checks before it generates; a 400 naming the field."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("'model' is required: a model name")
    items = body.get("input")
    stateful = body.get("previous_response_id") or body.get("conversation") or body.get("prompt")
    if items is None and not stateful:
        raise invalid("'input' is required: a string or a list of input items")
    if items is not None and not isinstance(items, str | list):
        raise invalid("'input' must be a string or a list of input items")
    for index, item in enumerate(items if isinstance(items, list) else ()):
        if not isinstance(item, dict):
            raise invalid(f"input[{index}] must be an object")
        kind = item.get("type", "message")
        if not isinstance(kind, str):
            raise invalid(f"input[{index}].type must be a string")
        if kind == "message" and ("role" not in item or "content" not in item):
            raise invalid(f"input[{index}]: a message needs a 'role' and 'content'")
    optional_str(body, "instructions")
    optional_str(body, "previous_response_id")
    optional_str(body, "user")
    optional_bool(body, "store")
    limit = body.get("max_output_tokens")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise invalid("'max_output_tokens' must be a positive integer")
    for key in ("temperature", "top_p"):
        value = body.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise invalid(f"'{key}' must be a number")
    tools = body.get("tools")
    if tools is not None and (
        not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools)
    ):
        raise invalid("'tools' must be a list of tool definitions")
    for key in ("text", "reasoning", "metadata"):
        value = body.get(key)
        if value is not None and not isinstance(value, dict):
            raise invalid(f"'{key}' must be an object")


def responses_prompt(body: Mapping[str, Any]) -> list[Any]:
    """What the audit record's prompt hash covers: the instructions and the input."""
    items = body.get("input")
    turns = [{"role": "user", "content": items}] if isinstance(items, str) else list(items or ())
    instructions = body.get("instructions")
    return [{"role": "system", "content": instructions}, *turns] if instructions else turns


def responses_codec(adapter: ProviderAdapter) -> Codec | None:
    """The endpoint's native Responses codec, else a bridge over its chat codec."""
    native = adapter.codec(RESPONSES)
    if native is not None:
        return native
    chat = adapter.codec(CHAT)
    return ResponsesBridge(chat, ChatTarget.of(adapter)) if chat is not None else None


class ResponsesFront(Front):
    operation: ClassVar[str] = RESPONSES
    paths: ClassVar[tuple[str, ...]] = ("/v1/responses",)

    def parse(self, body: dict[str, Any], headers: Mapping[str, str]) -> ModelRequest:
        read_responses_body(body)
        return ModelRequest(
            operation=RESPONSES,
            body=body,
            stream=optional_bool(body, "stream"),
            model=body["model"],
            prompt=responses_prompt(body),
        )

    def codec_for(self, adapter: ProviderAdapter) -> Codec | None:
        return responses_codec(adapter)
