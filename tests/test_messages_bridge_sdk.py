"""The Messages bridge's streams and the `anthropic` SDK through translated
endpoints: chat chunk streams become events the SDK's own accumulator turns
into the right message; create, stream, tool-use round trips, refusals and
errors through a translated vLLM and a translated Azure deployment."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import RawMessageStreamEvent
from pydantic import TypeAdapter

from gateway.fronts.messages import MessagesFront, messages_codec
from gateway.fronts.messages_bridge import MessagesBridge
from gateway.providers import AttemptFailed
from gateway.providers import adapter_for as build_adapter
from gateway.providers.adapter import MESSAGES, Call
from gateway.providers.usage import Usage
from tests.codec_relay import CodecRelay, sse_events
from tests.fake_azure import AzureReply, FakeAzure
from tests.fake_upstream import FakeUpstream
from tests.test_messages_bridge import TOOLS
from translator.errors import Position
from translator.registry import Endpoint

EVENT: TypeAdapter[Any] = TypeAdapter(RawMessageStreamEvent)


def vllm_adapter(url: str) -> Any:
    return build_adapter(
        Endpoint(
            name="vllm",
            type="openai-compatible",
            pos=Position("endpoints.yaml", 1, 1),
            base_url=url,
            model="meta-llama/Llama-3.1-8B-Instruct",
            options={"flavor": "vllm"},
        )
    )


def chat_sse(chunks: list[dict[str, Any]]) -> bytes:
    return (
        b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"
    )


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "llama",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def test_a_chat_stream_becomes_events_the_sdk_accumulates() -> None:
    bridge = messages_codec(vllm_adapter("http://vllm.test"))
    assert isinstance(bridge, MessagesBridge)
    body = {
        "model": "claude-x",
        "max_tokens": 50,
        "stream": True,
        "tools": TOOLS[:1],
        "messages": [{"role": "user", "content": "hi"}],
    }
    translator = bridge.stream_translator(Call(MESSAGES, body, True))
    raw = chat_sse(
        [
            chunk({"role": "assistant", "content": ""}),
            chunk({"content": "Let me "}),
            chunk({"content": "check."}),
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": ""},
                        }
                    ]
                }
            ),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Rome"}'}}]}),
            chunk({}, "tool_calls"),
            {
                "id": "c1",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": "llama",
                "choices": [],
                "usage": {"prompt_tokens": 30, "completion_tokens": 9, "total_tokens": 39},
            },
        ]
    )
    frames: list[bytes] = []
    for i in range(0, len(raw), 5):
        frames += translator.feed(raw[i : i + 5])
    frames += translator.finish()
    events = sse_events(b"".join(frames))
    assert [name for name, _ in events] == [
        "message_start", "ping",
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "message_delta", "message_stop",
    ]  # fmt: skip
    snapshot = None
    buffers: dict[int, bytes] = {}
    for name, payload in events:
        assert payload["type"] == name
        if name == "ping":
            continue  # the SDK skips pings, and they are no RawMessageStreamEvent
        snapshot = accumulate_event(
            event=EVENT.validate_python(payload), current_snapshot=snapshot, json_bufs=buffers
        )
    assert snapshot is not None
    assert snapshot.model_dump(exclude_none=True) == {
        "id": translator.id,  # type: ignore[attr-defined]
        "type": "message",
        "role": "assistant",
        "model": "llama",
        "content": [
            {"type": "text", "text": "Let me check."},
            {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Rome"}},
        ],
        "stop_reason": "tool_use",
        "usage": {
            "input_tokens": 30,
            "output_tokens": 9,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }
    assert translator.usage == Usage(30, 9)


def test_nothing_goes_out_before_content_and_late_errors_end_with_an_error_event() -> None:
    bridge = messages_codec(vllm_adapter("http://vllm.test"))
    assert bridge is not None
    body = {
        "model": "m",
        "max_tokens": 5,
        "stream": True,
        "messages": [{"role": "user", "content": "hi"}],
    }
    early = bridge.stream_translator(Call(MESSAGES, body, True))
    with pytest.raises(AttemptFailed) as info:
        early.feed(b'data: {"error": {"message": "overloaded", "code": "overloaded"}}\n\n')
    assert (info.value.frames, info.value.failure.retryable) == ([], True)
    late = bridge.stream_translator(Call(MESSAGES, body, True))
    assert (
        late.feed(
            chat_sse([chunk({"role": "assistant", "content": ""})])[: -len(b"data: [DONE]\n\n")]
        )
        == []
    )
    started = late.feed(b"data: " + json.dumps(chunk({"content": "Hi"})).encode() + b"\n\n")
    assert [name for name, _ in sse_events(b"".join(started))][:2] == ["message_start", "ping"]
    with pytest.raises(AttemptFailed) as info:
        late.feed(b'data: {"error": {"message": "boom"}}\n\n')
    (frame,) = late.error_frames(info.value.failure)
    assert sse_events(frame) == [
        ("error", {"type": "error", "error": {"type": "api_error", "message": "boom"}})
    ]


# ---------------------------------------------------------------------------
# The anthropic SDK through translated endpoints.


async def test_the_sdk_through_a_translated_vllm() -> None:
    async with (
        FakeUpstream(token=None) as fake,
        CodecRelay(MessagesFront(), vllm_adapter(fake.url)) as relay,
    ):
        client = anthropic.AsyncAnthropic(api_key="k", base_url=relay.url, max_retries=0)
        async with client:
            fake.next(reply="Bonjour à tous")
            message = await client.messages.create(
                model="claude-x",
                max_tokens=20,
                system="Be brief.",
                messages=[{"role": "user", "content": "hello"}],
            )
            assert message.model_dump(exclude_none=True) == {
                "id": message.id,
                "type": "message",
                "role": "assistant",
                "model": "meta-llama/Llama-3.1-8B-Instruct",
                "content": [{"type": "text", "text": "Bonjour à tous"}],
                "stop_reason": "end_turn",
                "usage": {
                    "input_tokens": 3,
                    "output_tokens": 3,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 0,
                },
            }
            assert fake.requests[-1].json == {
                "model": "meta-llama/Llama-3.1-8B-Instruct",
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "hello"},
                ],
                "max_tokens": 20,
                "stream": False,
            }
            fake.next(reply="one two three")
            async with client.messages.stream(
                model="claude-x", max_tokens=20, messages=[{"role": "user", "content": "count"}]
            ) as stream:
                text = "".join([t async for t in stream.text_stream])
                final = await stream.get_final_message()
            assert (text, final.stop_reason, final.usage.output_tokens) == (
                "one two three",
                "end_turn",
                3,
            )
            assert relay.log.usages[-1] == Usage(1, 3)
            with pytest.raises(anthropic.BadRequestError) as info:
                await client.messages.create(
                    model="claude-x",
                    max_tokens=20,
                    messages=[
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
                    ],
                )
            assert info.value.body == {
                "type": "error",
                "error": {
                    "type": "invalid_request_error",
                    "message": relay.log.failures[-1].message,
                },
            }
            fake.fail(429, headers={"retry-after": "1"})
            with pytest.raises(anthropic.RateLimitError):
                await client.messages.create(
                    model="claude-x", max_tokens=5, messages=[{"role": "user", "content": "x"}]
                )


async def test_a_tool_use_round_trip_through_a_translated_azure_deployment() -> None:
    fake = await FakeAzure(api_key="az", tenant="t", client_id="c", client_secret="s").start()
    adapter = build_adapter(
        Endpoint(
            name="azure",
            type="azure-openai",
            pos=Position("endpoints.yaml", 1, 1),
            base_url=fake.url,
            auth={"api_key_env": "AZ"},
            options={"deployment": "gpt-4o", "api_version": "2024-10-21"},
        ),
        environ={"AZ": "az"},
    )
    try:
        async with (
            CodecRelay(MessagesFront(), adapter) as relay,
            anthropic.AsyncAnthropic(api_key="k", base_url=relay.url, max_retries=0) as client,
        ):
            fake.queue.append(
                AzureReply(text=None, tool_calls=[("call_7", "get_weather", {"city": "Lima"})])
            )
            ask = {"role": "user", "content": "Weather in Lima?"}
            async with client.messages.stream(
                model="claude-x", max_tokens=64, tools=TOOLS, messages=[ask]
            ) as stream:  # type: ignore[arg-type,list-item]
                first = await stream.get_final_message()
            use = first.content[0]
            assert (first.stop_reason, use.type, use.id, use.input) == (
                "tool_use",
                "tool_use",
                "call_7",
                {"city": "Lima"},
            )  # type: ignore[union-attr]
            fake.queue.append(AzureReply(text="It is 20 degrees."))
            answer = await client.messages.create(
                model="claude-x",
                max_tokens=64,
                tools=TOOLS,  # type: ignore[arg-type]
                messages=[
                    ask,
                    {
                        "role": "assistant",
                        "content": [b.model_dump(exclude_none=True) for b in first.content],
                    },  # type: ignore[misc]
                    {
                        "role": "user",
                        "content": [
                            {"type": "tool_result", "tool_use_id": "call_7", "content": "20C"}
                        ],
                    },
                ],
            )
            assert answer.content[0].text == "It is 20 degrees."  # type: ignore[union-attr]
            sent = fake.requests[-1]["json"]
            assert sent["messages"][1:] == [
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_7",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Lima"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_7", "content": "20C"},
            ]
            assert sent["max_completion_tokens"] == 64
        assert fake.rejected == []
    finally:
        await adapter.close()
        await fake.close()


async def test_a_request_the_bridge_refuses_is_refused_by_prepare_even_streamed() -> None:
    bridge = messages_codec(vllm_adapter("http://vllm.test"))
    assert isinstance(bridge, MessagesBridge)
    body = {"model": "m", "max_tokens": 5, "stream": True, "frobnicate": 1, "messages": []}
    call = Call(MESSAGES, body, True)
    # What the forwarder asks before it prepares must not raise.
    assert bridge.upstream_model(call) == "meta-llama/Llama-3.1-8B-Instruct"
    translator = bridge.stream_translator(call)
    assert bridge.dropped(call) == []
    with pytest.raises(AttemptFailed) as info:
        await bridge.prepare(call)
    assert info.value.failure.code == "unsupported_request"
    with pytest.raises(AttemptFailed):
        translator.feed(b"data: [DONE]\n\n")
