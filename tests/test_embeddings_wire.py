"""The shared embeddings wire format (gateway/providers/embeddings.py): reading
OpenAI requests, writing answers the openai SDK reads, vectors, usage; and the
default operations of registry endpoints (translator/operations.py)."""

from __future__ import annotations

import asyncio
import base64
import math
import struct
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from aiohttp import web
from openai.types import CreateEmbeddingResponse

from gateway.errors import BadRequestError
from gateway.providers import AttemptFailed, Call, Usage
from gateway.providers.embeddings import (
    EmbeddingsCodec,
    EmbeddingsRequest,
    batch_usage,
    batches,
    encode_base64,
    estimate_tokens,
    parse_request,
    read_vector,
    render_response,
    reported_count,
    request_of,
)
from tests.fake_embeddings import b64_floats, fake_vector
from tests.processes import serve_app
from translator.operations import default_operations

# ---------------------------------------------------------------------------
# Requests


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"input": "hi"}, EmbeddingsRequest(texts=("hi",))),
        (
            {"input": ["a", "b"], "model": "m", "user": "u", "dimensions": 256},
            EmbeddingsRequest(texts=("a", "b"), model="m", user="u", dimensions=256),
        ),
        ({"input": [1, 2, 3]}, EmbeddingsRequest(token_arrays=((1, 2, 3),))),
        (
            {"input": [[1], [2, 2**31 - 1]], "encoding_format": "base64"},
            EmbeddingsRequest(token_arrays=((1,), (2, 2**31 - 1)), encoding_format="base64"),
        ),
        (
            {"input": "x", "encoding_format": None, "dimensions": None, "user": None},
            EmbeddingsRequest(texts=("x",)),
        ),
        (
            {"input": "x", "input_type": "query", "encoding_format": "float"},
            EmbeddingsRequest(texts=("x",), input_type="query"),
        ),
        ({"input": ["x"] * 2048}, EmbeddingsRequest(texts=("x",) * 2048)),
    ],
)
def test_valid_requests(body: dict[str, Any], expected: EmbeddingsRequest) -> None:
    assert parse_request(body) == expected


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "'input' is required: a string, a list of strings, a token array or a list of"),
        ({"input": ""}, "'input' must not be an empty string"),
        ({"input": []}, "'input' must not be an empty list"),
        ({"input": ["x"] * 2049}, "'input' has 2049 items; at most 2048 are allowed"),
        ({"input": ["a", ""]}, "'input[1]' must not be an empty string"),
        ({"input": ["a", 3]}, "'input[1]' must be a string, like the other items"),
        ({"input": [1, "a"]}, "'input[1]' must be a token id (an integer)"),
        ({"input": [1, -1]}, "'input[1]' must be a token id between 0 and 2147483647"),
        ({"input": [2**31]}, "'input[0]' must be a token id between 0 and 2147483647"),
        ({"input": [1, 2.0]}, "'input[1]' must be a token id (an integer)"),
        ({"input": [True]}, "'input' must be a string, a list of strings, a token array or"),
        ({"input": [1, True]}, "'input[1]' must be a token id (an integer)"),
        ({"input": [[1], []]}, "'input[1]' must not be an empty token array"),
        ({"input": [[1], [False]]}, "'input[1][0]' must be a token id (an integer)"),
        ({"input": [[1], "a"]}, "'input[1]' must be a token array, like the other items"),
        ({"input": [{"text": "a"}]}, "'input' must be a string, a list of strings, a token"),
        ({"input": 5}, "'input' must be a string, a list of strings, a token array or a list"),
        ({"input": {"a": 1}}, "'input' must be a string, a list of strings, a token array"),
        ({"input": "x", "encoding_format": "hex"}, "'encoding_format' must be 'float' or"),
        ({"input": "x", "encoding_format": 1}, "'encoding_format' must be 'float' or 'base64'"),
        ({"input": "x", "dimensions": 0}, "'dimensions' must be an integer between 1 and 65536"),
        ({"input": "x", "dimensions": -5}, "'dimensions' must be an integer between 1 and"),
        ({"input": "x", "dimensions": 10**9}, "'dimensions' must be an integer between 1 and"),
        ({"input": "x", "dimensions": True}, "'dimensions' must be an integer between 1 and"),
        ({"input": "x", "dimensions": "256"}, "'dimensions' must be an integer between 1"),
        ({"input": "x", "dimensions": 256.0}, "'dimensions' must be an integer between 1"),
        ({"input": "x", "user": 7}, "'user' must be a string"),
        ({"input": "x", "model": ["m"]}, "'model' must be a string"),
        ({"input": "x", "input_type": 1}, "'input_type' must be a string"),
    ],
)
def test_malformed_requests_are_400s_that_say_why(body: dict[str, Any], message: str) -> None:
    with pytest.raises(BadRequestError) as info:
        parse_request(body)
    err = info.value
    assert (err.status, err.code, err.type) == (400, "invalid_body", "invalid_request_error")
    assert err.message.startswith(message)


