"""The Messages and Responses fronts on the real pipeline (OPA, forwarder with
failover, audit), registered here the way the composition root will register
them: `gateway.app.all_fronts` is patched to add them. The official SDKs talk
to the gateway; the fake Anthropic and Vertex AI servers answer natively or by
translation."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import anthropic
import openai
import pytest

import gateway.app
from gateway.fronts import all_fronts
from gateway.fronts.messages import CountTokensFront, MessagesFront
from gateway.fronts.responses import ResponsesFront
from tests.anthropic_vertex_harness import (
    ANTHROPIC_KEY,
    ANTHROPIC_MODEL,
    GEMINI_MODEL,
    Providers,
    start_provider_gateway,
)
from tests.fake_anthropic import Failure, FakeAnthropic
from tests.fake_vertex import FakeVertex, make_service_account
from tests.gateway_harness import Gateway

pytestmark = pytest.mark.integration


@dataclass
class Env:
    gateway: Gateway
    anthropic: FakeAnthropic
    vertex: FakeVertex

    def claude(self) -> anthropic.AsyncAnthropic:
        # The 2.x SDK sends the gateway key as a bearer token (ANTHROPIC_AUTH_TOKEN style).
        client = anthropic.AsyncAnthropic(
            api_key=self.gateway.keys["acme"], base_url=self.gateway.url(""), max_retries=0
        )
        self.gateway.clients.append(client)
        return client

    def openai(self) -> openai.AsyncOpenAI:
        client = openai.AsyncOpenAI(
            api_key=self.gateway.keys["acme"], base_url=self.gateway.base_url, max_retries=0
        )
        self.gateway.clients.append(client)
        return client


@pytest.fixture
async def env(tmp_path: Path, opa_bin: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Env]:
    fronts = (*all_fronts(), MessagesFront(), CountTokensFront(), ResponsesFront())
    monkeypatch.setattr(gateway.app, "all_fronts", lambda: fronts)
    claude = await FakeAnthropic(api_key=ANTHROPIC_KEY).start()
    vertex = await FakeVertex(project="test-project", location="us-central1").start()
    account = make_service_account(tmp_path, vertex.token_uri)
    vertex.trust(account)
    untrusted = make_service_account(tmp_path, vertex.token_uri, "untrusted")
    served = await start_provider_gateway(tmp_path, Providers(claude, vertex, account, untrusted))
    try:
        yield Env(served, claude, vertex)
    finally:
        await served.close()
        await vertex.close()
        await claude.close()


async def test_messages_natively_and_by_translation_with_failover(env: Env) -> None:
    client = env.claude()
    native = await client.messages.with_raw_response.create(
        model="anthropic", max_tokens=20, messages=[{"role": "user", "content": "hi there"}]
    )
    message = await native.parse()
    assert (message.model, message.content[0].text) == (ANTHROPIC_MODEL, "You said: hi there")  # type: ignore[union-attr]
    assert native.headers["x-kamiwaza-endpoint"] == "anthropic"
    # The SDK's body (its key order) with only the model replaced.
    assert env.anthropic.requests[-1].raw == (
        b'{"max_tokens":20,"messages":[{"role":"user","content":"hi there"}],'
        b'"model":"claude-sonnet-4-5"}'
    )

    # Anthropic overloaded before the first byte: Gemini answers, by translation.
    env.anthropic.fail(Failure(529, "overloaded_error", "Overloaded"))
    async with client.messages.stream(
        model="anthropic-then-gemini",
        max_tokens=20,
        messages=[{"role": "user", "content": "hello"}],
    ) as stream:
        final = await stream.get_final_message()
    assert final.model == f"{GEMINI_MODEL}-001"
    assert final.content[0].text.startswith("You said")  # type: ignore[union-attr]

    with pytest.raises(anthropic.BadRequestError) as info:
        await client.messages.create(
            model="anthropic", max_tokens=0, messages=[{"role": "user", "content": "x"}]
        )
    assert info.value.body == {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": "max_tokens: field required (an integer of at least 1)",
        },
    }
    # What the translation to Gemini cannot carry: a 400, streamed or not.
    pdf = {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}
    document = {"type": "document", "source": pdf}
    with pytest.raises(anthropic.BadRequestError) as info:
        async with client.messages.stream(
            model="vertex-gemini", max_tokens=5, messages=[{"role": "user", "content": [document]}]
        ) as refused:
            await refused.get_final_message()
    assert info.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    records = await env.gateway.audit_records()
    assert [(r["operation"], r["endpoint"], r["status"]) for r in records] == [
        ("messages", "anthropic", 200),
        ("messages", "vertex-gemini", 200),
        ("messages", None, 400),
        ("messages", "vertex-gemini", 400),
    ]


async def test_responses_by_translation_and_count_tokens(env: Env) -> None:
    client = env.openai()
    answer = await client.responses.create(model="anthropic", input="hello responses")
    assert answer.output_text == "You said: hello responses"
    async with client.responses.stream(model="vertex-claude", input="stream it") as stream:
        final = await stream.get_final_response()
    assert final.output_text == "You said: stream it"
    counted = await env.claude().messages.count_tokens(
        model="anthropic", messages=[{"role": "user", "content": "four words right here"}]
    )
    assert counted.input_tokens == 4
    records = await env.gateway.audit_records()
    assert [(r["operation"], r["endpoint"], r["status"]) for r in records] == [
        ("responses", "anthropic", 200),
        ("responses", "vertex-claude", 200),
        ("messages", "anthropic", 200),
    ]
    assert env.anthropic.invalid == [] and env.vertex.invalid == []
