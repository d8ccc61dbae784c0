"""AWS Bedrock: event-stream decoding, Converse translation, and the gateway end to
end against a fake Bedrock runtime that checks SigV4 and the Converse input shape."""

from __future__ import annotations

import json
import struct
import uuid
import zlib
from typing import Any

import pytest
from botocore.eventstream import EventStreamBuffer
from botocore.validate import ParamValidator

from gateway.providers import AttemptFailed
from gateway.providers.bedrock import translate
from gateway.providers.bedrock.eventstream import EventStreamDecoder, EventStreamError
from tests.bedrock_azure_harness import BEDROCK_MODEL
from tests.fake_bedrock import CONVERSE_INPUT, encode_message, event, exception

# ---------------------------------------------------------------------------
# Event-stream framing


def typed_header(name: str, kind: int, value: bytes) -> bytes:
    return bytes([len(name)]) + name.encode() + bytes([kind]) + value


ALL_TYPES = b"".join(
    [
        typed_header("t", 0, b""),
        typed_header("f", 1, b""),
        typed_header("byte", 2, struct.pack(">b", -3)),
        typed_header("short", 3, struct.pack(">h", -300)),
        typed_header("int", 4, struct.pack(">i", 70000)),
        typed_header("long", 5, struct.pack(">q", 2**40)),
        typed_header("bytes", 6, struct.pack(">H", 3) + b"\x00\x01\x02"),
        typed_header("str", 7, struct.pack(">H", 5) + b"hello"),
        typed_header("ts", 8, struct.pack(">q", 1700000000000)),
        typed_header("uuid", 9, uuid.UUID(int=7).bytes),
    ]
)


def raw_message(raw_headers: bytes, payload: bytes) -> bytes:
    total = 12 + len(raw_headers) + len(payload) + 4
    prelude = struct.pack(">II", total, len(raw_headers))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    body = prelude + raw_headers + payload
    return body + struct.pack(">I", zlib.crc32(body))


def test_encoder_frames_are_what_botocore_parses() -> None:
    data = event("contentBlockDelta", {"delta": {"text": "Hi"}, "contentBlockIndex": 0})
    buffer = EventStreamBuffer()
    buffer.add_data(data)
    (message,) = list(buffer)
    assert message.headers == {
        ":event-type": "contentBlockDelta",
        ":content-type": "application/json",
        ":message-type": "event",
    }
    assert json.loads(message.payload)["delta"] == {"text": "Hi"}


def test_decoder_matches_botocore_on_every_header_type_fed_byte_by_byte() -> None:
    data = raw_message(ALL_TYPES, b'{"x":1}') + encode_message({"a": "b"}, b"")
    buffer = EventStreamBuffer()
    buffer.add_data(data)
    expected = [(m.headers, m.payload) for m in buffer]
    # botocore leaves a UUID header as its 16 bytes; the gateway's decoder makes it a UUID.
    expected[0][0]["uuid"] = uuid.UUID(bytes=expected[0][0]["uuid"])
    decoder = EventStreamDecoder()
    got = []
    for i in range(len(data)):
        got += [(dict(m.headers), m.payload) for m in decoder.feed(data[i : i + 1])]
    assert got == expected
    assert got[0][0] == {
        "t": True,
        "f": False,
        "byte": -3,
        "short": -300,
        "int": 70000,
        "long": 2**40,
        "bytes": b"\x00\x01\x02",
        "str": "hello",
        "ts": 1700000000000,
        "uuid": uuid.UUID(int=7),
    }
    assert decoder.pending == 0


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda m: m[:8] + b"\x00\x00\x00\x00" + m[12:], "prelude checksum"),
        (lambda m: m[:-1] + bytes([m[-1] ^ 1]), "message checksum"),
        (lambda m: m[:20] + bytes([m[20] ^ 0xFF]) + m[21:], "message checksum"),
    ],
)
def test_decoder_rejects_corrupt_frames(corrupt: Any, message: str) -> None:
    data = corrupt(encode_message({":message-type": "event"}, b"{}"))
    with pytest.raises(EventStreamError, match=message):
        EventStreamDecoder().feed(data)