def test_codecs_see_the_same_400_as_a_failure_that_never_fails_over() -> None:
    with pytest.raises(AttemptFailed) as info:
        request_of(Call("embeddings", {"input": []}))
    failure = info.value.failure
    assert (failure.status_for_client, failure.code, failure.message, failure.retryable) == (
        400,
        "invalid_body",
        "'input' must not be an empty list",
        False,
    )


def test_token_arrays_and_unknown_input_types_are_refused_where_unsupported() -> None:
    with pytest.raises(AttemptFailed) as info:
        parse_request({"input": [[1, 2]]}).text_inputs("Bedrock")
    assert (info.value.failure.status_for_client, info.value.failure.code) == (
        400,
        "unsupported_request",
    )
    assert info.value.failure.message == (
        "Bedrock embeds text only: token arrays cannot be sent to it (send the text itself)"
    )
    assert parse_request({"input": "x", "input_type": "Search_Query"}).portable_input_type() == (
        "query"
    )
    assert parse_request({"input": "x", "input_type": "passage"}).portable_input_type() == (
        "document"
    )
    with pytest.raises(AttemptFailed) as info:
        parse_request({"input": "x", "input_type": "poetry"}).portable_input_type()
    assert info.value.failure.message == (
        "'input_type' 'poetry' is not one of query, document, classification, clustering"
    )


# ---------------------------------------------------------------------------
# Vectors and answers


def test_vectors_from_floats_and_base64() -> None:
    vector = fake_vector("hello", 8)
    assert read_vector(vector, "e") == vector
    assert read_vector([1, 2], "e") == [1.0, 2.0]
    assert read_vector(b64_floats(vector), "e") == vector
    assert encode_base64(vector) == b64_floats(vector)
    assert base64.b64decode(encode_base64([1.0, -2.5])) == struct.pack("<2f", 1.0, -2.5)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([], "e is an empty vector"),
        (["1"], "e is not a list of numbers"),
        ([None], "e is not a list of numbers"),
        ([1.0, math.nan], "e has a value that is not a finite number"),
        ([math.inf], "e has a value that is not a finite number"),
        ("not base64!", "e is not valid base64"),
        (base64.b64encode(b"\x00\x00\x80").decode(), "e is not a whole number of float32 values"),
        (
            base64.b64encode(struct.pack("<f", math.nan)).decode(),
            "e has a value that is not a finite number",
        ),
        ({"values": [1]}, "e is not an embedding vector"),
        (None, "e is not an embedding vector"),
    ],
)
def test_malformed_upstream_vectors_are_bad_responses(value: Any, message: str) -> None:
    with pytest.raises(AttemptFailed) as info:
        read_vector(value, "e")
    failure = info.value.failure
    assert (failure.status_for_client, failure.code, failure.message, failure.retryable) == (
        502,
        "bad_upstream_response",
        message,
        True,
    )


def test_a_vector_beyond_float32_cannot_be_sent_as_base64() -> None:
    with pytest.raises(AttemptFailed):
        encode_base64([1e39])


def test_rendered_answers_are_create_embedding_responses() -> None:
    vectors = [fake_vector("a", 4), fake_vector("b", 4)]
    answer = render_response(vectors, model="m", usage=Usage(7, 0), encoding_format="float")
    assert answer == {
        "object": "list",
        "data": [
            {"object": "embedding", "index": 0, "embedding": vectors[0]},
            {"object": "embedding", "index": 1, "embedding": vectors[1]},
        ],
        "model": "m",
        "usage": {"prompt_tokens": 7, "total_tokens": 7},
    }
    parsed = CreateEmbeddingResponse.model_validate(answer)
    assert [d.embedding for d in parsed.data] == vectors
    b64 = render_response(vectors, model="m", usage=Usage(7, 0), encoding_format="base64")
    assert [d["embedding"] for d in b64["data"]] == [b64_floats(v) for v in vectors]


