"""The native Messages codecs of Claude on Vertex AI (rawPredict /
streamRawPredict, count-tokens) and on Bedrock (InvokeModel,
InvokeModelWithResponseStream in AWS event-stream framing, CountTokens):
exact upstream requests, SigV4 checked by the fake, and the `anthropic` SDK fed
what the codecs answer."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import pytest
from anthropic.types import MessageTokensCount

from gateway.fronts.messages import CountTokensFront, MessagesFront
from gateway.providers import AttemptFailed
from gateway.providers import adapter_for as build_adapter
from gateway.providers.adapter import MESSAGES, Call
from gateway.providers.anthropic.messages import COUNT_TOKENS
from gateway.providers.bedrock.invoke import (
    BedrockMessagesCodec,
    InvokeStream,
    serves_messages,
)
from gateway.providers.usage import Usage
from gateway.providers.vertex.messages import VertexMessagesCodec
from tests import claude_code_body as cc
from tests.bedrock_azure_harness import AWS_ACCESS_KEY, AWS_SECRET, use_test_aws_identity
from tests.codec_relay import CodecRelay, sse_events
from tests.fake_bedrock import FakeBedrock, encode_message, event, exception
from tests.fake_vertex import FakeVertex, make_service_account
from translator.errors import Position
from translator.registry import Endpoint

VERTEX_MODEL = "claude-sonnet-4-5@20250929"
BEDROCK_MODEL = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
SIMPLE = {
    "model": "claude-x",
    "max_tokens": 20,
    "messages": [{"role": "user", "content": "hi there"}],
}


def endpoint(type_: str, base_url: str, model: str | None, **options: Any) -> Endpoint:
    auth = options.pop("auth", {})
    return Endpoint(
        name=type_,
        type=type_,
        pos=Position("endpoints.yaml", 1, 1),
        base_url=base_url,
        model=model,
        auth=auth,
        options=options,
    )


@pytest.fixture
async def vertex(tmp_path: Path) -> AsyncIterator[tuple[FakeVertex, Any]]:
    async with FakeVertex(project="p1", location="us-east5") as fake:
        account = make_service_account(tmp_path, fake.token_uri)
        fake.trust(account)
        adapter = build_adapter(
            endpoint(
                "vertex",
                fake.url,
                VERTEX_MODEL,
                project="p1",
                location="us-east5",
                publisher="anthropic",
                auth={"service_account_file": str(account.path)},
            )
        )
        yield fake, adapter
        await adapter.close()


@pytest.fixture
async def bedrock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[FakeBedrock, Any]]:
    use_test_aws_identity(monkeypatch, tmp_path)
    fake = await FakeBedrock().start()
    fake.allow(AWS_ACCESS_KEY, AWS_SECRET)
    adapter = build_adapter(endpoint("bedrock", fake.url, BEDROCK_MODEL, region="us-east-1"))
    yield fake, adapter
    await adapter.close()
    await fake.close()


def sdk(relay: CodecRelay) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(api_key="gateway-key", base_url=relay.url, max_retries=0)


def without_model(raw: bytes, first: bytes) -> bytes:
    """The client's bytes with Vertex/Bedrock's field first and `model` removed."""
    body = raw.replace(f'"model":"{cc.CLIENT_MODEL}",'.encode(), b"")
    return b"{" + first + b"," + body[1:]


# ---------------------------------------------------------------------------
# Vertex AI.


async def test_vertex_raw_predict_gets_the_clients_body_with_vertexs_fields(
    vertex: tuple[FakeVertex, Any],
) -> None:
    fake, adapter = vertex
    codec = adapter.codec(MESSAGES)
    assert isinstance(codec, VertexMessagesCodec)
    raw = cc.wire(cc.body(cc.first_turns()))
    request = await codec.prepare(Call(MESSAGES, json.loads(raw), True, "r", dict(cc.HEADERS)))
    assert request.url == (
        f"{fake.url}/v1/projects/p1/locations/us-east5/publishers/anthropic/models/"
        f"{VERTEX_MODEL}:streamRawPredict"
    )
    headers = dict(request.headers)
    assert headers.pop("Authorization").startswith("Bearer ya29.fake-")
    assert headers == {
        "Content-Type": "application/json",
        "anthropic-beta": cc.HEADERS["anthropic-beta"],
    }
    assert request.body == without_model(raw, b'"anthropic_version":"vertex-2023-10-16"')


async def test_vertex_through_the_sdk_create_stream_and_count_tokens(
    vertex: tuple[FakeVertex, Any],
) -> None:
    fake, adapter = vertex
    async with CodecRelay(MessagesFront(), adapter) as relay, sdk(relay) as client:
        message = await client.messages.create(**SIMPLE)  # type: ignore[call-overload]
        assert [(b.type, b.text) for b in message.content] == [("text", "You said: hi there")]  # type: ignore[union-attr]
        assert message.model == VERTEX_MODEL
        async with client.messages.stream(**SIMPLE) as stream:  # type: ignore[arg-type]
            final = await stream.get_final_message()
        assert final.model_dump(exclude_none=True)["content"] == [
            {"type": "text", "text": "You said: hi there"}
        ]
        assert (final.usage.input_tokens, final.usage.output_tokens) == (2, 4)
        assert relay.log.usages == [Usage(2, 4), Usage(2, 4)]
        assert fake.requests[-1].path.endswith(":streamRawPredict")
        assert fake.requests[-1].json == {
            "anthropic_version": "vertex-2023-10-16",
            "max_tokens": 20,
            "messages": [{"role": "user", "content": "hi there"}],
            "stream": True,
        }
    async with CodecRelay(CountTokensFront(), adapter) as relay, sdk(relay) as client:
        counted = await client.messages.count_tokens(
            model="claude-x", messages=[{"role": "user", "content": "three words here"}]
        )
        assert counted == MessageTokensCount(input_tokens=3)
        assert fake.requests[-1].path.endswith(
            "/publishers/anthropic/models/count-tokens:rawPredict"
        )
        assert fake.requests[-1].json["model"] == VERTEX_MODEL
    assert fake.invalid == []


# ---------------------------------------------------------------------------
# Bedrock.


def test_which_bedrock_endpoints_take_messages_natively() -> None:
    def ep(model: str | None, **options: Any) -> Endpoint:
        return endpoint("bedrock", "https://x", model, region="us-east-1", **options)

    assert serves_messages(ep("anthropic.claude-3-haiku-20240307-v1:0"))
    assert serves_messages(ep("eu.anthropic.claude-sonnet-4-5-20250929-v1:0"))
    assert serves_messages(ep("arn:aws:bedrock:us-east-1::foundation-model/anthropic.claude-v2"))
    assert not serves_messages(ep("meta.llama3-70b-instruct-v1:0"))
    assert not serves_messages(
        ep("anthropic.claude-3-haiku-20240307-v1:0", messages_api="converse")
    )
    assert serves_messages(
        ep("arn:aws:bedrock:us-east-1:1:application-inference-profile/x", messages_api="invoke")
    )


async def test_bedrock_invoke_body_is_the_clients_with_bedrocks_fields(
    bedrock: tuple[FakeBedrock, Any],
) -> None:
    fake, adapter = bedrock
    codec = adapter.codec(MESSAGES)
    assert isinstance(codec, BedrockMessagesCodec)
    raw = cc.wire(cc.body(cc.first_turns(), stream=False))
    async with aiohttp.ClientSession() as session:
        request = await codec.prepare(Call(MESSAGES, json.loads(raw), False, "r", dict(cc.HEADERS)))
        assert (
            request.url == f"{fake.url}/model/us.anthropic.claude-sonnet-4-5-20250929-v1:0/invoke"
        )
        betas = json.dumps(cc.HEADERS["anthropic-beta"].split(","), separators=(",", ":"))
        expected = without_model(
            raw, f'"anthropic_version":"bedrock-2023-05-31","anthropic_beta":{betas}'.encode()
        )
        assert expected.endswith(b',"stream":false}')
        assert request.body == expected[: -len(',"stream":false}')] + b"}"
        assert request.headers["Accept"] == "application/json"
        async with session.post(
            request.url, data=request.body, headers=dict(request.headers)
        ) as resp:
            assert resp.status == 200, await resp.text()
            answer, usage = codec.parse_response(
                Call(MESSAGES, json.loads(raw)), resp.status, resp.headers, await resp.read()
            )
    assert fake.rejected == []
    assert answer["type"] == "message" and answer["model"] == BEDROCK_MODEL
    assert answer["content"] == [
        {
            "type": "text",
            "text": "The tool said:      1\tdef test_x():\n     2\t    assert 1 + 1 == 3\n",
        }
    ]
    assert usage == Usage(answer["usage"]["input_tokens"], 13) == Usage(2919, 13)


async def test_bedrock_stream_becomes_anthropic_sse_for_the_sdk(
    bedrock: tuple[FakeBedrock, Any],
) -> None:
    fake, adapter = bedrock
    async with CodecRelay(MessagesFront(), adapter) as relay, sdk(relay) as client:
        tools = [{"name": "lookup", "input_schema": {"type": "object"}}]
        async with client.messages.stream(
            model="claude-x",
            max_tokens=30,
            tools=tools,  # type: ignore[list-item]
            messages=[{"role": "user", "content": 'please lookup {"q": "kamiwaza"}'}],
        ) as stream:
            events = [e.type async for e in stream]
            final = await stream.get_final_message()
        assert events[0] == "message_start" and events[-1] == "message_stop"
        assert final.model_dump(exclude_none=True)["content"] == [
            {
                "type": "tool_use",
                "id": "toolu_000000000000000000000001",
                "name": "lookup",
                "input": {"q": "kamiwaza"},
            }
        ]
        assert final.stop_reason == "tool_use"
        assert relay.log.usages == [Usage(4, 12)]
        assert relay.log.sent[-1].headers["Accept"] == "application/vnd.amazon.eventstream"
        assert fake.requests[-1].path.endswith("/invoke-with-response-stream")
        fake.invoke_errors.append(("ThrottlingException", 429, "Too many requests"))
        with pytest.raises(anthropic.RateLimitError):
            await client.messages.create(**SIMPLE)  # type: ignore[call-overload]
    assert fake.rejected == []


def test_invoke_stream_in_pieces_and_its_exceptions() -> None:
    start = {
        "type": "message_start",
        "message": {
            "id": "m",
            "type": "message",
            "role": "assistant",
            "model": "c",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 5, "output_tokens": 1},
        },
    }
    delta = {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "text_delta", "text": "hé"},
    }

    def chunk(payload: dict[str, Any]) -> bytes:
        return event("chunk", {"bytes": base64.b64encode(json.dumps(payload).encode()).decode()})

    raw = (
        chunk(start)
        + chunk(
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            }
        )
        + chunk(delta)
    )
    stream = InvokeStream(prompt_estimate=1, redact=str)
    frames: list[bytes] = []
    for i in range(len(raw)):
        frames += stream.feed(raw[i : i + 1])
    assert [sse_events(f)[0][0] for f in frames] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
    ]
    assert sse_events(frames[-1])[0][1] == delta
    with pytest.raises(AttemptFailed) as info:
        stream.feed(exception("throttlingException", "slow down"))
    assert (info.value.failure.status_for_client, info.value.failure.retryable) == (429, True)
    other = InvokeStream(prompt_estimate=1, redact=str)
    other.feed(chunk(start)[:10])
    with pytest.raises(AttemptFailed):
        other.finish()  # half a message: cut short
    unknown = InvokeStream(prompt_estimate=1, redact=str)
    message = encode_message({":message-type": "event", ":event-type": "trace"}, b"{}")
    assert unknown.feed(message) == []


async def test_bedrock_count_tokens(bedrock: tuple[FakeBedrock, Any]) -> None:
    fake, adapter = bedrock
    assert adapter.codec(COUNT_TOKENS) is not None
    async with CodecRelay(CountTokensFront(), adapter) as relay, sdk(relay) as client:
        counted = await client.messages.count_tokens(
            model="claude-x", messages=[{"role": "user", "content": "one two three four five"}]
        )
    assert counted == MessageTokensCount(input_tokens=5)
    sent = fake.requests[-1]
    assert sent.path.endswith("/count-tokens")
    assert json.loads(base64.b64decode(sent.json["input"]["invokeModel"]["body"])) == {
        "anthropic_version": "bedrock-2023-05-31",
        "messages": [{"role": "user", "content": "one two three four five"}],
        "max_tokens": 1,
    }
    assert fake.rejected == []