def test_decoder_rejects_impossible_lengths() -> None:
    prelude = struct.pack(">II", 16, 100)  # headers longer than the message
    with pytest.raises(EventStreamError, match="inconsistent"):
        EventStreamDecoder().feed(prelude + struct.pack(">I", zlib.crc32(prelude)))
    prelude = struct.pack(">II", 64 * 1024 * 1024, 0)
    with pytest.raises(EventStreamError, match="payload exceeds"):
        EventStreamDecoder().feed(prelude + struct.pack(">I", zlib.crc32(prelude)))


# ---------------------------------------------------------------------------
# Request translation

IMAGE = "iVBORw0KGgo="
FULL_REQUEST: dict[str, Any] = {
    "model": "client-model",
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "developer", "content": [{"type": "text", "text": "Use tools."}]},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this picture, and the weather?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{IMAGE}"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "tooluse_1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
                },
                {
                    "id": "tooluse_2",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city": "Oslo"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "tooluse_1", "content": "sunny"},
        {
            "role": "tool",
            "tool_call_id": "tooluse_2",
            "content": [{"type": "text", "text": "snow"}],
        },
        {"role": "user", "content": "Thanks. Summarise."},
    ],
    "max_tokens": 256,
    "temperature": 0.3,
    "top_p": 0.9,
    "stop": ["END", "STOP"],
    "seed": 7,
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "Weather of a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ],
    "tool_choice": "required",
}
FULL_CONVERSE = {
    "messages": [
        {
            "role": "user",
            "content": [
                {"text": "What is in this picture, and the weather?"},
                {"image": {"format": "png", "source": {"bytes": IMAGE}}},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {
                    "toolUse": {
                        "toolUseId": "tooluse_1",
                        "name": "weather",
                        "input": {"city": "Paris"},
                    }
                },
                {
                    "toolUse": {
                        "toolUseId": "tooluse_2",
                        "name": "weather",
                        "input": {"city": "Oslo"},
                    }
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {"toolResult": {"toolUseId": "tooluse_1", "content": [{"text": "sunny"}]}},
                {"toolResult": {"toolUseId": "tooluse_2", "content": [{"text": "snow"}]}},
                {"text": "Thanks. Summarise."},
            ],
        },
    ],
    "system": [{"text": "You are terse."}, {"text": "Use tools."}],
    "inferenceConfig": {
        "maxTokens": 256,
        "temperature": 0.3,
        "topP": 0.9,
        "stopSequences": ["END", "STOP"],
    },
    "toolConfig": {
        "tools": [
            {
                "toolSpec": {
                    "name": "weather",
                    "inputSchema": {
                        "json": {"type": "object", "properties": {"city": {"type": "string"}}}
                    },
                    "description": "Weather of a city",
                }
            }
        ],
        "toolChoice": {"any": {}},
    },
}


def validate_converse(request: dict[str, Any]) -> None:
    report = ParamValidator().validate({"modelId": BEDROCK_MODEL, **request}, CONVERSE_INPUT)
    assert not report.has_errors(), report.generate_report()


def test_full_request_translation_is_a_valid_converse_input() -> None:
    request = translate.build_converse_request(FULL_REQUEST)
    assert request == FULL_CONVERSE
    validate_converse(request)


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", {"auto": {}}),
        (None, {"auto": {}}),
        ({"type": "function", "function": {"name": "weather"}}, {"tool": {"name": "weather"}}),
    ],
)
def test_tool_choice(choice: Any, expected: dict[str, Any]) -> None:
    body = {**FULL_REQUEST, "tool_choice": choice}
    assert translate.build_converse_request(body)["toolConfig"]["toolChoice"] == expected


def test_tool_choice_none_drops_tools_unless_the_conversation_uses_them() -> None:
    plain = {"messages": [{"role": "user", "content": "hi"}], "tools": FULL_REQUEST["tools"]}
    assert "toolConfig" not in translate.build_converse_request({**plain, "tool_choice": "none"})
    kept = translate.build_converse_request({**FULL_REQUEST, "tool_choice": "none"})
    assert kept["toolConfig"] == {"tools": FULL_CONVERSE["toolConfig"]["tools"]}


