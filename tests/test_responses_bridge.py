"""The Responses bridge's translation: requests checked against `openai`'s
`ResponseCreateParams` going in and `CompletionCreateParams` coming out, what
is refused (state the gateway does not keep, hosted tools) and what is noted,
and answers checked against `openai`'s `Response` (streams and the SDK:
test_responses_bridge_sdk.py)."""

from __future__ import annotations

from typing import Any

import pytest
from openai.types.chat.completion_create_params import CompletionCreateParamsNonStreaming
from openai.types.responses import Response
from openai.types.responses.response_create_params import ResponseCreateParamsNonStreaming

from gateway.fronts.bridge import ChatTarget
from gateway.fronts.responses_bridge import to_chat, to_response
from gateway.providers import AttemptFailed
from gateway.providers.usage import Usage
from tests.typed_check import check

ANTHROPIC = ChatTarget("anthropic")
OPENAI = ChatTarget("openai", "max_completion_tokens", reasoning_effort=True, files=True)
TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    "strict": True,
}
BODY: dict[str, Any] = {
    "model": "gpt-5",
    "instructions": "Be brief.",
    "input": [
        {"role": "developer", "content": "Use metric units."},
        {
            "role": "user",
            "content": [
                {"type": "input_text", "text": "Weather in Paris?"},
                {
                    "type": "input_image",
                    "image_url": "data:image/png;base64,iVBORw0KGgo=",
                    "detail": "low",
                },
            ],
        },
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {
            "type": "message",
            "role": "assistant",
            "id": "msg_1",
            "status": "completed",
            "content": [{"type": "output_text", "text": "Checking.", "annotations": []}],
        },
        {
            "type": "function_call",
            "call_id": "call_1",
            "name": "get_weather",
            "arguments": '{"city":"Paris"}',
        },
        {
            "type": "function_call",
            "call_id": "call_2",
            "name": "get_weather",
            "arguments": '{"city":"Lyon"}',
        },
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
        {
            "type": "function_call_output",
            "call_id": "call_2",
            "output": [{"type": "input_text", "text": "rain"}],
        },
    ],
    "tools": [TOOL],
    "tool_choice": {"type": "function", "name": "get_weather"},
    "parallel_tool_calls": False,
    "text": {
        "format": {
            "type": "json_schema",
            "name": "weather",
            "schema": {"type": "object"},
            "strict": True,
        },
        "verbosity": "low",
    },
    "max_output_tokens": 300,
    "temperature": 0.2,
    "top_p": 0.8,
    "reasoning": {"effort": "medium", "summary": "auto"},
    "store": True,
    "include": ["reasoning.encrypted_content"],
    "metadata": {"ticket": "T-9"},
    "user": "u-7",
}


def test_the_request_translation_is_whole_and_valid_on_both_sides() -> None:
    check(BODY, ResponseCreateParamsNonStreaming)
    chat, notes = to_chat(BODY, ANTHROPIC)
    assert chat == {
        "model": "gpt-5",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "system", "content": "Use metric units."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Weather in Paris?"},
                    {
                        "type": "image_url",
                        "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"},
                    },
                ],
            },
            {
                "role": "assistant",
                "content": "Checking.",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    },
                    {
                        "id": "call_2",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Lyon"}'},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            {"role": "tool", "tool_call_id": "call_2", "content": "rain"},
        ],
        "max_tokens": 300,
        "temperature": 0.2,
        "top_p": 0.8,
        "parallel_tool_calls": False,
        "user": "u-7",
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Weather of a city",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                    "strict": True,
                },
            }
        ],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "weather", "schema": {"type": "object"}, "strict": True},
        },
    }
    check(chat, CompletionCreateParamsNonStreaming)
    assert notes == [
        "include: dropped (extra output data is not available by translation)",
        "store: not stored (the gateway keeps no conversation state)",
        "reasoning items: dropped (Chat Completions takes no earlier reasoning)",
        "text.verbosity: dropped (this endpoint takes no verbosity setting)",
        "reasoning.effort: dropped (this endpoint takes no reasoning settings)",
        "reasoning.summary: dropped (reasoning summaries are not available by translation)",
    ]


