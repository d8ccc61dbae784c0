"""The Messages bridge's translation: requests checked against `anthropic`'s
`MessageCreateParams` going in and `openai`'s `CompletionCreateParams` coming
out, what is refused and what is noted, and answers checked against
`anthropic`'s `Message` (streams and the SDK: test_messages_bridge_sdk.py)."""

from __future__ import annotations

from typing import Any

import pytest
from anthropic.types import Message, RawMessageStreamEvent
from openai.types.chat.completion_create_params import CompletionCreateParamsNonStreaming
from pydantic import TypeAdapter

from gateway.fronts.bridge import ChatTarget
from gateway.fronts.messages_bridge import to_chat, to_message
from gateway.providers import AttemptFailed
from gateway.providers.usage import Usage
from tests.fake_anthropic import validate_request
from tests.typed_check import check

PNG = "iVBORw0KGgo="
VLLM = ChatTarget("openai-compatible")
OPENAI = ChatTarget("openai", "max_completion_tokens", reasoning_effort=True, files=True)
EVENT: TypeAdapter[Any] = TypeAdapter(RawMessageStreamEvent)

TOOLS = [
    {
        "name": "get_weather",
        "description": "Weather of a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        "cache_control": {"type": "ephemeral"},
    }
]
BODY: dict[str, Any] = {
    "model": "claude-x",
    "max_tokens": 256,
    "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Weather in Paris?"},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                },
                {"type": "image", "source": {"type": "url", "url": "https://example.test/a.jpg"}},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "Use the tool.", "signature": "sig"},
                {"type": "text", "text": "Checking."},
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_1",
                    "content": [{"type": "text", "text": "sunny"}],
                },
                {"type": "text", "text": "And tomorrow?"},
            ],
        },
    ],
    "tools": TOOLS,
    "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
    "stop_sequences": ["\n\nHuman:"],
    "temperature": 0.5,
    "top_p": 0.9,
    "top_k": 40,
    "metadata": {"user_id": "u-1"},
    "thinking": {"type": "enabled", "budget_tokens": 8000},
    "output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}},
}


def test_the_request_translation_is_whole_and_valid_on_both_sides() -> None:
    assert validate_request(BODY, version="2023-06-01") is None  # the legacy version takes sampling
    chat, notes = to_chat(BODY, VLLM)
    assert chat == {
        "model": "claude-x",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Weather in Paris?"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                    {"type": "image_url", "image_url": {"url": "https://example.test/a.jpg"}},
                ],
            },
            {
                "role": "assistant",
                "content": "Checking.",
                "tool_calls": [
                    {
                        "id": "toolu_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
            {"role": "user", "content": "And tomorrow?"},
        ],
        "max_tokens": 256,
        "stop": ["\n\nHuman:"],
        "temperature": 0.5,
        "top_p": 0.9,
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Weather of a city",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                },
            }
        ],
        "tool_choice": "auto",
        "parallel_tool_calls": False,
        "user": "u-1",
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": {"type": "object"}, "strict": True},
        },
    }
    check(chat, CompletionCreateParamsNonStreaming)
    assert notes == [
        "top_k: dropped (Chat Completions has no top_k)",
        "cache_control: dropped (prompt caching is Anthropic's)",
        "thinking blocks: dropped (Chat Completions takes no earlier reasoning)",
        "thinking: dropped (this endpoint takes no reasoning settings)",
    ]