def test_json_schema_response_format_becomes_output_config() -> None:
    body = {
        "messages": [{"role": "user", "content": "hi"}],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": {"type": "object"}},
        },
    }
    request = translate.build_converse_request(body)
    assert request["outputConfig"] == {
        "textFormat": {
            "type": "json_schema",
            "structure": {"jsonSchema": {"schema": '{"type":"object"}', "name": "answer"}},
        }
    }
    validate_converse(request)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"n": 2}, r"one choice per request \(n = 1\)"),
        ({"logprobs": True}, "log probabilities"),
        ({"messages": []}, "non-empty list"),
        ({"messages": [{"role": "function", "content": "x"}]}, "role 'function'"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": {"url": "https://x/cat.png"}}
                        ],
                    }
                ]
            },
            "base64 data URLs",
        ),
        *(
            (
                {
                    "messages": [
                        {
                            "role": "user",
                            "content": [
                                {
                                    "type": "image_url",
                                    "image_url": {"url": f"data:image/png;base64,{data}"},
                                }
                            ],
                        }
                    ]
                },
                "valid base64",
            )
            for data in ("not base64!", "aGVsbG8=é")  # the second is not even ASCII
        ),
        ({"response_format": {"type": "json_object"}}, "json_schema"),
        ({"max_tokens": 0}, "positive integer"),
    ],
)
def test_requests_bedrock_cannot_take_are_refused(change: dict[str, Any], message: str) -> None:
    with pytest.raises(AttemptFailed, match=message) as info:
        translate.build_converse_request({**FULL_REQUEST, **change})
    # The shared reader's refusal: a 400 that never fails over.
    failure = info.value.failure
    assert (failure.status_for_client, failure.code, failure.retryable) == (
        400,
        "unsupported_request",
        False,
    )


# ---------------------------------------------------------------------------
# Answers and errors


def test_converse_answer_with_tool_use_and_cache_usage() -> None:
    raw = json.dumps(
        {
            "output": {
                "message": {
                    "role": "assistant",
                    "content": [
                        {"text": "Checking."},
                        {
                            "toolUse": {
                                "toolUseId": "t1",
                                "name": "weather",
                                "input": {"city": "Oslo"},
                            }
                        },
                    ],
                }
            },
            "stopReason": "tool_use",
            "usage": {
                "inputTokens": 10,
                "outputTokens": 5,
                "totalTokens": 45,
                "cacheReadInputTokens": 20,
                "cacheWriteInputTokens": 10,
            },
            "metrics": {"latencyMs": 1},
        }
    ).encode()
    completion, usage = translate.parse_converse(raw, model="m", request_id="req-1")
    assert (completion["id"], completion["object"], completion["model"]) == (
        "chatcmpl-req-1",
        "chat.completion",
        "m",
    )
    assert completion["choices"] == [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Checking.",
                "refusal": None,
                "tool_calls": [
                    {
                        "id": "t1",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city": "Oslo"}'},
                    }
                ],
            },
            "logprobs": None,
            "finish_reason": "tool_calls",
        }
    ]
    assert usage == translate.Usage(40, 5, cache_read_tokens=20, cache_write_tokens=10)
    assert completion["usage"] == {
        "prompt_tokens": 40,
        "completion_tokens": 5,
        "total_tokens": 45,
        "prompt_tokens_details": {"cached_tokens": 20},
    }


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("guardrail_intervened", "content_filter"),
        ("content_filtered", "content_filter"),
    ],
)
def test_stop_reasons(stop_reason: str, finish: str) -> None:
    assert translate.finish_reason(stop_reason) == finish


def aws_error(kind: str, status: int, message: str) -> tuple[int, dict[str, str], bytes]:
    return (
        status,
        {"x-amzn-ErrorType": f"{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/"},
        json.dumps({"message": message}).encode(),
    )


ERROR_CASES = [
    # (exception, HTTP status, message) -> (client status, code, retryable)
    (("ThrottlingException", 429, "Too many requests"), (429, "rate_limit_exceeded", True)),
    (("ServiceUnavailableException", 503, "Service unavailable"), (503, "overloaded", True)),
    (("ModelNotReadyException", 429, "Model is not ready"), (503, "model_not_ready", True)),
    (("ModelTimeoutException", 408, "Model timed out"), (504, "model_timeout", True)),
    (("InternalServerException", 500, "Internal error"), (502, "upstream_error", True)),
    (("ModelErrorException", 424, "The model failed"), (502, "model_error", True)),
    (("AccessDeniedException", 403, "You don't have access"), (502, "upstream_auth_failed", True)),
    (
        ("ResourceNotFoundException", 404, "Model not found"),
        (502, "upstream_model_not_found", True),
    ),
    (
        ("ValidationException", 400, "Input is too long for requested model."),
        (400, "context_length_exceeded", False),
    ),
    (
        ("ValidationException", 400, "A conversation must start with a user message."),
        (400, "invalid_request", False),
    ),
]


