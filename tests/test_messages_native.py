"""The native Messages codec of Anthropic's API: what goes upstream (URL,
headers, the whole body's bytes), the passthrough of answers and streams (fed
to the `anthropic` SDK's own stream accumulator), usage with cache tokens,
count_tokens, and errors raising the SDK's own classes."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import anthropic
import pytest
from anthropic.types import MessageTokensCount

from gateway.fronts.messages import CountTokensFront, MessagesFront
from gateway.providers import AttemptFailed
from gateway.providers import adapter_for as build_adapter
from gateway.providers.adapter import MESSAGES, Call
from gateway.providers.anthropic.messages import (
    COUNT_TOKENS,
    AnthropicMessagesCodec,
    MessagesStream,
    count_tokens_estimate,
    estimate_messages_tokens,
)
from gateway.providers.usage import Usage
from tests import claude_code_body as cc
from tests.codec_relay import CodecRelay, sse_events
from tests.fake_anthropic import SIGNED, Failure, FakeAnthropic
from translator.errors import Position
from translator.registry import Endpoint

KEY = "sk-ant-native-canary-5521"
ENDPOINT_MODEL = "claude-opus-4-1-20250805"


def anthropic_endpoint(url: str, *, model: str | None = ENDPOINT_MODEL) -> Endpoint:
    return Endpoint(
        name="claude",
        type="anthropic",
        pos=Position("endpoints.yaml", 1, 1),
        base_url=url,
        model=model,
        auth={"api_key_env": "ANTHROPIC_KEY"},
    )


def adapter(url: str, **kwargs: Any) -> Any:
    return build_adapter(anthropic_endpoint(url, **kwargs), environ={"ANTHROPIC_KEY": KEY})


def sdk(relay: CodecRelay) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(api_key="gateway-key", base_url=relay.url, max_retries=0)


# ---------------------------------------------------------------------------
# What goes upstream.


async def test_the_request_is_the_clients_body_with_only_the_model_replaced() -> None:
    body = cc.body(cc.first_turns())
    raw = cc.wire(body)
    codec = adapter("https://api.example.test").codec(MESSAGES)
    assert isinstance(codec, AnthropicMessagesCodec)
    request = await codec.prepare(Call(MESSAGES, json.loads(raw), True, "req-1", dict(cc.HEADERS)))
    assert (request.method, request.url, dict(request.headers)) == (
        "POST",
        "https://api.example.test/v1/messages",
        {
            "Content-Type": "application/json",
            "x-api-key": KEY,
            "anthropic-version": "2023-06-01",
            "anthropic-beta": cc.HEADERS["anthropic-beta"],
        },
    )
    expected = raw.replace(
        f'"model":"{cc.CLIENT_MODEL}"'.encode(), f'"model":"{ENDPOINT_MODEL}"'.encode()
    )
    assert expected != raw
    assert request.body == expected


async def test_without_client_headers_the_endpoint_version_is_sent_and_no_beta() -> None:
    codec = adapter("https://api.example.test", model=None).codec(MESSAGES)
    assert codec is not None
    body = {"model": "claude-x", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    request = await codec.prepare(Call(MESSAGES, body))
    assert dict(request.headers) == {
        "Content-Type": "application/json",
        "x-api-key": KEY,
        "anthropic-version": "2026-10-21",
    }
    # No model on the endpoint: the client's goes up.
    assert request.body == cc.wire(body)


async def test_a_claude_code_session_reaches_anthropic_byte_identical_but_for_the_model() -> None:
    async with FakeAnthropic(api_key=KEY) as fake:
        fake.responder.cache_read, fake.responder.cache_write = 900, 120
        async with (
            CodecRelay(MessagesFront(), adapter(fake.url)) as relay,
            aiohttp.ClientSession() as client,
        ):
            messages = cc.first_turns()
            for turn in range(3):
                raw = cc.wire(cc.body(messages))
                async with client.post(
                    relay.url + "/v1/messages",
                    data=raw,
                    headers={"Content-Type": "application/json", **cc.HEADERS},
                ) as resp:
                    assert resp.status == 200
                    events = sse_events(await resp.read())
                sent = fake.requests[-1]
                assert sent.raw == raw.replace(
                    f'"model":"{cc.CLIENT_MODEL}"'.encode(),
                    f'"model":"{ENDPOINT_MODEL}"'.encode(),
                )
                assert (sent.headers["anthropic-version"], sent.headers["anthropic-beta"]) == (
                    cc.HEADERS["anthropic-version"],
                    cc.HEADERS["anthropic-beta"],
                )
                assert [name for name, _ in events][:1] == ["message_start"]
                started = events[0][1]["message"]["usage"]
                assert (
                    started["cache_read_input_tokens"],
                    started["cache_creation_input_tokens"],
                ) == (
                    900,
                    120,
                )
                # Usage counts the whole prompt, cached parts included.
                assert relay.log.usages[-1] == Usage(
                    started["input_tokens"] + 900 + 120,
                    events[-2][1]["usage"]["output_tokens"],
                    cache_read_tokens=900,
                    cache_write_tokens=120,
                )
                text = "".join(e["delta"]["text"] for n, e in events if n == "content_block_delta")
                messages = [
                    *messages,
                    {"role": "assistant", "content": [{"type": "text", "text": text}]},
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "tool_result",
                                "tool_use_id": "toolu_01B",
                                "content": f"turn {turn} done",
                            }
                        ],
                    },
                ]
            assert fake.invalid == []
            assert len(fake.requests) == 3


# ---------------------------------------------------------------------------
# Through the anthropic SDK.


async def test_sdk_create_stream_tools_images_and_count_tokens() -> None:
    async with FakeAnthropic(api_key=KEY) as fake:
        fake.responder.thinking = "Thinking it over."
        async with CodecRelay(MessagesFront(), adapter(fake.url)) as relay, sdk(relay) as client:
            message = await client.messages.create(
                model="claude-x",
                max_tokens=50,
                messages=[
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "image",
                                "source": {
                                    "type": "base64",
                                    "media_type": "image/png",
                                    "data": cc.PNG,
                                },
                            },
                            {"type": "text", "text": "what is this"},
                        ],
                    }
                ],
                extra_headers={"anthropic-beta": "some-beta-2025-01-01"},
            )
            assert message.model_dump(exclude_none=True) == {
                "id": "msg_fake0001",
                "type": "message",
                "role": "assistant",
                "model": ENDPOINT_MODEL,
                "content": [
                    {"type": "thinking", "thinking": "Thinking it over.", "signature": SIGNED},
                    {"type": "text", "text": "You said: what is this"},
                ],
                "stop_reason": "end_turn",
                "usage": {
                    "input_tokens": 3,
                    "output_tokens": 5,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 0,
                },
            }
            assert fake.requests[-1].headers["anthropic-beta"] == "some-beta-2025-01-01"
            assert relay.log.usages[-1] == Usage(3, 5)

            tools = [
                {
                    "name": "get_weather",
                    "description": "Weather of a city",
                    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
                }
            ]
            ask = {"role": "user", "content": 'Use get_weather {"city": "Paris"}'}
            async with client.messages.stream(
                model="claude-x", max_tokens=50, messages=[ask], tools=tools
            ) as stream:
                final = await stream.get_final_message()
            assert final.model_dump(exclude_none=True)["content"] == [
                {"type": "thinking", "thinking": "Thinking it over.", "signature": SIGNED},
                {
                    "type": "tool_use",
                    "id": "toolu_000000000000000000000001",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
            ]
            use = final.content[-1]
            assert (use.type, use.name, use.input) == ("tool_use", "get_weather", {"city": "Paris"})  # type: ignore[union-attr]
            assert final.stop_reason == "tool_use"
            answer = await client.messages.create(
                model="claude-x",
                max_tokens=50,
                tools=tools,
                messages=[
                    ask,
                    {
                        "role": "assistant",
                        "content": [b.model_dump(exclude_none=True) for b in final.content],
                    },  # type: ignore[misc]
                    {
                        "role": "user",
                        "content": [
                            {"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}
                        ],  # type: ignore[union-attr]
                    },
                ],
            )
            assert answer.content[-1].text == "The tool said: sunny"  # type: ignore[union-attr]

        async with CodecRelay(CountTokensFront(), adapter(fake.url)) as relay, sdk(relay) as client:
            counted = await client.messages.count_tokens(
                model="claude-x", messages=[{"role": "user", "content": "count these four words"}]
            )
            assert counted == MessageTokensCount(input_tokens=4)
            assert relay.log.sent[-1].url == fake.url + "/v1/messages/count_tokens"
            assert relay.log.usages == [Usage(0, 0)]
        assert fake.invalid == []


@pytest.mark.parametrize(
    ("failure", "error_class", "status", "error_type"),
    [
        (
            Failure(400, "invalid_request_error", "messages: bad"),
            anthropic.BadRequestError,
            400,
            "invalid_request_error",
        ),
        (
            Failure(429, "rate_limit_error", "slow down", {"retry-after": "3"}),
            anthropic.RateLimitError,
            429,
            "rate_limit_error",
        ),
        (
            Failure(529, "overloaded_error", "Overloaded"),
            anthropic.ServiceUnavailableError,
            503,
            "overloaded_error",
        ),
        (Failure(500, "api_error", "boom"), anthropic.InternalServerError, 502, "api_error"),
        (
            Failure(401, "authentication_error", "invalid x-api-key"),
            anthropic.InternalServerError,
            502,
            "api_error",
        ),
    ],
)
async def test_upstream_errors_raise_the_sdks_classes(
    failure: Failure, error_class: type[Exception], status: int, error_type: str
) -> None:
    async with (
        FakeAnthropic(api_key=KEY) as fake,
        CodecRelay(MessagesFront(), adapter(fake.url)) as relay,
    ):
        fake.fail(failure)
        with pytest.raises(error_class) as info:
            async with sdk(relay) as client:
                await client.messages.create(
                    model="claude-x", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
                )
        err = info.value
        assert isinstance(err, anthropic.APIStatusError)
        assert err.status_code == status
        assert err.body == {
            "type": "error",
            "error": {"type": error_type, "message": relay.log.failures[-1].message},
        }


async def test_an_error_event_after_content_ends_the_sdk_stream_with_its_error() -> None:
    async with (
        FakeAnthropic(api_key=KEY) as fake,
        CodecRelay(MessagesFront(), adapter(fake.url)) as relay,
    ):
        stream = MessagesStream(prompt_estimate=5, redact=str)
        head = stream.feed(upstream_bytes(EVENTS[:1]))
        assert head == []  # held: an error now still fails over
        with pytest.raises(AttemptFailed) as info:
            stream.feed(
                upstream_bytes(
                    [
                        (
                            "error",
                            {
                                "type": "error",
                                "error": {"type": "overloaded_error", "message": "x"},
                            },
                        )
                    ]
                )
            )
        assert (
            info.value.failure.status_for_client,
            info.value.failure.retryable,
            info.value.frames,
        ) == (503, True, [])
        fake.fail(Failure(529, "overloaded_error", "Overloaded", in_stream=True))
        with pytest.raises(anthropic.ServiceUnavailableError):
            async with (
                sdk(relay) as client,
                client.messages.stream(
                    model="claude-x", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
                ) as sdk_stream,
            ):
                await sdk_stream.get_final_message()


# ---------------------------------------------------------------------------
# The passthrough stream.

EVENTS = [
    (
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "model": "claude-x",
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {
                    "input_tokens": 10,
                    "cache_creation_input_tokens": 5,
                    "cache_read_input_tokens": 100,
                    "output_tokens": 1,
                },
            },
        },
    ),
    ("ping", {"type": "ping"}),
    (
        "content_block_start",
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    ),
    (
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": "Héllo “wörld”"},
        },
    ),
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": 9},
        },
    ),
    ("message_stop", {"type": "message_stop"}),
]


def upstream_bytes(events: list[tuple[str, dict[str, Any]]]) -> bytes:
    return b"".join(
        f"event: {name}\r\ndata: {json.dumps(payload, ensure_ascii=False)}\r\n\r\n".encode()
        for name, payload in events
    )


@pytest.mark.parametrize("piece", [1, 7, 10_000])
def test_events_pass_through_untouched_in_any_pieces(piece: int) -> None:
    raw = upstream_bytes(EVENTS)
    stream = MessagesStream(prompt_estimate=3, redact=str)
    frames: list[bytes] = []
    for start in range(0, len(raw), piece):
        frames += stream.feed(raw[start : start + piece])
    frames += stream.finish()
    assert frames == [
        f"event: {name}\ndata: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()
        for name, payload in EVENTS
    ]
    assert stream.usage == Usage(115, 9, cache_read_tokens=100, cache_write_tokens=5)


def test_a_stream_cut_short_is_truncated_and_a_missing_message_stop_is_added() -> None:
    cut = MessagesStream(prompt_estimate=3, redact=str)
    cut.feed(upstream_bytes(EVENTS[:4]))
    with pytest.raises(AttemptFailed) as info:
        cut.finish()
    assert info.value.failure.code == "upstream_stream_truncated"
    stopped = MessagesStream(prompt_estimate=3, redact=str)
    stopped.feed(upstream_bytes(EVENTS[:6]))
    assert stopped.finish() == [b'event: message_stop\ndata: {"type":"message_stop"}\n\n']


def test_estimates_and_the_count_tokens_estimate() -> None:
    image = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": cc.PNG},
    }
    body = {
        "system": "abcdefgh",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "x" * 40}, image]},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t", "name": "Bash", "input": {"a": 1}}],
            },
        ],
    }
    # 8 + 40 + len("Bash") + len('{"a":1}') = 59 characters: 15 tokens; an image
    # 1600; 3 per turn and 3 to prime the reply.
    assert estimate_messages_tokens(body) == 15 + 1600 + 6 + 3
    assert count_tokens_estimate(body) == {"input_tokens": 1624, "estimated": True}
    stream = MessagesStream(prompt_estimate=42, redact=str)
    stream.feed(upstream_bytes(EVENTS[2:4]))
    assert stream.usage == Usage(42, 4, estimated=True)


def test_count_tokens_codec_is_a_separate_key() -> None:
    codec = adapter("https://api.example.test").codec(COUNT_TOKENS)
    assert codec is not None and codec.operation == COUNT_TOKENS
    assert adapter("https://api.example.test").codec("responses") is None