@pytest.fixture
async def answering_server() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A loopback server answering every embeddings request with render_response()."""
    seen: list[dict[str, Any]] = []

    async def handle(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append(body)
        vectors = [fake_vector(text, 6) for text in body["input"]]
        usage = Usage(len(vectors), 0)
        answer = render_response(
            vectors, model="m", usage=usage, encoding_format=body.get("encoding_format", "float")
        )
        return web.json_response(answer)

    app = web.Application()
    app.router.add_post("/v1/embeddings", handle)
    runner, port = await serve_app(app)
    yield f"http://127.0.0.1:{port}/v1", seen
    await runner.cleanup()


async def test_the_openai_sdk_reads_rendered_answers_in_every_encoding(
    answering_server: tuple[str, list[dict[str, Any]]],
) -> None:
    url, seen = answering_server
    expected = [fake_vector("a", 6), fake_vector("b", 6)]
    async with openai.AsyncOpenAI(base_url=url, api_key="k", max_retries=0) as client:
        # No encoding_format: the SDK asks for base64 and decodes it itself.
        default = await client.embeddings.create(model="m", input=["a", "b"])
        floats = await client.embeddings.create(
            model="m", input=["a", "b"], encoding_format="float"
        )
        raw = await client.embeddings.create(model="m", input=["a", "b"], encoding_format="base64")
    assert [body.get("encoding_format") for body in seen] == ["base64", "float", "base64"]
    assert [d.embedding for d in default.data] == expected
    assert [d.embedding for d in floats.data] == expected
    assert [d.embedding for d in raw.data] == [b64_floats(v) for v in expected]
    assert (default.usage.prompt_tokens, default.usage.total_tokens, default.model) == (2, 2, "m")

    def sync_call() -> list[list[float]]:
        # The sync client blocks: in a thread, so that the server's loop runs.
        with openai.OpenAI(base_url=url, api_key="k", max_retries=0) as sync:
            return [d.embedding for d in sync.embeddings.create(model="m", input=["a"]).data]

    assert await asyncio.to_thread(sync_call) == [expected[0]]


# ---------------------------------------------------------------------------
# Usage and batches


def test_usage_estimates_and_batches() -> None:
    assert estimate_tokens(["abcd", "abcde"], [[1, 2, 3]]) == 1 + 2 + 3
    assert batch_usage([3, 4], [10, 10]) == Usage(7, 0, estimated=False)
    assert batch_usage([3, None], [10, 10]) == Usage(13, 0, estimated=True)
    assert batches(5, 2) == [range(0, 2), range(2, 4), range(4, 5)]
    assert batches(2, 96) == [range(0, 2)]
    assert [reported_count(v) for v in (5, 5.0, 4.6, -1, True, "5", None, math.nan)] == [
        5,
        5,
        5,
        None,
        None,
        None,
        None,
        None,
    ]


class _Codec(EmbeddingsCodec):
    def upstream_model(self, call: Call) -> str | None:
        return None

    async def prepare_all(self, call: Call) -> list[Any]:
        return []

    def parse_all(self, call: Call, answers: list[Any]) -> tuple[dict[str, Any], Usage | None]:
        return {}, None

    def classify_error(self, status: int, headers: Any, raw: bytes) -> Any:
        raise NotImplementedError


def test_every_codec_refuses_streams_and_estimates_usage() -> None:
    codec = _Codec()
    call = Call("embeddings", {"input": ["abcdefgh", "x"]})
    assert codec.operation == "embeddings"
    assert codec.estimate_usage(call, None) == Usage(3, 0, estimated=True)
    assert codec.estimate_usage(Call("embeddings", {"input": 5}), None) == Usage(
        0, 0, estimated=True
    )
    with pytest.raises(AttemptFailed) as info:
        codec.stream_translator(call)
    assert (info.value.failure.status_for_client, info.value.failure.message) == (
        400,
        "embeddings cannot be streamed",
    )


# ---------------------------------------------------------------------------
# Default operations of registry endpoints

GENERATION = frozenset({"chat", "messages", "responses"})


@pytest.mark.parametrize(
    ("endpoint_type", "model", "expected"),
    [
        ("openai", "text-embedding-3-small", {"embeddings"}),
        ("azure-openai", "text-embedding-ada-002", {"embeddings"}),
        ("bedrock", "amazon.titan-embed-text-v2:0", {"embeddings"}),
        ("bedrock", "cohere.embed-multilingual-v3", {"embeddings"}),
        ("vertex", "gemini-embedding-001", {"embeddings"}),
        ("vertex", "text-embedding-005", {"embeddings"}),
        ("openai-compatible", "BAAI/bge-large-en-v1.5", {"embeddings"}),
        ("openai-compatible", "intfloat/multilingual-e5-large", {"embeddings"}),
        ("openai-compatible", "e5-mistral-7b-instruct", {"embeddings"}),
        ("openai-compatible", "thenlper/gte-base", {"embeddings"}),
        ("openai-compatible", "sentence-transformers/all-MiniLM-L6-v2", {"embeddings"}),
        ("openai-compatible", "nomic-ai/nomic-embed-text-v1.5", {"embeddings"}),
        ("openai-compatible", "Qwen/Qwen3-Embedding-8B", {"embeddings"}),
        ("openai-compatible", "meta-llama/Llama-3.1-8B-Instruct", GENERATION),
        ("openai-compatible", None, GENERATION),
        ("openai", "gpt-4o", GENERATION),
        ("bedrock", "anthropic.claude-3-haiku-20240307-v1:0", GENERATION),
        ("vertex", "gemini-2.5-flash", GENERATION),
        ("anthropic", "claude-embed-lookalike", GENERATION),
    ],
)
def test_default_operations(endpoint_type: str, model: str | None, expected: set[str]) -> None:
    assert default_operations(endpoint_type, model) == frozenset(expected)
