"""The OpenAI Chat Completions front (`POST /v1/route`, `/v1/chat/completions`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from gateway.fronts.base import Front, ModelRequest, invalid, optional_bool, optional_str
from gateway.providers.adapter import CHAT


class ChatFront(Front):
    operation: ClassVar[str] = CHAT
    paths: ClassVar[tuple[str, ...]] = ("/v1/route", "/v1/chat/completions")

    def parse(self, body: dict[str, Any], headers: Mapping[str, str]) -> ModelRequest:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise invalid("'messages' must be a non-empty list of chat messages")
        for index, message in enumerate(messages):
            if not isinstance(message, dict):
                raise invalid(f"messages[{index}] must be an object")
            calls = message.get("tool_calls")
            if calls is not None and not isinstance(calls, list):
                raise invalid(f"messages[{index}].tool_calls must be a list")
        tools = body.get("tools")
        if tools is not None and not isinstance(tools, list):
            raise invalid("'tools' must be a list")
        return ModelRequest(
            operation=CHAT,
            body=body,
            stream=optional_bool(body, "stream"),
            model=optional_str(body, "model"),
            prompt=messages,
        )
