"""The Vertex AI embeddings codec (`:predict` for text-embedding-005 and
gemini-embedding-001): exact requests with the service account's token,
batches, parsed answers, errors; then over HTTP against the fake Vertex AI
(whose `:predict` the google-genai SDK checks first)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from google import genai
from google.genai import types as genai_types
from google.oauth2 import service_account

from gateway.providers import AttemptFailed, Usage, adapter_for
from gateway.providers.vertex.embeddings import VertexEmbeddingsCodec
from tests.embeddings_helpers import embeddings_call, run_codec
from tests.fake_embeddings import b64_floats, fake_vector
from tests.fake_vertex import SCOPE, FakeVertex, GoogleFailure, ServiceAccount, make_service_account
from translator.errors import Position
from translator.registry import Endpoint

PROJECT, LOCATION = "p1", "us-central1"
GECKO = "text-embedding-005"
GEMINI = "gemini-embedding-001"


@pytest.fixture
async def vertex(tmp_path: Path) -> AsyncIterator[tuple[FakeVertex, ServiceAccount]]:
    async with FakeVertex(project=PROJECT, location=LOCATION) as fake:
        account = make_service_account(tmp_path, fake.token_uri)
        fake.trust(account)
        yield fake, account


def codec_for(
    vertex: tuple[FakeVertex, ServiceAccount], model: str | None = GECKO
) -> VertexEmbeddingsCodec:
    fake, account = vertex
    endpoint = Endpoint(
        name="vertex-emb",
        type="vertex",
        pos=Position("endpoints.yaml", 1, 1),
        base_url=fake.url,
        model=model,
        auth={"service_account_file": str(account.path)},
        options={"project": PROJECT, "location": LOCATION},
    )
    codec = adapter_for(endpoint).codec("embeddings")
    assert isinstance(codec, VertexEmbeddingsCodec)
    return codec


def url(fake: FakeVertex, model: str) -> str:
    return (
        f"{fake.url}/v1/projects/{PROJECT}/locations/{LOCATION}/publishers/google/models/"
        f"{model}:predict"
    )


def expected(vectors: list[list[float]], tokens: int, model: str, b64: bool = False) -> Any:
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": b64_floats(v) if b64 else v}
            for i, v in enumerate(vectors)
        ],
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def prediction(vector: list[float], tokens: Any) -> dict[str, Any]:
    statistics = (
        {"truncated": False} if tokens is None else {"truncated": False, "token_count": tokens}
    )
    return {"embeddings": {"values": vector, "statistics": statistics}}


# ---------------------------------------------------------------------------
# Requests


async def test_text_embedding_requests(vertex: tuple[FakeVertex, ServiceAccount]) -> None:
    fake, _ = vertex
    codec = codec_for(vertex)
    call = embeddings_call(
        model="other", input=["a", "b"], dimensions=256, input_type="query", user="u"
    )
    (request,) = await codec.prepare_all(call)
    (token,) = fake.tokens
    assert (request.method, request.url, dict(request.headers)) == (
        "POST",
        url(fake, GECKO),
        {"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    assert json.loads(request.body) == {
        "instances": [
            {"content": "a", "task_type": "RETRIEVAL_QUERY"},
            {"content": "b", "task_type": "RETRIEVAL_QUERY"},
        ],
        "parameters": {"autoTruncate": False, "outputDimensionality": 256},
    }
    assert token not in repr(request)
    # 251 inputs: the most one request takes (250), then the rest.
    requests = await codec.prepare_all(embeddings_call(input=[f"t{i}" for i in range(251)]))
    assert [len(json.loads(r.body)["instances"]) for r in requests] == [250, 1]
    assert json.loads(requests[1].body) == {
        "instances": [{"content": "t250"}],
        "parameters": {"autoTruncate": False},
    }
    assert fake.token_requests == 1  # the token is cached


async def test_gemini_embedding_takes_one_instance_per_request(
    vertex: tuple[FakeVertex, ServiceAccount],
) -> None:
    fake, _ = vertex
    codec = codec_for(vertex, model=None)
    call = embeddings_call(model=GEMINI, input=["x", "y", "z"], input_type="CODE_RETRIEVAL_QUERY")
    requests = await codec.prepare_all(call)
    assert [r.url for r in requests] == [url(fake, GEMINI)] * 3
    assert [json.loads(r.body)["instances"] for r in requests] == [
        [{"content": text, "task_type": "CODE_RETRIEVAL_QUERY"}] for text in "xyz"
    ]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"input": [[1, 2]]}, "Vertex AI embeds text only: token arrays cannot be sent"),
        (
            {"input": "x", "model": GECKO, "input_type": "poem"},
            "'input_type' 'poem' is neither query, document",
        ),
        ({"input": "x", "model": "../other"}, "the model name may only use letters"),
        ({"input": []}, "'input' must not be an empty list"),
    ],
)
async def test_requests_vertex_cannot_serve_are_400s(
    vertex: tuple[FakeVertex, ServiceAccount], body: dict[str, Any], message: str
) -> None:
    with pytest.raises(AttemptFailed) as info:
        await codec_for(vertex, model=None).prepare_all(embeddings_call(**body))
    failure = info.value.failure
    assert (failure.status_for_client, failure.retryable) == (400, False)
    assert failure.message.startswith(message)


# ---------------------------------------------------------------------------
# Answers


def test_answers_and_usage(vertex: tuple[FakeVertex, ServiceAccount]) -> None:
    codec = codec_for(vertex, model=GEMINI)
    a, b = fake_vector("a", 4), fake_vector("b", 4)
    call = embeddings_call(input=["a", "bbbbbbbb"], encoding_format="base64")
    answers = [
        (200, {}, json.dumps({"predictions": [prediction(a, 3.0)]}).encode()),
        (200, {}, json.dumps({"predictions": [prediction(b, 4)]}).encode()),
    ]
    assert codec.parse_all(call, answers) == (expected([a, b], 7, GEMINI, b64=True), Usage(7, 0))
    answers[1] = (200, {}, json.dumps({"predictions": [prediction(b, None)]}).encode())
    # The second call reported no count: its estimate (8 characters, 2 tokens) instead.
    assert codec.parse_all(call, answers) == (
        expected([a, b], 5, GEMINI, b64=True),
        Usage(5, 0, estimated=True),
    )


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"predictions": []}, "Vertex AI did not return 2 predictions"),
        ({"error": {"code": 500}}, "Vertex AI did not return 2 predictions"),
        ({"predictions": [{}, {}]}, "prediction 0 has no embeddings"),
        ({"predictions": [prediction([1.0], 1), {"embeddings": {}}]}, "embedding 1 is not an"),
    ],
)
def test_malformed_answers_fail_over(
    vertex: tuple[FakeVertex, ServiceAccount], raw: Any, message: str
) -> None:
    with pytest.raises(AttemptFailed) as info:
        codec_for(vertex).parse_all(
            embeddings_call(input=["a", "b"]), [(200, {}, json.dumps(raw).encode())]
        )
    failure = info.value.failure
    assert (failure.status_for_client, failure.retryable) == (502, True)
    assert failure.message.startswith(message)


@pytest.mark.parametrize(
    ("status", "google_status", "message", "expected_failure"),
    [
        (429, "RESOURCE_EXHAUSTED", "Quota exceeded", (429, "rate_limit_exceeded", True)),
        (503, "UNAVAILABLE", "try later", (503, "upstream_unavailable", True)),
        (
            400,
            "INVALID_ARGUMENT",
            "Unable to submit request because the input token count is 3000 but the model "
            "supports up to 2048.",
            (400, "context_length_exceeded", False),
        ),
        (400, "INVALID_ARGUMENT", "bad", (400, "invalid_argument", False)),
        (403, "PERMISSION_DENIED", "no", (502, "upstream_auth_failed", True)),
    ],
)
def test_errors_are_classified_like_chat(
    vertex: tuple[FakeVertex, ServiceAccount],
    status: int,
    google_status: str,
    message: str,
    expected_failure: tuple[Any, ...],
) -> None:
    raw = json.dumps({"error": {"code": status, "status": google_status, "message": message}})
    failure = codec_for(vertex).classify_error(status, {}, raw.encode())
    assert (failure.status_for_client, failure.code, failure.retryable) == expected_failure


# ---------------------------------------------------------------------------
# Over HTTP, against the fake


# google-genai's async client subclasses aiohttp's ClientSession, which aiohttp warns about.
@pytest.mark.filterwarnings("ignore:Inheritance class AiohttpClientSession:DeprecationWarning")
async def test_fake_vertex_speaks_what_google_genai_speaks(
    vertex: tuple[FakeVertex, ServiceAccount],
) -> None:
    fake, account = vertex
    credentials = service_account.Credentials.from_service_account_file(  # type: ignore[no-untyped-call]
        str(account.path), scopes=[SCOPE]
    )
    client = genai.Client(
        vertexai=True,
        project=PROJECT,
        location=LOCATION,
        credentials=credentials,
        http_options=genai_types.HttpOptions(base_url=fake.url, api_version="v1"),
    )
    result = await client.aio.models.embed_content(
        model=GECKO,
        contents=["hello there", "bye"],
        config=genai_types.EmbedContentConfig(
            task_type="RETRIEVAL_DOCUMENT", output_dimensionality=32, auto_truncate=False
        ),
    )
    assert fake.requests[-1].json == {
        "instances": [
            {"content": "hello there", "task_type": "RETRIEVAL_DOCUMENT"},
            {"content": "bye", "task_type": "RETRIEVAL_DOCUMENT"},
        ],
        "parameters": {"outputDimensionality": 32, "autoTruncate": False},
    }
    assert result.embeddings is not None
    assert [e.values for e in result.embeddings] == [
        fake_vector("hello there", 32),
        fake_vector("bye", 32),
    ]
    assert [e.statistics.token_count for e in result.embeddings if e.statistics] == [2.0, 1.0]
    assert fake.invalid == []


async def test_codec_against_the_fake(vertex: tuple[FakeVertex, ServiceAccount]) -> None:
    fake, _ = vertex
    texts = ["one", "two words", "three more words"]
    answer, usage, sent = await run_codec(
        codec_for(vertex), embeddings_call(input=texts, dimensions=64)
    )
    assert len(sent) == 1
    assert answer == expected([fake_vector(t, 64) for t in texts], 6, GECKO)
    assert usage == Usage(6, 0)
    answer, usage, sent = await run_codec(
        codec_for(vertex, model=GEMINI), embeddings_call(input=texts, encoding_format="base64")
    )
    assert len(sent) == 3
    assert answer == expected([fake_vector(t, 3072) for t in texts], 6, GEMINI, b64=True)
    assert fake.invalid == []


async def test_codec_errors_against_the_fake(vertex: tuple[FakeVertex, ServiceAccount]) -> None:
    fake, _ = vertex
    codec = codec_for(vertex)
    with pytest.raises(AttemptFailed) as info:
        await run_codec(codec, embeddings_call(input=" ".join(["w"] * 2049)))
    assert (info.value.failure.status_for_client, info.value.failure.code) == (
        400,
        "context_length_exceeded",
    )
    fake.fail(GoogleFailure(429, "RESOURCE_EXHAUSTED", "Quota exceeded for aiplatform"))
    with pytest.raises(AttemptFailed) as info:
        await run_codec(codec, embeddings_call(input="a"))
    assert (info.value.failure.status_for_client, info.value.failure.retryable) == (429, True)
    with pytest.raises(AttemptFailed) as info:
        await run_codec(codec_for(vertex, model="text-embedding-999"), embeddings_call(input="a"))
    assert (info.value.failure.status_for_client, info.value.failure.code) == (404, "not_found")
    fake.tokens.clear()  # the fake forgets the token the gateway holds
    with pytest.raises(AttemptFailed) as info:
        await run_codec(codec, embeddings_call(input="a"))
    assert info.value.failure.code == "upstream_auth_failed"
