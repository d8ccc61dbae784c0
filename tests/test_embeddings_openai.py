"""Embeddings codecs of the OpenAI-compatible adapters (vLLM, TEI, OpenAI) and of
Azure OpenAI: exact upstream requests, parsed answers, batches and errors, then
each codec over HTTP against its fake (whose wire format the openai SDK checks)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import openai
import pytest

from gateway.providers import AttemptFailed, Usage, adapter_for
from gateway.providers.azure_openai.embeddings import AzureEmbeddingsCodec
from gateway.providers.openai_compatible.embeddings import OpenAIEmbeddingsCodec
from tests.embeddings_helpers import embeddings_call, run_codec
from tests.fake_azure import AzureReply, FakeAzure
from tests.fake_embeddings import b64_floats, fake_vector, token_text, validate_openai_embeddings
from tests.fake_upstream import FakeUpstream
from translator.errors import Position
from translator.registry import Endpoint

TOKEN = "vllm-token-canary-3c4d"
OPENAI_KEY = "sk-openai-canary-9a8b"
AZURE_KEY = "azure-key-canary-1f2e"
TENANT, CLIENT, SECRET = "tenant-e", "client-e", "entra-secret-canary-77aa"


def endpoint(type_: str = "openai-compatible", **kwargs: Any) -> Endpoint:
    values: dict[str, Any] = {
        "name": "emb",
        "type": type_,
        "pos": Position("endpoints.yaml", 1, 1),
        "base_url": "http://vllm.internal:8000",
        "model": "BAAI/bge-m3",
        "auth": {"bearer_token_env": "TOK"},
        "options": {"flavor": "vllm"},
    }
    values.update(kwargs)
    return Endpoint(**values)


def codec_of(ep: Endpoint, environ: dict[str, str]) -> Any:
    codec = adapter_for(ep, environ=environ).codec("embeddings")
    assert codec is not None
    return codec


def answer_of(vectors: list[Any], *, usage: Any = None, model: str = "up-model") -> bytes:
    body: dict[str, Any] = {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)
        ],
        "model": model,
    }
    if usage is not None:
        body["usage"] = usage
    return json.dumps(body).encode()


def expected_answer(
    vectors: list[list[float]], tokens: int, *, model: str, b64: bool = False
) -> Any:
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": b64_floats(v) if b64 else v}
            for i, v in enumerate(vectors)
        ],
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


# ---------------------------------------------------------------------------
# Requests


async def test_vllm_request_passes_the_body_through_with_the_endpoint_model() -> None:
    codec = codec_of(endpoint(), {"TOK": TOKEN})
    assert isinstance(codec, OpenAIEmbeddingsCodec)
    body = {
        "model": "client-model",
        "input": [[1, 2, 3], [4]],
        "encoding_format": "base64",
        "dimensions": None,
        "truncate_prompt_tokens": 512,
    }
    (request,) = await codec.prepare_all(embeddings_call(**body))
    assert (request.method, request.url, dict(request.headers)) == (
        "POST",
        "http://vllm.internal:8000/v1/embeddings",
        {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"},
    )
    assert json.loads(request.body) == {
        "model": "BAAI/bge-m3",
        "input": [[1, 2, 3], [4]],
        "encoding_format": "base64",
        "truncate_prompt_tokens": 512,
    }
    assert TOKEN not in repr(request)
    assert codec.upstream_model(embeddings_call(**body)) == "BAAI/bge-m3"


async def test_openai_request_has_its_headers_and_keeps_a_single_string() -> None:
    ep = endpoint(
        "openai",
        base_url=None,
        model=None,
        auth={"api_key_env": "OPENAI"},
        options={"organization": "org-1", "project": "proj-1"},
    )
    codec = codec_of(ep, {"OPENAI": OPENAI_KEY})
    body = {"model": "text-embedding-3-small", "input": "hello", "dimensions": 256, "user": "u"}
    (request,) = await codec.prepare_all(embeddings_call(**body))
    assert (request.url, dict(request.headers)) == (
        "https://api.openai.com/v1/embeddings",
        {
            "Content-Type": "application/json",
            "Authorization": f"Bearer {OPENAI_KEY}",
            "OpenAI-Organization": "org-1",
            "OpenAI-Project": "proj-1",
        },
    )
    sent = json.loads(request.body)
    assert sent == body
    assert validate_openai_embeddings(sent, extra=frozenset()) is None


async def test_batches_over_the_servers_limit_are_split_and_joined_in_order() -> None:
    codec = codec_of(endpoint(), {"TOK": TOKEN})
    texts = [f"text {i}" for i in range(70)]
    call = embeddings_call(input=texts, encoding_format="float")
    requests = await codec.prepare_all(call)
    assert [json.loads(r.body)["input"] for r in requests] == [
        texts[:32],
        texts[32:64],
        texts[64:],
    ]
    assert all(json.loads(r.body)["model"] == "BAAI/bge-m3" for r in requests)
    vectors = [fake_vector(t, 4) for t in texts]
    answers = [
        (200, {}, answer_of(vectors[:32], usage={"prompt_tokens": 64, "total_tokens": 64})),
        (200, {}, answer_of(vectors[32:64], usage={"prompt_tokens": 64, "total_tokens": 64})),
        (200, {}, answer_of(vectors[64:], usage={"prompt_tokens": 12, "total_tokens": 12})),
    ]
    answer, usage = codec.parse_all(call, answers)
    assert answer == expected_answer(vectors, 140, model="up-model")
    assert usage == Usage(140, 0)
    # OpenAI itself takes the whole batch at once.
    openai_codec = codec_of(
        endpoint("openai", base_url=None, auth={"api_key_env": "K"}, options={}), {"K": "k"}
    )
    assert len(await openai_codec.prepare_all(call)) == 1


async def test_split_token_arrays_stay_token_arrays() -> None:
    codec = OpenAIEmbeddingsCodec(adapter_for(endpoint(), environ={"TOK": TOKEN}), max_batch=2)  # type: ignore[arg-type]
    requests = await codec.prepare_all(embeddings_call(input=[[1], [2, 3], [4]]))
    assert [json.loads(r.body)["input"] for r in requests] == [[[1], [2, 3]], [[4]]]


# ---------------------------------------------------------------------------
# Answers


@pytest.mark.parametrize("client_encoding", ["float", "base64", None])
@pytest.mark.parametrize("upstream_b64", [False, True])
def test_answers_come_back_in_the_clients_encoding(
    client_encoding: str | None, upstream_b64: bool
) -> None:
    codec = codec_of(endpoint(), {"TOK": TOKEN})
    vectors = [fake_vector("a", 5), fake_vector("b", 5)]
    body: dict[str, Any] = {"input": ["a", "b"]}
    if client_encoding:
        body["encoding_format"] = client_encoding
    sent = [b64_floats(v) for v in vectors] if upstream_b64 else vectors
    answer, usage = codec.parse_response(
        embeddings_call(**body), 200, {}, answer_of(sent, usage={"prompt_tokens": 2})
    )
    assert answer == expected_answer(vectors, 2, model="up-model", b64=client_encoding == "base64")
    assert usage == Usage(2, 0)


def test_answers_are_reordered_by_index_and_usage_estimated_when_missing() -> None:
    codec = codec_of(endpoint(), {"TOK": TOKEN})
    a, b = fake_vector("a", 3), fake_vector("b", 3)
    raw = json.dumps(
        {
            "data": [
                {"object": "embedding", "index": 1, "embedding": b},
                {"object": "embedding", "index": 0, "embedding": a},
            ]
        }
    ).encode()
    answer, usage = codec.parse_response(embeddings_call(input=["abcdefgh", "b"]), 200, {}, raw)
    # No model in the answer: the endpoint's; no usage: estimated (8 chars = 2, 1 char = 1).
    assert answer == expected_answer([a, b], 3, model="BAAI/bge-m3")
    assert usage == Usage(3, 0, estimated=True)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"not json", "the upstream's answer is not JSON"),
        (b'{"error": {"message": "boom"}}', "the upstream answered with an error object"),
        (b'{"object": "list"}', "the upstream's answer has no embeddings ('data')"),
        (answer_of([[1.0]]), "the upstream returned 1 embeddings for 2 inputs"),
        (
            json.dumps({"data": [{"index": 0, "embedding": [1]}, {"index": 0, "embedding": [1]}]}),
            "embedding 1 has a wrong 'index'",
        ),
        (
            json.dumps({"data": [{"embedding": [1]}, {"index": 7, "embedding": [1]}]}),
            "embedding 1 has a wrong 'index'",
        ),
        (json.dumps({"data": [[1], [2]]}), "embedding 0 is not an object"),
        (
            json.dumps({"data": [{"embedding": [1]}, {"embedding": "!!"}]}),
            "embedding 1 is not valid base64",
        ),
    ],
)
def test_malformed_answers_fail_over(raw: Any, message: str) -> None:
    codec = codec_of(endpoint(), {"TOK": TOKEN})
    data = raw.encode() if isinstance(raw, str) else raw
    with pytest.raises(AttemptFailed) as info:
        codec.parse_response(embeddings_call(input=["a", "b"]), 200, {}, data)
    failure = info.value.failure
    assert (failure.status_for_client, failure.retryable, failure.message) == (502, True, message)


@pytest.mark.parametrize(
    ("status", "body", "headers", "expected"),
    [
        (
            429,
            {"error": {"message": "slow down", "code": "rate_limit_exceeded"}},
            {"retry-after": "2"},
            (429, "rate_limit_exceeded", True, 2.0),
        ),
        (500, {"error": {"message": "oops"}}, {}, (502, "upstream_unavailable", True, None)),
        (401, {"error": {"message": "bad key"}}, {}, (502, "upstream_auth_failed", True, None)),
        (
            400,
            {"error": {"message": "This model's maximum context length is 8192 tokens"}},
            {},
            (400, "context_length_exceeded", False, None),
        ),
        (
            413,
            {"error": "batch size 64 > maximum allowed batch size 32", "error_type": "validation"},
            {},
            (413, "upstream_bad_request", False, None),
        ),
    ],
)
def test_errors_are_classified_like_chat(
    status: int, body: Any, headers: dict[str, str], expected: tuple[Any, ...]
) -> None:
    codec = codec_of(endpoint(), {"TOK": TOKEN})
    failure = codec.classify_error(status, headers, json.dumps(body).encode())
    assert (failure.status_for_client, failure.code, failure.retryable, failure.retry_after) == (
        expected
    )


async def test_streams_and_bad_bodies_are_400s() -> None:
    codec = codec_of(endpoint(), {"TOK": TOKEN})
    with pytest.raises(AttemptFailed) as info:
        await codec.prepare_all(embeddings_call(input=[1, "a"]))
    assert (info.value.failure.status_for_client, info.value.failure.code) == (400, "invalid_body")
    with pytest.raises(AttemptFailed):
        codec.stream_translator(embeddings_call(input="a"))


# ---------------------------------------------------------------------------
# Azure OpenAI


def azure_endpoint(**auth: str) -> Endpoint:
    return Endpoint(
        name="azure-emb",
        type="azure-openai",
        pos=Position("endpoints.yaml", 1, 1),
        base_url="https://res.openai.azure.com/",
        auth=auth or {"api_key_env": "AZ"},
        options={"deployment": "text-embedding-3-small", "api_version": "2024-10-21"},
    )


async def test_azure_request_names_the_deployment_and_the_api_key() -> None:
    codec = codec_of(azure_endpoint(), {"AZ": AZURE_KEY})
    assert isinstance(codec, AzureEmbeddingsCodec)
    call = embeddings_call(model="whatever", input=["a"] * 100)
    (request,) = await codec.prepare_all(call)
    assert (request.url, dict(request.headers)) == (
        "https://res.openai.azure.com/openai/deployments/text-embedding-3-small/embeddings"
        "?api-version=2024-10-21",
        {"Content-Type": "application/json", "api-key": AZURE_KEY},
    )
    assert json.loads(request.body) == {"model": "text-embedding-3-small", "input": ["a"] * 100}
    assert codec.upstream_model(call) == "text-embedding-3-small"


def test_azure_errors_are_azures() -> None:
    codec = codec_of(azure_endpoint(), {"AZ": AZURE_KEY})
    raw = json.dumps({"error": {"code": "DeploymentNotFound", "message": "no such"}}).encode()
    failure = codec.classify_error(404, {}, raw)
    assert (failure.status_for_client, failure.code, failure.retryable) == (
        502,
        "upstream_deployment_not_found",
        True,
    )
    raw = json.dumps({"error": {"code": "429", "message": "Rate limit"}}).encode()
    failure = codec.classify_error(429, {"retry-after-ms": "1500"}, raw)
    assert (failure.status_for_client, failure.code, failure.retry_after) == (
        429,
        "rate_limit_exceeded",
        1.5,
    )


# ---------------------------------------------------------------------------
# Over HTTP, against the fakes


@pytest.fixture
async def azure() -> AsyncIterator[FakeAzure]:
    fake = await FakeAzure(
        api_key=AZURE_KEY, tenant=TENANT, client_id=CLIENT, client_secret=SECRET
    ).start()
    yield fake
    await fake.close()


async def test_fake_upstream_speaks_what_the_openai_sdk_speaks(
    fake_upstream: Callable[..., Awaitable[FakeUpstream]],
) -> None:
    up = await fake_upstream(token=TOKEN)
    async with openai.AsyncOpenAI(base_url=up.url, api_key=TOKEN, max_retries=0) as client:
        result = await client.embeddings.create(model="bge", input=["one two", "three"])
        tokens = await client.embeddings.create(model="bge", input=[[5, 6]], dimensions=4)
        with pytest.raises(openai.BadRequestError):
            await client.embeddings.create(model="bge", input=[""])
    assert [d.embedding for d in result.data] == [
        fake_vector("one two", 16),
        fake_vector("three", 16),
    ]
    assert (result.usage.prompt_tokens, result.model) == (3, "bge")
    assert tokens.data[0].embedding == fake_vector(token_text([5, 6]), 4)
    assert up.requests[0].json["encoding_format"] == "base64"  # the SDK's default


async def test_vllm_codec_against_the_fake(
    fake_upstream: Callable[..., Awaitable[FakeUpstream]],
) -> None:
    up = await fake_upstream(token=TOKEN)
    up.max_client_batch_size = 32
    ep = endpoint(base_url=up.url.removesuffix("/v1"), model="bge-m3")
    codec = codec_of(ep, {"TOK": TOKEN})
    texts = [f"word{i} more" for i in range(40)] + ["x"]
    answer, usage, sent = await run_codec(
        codec, embeddings_call(input=texts, encoding_format="base64")
    )
    assert [len(body["input"]) for body in sent] == [32, 9]
    vectors = [fake_vector(t, 16) for t in texts]
    assert answer == expected_answer(vectors, 81, model="bge-m3", b64=True)
    assert usage == Usage(81, 0)
    assert [r.path for r in up.requests] == ["/v1/embeddings", "/v1/embeddings"]
    # Token arrays go through as they are; usage the server did not report is estimated.
    up.next(include_usage=False)
    answer, usage, _ = await run_codec(codec, embeddings_call(input=[[1, 2, 3]]))
    assert answer == expected_answer([fake_vector(token_text([1, 2, 3]), 16)], 3, model="bge-m3")
    assert usage == Usage(3, 0, estimated=True)


async def test_vllm_codec_errors_against_the_fake(
    fake_upstream: Callable[..., Awaitable[FakeUpstream]],
) -> None:
    up = await fake_upstream(token=TOKEN)
    codec = codec_of(endpoint(base_url=up.url), {"TOK": TOKEN})
    up.fail(429, headers={"Retry-After": "3"})
    with pytest.raises(AttemptFailed) as info:
        await run_codec(codec, embeddings_call(input="a"))
    failure = info.value.failure
    assert (failure.status_for_client, failure.retryable, failure.retry_after) == (429, True, 3.0)
    up.fail(503)
    with pytest.raises(AttemptFailed) as info:
        await run_codec(codec, embeddings_call(input="a"))
    assert (info.value.failure.status_for_client, info.value.failure.retryable) == (502, True)
    wrong = codec_of(endpoint(base_url=up.url), {"TOK": "wrong-token"})
    with pytest.raises(AttemptFailed) as info:
        await run_codec(wrong, embeddings_call(input="a"))
    assert info.value.failure.code == "upstream_auth_failed"
    up.max_client_batch_size = 1
    big = OpenAIEmbeddingsCodec(codec.adapter, max_batch=2048)
    with pytest.raises(AttemptFailed) as info:
        await run_codec(big, embeddings_call(input=["a", "b"]))
    assert (info.value.failure.status_for_client, info.value.failure.message) == (
        413,
        "batch size 2 > maximum allowed batch size 1",
    )


async def test_fake_azure_speaks_what_the_azure_sdk_speaks(azure: FakeAzure) -> None:
    def call() -> Any:
        with openai.AzureOpenAI(
            azure_endpoint=azure.url, api_key=AZURE_KEY, api_version="2024-10-21", max_retries=0
        ) as client:
            return client.embeddings.create(
                model="text-embedding-3-small", input="hi there", encoding_format="float"
            )

    result = await asyncio.to_thread(call)
    assert result.data[0].embedding == fake_vector("hi there", 16)
    assert result.usage.prompt_tokens == 2


async def test_azure_codec_against_the_fake_with_api_key_and_entra(azure: FakeAzure) -> None:
    codec = codec_of(
        Endpoint(
            name="azure-emb",
            type="azure-openai",
            pos=Position("endpoints.yaml", 1, 1),
            base_url=azure.url,
            auth={"api_key_env": "AZ"},
            options={"deployment": "text-embedding-3-small", "api_version": "2024-10-21"},
        ),
        {"AZ": AZURE_KEY},
    )
    answer, usage, _ = await run_codec(codec, embeddings_call(input=["a b", "c"], dimensions=8))
    vectors = [fake_vector("a b", 8), fake_vector("c", 8)]
    assert answer == expected_answer(vectors, 3, model="text-embedding-3-small")
    assert usage == Usage(3, 0)
    entra = codec_of(
        Endpoint(
            name="azure-entra",
            type="azure-openai",
            pos=Position("endpoints.yaml", 1, 1),
            base_url=azure.url,
            auth={
                "entra_tenant_id": TENANT,
                "entra_client_id": CLIENT,
                "entra_client_secret_env": "SECRET",
                "entra_authority": azure.url,
            },
            options={"deployment": "text-embedding-3-small", "api_version": "2024-10-21"},
        ),
        {"SECRET": SECRET},
    )
    try:
        answer, _, _ = await run_codec(entra, embeddings_call(input="c", encoding_format="base64"))
        assert answer == expected_answer(
            [fake_vector("c", 16)], 1, model="text-embedding-3-small", b64=True
        )
        assert azure.token_requests == 1
        assert azure.requests[-1]["headers"]["Authorization"].startswith("Bearer entra-access-")
        assert "api-key" not in azure.requests[-1]["headers"]
    finally:
        await entra.adapter.close()
    azure.queue.append(
        AzureReply(
            status=429, error={"code": "429", "message": "Rate limit"}, headers={"Retry-After": "4"}
        )
    )
    with pytest.raises(AttemptFailed) as info:
        await run_codec(codec, embeddings_call(input="a"))
    failure = info.value.failure
    assert (failure.status_for_client, failure.code, failure.retry_after) == (
        429,
        "rate_limit_exceeded",
        4.0,
    )
    assert azure.rejected == []
