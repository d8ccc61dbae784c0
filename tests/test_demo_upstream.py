"""The demo upstream of the quick start, checked with the official `openai`
SDK: canned chat completions (JSON and SSE with usage), embeddings, models."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator

import aiohttp
import openai
import pytest
from aiohttp.test_utils import TestServer

from gateway.demo.server import EMBEDDING_DIMENSIONS, DemoUpstream, embedding, reply_text

REPLY = (
    "Hello from the demo endpoint demo-in-vpc. This is a canned reply from a demo server, "
    "not a model: the gateway routed your request (3 words) here."
)
MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Summarise this contract"},
]


@pytest.fixture
async def demo() -> AsyncIterator[tuple[DemoUpstream, openai.AsyncOpenAI, TestServer]]:
    upstream = DemoUpstream("demo-in-vpc")
    server = TestServer(upstream.app(), host="127.0.0.1")
    await server.start_server()
    sdk = openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key="none", max_retries=0)
    yield upstream, sdk, server
    await sdk.close()
    await server.close()


async def test_a_canned_completion_that_names_the_endpoint(demo: tuple) -> None:
    _, sdk, _ = demo
    answer = await sdk.chat.completions.create(model="demo-model", messages=MESSAGES)  # type: ignore[arg-type]
    assert reply_text("demo-in-vpc", MESSAGES) == REPLY
    assert answer.choices[0].message.content == REPLY
    assert answer.choices[0].finish_reason == "stop"
    assert answer.model == "demo-model"
    assert answer.usage is not None
    # Words as tokens: 2 + 3 in the prompt, the reply's words out.
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (5, len(REPLY.split()))
    again = await sdk.chat.completions.create(model="demo-model", messages=MESSAGES)  # type: ignore[arg-type]
    assert again.choices[0].message.content == REPLY  # deterministic


async def test_a_stream_with_usage(demo: tuple) -> None:
    upstream, sdk, _ = demo
    stream = await sdk.chat.completions.create(
        model="demo-model",
        messages=MESSAGES,  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage, finish, chunks = "", None, None, 0
    async for chunk in stream:
        chunks += 1
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    assert text == REPLY
    assert finish == "stop"
    assert chunks == len(REPLY.split(" ")) + 3  # role, words, finish, usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (5, len(REPLY.split()))
    assert upstream.requests == 1
    plain = await sdk.chat.completions.create(model="m", messages=MESSAGES, stream=True)  # type: ignore[arg-type]
    assert [c.usage for c in [c async for c in plain]] == [None] * (len(REPLY.split(" ")) + 2)


async def test_embeddings_and_models(demo: tuple) -> None:
    _, sdk, _ = demo
    answer = await sdk.embeddings.create(model="demo-model", input=["a contract", "a letter"])
    vectors = [item.embedding for item in answer.data]
    assert vectors == [embedding("demo-in-vpc", "a contract"), embedding("demo-in-vpc", "a letter")]
    assert all(len(v) == EMBEDDING_DIMENSIONS for v in vectors)
    assert all(math.isclose(sum(x * x for x in v), 1.0, abs_tol=1e-4) for v in vectors)
    assert vectors[0] != vectors[1]
    assert embedding("demo-saas", "a contract") != vectors[0]  # each endpoint its own
    assert answer.usage.prompt_tokens == 4
    models = await sdk.models.list()
    assert [(m.id, m.owned_by) for m in models.data] == [("demo-model", "kamiwaza-demo")]


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/v1/chat/completions", b"{not json", "the body is not valid JSON"),
        ("/v1/chat/completions", b"[]", "the body must be a JSON object"),
        ("/v1/chat/completions", b'{"messages": []}', "'messages' must be a non-empty list"),
        ("/v1/embeddings", b'{"input": 3}', "'input' must be a string or a list of strings"),
    ],
)
async def test_bad_requests_get_openai_errors(
    demo: tuple, path: str, body: bytes, message: str
) -> None:
    _, _, server = demo
    async with (
        aiohttp.ClientSession() as http,
        http.post(server.make_url(path), data=body) as resp,
    ):
        assert resp.status == 400
        assert (await resp.json())["error"]["message"] == message
