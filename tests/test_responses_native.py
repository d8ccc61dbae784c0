"""The native Responses codecs of OpenAI and Azure OpenAI: the exact upstream
request (the client's bytes with only the model replaced), the `openai` SDK's
`responses.create` and Responses stream helper fed what the codec passes
through (plain, streamed, function calling with `previous_response_id`,
structured output), usage, and errors raising the SDK's classes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from openai.types.responses import Response
from pydantic import BaseModel

from gateway.fronts.responses import ResponsesFront
from gateway.providers import AttemptFailed
from gateway.providers import adapter_for as build_adapter
from gateway.providers.adapter import RESPONSES, Call
from gateway.providers.azure_openai.responses import AzureResponsesCodec
from gateway.providers.openai_compatible.responses import OpenAIResponsesCodec, ResponsesStream
from gateway.providers.usage import Usage
from tests.codec_relay import CodecRelay, sse_events
from tests.fake_azure import FakeAzure
from tests.fake_responses import ResponsesFailure
from tests.fake_upstream import FakeUpstream
from translator.errors import Position
from translator.registry import Endpoint

KEY = "sk-openai-native-canary-77"
AZURE_KEY = "azure-responses-canary-31"
MODEL = "gpt-5-mini-2025-08-07"


def openai_endpoint(url: str) -> Endpoint:
    return Endpoint(
        name="openai",
        type="openai",
        pos=Position("endpoints.yaml", 1, 1),
        base_url=url,
        model=MODEL,
        auth={"api_key_env": "OPENAI_KEY"},
    )


def azure_endpoint(url: str, **options: Any) -> Endpoint:
    return Endpoint(
        name="azure",
        type="azure-openai",
        pos=Position("endpoints.yaml", 1, 1),
        base_url=url,
        auth={"api_key_env": "AZURE_KEY"},
        options={"deployment": "gpt-4o", "api_version": "2024-10-21", **options},
    )


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[FakeUpstream, Any]]:
    async with FakeUpstream(token=KEY) as fake:
        yield fake, build_adapter(openai_endpoint(fake.url), environ={"OPENAI_KEY": KEY})


def sdk(relay: CodecRelay) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key="gateway-key", base_url=relay.url + "/v1", max_retries=0)


CLIENT_BODY: dict[str, Any] = {
    "model": "gpt-5",
    "input": [
        {"role": "developer", "content": "Answer in one word — “exactly”."},
        {"role": "user", "content": [{"type": "input_text", "text": "héllo"}]},
        {"type": "function_call", "call_id": "call_1", "name": "lookup", "arguments": '{"q":"x"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "found"},
    ],
    "tools": [
        {"type": "function", "name": "lookup", "parameters": {"type": "object"}, "strict": True}
    ],
    "reasoning": {"effort": "low", "summary": "auto"},
    "previous_response_id": None,
    "store": True,
    "include": ["reasoning.encrypted_content"],
    "stream": True,
    "metadata": {"ticket": "T-1"},
}


async def test_the_request_is_the_clients_body_with_only_the_model_replaced(
    upstream: tuple[FakeUpstream, Any],
) -> None:
    fake, adapter = upstream
    codec = adapter.codec(RESPONSES)
    assert isinstance(codec, OpenAIResponsesCodec)
    raw = json.dumps(CLIENT_BODY, separators=(",", ":"), ensure_ascii=False).encode()
    request = await codec.prepare(Call(RESPONSES, json.loads(raw), True))
    assert (request.method, request.url, dict(request.headers)) == (
        "POST",
        fake.url + "/responses",
        {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"},
    )
    assert request.body == raw.replace(b'"model":"gpt-5"', f'"model":"{MODEL}"'.encode())


async def test_sdk_create_stream_function_round_trip_and_structured_output(
    upstream: tuple[FakeUpstream, Any],
) -> None:
    fake, adapter = upstream
    async with CodecRelay(ResponsesFront(), adapter) as relay, sdk(relay) as client:
        plain = await client.responses.create(model="gpt-5", input="hello there", store=False)
        assert (plain.output_text, plain.model, plain.status) == (
            "You said: hello there",
            MODEL,
            "completed",
        )
        assert relay.log.usages[-1] == Usage(2, 4)

        tools = [
            {
                "type": "function",
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                "strict": False,
            }
        ]
        async with client.responses.stream(
            model="gpt-5",
            input='get_weather {"city": "Oslo"}',
            tools=tools,  # type: ignore[arg-type]
        ) as stream:
            kinds = [event.type async for event in stream]
            final = await stream.get_final_response()
        assert kinds[:3] == [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
        ]
        assert kinds[-1] == "response.completed"
        # What the SDK accumulated is what the upstream answered, whole.
        stored = Response.model_validate(fake.responses.stored[final.id])
        assert final.model_dump(exclude_none=True) == stored.model_dump(exclude_none=True)
        call = final.output[0]
        assert (call.type, call.name, json.loads(call.arguments)) == (
            "function_call",
            "get_weather",
            {"city": "Oslo"},
        )  # type: ignore[union-attr]
        assert relay.log.usages[-1] == Usage(3, 12)

        # The conversation state stays with OpenAI: previous_response_id passes through.
        follow = await client.responses.create(
            model="gpt-5",
            previous_response_id=final.id,
            input=[{"type": "function_call_output", "call_id": call.call_id, "output": "rainy"}],  # type: ignore[union-attr]
            tools=tools,  # type: ignore[arg-type]
        )
        assert follow.output_text == "The tool said: rainy"
        assert fake.requests[-1].json["previous_response_id"] == final.id

        class Answer(BaseModel):
            city: str

        parsed = await client.responses.parse(model="gpt-5", input="Paris", text_format=Answer)
        assert parsed.output_parsed == Answer(city="Paris")
    assert fake.responses.invalid == []


async def test_stream_failures_and_errors(upstream: tuple[FakeUpstream, Any]) -> None:
    fake, adapter = upstream
    async with CodecRelay(ResponsesFront(), adapter) as relay, sdk(relay) as client:
        # response.created, then response.failed: nothing reached the client, so
        # the forwarder may still fail over; here the relay answers the error.
        fake.responses.queue.append(ResponsesFailure(500, "model melted", in_stream=True))
        with pytest.raises(openai.InternalServerError):
            async with client.responses.stream(model="gpt-5", input="hi") as stream:
                await stream.get_final_response()
        assert relay.log.failures[-1].message == "model melted"
        fake.responses.queue.append(
            ResponsesFailure(429, "slow down", "rate_limit_error", "rate_limit_exceeded")
        )
        with pytest.raises(openai.RateLimitError):
            await client.responses.create(model="gpt-5", input="hi")
        with pytest.raises(openai.BadRequestError) as info:
            await client.responses.create(
                model="gpt-5", input="hi", previous_response_id="resp_unknown"
            )
        assert info.value.code == "previous_response_not_found"


def test_the_passthrough_holds_lifecycle_events_and_ends_with_response_failed() -> None:
    created = {
        "type": "response.created",
        "sequence_number": 0,
        "response": {
            "id": "resp_1",
            "object": "response",
            "created_at": 1,
            "model": "m",
            "output": [],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "status": "in_progress",
        },
    }
    delta = {
        "type": "response.output_text.delta",
        "sequence_number": 1,
        "item_id": "msg_1",
        "output_index": 0,
        "content_index": 0,
        "delta": "Hi",
        "logprobs": [],
    }
    stream = ResponsesStream(prompt_estimate=1, redact=str)
    assert stream.feed(f"event: response.created\ndata: {json.dumps(created)}\n\n".encode()) == []
    frames = stream.feed(
        f"event: response.output_text.delta\ndata: {json.dumps(delta)}\n\n".encode()
    )
    assert [payload for _, payload in sse_events(b"".join(frames))] == [created, delta]
    with pytest.raises(AttemptFailed) as info:
        stream.feed(
            b"event: error\ndata: "
            b'{"type":"error","code":"server_error","message":"x","sequence_number":2}\n\n'
        )
    (failed,) = stream.error_frames(info.value.failure)
    ((name, payload),) = sse_events(failed)
    assert (name, payload["sequence_number"], payload["response"]["status"]) == (
        "response.failed",
        2,
        "failed",
    )
    assert payload["response"]["error"] == {"code": "server_error", "message": "x"}
    with pytest.raises(AttemptFailed):
        ResponsesStream(prompt_estimate=1, redact=str).finish()  # nothing: truncated


@pytest.mark.parametrize(
    ("options", "path", "query"),
    [
        ({}, "/openai/v1/responses", {}),
        (
            {"responses_api_version": "2025-04-01-preview"},
            "/openai/responses",
            {"api-version": "2025-04-01-preview"},
        ),
    ],
)
async def test_azure_responses(options: dict[str, str], path: str, query: dict[str, str]) -> None:
    fake = await FakeAzure(api_key=AZURE_KEY, tenant="t", client_id="c", client_secret="s").start()
    adapter = build_adapter(azure_endpoint(fake.url, **options), environ={"AZURE_KEY": AZURE_KEY})
    try:
        codec = adapter.codec(RESPONSES)
        assert isinstance(codec, AzureResponsesCodec)
        request = await codec.prepare(Call(RESPONSES, {"model": "anything", "input": "hi"}))
        assert request.url == fake.url + path + ("?api-version=2025-04-01-preview" if query else "")
        assert dict(request.headers) == {"Content-Type": "application/json", "api-key": AZURE_KEY}
        assert json.loads(request.body) == {"model": "gpt-4o", "input": "hi"}
        async with CodecRelay(ResponsesFront(), adapter) as relay, sdk(relay) as client:
            async with client.responses.stream(model="x", input="hola amigo") as stream:
                final = await stream.get_final_response()
            assert (final.output_text, final.model) == ("You said: hola amigo", "gpt-4o-2024-11-20")
        assert fake.requests[-1]["query"] == query
    finally:
        await fake.close()