def test_openai_targets_get_their_token_field_reasoning_effort_and_pdfs() -> None:
    body = {
        "model": "claude-x",
        "max_tokens": 10,
        "thinking": {"type": "enabled", "budget_tokens": 20000},
        "messages": [
            {
                "role": "user",
                "content": [
                    {
                        "type": "document",
                        "source": {
                            "type": "base64",
                            "media_type": "application/pdf",
                            "data": "JVBERi0=",
                        },
                        "title": "report.pdf",
                    },
                    {
                        "type": "document",
                        "source": {
                            "type": "text",
                            "media_type": "text/plain",
                            "data": "plain words",
                        },
                        "citations": {"enabled": True},
                    },
                ],
            }
        ],
        "tool_choice": {"type": "any"},
        "tools": [{"name": "t", "input_schema": {"type": "object"}}],
    }
    assert validate_request(body, version="2026-10-21") is None
    chat, notes = to_chat(body, OPENAI)
    assert chat == {
        "model": "claude-x",
        "messages": [
            {
                "role": "user",
                "content": [
                    {
                        "type": "file",
                        "file": {
                            "filename": "report.pdf",
                            "file_data": "data:application/pdf;base64,JVBERi0=",
                        },
                    },
                    {"type": "text", "text": "plain words"},
                ],
            }
        ],
        "max_completion_tokens": 10,
        "tools": [
            {"type": "function", "function": {"name": "t", "parameters": {"type": "object"}}}
        ],
        "tool_choice": "required",
        "reasoning_effort": "high",
    }
    check(chat, CompletionCreateParamsNonStreaming)
    assert notes == [
        "citations: dropped (Chat Completions answers carry no citations)",
        "thinking: sent as reasoning_effort high",
    ]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "document",
                                "source": {
                                    "type": "base64",
                                    "media_type": "application/pdf",
                                    "data": "JVBERi0=",
                                },
                            }
                        ],
                    }
                ]
            },
            "documents (base64 source) cannot be sent to this endpoint (type openai-compatible); "
            "send the text instead or use an Anthropic endpoint",
        ),
        (
            {"tools": [{"type": "web_search_20250305", "name": "web_search"}]},
            "server tools ('web_search_20250305') need an Anthropic endpoint",
        ),
        (
            {"mcp_servers": [{"type": "url", "url": "https://mcp.test", "name": "m"}]},
            "MCP servers ('mcp_servers') need an Anthropic endpoint",
        ),
        (
            {"frobnicate": True},
            "this endpoint is reached by translation, which cannot carry frobnicate",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "tool_result",
                                "tool_use_id": "t",
                                "content": [
                                    {
                                        "type": "image",
                                        "source": {
                                            "type": "base64",
                                            "media_type": "image/png",
                                            "data": PNG,
                                        },
                                    }
                                ],
                            }
                        ],
                    }
                ]
            },
            "tool results may only hold text on this endpoint",
        ),
    ],
)
def test_what_the_translation_cannot_carry_is_refused(change: dict[str, Any], message: str) -> None:
    body = {
        "model": "m",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": "hi"}],
        **change,
    }
    with pytest.raises(AttemptFailed) as info:
        to_chat(body, VLLM)
    failure = info.value.failure
    assert (failure.status_for_client, failure.code, failure.message, failure.retryable) == (
        400,
        "unsupported_request",
        message,
        False,
    )


@pytest.mark.parametrize(
    ("choice", "content", "stop_reason", "stop_sequence"),
    [
        (
            {"finish_reason": "stop", "message": {"role": "assistant", "content": "Hi."}},
            [{"type": "text", "text": "Hi."}],
            "end_turn",
            None,
        ),
        (
            {"finish_reason": "length", "message": {"role": "assistant", "content": "Hi"}},
            [{"type": "text", "text": "Hi"}],
            "max_tokens",
            None,
        ),
        (
            {
                "finish_reason": "stop",
                "stop_reason": "\n\nHuman:",
                "message": {"role": "assistant", "content": "Hi"},
            },
            [{"type": "text", "text": "Hi"}],
            "stop_sequence",
            "\n\nHuman:",
        ),
        (
            {
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": None, "refusal": "No."},
            },
            [{"type": "text", "text": "No."}],
            "refusal",
            None,
        ),
        (
            {
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_9",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                        }
                    ],
                },
            },
            [
                {
                    "type": "tool_use",
                    "id": "call_9",
                    "name": "get_weather",
                    "input": {"city": "Oslo"},
                }
            ],
            "tool_use",
            None,
        ),
    ],
)
def test_answers_become_valid_messages(
    choice: dict[str, Any], content: list[Any], stop_reason: str, stop_sequence: str | None
) -> None:
    completion = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "llama",
        "choices": [{"index": 0, **choice}],
    }
    message = to_message(completion, BODY, Usage(120, 7, cache_read_tokens=100))
    assert message == {
        "id": "msg_chatcmpl-1",
        "type": "message",
        "role": "assistant",
        "model": "llama",
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": {
            "input_tokens": 20,
            "output_tokens": 7,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 100,
        },
    }
    Message.model_validate(message)
