"""The Bedrock embeddings codec (InvokeModel for Titan Text Embeddings and Cohere
Embed): exact signed requests, batches, parsed answers, errors; then over HTTP
against the fake Bedrock (which botocore's own client checks first)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import ReadOnlyCredentials

from gateway.providers import AttemptFailed, UpstreamRequest, Usage, adapter_for
from gateway.providers.bedrock.embeddings import BedrockEmbeddingsCodec, embedding_family
from tests.bedrock_azure_harness import AWS_ACCESS_KEY, AWS_SECRET, use_test_aws_identity
from tests.embeddings_helpers import embeddings_call, run_codec
from tests.fake_bedrock import FakeBedrock, Reply
from tests.fake_embeddings import b64_floats, fake_vector
from translator.errors import Position
from translator.registry import Endpoint

TITAN = "amazon.titan-embed-text-v2:0"
COHERE = "cohere.embed-english-v3"


@pytest.fixture(autouse=True)
def aws_identity(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    use_test_aws_identity(monkeypatch, tmp_path)


def codec_for(model: str | None, base: str = "https://vpce-1.bedrock-runtime.internal") -> Any:
    endpoint = Endpoint(
        name="bedrock-emb",
        type="bedrock",
        pos=Position("endpoints.yaml", 1, 1),
        model=model,
        options={"region": "us-east-1", "vpc_endpoint_url": base},
    )
    codec = adapter_for(endpoint).codec("embeddings")
    assert isinstance(codec, BedrockEmbeddingsCodec)
    return codec


def signed_headers(request: UpstreamRequest) -> dict[str, str]:
    """The headers a correct SigV4 signature of `request` (at its own date) has."""
    amz_date = request.headers["X-Amz-Date"]
    aws = AWSRequest(
        method="POST",
        url=request.url,
        data=request.body,
        headers={
            "Content-Type": "application/json",
            "Accept": "application/json",
            "X-Amz-Date": amz_date,
        },
    )
    aws.context["timestamp"] = amz_date
    signer = SigV4Auth(
        ReadOnlyCredentials(AWS_ACCESS_KEY, AWS_SECRET, None), "bedrock", "us-east-1"
    )
    signature = signer.signature(signer.string_to_sign(aws, signer.canonical_request(aws)), aws)
    return {
        "Content-Type": "application/json",
        "Accept": "application/json",
        "X-Amz-Date": amz_date,
        "Authorization": (
            f"AWS4-HMAC-SHA256 Credential={AWS_ACCESS_KEY}/{amz_date[:8]}/us-east-1/bedrock/"
            f"aws4_request, SignedHeaders=accept;content-type;host;x-amz-date, "
            f"Signature={signature}"
        ),
    }


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


def test_families() -> None:
    assert [
        embedding_family(m)
        for m in (
            TITAN,
            "arn:aws:bedrock:us-east-1::foundation-model/amazon.titan-embed-text-v2:0",
            "amazon.titan-embed-text-v1",
            COHERE,
            "us.cohere.embed-multilingual-v3",
            "anthropic.claude-3-haiku-20240307-v1:0",
        )
    ] == ["titan-v2", "titan-v2", "titan-v1", "cohere", "cohere", None]
    chat_only = Endpoint(
        name="claude",
        type="bedrock",
        pos=Position("endpoints.yaml", 1, 1),
        model="anthropic.claude-3-haiku-20240307-v1:0",
        options={"region": "us-east-1"},
    )
    assert adapter_for(chat_only).codec("embeddings") is None


# ---------------------------------------------------------------------------
# Requests


async def test_titan_embeds_one_input_per_signed_call() -> None:
    codec = codec_for(TITAN)
    requests = await codec.prepare_all(
        embeddings_call(model="ignored", input=["first", "second"], dimensions=512, user="u")
    )
    assert [r.url for r in requests] == [
        "https://vpce-1.bedrock-runtime.internal/model/amazon.titan-embed-text-v2:0/invoke"
    ] * 2
    assert [json.loads(r.body) for r in requests] == [
        {"inputText": "first", "dimensions": 512, "normalize": True},
        {"inputText": "second", "dimensions": 512, "normalize": True},
    ]
    for request in requests:
        assert dict(request.headers) == signed_headers(request)
        assert AWS_SECRET not in repr(request)


async def test_cohere_sends_up_to_96_texts_per_call_with_an_input_type() -> None:
    codec = codec_for(COHERE)
    texts = [f"t{i}" for i in range(200)]
    requests = await codec.prepare_all(embeddings_call(input=texts))
    assert [json.loads(r.body) for r in requests] == [
        {"texts": texts[:96], "input_type": "search_document", "embedding_types": ["float"]},
        {"texts": texts[96:192], "input_type": "search_document", "embedding_types": ["float"]},
        {"texts": texts[192:], "input_type": "search_document", "embedding_types": ["float"]},
    ]
    assert all(dict(r.headers) == signed_headers(r) for r in requests)
    (query,) = await codec.prepare_all(embeddings_call(input="q", input_type="query"))
    assert json.loads(query.body)["input_type"] == "search_query"


@pytest.mark.parametrize(
    ("model", "body", "message"),
    [
        (TITAN, {"input": [[1, 2]]}, "Bedrock embeds text only: token arrays cannot be sent"),
        (COHERE, {"input": [1, 2]}, "Bedrock embeds text only: token arrays cannot be sent"),
        (TITAN, {"input": "x", "dimensions": 300}, f"{TITAN} offers 'dimensions' 256, 512, 1024"),
        (
            "amazon.titan-embed-text-v1",
            {"input": "x", "dimensions": 1536},
            "amazon.titan-embed-text-v1 has a fixed number of dimensions",
        ),
        (COHERE, {"input": "x", "dimensions": 1024}, f"{COHERE} has a fixed number of dimensions"),
        (COHERE, {"input": "x", "input_type": "poem"}, "'input_type' 'poem' is not one of"),
        (None, {"input": "x"}, "no model: the endpoint names none and neither does the request"),
        (None, {"input": "x", "model": "meta.llama3"}, "meta.llama3 is not a Bedrock embeddings"),
        (TITAN, {"input": ""}, "'input' must not be an empty string"),
    ],
)
async def test_requests_bedrock_cannot_serve_are_400s(
    model: str | None, body: dict[str, Any], message: str
) -> None:
    with pytest.raises(AttemptFailed) as info:
        await codec_for(model).prepare_all(embeddings_call(**body))
    failure = info.value.failure
    assert (failure.status_for_client, failure.retryable) == (400, False)
    assert failure.message.startswith(message)


async def test_the_clients_model_is_used_when_the_endpoint_names_none() -> None:
    codec = codec_for(None)
    (request,) = await codec.prepare_all(
        embeddings_call(model="amazon.titan-embed-text-v1", input="x")
    )
    assert request.url.endswith("/model/amazon.titan-embed-text-v1/invoke")
    assert json.loads(request.body) == {"inputText": "x"}


# ---------------------------------------------------------------------------
# Answers


def test_titan_answers_and_usage() -> None:
    codec = codec_for(TITAN)
    a, b = fake_vector("a", 4), fake_vector("b", 4)
    call = embeddings_call(input=["a", "b"], encoding_format="base64")
    answers = [
        (200, {}, json.dumps({"embedding": a, "inputTextTokenCount": 3}).encode()),
        (
            200,
            {},
            json.dumps({"embeddingsByType": {"float": b}, "inputTextTokenCount": 4}).encode(),
        ),
    ]
    answer, usage = codec.parse_all(call, answers)
    assert answer == expected([a, b], 7, TITAN, b64=True)
    assert usage == Usage(7, 0)
    # No count in the body: the header's; neither: estimated for that call only.
    answers = [
        (200, {"X-Amzn-Bedrock-Input-Token-Count": "5"}, json.dumps({"embedding": a}).encode()),
        (200, {}, json.dumps({"embedding": b}).encode()),
    ]
    answer, usage = codec.parse_all(call, answers)
    assert usage == Usage(6, 0, estimated=True)
    assert answer["usage"] == {"prompt_tokens": 6, "total_tokens": 6}


def test_cohere_answers_in_both_response_types() -> None:
    codec = codec_for(COHERE)
    a, b = fake_vector("a", 3), fake_vector("b", 3)
    call = embeddings_call(input=["a", "b"])
    by_type = json.dumps(
        {
            "id": "1",
            "texts": ["a", "b"],
            "embeddings": {"float": [a, b]},
            "response_type": "embeddings_by_type",
        }
    ).encode()
    floats = json.dumps(
        {"id": "1", "texts": ["a", "b"], "embeddings": [a, b], "response_type": "embeddings_floats"}
    ).encode()
    header = {"x-amzn-bedrock-input-token-count": "9"}
    assert codec.parse_all(call, [(200, header, by_type)]) == (
        expected([a, b], 9, COHERE),
        Usage(9, 0),
    )
    assert codec.parse_all(call, [(200, {}, floats)]) == (
        expected([a, b], 2, COHERE),
        Usage(2, 0, estimated=True),
    )


@pytest.mark.parametrize(
    ("model", "raw", "message"),
    [
        (TITAN, b"{}", "embedding 0 is not an embedding vector"),
        (TITAN, b"[]", "the upstream's answer is not a JSON object"),
        (COHERE, json.dumps({"embeddings": [[1.0]]}).encode(), "Cohere Embed did not return 2"),
        (COHERE, json.dumps({"embeddings": {"int8": [[1], [2]]}}).encode(), "Cohere Embed did"),
    ],
)
def test_malformed_answers_fail_over(model: str, raw: bytes, message: str) -> None:
    codec = codec_for(model)
    answers = [(200, {}, raw)] * (2 if model == TITAN else 1)
    with pytest.raises(AttemptFailed) as info:
        codec.parse_all(embeddings_call(input=["a", "b"]), answers)
    failure = info.value.failure
    assert (failure.status_for_client, failure.retryable) == (502, True)
    assert failure.message.startswith(message)


def test_a_missing_answer_fails_over() -> None:
    with pytest.raises(AttemptFailed) as info:
        codec_for(TITAN).parse_all(embeddings_call(input=["a", "b"]), [(200, {}, b"{}")])
    assert info.value.failure.message == "expected 2 upstream answers, got 1"


@pytest.mark.parametrize(
    ("kind", "status", "message", "expected_failure"),
    [
        ("ThrottlingException", 429, "Too many requests", (429, "rate_limit_exceeded", True)),
        ("ServiceUnavailableException", 503, "busy", (503, "overloaded", True)),
        ("AccessDeniedException", 403, "no", (502, "upstream_auth_failed", True)),
        (
            "ValidationException",
            400,
            "Input is too long for requested model.",
            (400, "context_length_exceeded", False),
        ),
        ("ValidationException", 400, "Malformed input request", (400, "invalid_request", False)),
        ("ModelTimeoutException", 408, "slow", (504, "model_timeout", True)),
    ],
)
def test_errors_are_classified_like_chat(
    kind: str, status: int, message: str, expected_failure: tuple[Any, ...]
) -> None:
    failure = codec_for(TITAN).classify_error(
        status,
        {"x-amzn-ErrorType": f"{kind}:http://internal.amazon.com/"},
        json.dumps({"message": message}).encode(),
    )
    assert (failure.status_for_client, failure.code, failure.retryable) == expected_failure


# ---------------------------------------------------------------------------
# Over HTTP, against the fake


@pytest.fixture
async def bedrock() -> AsyncIterator[FakeBedrock]:
    fake = await FakeBedrock().start()
    fake.allow(AWS_ACCESS_KEY, AWS_SECRET)
    yield fake
    await fake.close()


async def test_fake_bedrock_speaks_what_botocore_speaks(bedrock: FakeBedrock) -> None:
    def invoke(model: str, body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        client = botocore.session.get_session().create_client(
            "bedrock-runtime",
            region_name="us-east-1",
            endpoint_url=bedrock.url,
            aws_access_key_id=AWS_ACCESS_KEY,
            aws_secret_access_key=AWS_SECRET,
            config=Config(retries={"max_attempts": 1}),
        )
        answer = client.invoke_model(
            modelId=model,
            body=json.dumps(body),
            contentType="application/json",
            accept="application/json",
        )
        return json.loads(answer["body"].read()), answer["ResponseMetadata"]["HTTPHeaders"]

    titan, headers = await asyncio.to_thread(
        invoke, TITAN, {"inputText": "hello world", "dimensions": 256, "normalize": True}
    )
    assert titan == {"embedding": fake_vector("hello world", 256), "inputTextTokenCount": 2}
    assert headers["x-amzn-bedrock-input-token-count"] == "2"
    cohere, _ = await asyncio.to_thread(
        invoke, COHERE, {"texts": ["a", "b c"], "input_type": "search_query"}
    )
    assert cohere["embeddings"] == [fake_vector("a", 1024), fake_vector("b c", 1024)]
    assert cohere["response_type"] == "embeddings_floats"
    with pytest.raises(Exception, match="extraneous key \\[inputs\\]"):
        await asyncio.to_thread(
            invoke, COHERE, {"texts": ["a"], "input_type": "search_query", "inputs": []}
        )
    assert bedrock.rejected == ["ValidationException"]


async def test_titan_codec_against_the_fake(bedrock: FakeBedrock) -> None:
    codec = codec_for(TITAN, bedrock.url)
    texts = ["one", "two words", "three more words"]
    answer, usage, sent = await run_codec(codec, embeddings_call(input=texts, dimensions=256))
    assert len(sent) == 3
    assert answer == expected([fake_vector(t, 256) for t in texts], 6, TITAN)
    assert usage == Usage(6, 0)
    assert [r.model_id for r in bedrock.requests] == [TITAN] * 3
    assert bedrock.rejected == []


async def test_cohere_codec_against_the_fake(bedrock: FakeBedrock) -> None:
    codec = codec_for(COHERE, bedrock.url)
    texts = [f"text number {i}" for i in range(100)]
    answer, usage, sent = await run_codec(
        codec, embeddings_call(input=texts, encoding_format="base64")
    )
    assert [len(body["texts"]) for body in sent] == [96, 4]
    assert answer == expected([fake_vector(t, 1024) for t in texts], 300, COHERE, b64=True)
    assert usage == Usage(300, 0)
    bedrock.report_input_tokens = False
    answer, usage, _ = await run_codec(codec, embeddings_call(input="abcdefgh"))
    assert usage == Usage(2, 0, estimated=True)
    assert answer["usage"] == {"prompt_tokens": 2, "total_tokens": 2}
    assert bedrock.rejected == []


async def test_bedrock_codec_errors_against_the_fake(bedrock: FakeBedrock) -> None:
    codec = codec_for(TITAN, bedrock.url)
    bedrock.queue.extend([Reply(), Reply(error=("ThrottlingException", 429, "Too many requests"))])
    with pytest.raises(AttemptFailed) as info:
        await run_codec(codec, embeddings_call(input=["a", "b"]))
    assert (info.value.failure.status_for_client, info.value.failure.retryable) == (429, True)
    with pytest.raises(AttemptFailed) as info:
        await run_codec(codec, embeddings_call(input=" ".join(["w"] * 8193)))
    assert info.value.failure.code == "context_length_exceeded"
    bedrock.secrets.clear()
    with pytest.raises(AttemptFailed) as info:
        await run_codec(codec, embeddings_call(input="a"))
    assert (info.value.failure.code, info.value.failure.retryable) == ("upstream_auth_failed", True)
    assert bedrock.rejected == ["UnrecognizedClientException"]
