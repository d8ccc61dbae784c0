"""The Responses bridge with the `openai` SDK: `responses.create`, the Responses
stream helper (whose accumulator checks event order, ids and sequence numbers),
a function-calling round trip and structured output, through a translated
Anthropic fake and a translated vLLM fake; what is dropped is listed for the
audit record; what needs stored state is refused with the SDK's
BadRequestError."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest
from openai.types.responses import ResponseStreamEvent
from pydantic import BaseModel, TypeAdapter

from gateway.fronts.responses import ResponsesFront
from gateway.fronts.responses_bridge import ResponsesBridge
from gateway.providers import AttemptFailed
from gateway.providers import adapter_for as build_adapter
from gateway.providers.adapter import RESPONSES, Call
from gateway.providers.usage import Usage
from tests.codec_relay import CodecRelay, sse_events
from tests.fake_anthropic import FakeAnthropic
from tests.fake_upstream import FakeUpstream
from translator.errors import Position
from translator.registry import Endpoint

KEY = "sk-ant-bridge-canary-9"
EVENT: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
TOOLS: list[Any] = [
    {
        "type": "function",
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        "strict": False,
    }
]


def anthropic_adapter(url: str) -> Any:
    endpoint = Endpoint(
        name="claude",
        type="anthropic",
        pos=Position("endpoints.yaml", 1, 1),
        base_url=url,
        model="claude-sonnet-4-5",
        auth={"api_key_env": "K"},
    )
    return build_adapter(endpoint, environ={"K": KEY})


def vllm_adapter(url: str) -> Any:
    endpoint = Endpoint(
        name="vllm",
        type="openai-compatible",
        pos=Position("endpoints.yaml", 1, 1),
        base_url=url,
        model="Qwen/Qwen3-8B",
        options={"flavor": "vllm"},
    )
    return build_adapter(endpoint)


@pytest.fixture
async def claude() -> AsyncIterator[tuple[FakeAnthropic, CodecRelay, openai.AsyncOpenAI]]:
    async with (
        FakeAnthropic(api_key=KEY) as fake,
        CodecRelay(ResponsesFront(), anthropic_adapter(fake.url)) as relay,
        openai.AsyncOpenAI(api_key="k", base_url=relay.url + "/v1", max_retries=0) as client,
    ):
        yield fake, relay, client
    assert fake.invalid == []


async def test_create_and_stream_through_a_translated_anthropic_endpoint(
    claude: tuple[FakeAnthropic, CodecRelay, openai.AsyncOpenAI],
) -> None:
    fake, relay, client = claude
    plain = await client.responses.create(
        model="gpt-5", instructions="Be brief.", input="hello there", reasoning={"effort": "high"}
    )
    assert (plain.output_text, plain.status, plain.model, plain.store) == (
        "You said: hello there",
        "completed",
        "claude-sonnet-4-5",
        False,
    )
    assert plain.usage is not None and (plain.usage.input_tokens, plain.usage.output_tokens) == (
        4,
        4,
    )
    assert fake.requests[-1].json == {
        "model": "claude-sonnet-4-5",
        "max_tokens": 4096,
        "messages": [{"role": "user", "content": "hello there"}],
        "system": "Be brief.",
    }
    bridge = relay.log.codecs[-1]
    assert isinstance(bridge, ResponsesBridge)
    assert bridge.dropped(relay.log.calls[-1]) == [
        "reasoning.effort: dropped (this endpoint takes no reasoning settings)"
    ]

    async with client.responses.stream(model="gpt-5", input="stream this please") as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_response()
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * 5,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert final.output_text == "You said: stream this please"
    assert relay.log.usages[-1] == Usage(3, 5)


async def test_a_function_calling_round_trip(
    claude: tuple[FakeAnthropic, CodecRelay, openai.AsyncOpenAI],
) -> None:
    fake, _, client = claude
    ask = {"role": "user", "content": 'Call get_weather {"city": "Oslo"}'}
    async with client.responses.stream(model="gpt-5", input=[ask], tools=TOOLS) as stream:  # type: ignore[list-item]
        first = await stream.get_final_response()
    (call,) = first.output
    assert call.type == "function_call"
    assert (call.name, json.loads(call.arguments), call.status) == (
        "get_weather",
        {"city": "Oslo"},
        "completed",
    )
    answer = await client.responses.create(
        model="gpt-5",
        tools=TOOLS,
        input=[
            ask,  # type: ignore[list-item]
            {
                "type": "function_call",
                "call_id": call.call_id,
                "name": call.name,
                "arguments": call.arguments,
            },
            {"type": "function_call_output", "call_id": call.call_id, "output": "cloudy"},
        ],
    )
    assert answer.output_text == "The tool said: cloudy"
    assert fake.requests[-1].json["messages"][1:] == [
        {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": call.call_id,
                    "name": "get_weather",
                    "input": {"city": "Oslo"},
                }
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": call.call_id, "content": "cloudy"}],
        },
    ]
    with pytest.raises(openai.BadRequestError) as info:
        await client.responses.create(model="gpt-5", input="more", previous_response_id=first.id)
    assert info.value.code == "unsupported_request"
    assert "the gateway keeps no conversation state" in info.value.message


async def test_structured_output_and_raw_events_through_a_translated_vllm() -> None:
    async with (
        FakeUpstream(token=None) as fake,
        CodecRelay(ResponsesFront(), vllm_adapter(fake.url)) as relay,
        openai.AsyncOpenAI(api_key="k", base_url=relay.url + "/v1", max_retries=0) as client,
    ):

        class City(BaseModel):
            city: str

        fake.next(reply='{"city": "Paris"}')
        parsed = await client.responses.parse(model="gpt-5", input="Where?", text_format=City)
        assert parsed.output_parsed == City(city="Paris")
        sent = fake.requests[-1].json
        assert sent["response_format"]["type"] == "json_schema"
        assert sent["response_format"]["json_schema"]["name"] == "City"

        fake.next(reply="a b c")
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                relay.url + "/v1/responses",
                json={"model": "gpt-5", "input": "x", "stream": True, "max_output_tokens": 50},
            ) as resp,
        ):
            events = sse_events(await resp.read())
        assert [p["sequence_number"] for _, p in events] == list(range(len(events)))
        for name, payload in events:
            assert payload["type"] == name
            EVENT.validate_python(payload)
        done = events[-1][1]["response"]
        assert (
            done["status"],
            done["max_output_tokens"],
            done["output"][0]["content"][0]["text"],
        ) == ("completed", 50, "a b c")
        assert fake.requests[-1].json["max_tokens"] == 50


async def test_failures_after_the_first_event_end_with_response_failed() -> None:
    bridge = ResponsesFront().codec_for(vllm_adapter("http://vllm.test"))
    assert isinstance(bridge, ResponsesBridge)
    translator = bridge.stream_translator(
        Call(RESPONSES, {"model": "m", "input": "hi", "stream": True}, True)
    )
    assert (
        translator.feed(
            b'data: {"id":"c","choices":[{"index":0,'
            b'"delta":{"role":"assistant","content":""}}]}\n\n'
        )
        == []
    )
    frames = translator.feed(
        b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n'
    )
    assert [name for name, _ in sse_events(b"".join(frames))] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
    ]
    with pytest.raises(AttemptFailed) as info:
        translator.feed(b'data: {"error": {"message": "GPU fell over"}}\n\n')
    ((name, payload),) = sse_events(b"".join(translator.error_frames(info.value.failure)))
    assert (name, payload["sequence_number"]) == ("response.failed", 5)
    EVENT.validate_python(payload)
    assert payload["response"]["error"] == {"code": "server_error", "message": "GPU fell over"}
    assert payload["response"]["output"][0]["type"] == "message"