def test_a_string_input_and_an_openai_target() -> None:
    body = {"model": "m", "input": "hi", "max_output_tokens": 9, "reasoning": {"effort": "low"}}
    check(body, ResponseCreateParamsNonStreaming)
    chat, notes = to_chat(body, OPENAI)
    assert chat == {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "max_completion_tokens": 9,
        "reasoning_effort": "low",
    }
    assert notes == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"previous_response_id": "resp_1"},
            "'previous_response_id' continues a stored response, which this endpoint (type "
            "anthropic, reached by translation) cannot do: the gateway keeps no conversation "
            "state; send the whole conversation in 'input', or route to an OpenAI or Azure "
            "OpenAI endpoint, where the request passes through",
        ),
        ({"conversation": "conv_1"}, None),
        ({"background": True}, None),
        (
            {"tools": [{"type": "web_search"}]},
            "hosted tools ('web_search') need an OpenAI endpoint; "
            "only function tools are translated",
        ),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, None),
        (
            {
                "input": [
                    {
                        "role": "user",
                        "content": [{"type": "input_image", "file_id": "file_1", "detail": "auto"}],
                    }
                ]
            },
            None,
        ),
        (
            {
                "input": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "input_file",
                                "file_data": "data:application/pdf;base64,JVBERi0=",
                            }
                        ],
                    }
                ]
            },
            "input[0]: 'input_file' content cannot be sent to this endpoint (type anthropic)",
        ),
        (
            {"tool_choice": {"type": "allowed_tools", "mode": "auto", "tools": []}},
            "tool_choice 'allowed_tools' cannot be sent to this endpoint",
        ),
    ],
)
def test_what_the_translation_cannot_carry_is_refused(
    change: dict[str, Any], message: str | None
) -> None:
    body = {"model": "m", "input": "hi", **change}
    with pytest.raises(AttemptFailed) as info:
        to_chat(body, ANTHROPIC)
    failure = info.value.failure
    assert (failure.status_for_client, failure.code, failure.retryable) == (
        400,
        "unsupported_request",
        False,
    )
    if message is not None:
        assert failure.message == message


def test_answers_become_valid_responses() -> None:
    completion = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "claude-x",
        "choices": [
            {
                "index": 0,
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "content": "Let me check.",
                    "tool_calls": [
                        {
                            "id": "call_9",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                        }
                    ],
                },
            }
        ],
    }
    body = {"model": "gpt-5", "input": "hi", "tools": [TOOL], "metadata": {"k": "v"}, "store": True}
    response = to_response(completion, body, Usage(40, 8, cache_read_tokens=30))
    Response.model_validate(response)
    message, call = response["output"]
    assert message == {
        "id": message["id"],
        "type": "message",
        "status": "completed",
        "role": "assistant",
        "content": [
            {"type": "output_text", "text": "Let me check.", "annotations": [], "logprobs": []}
        ],
    }
    assert call == {
        "id": call["id"],
        "type": "function_call",
        "status": "completed",
        "call_id": "call_9",
        "name": "get_weather",
        "arguments": '{"city":"Oslo"}',
    }
    assert message["id"].startswith("msg_") and call["id"].startswith("fc_")
    assert response == {
        "id": response["id"],
        "object": "response",
        "created_at": 1700000000,
        "status": "completed",
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "max_output_tokens": None,
        "model": "claude-x",
        "output": [message, call],
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": False,
        "temperature": None,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [TOOL],
        "top_p": None,
        "truncation": "disabled",
        "usage": {
            "input_tokens": 40,
            "input_tokens_details": {"cache_write_tokens": 0, "cached_tokens": 30},
            "output_tokens": 8,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 48,
        },
        "user": None,
        "metadata": {"k": "v"},
        "completed_at": response["completed_at"],
    }
    truncated = {
        **completion,
        "choices": [
            {
                "index": 0,
                "finish_reason": "length",
                "message": {"role": "assistant", "content": "Half"},
            }
        ],
    }
    cut = to_response(truncated, body, Usage(1, 1))
    Response.model_validate(cut)
    assert (cut["status"], cut["incomplete_details"], cut["completed_at"]) == (
        "incomplete",
        {"reason": "max_output_tokens"},
        None,
    )
