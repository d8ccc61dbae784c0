"""The Messages front through a running gateway to Claude on Vertex AI
(rawPredict / streamRawPredict, a service-account token) and on Bedrock
(InvokeModel in AWS event-stream framing, SigV4), driven by the `anthropic`
SDK and by a Claude-Code-shaped session: the client's body reaches each cloud
with only the cloud's own fields changed."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import anthropic
import pytest
import pytest_asyncio

from gateway.auth import KeyStore
from tests import claude_code_body as cc
from tests.bedrock_azure_harness import AWS_ACCESS_KEY, AWS_SECRET, use_test_aws_identity
from tests.codec_relay import sse_events
from tests.fake_bedrock import FakeBedrock
from tests.fake_vertex import FakeVertex, make_service_account
from tests.gateway_harness import Gateway, serve_gateway

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

VERTEX_MODEL = "claude-sonnet-4-5@20250929"
BEDROCK_MODEL = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
POLICY = """\
version: v1
rules:
  - name: bedrock
    match: {model: bedrock}
    route_to: bedrock-claude
  - name: bedrock-then-vertex
    match: {model: bedrock-then-vertex}
    route_to: bedrock-claude
    fallback: [vertex-claude]
  - default:
      route_to: vertex-claude
"""
HI: list[Any] = [{"role": "user", "content": "hi there"}]


@dataclass
class Stack:
    gateway: Gateway
    vertex: FakeVertex
    bedrock: FakeBedrock
    key: str
    seen: int = 0

    def sdk(self) -> anthropic.AsyncAnthropic:
        client = anthropic.AsyncAnthropic(
            base_url=self.gateway.url(""), api_key=self.key, max_retries=0
        )
        self.gateway.clients.append(client)
        return client

    async def new_records(self) -> list[dict[str, Any]]:
        records = await self.gateway.audit_records()
        fresh, self.seen = records[self.seen :], len(records)
        return fresh


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(opa_bin: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    work = tmp_path_factory.mktemp("messages-cloud")
    with pytest.MonkeyPatch.context() as mp:
        use_test_aws_identity(mp, work)
        vertex = await FakeVertex(project="p1", location="us-east5").start()
        account = make_service_account(work, vertex.token_uri)
        vertex.trust(account)
        bedrock = await FakeBedrock().start()
        bedrock.allow(AWS_ACCESS_KEY, AWS_SECRET)
        timeouts = "    timeouts: {connect_ms: 1000, first_token_ms: 5000, total_ms: 10000}"
        (work / "routing.yaml").write_text(POLICY)
        (work / "endpoints.yaml").write_text(
            "\n".join(
                [
                    "endpoints:",
                    "  vertex-claude:",
                    "    type: vertex",
                    "    project: p1",
                    "    location: us-east5",
                    "    publisher: anthropic",
                    f"    base_url: {vertex.url}",
                    f"    model: {VERTEX_MODEL}",
                    f"    auth: {{service_account_file: {account.path}}}",
                    "    pricing: {input_per_1k: 3.0, output_per_1k: 15.0}",
                    timeouts,
                    "  bedrock-claude:",
                    "    type: bedrock",
                    "    region: us-east-1",
                    f"    vpc_endpoint_url: {bedrock.url}",
                    f"    model: {BEDROCK_MODEL}",
                    "    pricing: {input_per_1k: 3.0, output_per_1k: 15.0}",
                    timeouts,
                ]
            )
            + "\n"
        )
        store = KeyStore.load(work / "keys.json", missing_ok=True)
        key = store.create(tenant="acme", user="u-1", roles=["dev"])[1]
        gateway = await serve_gateway(
            work,
            keys={"acme": key},
            environ={},
            overrides={"breaker_failures": 1000, "opa_timeout_ms": 2000},
        )
        try:
            yield Stack(gateway, vertex, bedrock, key)
        finally:
            await gateway.close()
            await vertex.close()
            await bedrock.close()


@pytest_asyncio.fixture(loop_scope="module")
async def fresh(stack: Stack) -> Stack:
    stack.vertex.requests.clear()
    stack.vertex.invalid.clear()
    stack.bedrock.requests.clear()
    stack.bedrock.rejected.clear()
    stack.bedrock.invoke_errors.clear()
    await stack.new_records()
    return stack


def without_model(raw: bytes, model: str, first: bytes) -> bytes:
    """The client's bytes with the cloud's fields first and `model` removed."""
    body = raw.replace(f'"model":"{model}",'.encode(), b"")
    return b"{" + first + b"," + body[1:]


async def test_vertex_create_stream_and_count_tokens(fresh: Stack) -> None:
    client = fresh.sdk()
    message = await client.messages.create(model="vertex", max_tokens=20, messages=HI)
    assert (message.model, [b.model_dump(exclude_none=True) for b in message.content]) == (
        VERTEX_MODEL,
        [{"type": "text", "text": "You said: hi there"}],
    )
    async with client.messages.stream(
        model="vertex", max_tokens=20, messages=HI, extra_headers={"anthropic-beta": "b-1"}
    ) as stream:
        final = await stream.get_final_message()
    assert final.content[0].text == "You said: hi there"  # type: ignore[union-attr]
    streamed = fresh.vertex.requests[-1]
    assert streamed.path == (
        "/v1/projects/p1/locations/us-east5/publishers/anthropic/models/"
        f"{VERTEX_MODEL}:streamRawPredict"
    )
    assert streamed.json == {
        "anthropic_version": "vertex-2023-10-16",
        "max_tokens": 20,
        "messages": HI,
        "stream": True,
    }
    assert streamed.headers["anthropic-beta"] == "b-1"
    assert streamed.headers["Authorization"].startswith("Bearer ya29.")
    assert fresh.key not in json.dumps(dict(streamed.headers))
    counted = await client.messages.count_tokens(model="vertex", messages=HI)
    assert counted.input_tokens == 2
    assert fresh.vertex.requests[-1].path.endswith("/models/count-tokens:rawPredict")
    assert fresh.vertex.invalid == []
    records = await fresh.new_records()
    assert [(r["operation"], r["endpoint"], r["status"]) for r in records] == [
        ("messages", "vertex-claude", 200)
    ] * 3
    assert records[1]["tokens"] == {"input": 2, "output": 4}


async def test_bedrock_create_stream_and_errors(fresh: Stack) -> None:
    client = fresh.sdk()
    message = await client.messages.create(model="bedrock", max_tokens=20, messages=HI)
    assert message.content[0].text == "You said: hi there"  # type: ignore[union-attr]
    async with client.messages.stream(model="bedrock", max_tokens=20, messages=HI) as stream:
        types = [event.type async for event in stream]
        final = await stream.get_final_message()
    assert (types[0], types[-1]) == ("message_start", "message_stop")
    assert final.content[0].text == "You said: hi there"  # type: ignore[union-attr]
    assert [r.path for r in fresh.bedrock.requests] == [
        f"/model/{BEDROCK_MODEL}/invoke",
        f"/model/{BEDROCK_MODEL}/invoke-with-response-stream",
    ]
    assert fresh.bedrock.requests[0].json == {
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": 20,
        "messages": HI,
    }
    fresh.bedrock.invoke_errors.append(("ThrottlingException", 429, "Too many requests"))
    with pytest.raises(anthropic.RateLimitError) as info:
        await client.messages.create(model="bedrock", max_tokens=20, messages=HI)
    assert info.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert fresh.bedrock.rejected == []
    records = await fresh.new_records()
    assert [(r["endpoint"], r["status"]) for r in records] == [
        ("bedrock-claude", 200),
        ("bedrock-claude", 200),
        ("bedrock-claude", 429),
    ]


async def test_failover_from_bedrock_to_vertex(fresh: Stack) -> None:
    fresh.bedrock.invoke_errors.append(("ServiceUnavailableException", 503, "busy"))
    raw = await fresh.sdk().messages.with_raw_response.create(
        model="bedrock-then-vertex", max_tokens=20, messages=HI
    )
    assert raw.headers["X-Kamiwaza-Endpoint"] == "vertex-claude"
    assert (await raw.parse()).model == VERTEX_MODEL
    (record,) = await fresh.new_records()
    assert [a["endpoint"] for a in record["attempts"]] == ["bedrock-claude", "vertex-claude"]


@pytest.mark.parametrize("cloud", ["vertex", "bedrock"])
async def test_a_claude_code_turn_reaches_the_cloud_as_written(fresh: Stack, cloud: str) -> None:
    body = cc.body(cc.first_turns())
    body["model"] = cloud  # the route; the cloud takes its model in the URL
    raw = cc.wire(body)
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            fresh.gateway.url("/v1/messages"),
            data=raw,
            headers={
                "Content-Type": "application/json",
                "x-api-key": fresh.key,
                **cc.HEADERS,
            },
        ) as resp,
    ):
        assert resp.status == 200, await resp.text()
        events = sse_events(await resp.read())
    assert (events[0][0], events[-1][0]) == ("message_start", "message_stop")
    if cloud == "vertex":
        sent = fresh.vertex.requests[-1]
        assert sent.raw == without_model(raw, cloud, b'"anthropic_version":"vertex-2023-10-16"')
        assert sent.headers["anthropic-beta"] == cc.HEADERS["anthropic-beta"]
        assert fresh.vertex.invalid == []
    else:
        received = fresh.bedrock.requests[-1]
        betas = json.dumps(cc.HEADERS["anthropic-beta"].split(","), separators=(",", ":"))
        expected = without_model(
            raw,
            cloud,
            f'"anthropic_version":"bedrock-2023-05-31","anthropic_beta":{betas}'.encode(),
        )
        # Bedrock takes no `stream` in the body: the URL says it.
        assert received.raw == expected.replace(b',"stream":true}', b"}")
        assert fresh.bedrock.rejected == []
    (record,) = await fresh.new_records()
    assert (record["operation"], record["status"]) == ("messages", 200)
