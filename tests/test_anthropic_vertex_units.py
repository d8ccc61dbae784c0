"""Units of the Anthropic and Vertex AI adapters: request and answer translation,
stream translation fed in arbitrary pieces, error classification, Vertex URLs,
configuration errors, and service-account tokens refreshed before expiry."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from anthropic.types.message_create_params import (
    MessageCreateParamsNonStreaming,
    MessageCreateParamsStreaming,
)

from gateway.providers import AttemptFailed, AttemptFailure, ProviderConfigError
from gateway.providers import adapter_for as build_adapter
from gateway.providers.anthropic import translate as claude
from gateway.providers.anthropic.adapter import AnthropicAdapter
from gateway.providers.vertex import gemini
from gateway.providers.vertex.adapter import (
    VertexAnthropicAdapter,
    VertexGeminiAdapter,
    default_base_url,
)
from gateway.providers.vertex.auth import AccessTokens, load_service_account
from tests.fake_vertex import SIGNATURE, FakeVertex, make_service_account, validate_gemini
from tests.typed_check import check
from translator.errors import Position
from translator.registry import Endpoint

PNG = "iVBORw0KGgo="  # base64 of the PNG signature: valid base64, a tiny "image"
KEY = "sk-ant-unit-canary-1234"


def redact(text: str) -> str:
    return text.replace(KEY, "***")


def frames_of(raw: list[bytes]) -> list[Any]:
    out: list[Any] = []
    for frame in b"".join(raw).split(b"\n\n"):
        if frame:
            assert frame.startswith(b"data: ")
            data = frame[6:]
            out.append("[DONE]" if data == b"[DONE]" else json.loads(data))
    return out


def refused(call: Any) -> AttemptFailure:
    with pytest.raises(AttemptFailed) as info:
        call()
    return info.value.failure


# ---------------------------------------------------------------------------
# Anthropic: request

FULL_BODY: dict[str, Any] = {
    "model": "gpt-4o",
    "messages": [
        {"role": "system", "content": "Be terse."},
        {"role": "developer", "content": [{"type": "text", "text": "Answer in English."}]},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this image?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
            ],
        },
        {
            "role": "assistant",
            "content": "Let me look it up.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "lookup", "arguments": '{"q": "cat"}'},
                },
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "lookup", "arguments": ""},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "a cat"},
        {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "none"}]},
        {"role": "user", "content": "Thanks. And now?"},
    ],
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "description": "Look something up",
                "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
            },
        },
        {"type": "function", "function": {"name": "noop"}},
    ],
    "tool_choice": {"type": "function", "function": {"name": "lookup"}},
    "parallel_tool_calls": False,
    "max_completion_tokens": 300,
    "temperature": 0.2,
    "top_p": 0.5,
    "stop": "END",
    "user": "u-17",
    "response_format": {
        "type": "json_schema",
        "json_schema": {"name": "x", "schema": {"type": "object"}},
    },
    "stream_options": {"include_usage": True},
    "frequency_penalty": 0.1,
}

CLAUDE_MESSAGES = [
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "What is in this image?"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
        ],
    },
    {
        "role": "assistant",
        "content": [
            {"type": "text", "text": "Let me look it up."},
            {"type": "tool_use", "id": "call_1", "name": "lookup", "input": {"q": "cat"}},
            {"type": "tool_use", "id": "call_2", "name": "lookup", "input": {}},
        ],
    },
    {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "call_1", "content": "a cat"},
            {"type": "tool_result", "tool_use_id": "call_2", "content": "none"},
            {"type": "text", "text": "Thanks. And now?"},
        ],
    },
]


@pytest.mark.parametrize("stream", [False, True])
def test_full_request_translation_is_a_valid_message_create_params(stream: bool) -> None:
    body = claude.build_request(
        FULL_BODY, model="claude-sonnet-4-5", max_tokens_default=1000, stream=stream, sampling=False
    )
    expected = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 300,
        "system": "Be terse.\n\nAnswer in English.",
        "messages": CLAUDE_MESSAGES,
        "stop_sequences": ["END"],
        "tools": [
            {
                "name": "lookup",
                "description": "Look something up",
                "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}},
            },
            {"name": "noop", "input_schema": {"type": "object", "properties": {}}},
        ],
        "tool_choice": {"type": "tool", "name": "lookup", "disable_parallel_tool_use": True},
        "output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}},
        "metadata": {"user_id": "u-17"},
    }
    if stream:
        expected["stream"] = True
    assert body == expected
    check(body, MessageCreateParamsStreaming if stream else MessageCreateParamsNonStreaming)


def test_sampling_parameters_only_for_legacy_versions() -> None:
    base = {"messages": [{"role": "user", "content": "hi"}], "temperature": 1.7, "top_p": 0.3}
    legacy = claude.build_request(
        base, model="m", max_tokens_default=10, stream=False, sampling=True
    )
    assert legacy == {
        "model": "m",
        "max_tokens": 10,
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": 1.0,
        "top_p": 0.3,
    }
    current = claude.build_request(
        base, model="m", max_tokens_default=10, stream=False, sampling=False
    )
    assert current == {
        "model": "m",
        "max_tokens": 10,
        "messages": [{"role": "user", "content": "hi"}],
    }
    assert [
        claude.accepts_sampling(v) for v in ("2023-06-01", "vertex-2023-10-16", "2026-10-21")
    ] == [
        True,
        True,
        False,
    ]


@pytest.mark.parametrize(
    ("choice", "parallel", "expected"),
    [
        ("auto", None, {"type": "auto"}),
        ("required", None, {"type": "any"}),
        ("none", False, {"type": "none"}),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        (None, None, None),
    ],
)
def test_tool_choice(choice: Any, parallel: Any, expected: Any) -> None:
    body: dict[str, Any] = {
        "messages": [{"role": "user", "content": "hi"}],
        "tools": FULL_BODY["tools"],
    }
    if choice is not None:
        body["tool_choice"] = choice
    if parallel is not None:
        body["parallel_tool_calls"] = parallel
    out = claude.build_request(body, model="m", max_tokens_default=5, stream=False, sampling=False)
    assert out.get("tool_choice") == expected


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"n": 2}, "only one choice per request (n = 1) is supported by this endpoint"),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}
                ]
            },
            "content parts of type 'input_audio' are not supported here",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": {"url": "data:image/png;base64,%%"}}
                        ],
                    }
                ]
            },
            "an image data URL does not hold valid base64",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "image_url",
                                "image_url": {"url": f"data:image/bmp;base64,{PNG}"},
                            }
                        ],
                    }
                ]
            },
            "images must be one of image/gif, image/jpeg, image/png, image/webp, got image/bmp",
        ),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "id": "c",
                                "type": "function",
                                "function": {"name": "f", "arguments": "[1]"},
                            }
                        ],
                    }
                ]
            },
            "the arguments of tool call 'c' are not a JSON object",
        ),
        ({"messages": [{"role": "tool", "content": "x"}]}, "a tool message needs a 'tool_call_id'"),
        (
            {"messages": [{"role": "function", "content": "x"}]},
            "messages with role 'function' are not supported here",
        ),
        (
            {"messages": [{"role": "system", "content": "only a system prompt"}]},
            "the request has no user message",
        ),
        ({"max_tokens": 0}, "'max_tokens' must be a positive integer"),
        ({"tools": [{"type": "web_search"}]}, "only tools of type 'function' are supported"),
    ],
)
def test_requests_anthropic_cannot_take_are_refused_without_failover(
    change: dict[str, Any], message: str
) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], **change}
    failure = refused(
        lambda: claude.build_request(
            body, model="m", max_tokens_default=5, stream=False, sampling=False
        )
    )
    assert failure == AttemptFailure(400, "unsupported_request", message, False)


# ---------------------------------------------------------------------------
# Anthropic: answers


def test_message_with_text_tool_use_thinking_and_cache_usage() -> None:
    message = {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "sig"},
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"q": "cat"}},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 10,
            "output_tokens": 7,
            "cache_read_input_tokens": 100,
            "cache_creation_input_tokens": 20,
        },
    }
    completion, usage = claude.parse_message(json.dumps(message).encode(), redact=redact)
    assert usage == claude.Usage(130, 7, cache_read_tokens=100, cache_write_tokens=20)
    completion.pop("created")
    assert completion == {
        "id": "msg_01",
        "object": "chat.completion",
        "model": "claude-sonnet-4-5",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Checking.",
                    "refusal": None,
                    "tool_calls": [
                        {
                            "id": "toolu_1",
                            "type": "function",
                            "function": {"name": "lookup", "arguments": '{"q": "cat"}'},
                        }
                    ],
                },
                "logprobs": None,
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {
            "prompt_tokens": 130,
            "completion_tokens": 7,
            "total_tokens": 137,
            "prompt_tokens_details": {"cached_tokens": 100},
        },
    }


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
        (None, "stop"),
    ],
)
def test_stop_reasons(stop_reason: Any, finish: str) -> None:
    assert claude.finish_reason(stop_reason) == finish


def sse(events: list[tuple[str, dict[str, Any]]]) -> bytes:
    return b"".join(
        f"event: {name}\r\ndata: {json.dumps(data)}\r\n\r\n".encode() for name, data in events
    )


CLAUDE_STREAM = [
    (
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": "msg_9",
                "type": "message",
                "role": "assistant",
                "model": "claude-x",
                "content": [],
                "stop_reason": None,
                "usage": {"input_tokens": 8, "output_tokens": 1, "cache_read_input_tokens": 2},
            },
        },
    ),
    (
        "content_block_start",
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    ),
    ("ping", {"type": "ping"}),
    (
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
    ),
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    (
        "content_block_start",
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {"type": "tool_use", "id": "toolu_7", "name": "lookup", "input": {}},
        },
    ),
    (
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": '{"q": '},
        },
    ),
    (
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": '"cat"}'},
        },
    ),
    ("content_block_stop", {"type": "content_block_stop", "index": 1}),
    (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use", "stop_sequence": None},
            "usage": {"output_tokens": 15},
        },
    ),
    ("message_stop", {"type": "message_stop"}),
]


def chunk(
    delta: dict[str, Any], finish: str | None = None, *, id_: str = "msg_9", model: str = "claude-x"
) -> dict[str, Any]:
    return {
        "id": id_,
        "object": "chat.completion.chunk",
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def without_created(frames: list[Any]) -> list[Any]:
    for frame in frames:
        if isinstance(frame, dict):
            frame.pop("created")
    return frames


@pytest.mark.parametrize("piece", [1, 7, 10_000])
def test_claude_stream_fed_in_any_pieces(piece: int) -> None:
    t = claude.AnthropicStreamTranslator(
        {
            "messages": [{"role": "user", "content": "hi"}],
            "stream_options": {"include_usage": True},
        },
        model="claude-x",
        redact=redact,
    )
    data = sse(CLAUDE_STREAM)
    raw: list[bytes] = []
    for i in range(0, len(data), piece):
        raw += t.feed(data[i : i + piece])
    raw += t.finish()
    assert without_created(frames_of(raw)) == [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Hi"}),
        chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "toolu_7",
                        "type": "function",
                        "function": {"name": "lookup", "arguments": ""},
                    }
                ]
            }
        ),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"q": '}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"cat"}'}}]}),
        chunk({}, "tool_calls"),
        {
            "id": "msg_9",
            "object": "chat.completion.chunk",
            "model": "claude-x",
            "choices": [],
            "usage": {
                "prompt_tokens": 10,
                "completion_tokens": 15,
                "total_tokens": 25,
                "prompt_tokens_details": {"cached_tokens": 2},
            },
        },
        "[DONE]",
    ]
    assert t.usage == claude.Usage(10, 15, cache_read_tokens=2)


def test_claude_stream_error_after_content_keeps_the_frames_before_it() -> None:
    t = claude.AnthropicStreamTranslator({"messages": []}, model="m", redact=redact)
    error = (
        "error",
        {"type": "error", "error": {"type": "overloaded_error", "message": f"Overloaded {KEY}"}},
    )
    with pytest.raises(AttemptFailed) as info:
        t.feed(sse([*CLAUDE_STREAM[:4], error]))
    assert info.value.failure == AttemptFailure(
        503, "upstream_overloaded", "Overloaded ***", True, None, 529
    )
    assert [f["choices"][0]["delta"] for f in frames_of(info.value.frames)] == [
        {"role": "assistant", "content": ""},
        {"content": "Hi"},
    ]


def test_claude_stream_cut_short_is_truncated_and_a_missing_message_stop_is_forgiven() -> None:
    t = claude.AnthropicStreamTranslator({"messages": []}, model="m", redact=redact)
    t.feed(sse(CLAUDE_STREAM[:4]))
    with pytest.raises(AttemptFailed) as info:
        t.finish()
    assert info.value.failure.code == "upstream_stream_truncated"
    t = claude.AnthropicStreamTranslator({"messages": []}, model="m", redact=redact)
    t.feed(sse(CLAUDE_STREAM[:-1]))
    assert frames_of(t.finish()) == ["[DONE]"]


@pytest.mark.parametrize(
    ("status", "body", "headers", "expected"),
    [
        (
            401,
            {"type": "authentication_error", "message": f"invalid x-api-key {KEY}"},
            {},
            (502, "upstream_auth_failed", True, None),
        ),
        (
            429,
            {"type": "rate_limit_error", "message": "slow down"},
            {"retry-after": "12"},
            (429, "rate_limit_exceeded", True, 12.0),
        ),
        (
            529,
            {"type": "overloaded_error", "message": "Overloaded"},
            {},
            (503, "upstream_overloaded", True, None),
        ),
        (500, {"type": "api_error", "message": "boom"}, {}, (502, "api_error", True, None)),
        (
            400,
            {
                "type": "invalid_request_error",
                "message": "prompt is too long: 300000 tokens > 200000 maximum",
            },
            {},
            (400, "context_length_exceeded", False, None),
        ),
        (
            400,
            {
                "type": "invalid_request_error",
                "message": "input length and `max_tokens` exceed context limit: "
                "190000 + 20000 > 200000",
            },
            {},
            (400, "context_length_exceeded", False, None),
        ),
        (
            400,
            {"type": "invalid_request_error", "message": "bad"},
            {},
            (400, "invalid_request_error", False, None),
        ),
        (
            413,
            {"type": "request_too_large", "message": "too big"},
            {},
            (413, "request_too_large", False, None),
        ),
        (
            402,
            {"type": "billing_error", "message": "pay"},
            {},
            (502, "upstream_billing_error", True, None),
        ),
        (
            504,
            {"type": "timeout_error", "message": "slow"},
            {},
            (504, "upstream_timeout", True, None),
        ),
    ],
)
def test_claude_error_classes(
    status: int, body: dict[str, Any], headers: dict[str, str], expected: tuple[Any, ...]
) -> None:
    raw = json.dumps({"type": "error", "error": body, "request_id": "req_1"}).encode()
    failure = claude.classify_error(status, headers, raw, redact=redact)
    assert (
        failure.status_for_client,
        failure.code,
        failure.retryable,
        failure.retry_after,
    ) == expected
    assert KEY not in failure.message


# ---------------------------------------------------------------------------
# Gemini


def test_gemini_request_translation_is_valid_for_google_genai() -> None:
    body = gemini.build_request(
        FULL_BODY | {"seed": 7, "presence_penalty": 0.5}, max_tokens_default=None
    )
    assert body == {
        "contents": [
            {
                "role": "user",
                "parts": [
                    {"text": "What is in this image?"},
                    {"inlineData": {"mimeType": "image/png", "data": PNG}},
                    {
                        "fileData": {
                            "mimeType": "image/jpeg",
                            "fileUri": "https://example.com/cat.jpg",
                        }
                    },
                ],
            },
            {
                "role": "model",
                "parts": [
                    {"text": "Let me look it up."},
                    {"functionCall": {"name": "lookup", "args": {"q": "cat"}}},
                    {"functionCall": {"name": "lookup", "args": {}}},
                ],
            },
            {
                "role": "user",
                "parts": [
                    {"functionResponse": {"name": "lookup", "response": {"content": "a cat"}}},
                    {"functionResponse": {"name": "lookup", "response": {"content": "none"}}},
                    {"text": "Thanks. And now?"},
                ],
            },
        ],
        "systemInstruction": {"parts": [{"text": "Be terse.\n\nAnswer in English."}]},
        "generationConfig": {
            "maxOutputTokens": 300,
            "temperature": 0.2,
            "topP": 0.5,
            "presencePenalty": 0.5,
            "frequencyPenalty": 0.1,
            "seed": 7,
            "stopSequences": ["END"],
            "responseMimeType": "application/json",
            "responseJsonSchema": {"type": "object"},
        },
        "tools": [
            {
                "functionDeclarations": [
                    {
                        "name": "lookup",
                        "description": "Look something up",
                        "parametersJsonSchema": {
                            "type": "object",
                            "properties": {"q": {"type": "string"}},
                        },
                    },
                    {"name": "noop", "parametersJsonSchema": {"type": "object", "properties": {}}},
                ]
            }
        ],
        "toolConfig": {
            "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["lookup"]}
        },
    }
    # The fake's validation with google-genai's types, minus its signature rule.
    for content in body["contents"]:
        for part in content["parts"]:
            if "functionCall" in part:
                part["thoughtSignature"] = SIGNATURE
    assert validate_gemini(body) is None


def test_gemini_thought_signatures_ride_in_tool_call_ids() -> None:
    call_id = gemini.new_call_id("c2ln+/=")
    assert gemini.signature_of(call_id) == "c2ln+/="
    assert gemini.signature_of(gemini.new_call_id()) is None
    body = {
        "messages": [
            {"role": "user", "content": "hi"},
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {"name": "f", "arguments": "{}"},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": call_id, "content": '{"ok": true}'},
        ]
    }
    contents = gemini.build_request(body, max_tokens_default=64)["contents"]
    assert contents[1:] == [
        {
            "role": "model",
            "parts": [{"functionCall": {"name": "f", "args": {}}, "thoughtSignature": "c2ln+/="}],
        },
        {"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {"ok": True}}}]},
    ]
    orphan = {
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "tool", "tool_call_id": "x", "content": "y"},
        ]
    }
    assert refused(lambda: gemini.build_request(orphan, max_tokens_default=None)).message == (
        "a tool message must answer a tool call of an earlier message"
    )


@pytest.mark.parametrize(
    ("response", "content", "finish", "usage"),
    [
        (
            {
                "candidates": [
                    {
                        "content": {
                            "role": "model",
                            "parts": [{"text": "thinking", "thought": True}, {"text": "Hi"}],
                        },
                        "finishReason": "MAX_TOKENS",
                    }
                ],
                "usageMetadata": {
                    "promptTokenCount": 9,
                    "candidatesTokenCount": 2,
                    "thoughtsTokenCount": 5,
                    "cachedContentTokenCount": 4,
                },
            },
            "Hi",
            "length",
            gemini.Usage(9, 7, cache_read_tokens=4),
        ),
        (
            {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 3}},
            "",
            "content_filter",
            gemini.Usage(3, 0),
        ),
        (
            {"candidates": [{"content": {"role": "model", "parts": []}, "finishReason": "SAFETY"}]},
            "",
            "content_filter",
            None,
        ),
    ],
)
def test_gemini_answers(response: dict[str, Any], content: str, finish: str, usage: Any) -> None:
    completion, parsed = gemini.parse_response(
        json.dumps(response).encode(), model="g", redact=redact
    )
    choice = completion["choices"][0]
    assert (choice["message"]["content"], choice["finish_reason"], parsed) == (
        content,
        finish,
        usage,
    )


def test_gemini_stream_fed_in_pieces() -> None:
    events = [
        {
            "candidates": [{"content": {"role": "model", "parts": [{"text": "Hel"}]}}],
            "responseId": "r1",
            "modelVersion": "g-001",
        },
        {
            "candidates": [
                {
                    "content": {
                        "role": "model",
                        "parts": [
                            {"text": "lo"},
                            {"functionCall": {"name": "f", "args": {"a": 1}}},
                        ],
                    },
                    "finishReason": "STOP",
                }
            ],
            "responseId": "r1",
            "modelVersion": "g-001",
        },
        {
            "usageMetadata": {
                "promptTokenCount": 4,
                "candidatesTokenCount": 3,
                "totalTokenCount": 7,
            },
            "responseId": "r1",
            "modelVersion": "g-001",
        },
    ]
    data = b"".join(f"data: {json.dumps(e)}\r\n\r\n".encode() for e in events)
    t = gemini.GeminiStreamTranslator(
        {"messages": [], "stream_options": {"include_usage": True}}, model="g", redact=redact
    )
    raw: list[bytes] = []
    for i in range(0, len(data), 5):
        raw += t.feed(data[i : i + 5])
    raw += t.finish()
    frames = without_created(frames_of(raw))
    call_id = frames[3]["choices"][0]["delta"]["tool_calls"][0]["id"]
    assert call_id.startswith("call_")
    assert frames == [
        chunk({"role": "assistant", "content": ""}, id_="r1", model="g-001"),
        chunk({"content": "Hel"}, id_="r1", model="g-001"),
        chunk({"content": "lo"}, id_="r1", model="g-001"),
        chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": call_id,
                        "type": "function",
                        "function": {"name": "f", "arguments": '{"a": 1}'},
                    }
                ]
            },
            id_="r1",
            model="g-001",
        ),
        chunk({}, "tool_calls", id_="r1", model="g-001"),
        {
            "id": "r1",
            "object": "chat.completion.chunk",
            "model": "g-001",
            "choices": [],
            "usage": {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7},
        },
        "[DONE]",
    ]


def test_gemini_stream_without_a_finish_reason_is_truncated() -> None:
    t = gemini.GeminiStreamTranslator({"messages": []}, model="g", redact=redact)
    t.feed(b'data: {"candidates": [{"content": {"parts": [{"text": "Hi"}]}}]}\n\n')
    with pytest.raises(AttemptFailed) as info:
        t.finish()
    assert info.value.failure.code == "upstream_stream_truncated"


@pytest.mark.parametrize(
    ("status", "body", "headers", "expected"),
    [
        (
            429,
            {
                "error": {
                    "code": 429,
                    "status": "RESOURCE_EXHAUSTED",
                    "message": "quota",
                    "details": [
                        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "2.5s"}
                    ],
                }
            },
            {},
            (429, "rate_limit_exceeded", True, 2.5),
        ),
        (
            429,
            [{"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "quota"}}],
            {"Retry-After": "4"},
            (429, "rate_limit_exceeded", True, 4.0),
        ),
        (
            503,
            {"error": {"code": 503, "status": "UNAVAILABLE", "message": "overloaded"}},
            {},
            (503, "upstream_unavailable", True, None),
        ),
        (
            401,
            {"error": {"code": 401, "status": "UNAUTHENTICATED", "message": "no"}},
            {},
            (502, "upstream_auth_failed", True, None),
        ),
        (
            400,
            {
                "error": {
                    "code": 400,
                    "status": "INVALID_ARGUMENT",
                    "message": "The input token count (5) exceeds the maximum number "
                    "of tokens allowed (4).",
                }
            },
            {},
            (400, "context_length_exceeded", False, None),
        ),
        (
            400,
            {"error": {"code": 400, "status": "FAILED_PRECONDITION", "message": "no"}},
            {},
            (400, "failed_precondition", False, None),
        ),
        (
            500,
            {"error": {"code": 500, "status": "INTERNAL", "message": "oops"}},
            {},
            (502, "internal", True, None),
        ),
        (502, "<html>bad gateway</html>", {}, (502, "upstream_unavailable", True, None)),
    ],
)
def test_vertex_error_classes(
    status: int, body: Any, headers: dict[str, str], expected: tuple[Any, ...]
) -> None:
    raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    failure = gemini.classify_error(status, headers, raw, redact=redact)
    assert (
        failure.status_for_client,
        failure.code,
        failure.retryable,
        failure.retry_after,
    ) == expected


# ---------------------------------------------------------------------------
# Adapters, URLs, configuration


def endpoint(
    type_: str,
    *,
    auth: dict[str, str] | None = None,
    base_url: str | None = None,
    model: str | None = "m",
    **options: Any,
) -> Endpoint:
    return Endpoint(
        name="ep",
        type=type_,
        pos=Position("endpoints.yaml", 1, 1),
        base_url=base_url,
        model=model,
        auth=auth or {},
        options=options,
    )


@pytest.fixture
def sa_file(tmp_path: Path) -> Path:
    return make_service_account(tmp_path, "http://127.0.0.1:9/token").path


@pytest.mark.parametrize(
    ("base_url", "url"),
    [
        (None, "https://api.anthropic.com/v1/messages"),
        ("https://proxy.internal:8443/", "https://proxy.internal:8443/v1/messages"),
        ("https://proxy.internal/v1", "https://proxy.internal/v1/messages"),
    ],
)
async def test_anthropic_adapter_request(base_url: str | None, url: str) -> None:
    adapter = build_adapter(
        endpoint("anthropic", auth={"api_key_env": "K"}, base_url=base_url, max_tokens_default=64),
        environ={"K": KEY},
    )
    assert isinstance(adapter, AnthropicAdapter)
    request = await adapter.prepare({"messages": [{"role": "user", "content": "hi"}]}, stream=False)
    assert (request.method, request.url, dict(request.headers)) == (
        "POST",
        url,
        {"Content-Type": "application/json", "x-api-key": KEY, "anthropic-version": "2026-10-21"},
    )
    assert json.loads(request.body) == {
        "model": "m",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "hi"}],
    }
    assert KEY not in repr(request) and KEY not in repr(adapter.__dict__)


async def test_model_names_that_could_escape_a_url_path_are_refused(sa_file: Path) -> None:
    adapter = build_adapter(
        endpoint(
            "vertex",
            auth={"service_account_file": str(sa_file)},
            model=None,
            project="p",
            location="us-central1",
        )
    )
    for model in ("../../other", "a/b", "x?alt=json"):
        with pytest.raises(AttemptFailed) as info:
            await adapter.prepare(
                {"model": model, "messages": [{"role": "user", "content": "hi"}]}, stream=False
            )
        failure = info.value.failure
        assert (failure.status_for_client, failure.retryable) == (400, False)


def test_anthropic_needs_a_key() -> None:
    with pytest.raises(ProviderConfigError) as info:
        build_adapter(endpoint("anthropic"))
    assert str(info.value) == (
        "endpoint 'ep' (type anthropic) needs a credential: "
        "set auth.api_key_env or auth.api_key_file"
    )


@pytest.mark.parametrize(
    ("location", "base"),
    [
        ("us-central1", "https://us-central1-aiplatform.googleapis.com"),
        ("global", "https://aiplatform.googleapis.com"),
        ("eu", "https://aiplatform.eu.rep.googleapis.com"),
    ],
)
def test_default_vertex_base_urls(location: str, base: str) -> None:
    assert default_base_url(location) == base


@pytest.mark.parametrize(
    ("model", "publisher", "base_url", "url"),
    [
        (
            "gemini-2.5-pro",
            None,
            None,
            "https://europe-west4-aiplatform.googleapis.com/v1/projects/proj-1/locations/europe-west4/publishers/google/models/gemini-2.5-pro:generateContent",
        ),
        (
            "claude-opus-4-1@20250805",
            None,
            None,
            "https://europe-west4-aiplatform.googleapis.com/v1/projects/proj-1/locations/europe-west4/publishers/anthropic/models/claude-opus-4-1@20250805:rawPredict",
        ),
        (
            "my-tuned-claude",
            "anthropic",
            "https://europe-west4-aiplatform-vertex.p.googleapis.com",
            "https://europe-west4-aiplatform-vertex.p.googleapis.com/v1/projects/proj-1/locations/europe-west4/publishers/anthropic/models/my-tuned-claude:rawPredict",
        ),
        (
            "gemini-2.5-pro",
            "google",
            "https://10.1.2.3/v1/",
            "https://10.1.2.3/v1/projects/proj-1/locations/europe-west4/publishers/google/models/gemini-2.5-pro:generateContent",
        ),
    ],
)
def test_vertex_adapter_by_publisher_and_psc_base_url(
    sa_file: Path, model: str, publisher: str | None, base_url: str | None, url: str
) -> None:
    options: dict[str, Any] = {"project": "proj-1", "location": "europe-west4"}
    if publisher:
        options["publisher"] = publisher
    adapter = build_adapter(
        endpoint(
            "vertex",
            auth={"service_account_file": str(sa_file)},
            base_url=base_url,
            model=model,
            **options,
        )
    )
    if "anthropic" in url:
        assert isinstance(adapter, VertexAnthropicAdapter)
        assert adapter.url(model, stream=False) == url
    else:
        assert isinstance(adapter, VertexGeminiAdapter)
        assert adapter.site.model_url("google", model, "generateContent") == url


@pytest.mark.parametrize(
    ("auth", "options", "message"),
    [
        (
            {},
            {},
            "endpoint 'ep' (type vertex) needs a credential: "
            "set auth.service_account_env or auth.service_account_file",
        ),
        ({"service_account_env": "SA"}, {}, "endpoint 'ep': the service-account key is not JSON"),
        (
            {"service_account_env": "AU"},
            {},
            'endpoint \'ep\': the key must be a service-account key ("type": "service_account")',
        ),
        (
            {"service_account_env": "BROKEN"},
            {},
            "endpoint 'ep': the service-account key is incomplete or its private key is invalid",
        ),
        (
            {"service_account_env": "AU"},
            {"project": "a/b"},
            "endpoint 'ep': 'project' is not a GCP project id",
        ),
    ],
)
def test_vertex_configuration_errors_name_no_secret(
    auth: dict[str, str], options: dict[str, Any], message: str
) -> None:
    environ = {
        "SA": "not json -----BEGIN PRIVATE KEY-----",
        "AU": json.dumps({"type": "authorized_user", "refresh_token": "rt-secret"}),
        "BROKEN": json.dumps(
            {
                "type": "service_account",
                "private_key": "-----BEGIN PRIVATE KEY-----\nxx",
                "client_email": "a@b",
                "token_uri": "https://x",
            }
        ),
    }
    with pytest.raises(ProviderConfigError) as info:
        build_adapter(
            endpoint("vertex", auth=auth, **{"project": "p", "location": "us-central1", **options}),
            environ=environ,
        )
    assert str(info.value) == message


async def test_tokens_are_cached_and_refreshed_before_they_expire(tmp_path: Path) -> None:
    async with FakeVertex(project="p", location="l") as fake:
        account = make_service_account(tmp_path, fake.token_uri)
        fake.trust(account)
        now: list[datetime | None] = [None]

        def clock() -> datetime:
            return now[0] or datetime.now(UTC).replace(tzinfo=None)

        tokens = AccessTokens(
            load_service_account(account.path.read_text(), "ep"), refresh_margin_s=300, clock=clock
        )
        first = await tokens.token()
        assert await tokens.token() == first
        assert (fake.token_requests, tokens.refreshes) == (1, 1)
        assert tokens.expiry is not None
        # Six minutes before expiry: still good. Four minutes before: refreshed,
        # once, however many requests ask at the same time.
        now[0] = tokens.expiry - timedelta(minutes=6)
        assert await tokens.token() == first
        now[0] = tokens.expiry - timedelta(minutes=4)
        fake.token_lifetime_s = 7200  # the next token outlives the moved clock's margin
        fresh = await asyncio.gather(*(tokens.token() for _ in range(5)))
        assert len(set(fresh)) == 1 and fresh[0] != first
        assert (fake.token_requests, tokens.refreshes) == (2, 2)
        assert fake.rejected_assertions == []
        assert tokens.redact(f"a {first} b {fresh[0]}") == "a *** b ***"
        tokens.close()


async def test_a_refused_token_request_is_a_retryable_auth_failure(tmp_path: Path) -> None:
    async with FakeVertex(project="p", location="l") as fake:
        account = make_service_account(tmp_path, fake.token_uri)  # not trusted
        tokens = AccessTokens(load_service_account(account.path.read_text(), "ep"))
        with pytest.raises(AttemptFailed) as info:
            await tokens.token()
        assert info.value.failure == AttemptFailure(
            502,
            "upstream_auth_failed",
            "the gateway could not obtain an access token for the upstream",
            True,
        )
        tokens.close()