@pytest.mark.parametrize(("error", "expected"), ERROR_CASES)
def test_error_classes(error: tuple[str, int, str], expected: tuple[int, str, bool]) -> None:
    failure = translate.classify_error(*aws_error(*error), redact=str)
    assert (failure.status_for_client, failure.code, failure.retryable) == expected
    assert failure.upstream_status == error[1]


def test_error_without_type_header_uses_body_type_and_redacts() -> None:
    failure = translate.classify_error(
        400,
        {},
        b'{"__type": "com.amazon.coral.validate#ValidationException", "message": "bad key sk-1"}',
        redact=lambda text: text.replace("sk-1", "***"),
    )
    assert (failure.status_for_client, failure.code, failure.message) == (
        400,
        "invalid_request",
        "bad key ***",
    )


def translator(include_usage: bool = True) -> translate.ConverseStreamTranslator:
    body = {"messages": [{"role": "user", "content": "hi"}]}
    if include_usage:
        body["stream_options"] = {"include_usage": True}  # type: ignore[assignment]
    return translate.ConverseStreamTranslator(body, model="m", redact=str)


def payloads(frames: list[bytes]) -> list[Any]:
    out = []
    for frame in frames:
        data = frame.removeprefix(b"data: ").strip()
        out.append(data.decode() if data == b"[DONE]" else json.loads(data))
    return out


def test_stream_exception_mid_stream_keeps_earlier_frames() -> None:
    t = translator()
    data = (
        event("messageStart", {"role": "assistant"})
        + event("contentBlockDelta", {"delta": {"text": "Hel"}, "contentBlockIndex": 0})
        + exception("modelStreamErrorException", "The model stream failed")
    )
    with pytest.raises(AttemptFailed) as info:
        t.feed(data)
    failure = info.value.failure
    assert (failure.status_for_client, failure.code, failure.message, failure.retryable) == (
        502,
        "model_stream_error",
        "The model stream failed",
        True,
    )
    assert [p["choices"][0]["delta"] for p in payloads(info.value.frames)] == [
        {"role": "assistant", "content": ""},
        {"content": "Hel"},
    ]


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("throttlingException", (429, "rate_limit_exceeded", True)),
        ("validationException", (400, "invalid_request", False)),
        ("internalServerException", (502, "upstream_error", True)),
        ("serviceUnavailableException", (503, "overloaded", True)),
    ],
)
def test_stream_exception_types(kind: str, expected: tuple[int, str, bool]) -> None:
    with pytest.raises(AttemptFailed) as info:
        translator().feed(exception(kind, "failed"))
    failure = info.value.failure
    assert (failure.status_for_client, failure.code, failure.retryable) == expected


def test_stream_cut_before_message_stop_is_truncated() -> None:
    t = translator()
    t.feed(event("messageStart", {"role": "assistant"}))
    with pytest.raises(AttemptFailed) as info:
        t.finish()
    assert info.value.failure.code == "upstream_stream_truncated"
    t = translator()
    whole = event("messageStop", {"stopReason": "end_turn"})
    t.feed(whole + whole[:10])  # a partial frame left at EOF
    with pytest.raises(AttemptFailed):
        t.finish()


def test_stream_without_metadata_estimates_usage() -> None:
    t = translator()
    frames = t.feed(
        event("messageStart", {"role": "assistant"})
        + event("contentBlockDelta", {"delta": {"text": "Hello there"}, "contentBlockIndex": 0})
        + event("messageStop", {"stopReason": "max_tokens"})
    )
    frames += t.finish()
    got = payloads(frames)
    base = {"id": t.id, "object": "chat.completion.chunk", "created": t.created, "model": "m"}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {**base, "choices": [choice]}

    usage = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    assert got == [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Hello there"}),
        chunk({}, "length"),
        {**base, "choices": [], "usage": usage},
        "[DONE]",
    ]
    assert t.id.startswith("chatcmpl-")
    assert t.usage.estimated


def test_stream_exception_before_any_content_sends_nothing_so_it_can_fail_over() -> None:
    t = translator()
    assert t.feed(event("messageStart", {"role": "assistant"})) == []
    with pytest.raises(AttemptFailed) as info:
        t.feed(exception("throttlingException", "slow down"))
    assert info.value.frames == []
    assert info.value.failure.retryable
