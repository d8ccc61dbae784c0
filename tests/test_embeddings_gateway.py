"""Embeddings through the gateway with the official openai SDK (sync and async):
a real OPA sidecar, the embeddings codecs plugged in by the adapters, and the
fake vLLM, OpenAI, Azure OpenAI (api-key), Bedrock (SigV4; Titan and Cohere) and
Vertex AI (service-account token) servers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import openai
import pytest
import pytest_asyncio

from gateway.auth import KeyStore
from tests.bedrock_azure_harness import (
    AWS_ACCESS_KEY,
    AWS_SECRET,
    AZURE_KEY,
    ENTRA_CLIENT,
    ENTRA_SECRET,
    ENTRA_TENANT,
    use_test_aws_identity,
)
from tests.fake_azure import FakeAzure
from tests.fake_bedrock import FakeBedrock, Reply
from tests.fake_embeddings import fake_vector
from tests.fake_upstream import FakeUpstream
from tests.fake_vertex import FakeVertex, make_service_account
from tests.gateway_harness import Gateway, serve_gateway

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

TITAN = "amazon.titan-embed-text-v2:0"
COHERE = "cohere.embed-multilingual-v3"
TOKEN = "vllm-token-canary-e2e"
OPENAI_KEY = "sk-openai-canary-e2e"
ROUTES = {
    "vllm": ("vllm", []),
    "openai": ("openai", []),
    "azure": ("azure", []),
    "titan": ("titan", []),
    "cohere": ("cohere", []),
    "vertex": ("vertex", []),
    "vllm-then-titan": ("vllm", ["titan"]),
}


@dataclass
class Stack:
    gateway: Gateway
    vllm: FakeUpstream
    openai: FakeUpstream
    azure: FakeAzure
    bedrock: FakeBedrock
    vertex: FakeVertex
    key: str
    seen: int = 0

    async def new_records(self) -> list[dict[str, Any]]:
        records = await self.gateway.audit_records()
        fresh, self.seen = records[self.seen :], len(records)
        return fresh


def target(name: str) -> dict[str, str]:
    return {"X-Labels": f"target={name}"}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(opa_bin: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    work = tmp_path_factory.mktemp("embeddings")
    with pytest.MonkeyPatch.context() as mp:
        use_test_aws_identity(mp, work)
        vllm = await FakeUpstream(token=TOKEN).start()
        saas = await FakeUpstream(token=OPENAI_KEY).start()
        azure = await FakeAzure(
            api_key=AZURE_KEY,
            tenant=ENTRA_TENANT,
            client_id=ENTRA_CLIENT,
            client_secret=ENTRA_SECRET,
        ).start()
        bedrock = await FakeBedrock().start()
        bedrock.allow(AWS_ACCESS_KEY, AWS_SECRET)
        vertex = await FakeVertex(project="p1", location="us-central1").start()
        account = make_service_account(work, vertex.token_uri)
        vertex.trust(account)
        rules = ["version: v1", "rules:"]
        for name, (route, fallback) in ROUTES.items():
            rules += [
                f"  - name: {name}",
                f"    match: {{labels.target: {name}}}",
                f"    route_to: {route}",
            ]
            if fallback:
                rules.append(f"    fallback: [{', '.join(fallback)}]")
        (work / "routing.yaml").write_text("\n".join(rules) + "\n")
        timeouts = "    timeouts: {connect_ms: 1000, first_token_ms: 5000, total_ms: 10000}"
        (work / "endpoints.yaml").write_text(
            "\n".join(
                [
                    "endpoints:",
                    "  vllm:",
                    "    type: openai-compatible",
                    "    flavor: vllm",
                    f"    base_url: {vllm.url}",
                    "    model: BAAI/bge-m3",
                    "    in_vpc: true",
                    "    auth: {bearer_token_env: VLLM_TOKEN}",
                    "    pricing: {input_per_1k: 0.01, output_per_1k: 0}",
                    timeouts,
                    "  openai:",
                    "    type: openai",
                    f"    base_url: {saas.url}",
                    "    model: text-embedding-3-small",
                    "    auth: {api_key_env: OPENAI_API_KEY}",
                    "    pricing: {input_per_1k: 0.00002, output_per_1k: 0}",
                    timeouts,
                    "  azure:",
                    "    type: azure-openai",
                    f"    base_url: {azure.url}",
                    "    deployment: text-embedding-3-small",
                    '    api_version: "2024-10-21"',
                    "    operations: [embeddings]",
                    "    auth: {api_key_env: AZURE_OPENAI_API_KEY}",
                    "    pricing: {input_per_1k: 0.00002, output_per_1k: 0}",
                    timeouts,
                    "  cohere:",
                    "    type: bedrock",
                    "    region: us-east-1",
                    f"    vpc_endpoint_url: {bedrock.url}",
                    f"    model: {COHERE}",
                    "    pricing: {input_per_1k: 0.1, output_per_1k: 0}",
                    timeouts,
                    "  titan:",
                    "    type: bedrock",
                    "    region: us-east-1",
                    f"    vpc_endpoint_url: {bedrock.url}",
                    f"    model: {TITAN}",
                    "    pricing: {input_per_1k: 0.02, output_per_1k: 0}",
                    timeouts,
                    "  vertex:",
                    "    type: vertex",
                    "    project: p1",
                    "    location: us-central1",
                    f"    base_url: {vertex.url}",
                    "    model: gemini-embedding-001",
                    f"    auth: {{service_account_file: {account.path}}}",
                    timeouts,
                ]
            )
            + "\n"
        )
        store = KeyStore.load(work / "keys.json", missing_ok=True)
        key = store.create(tenant="acme", user="u-1", roles=["analyst"])[1]
        environ = {
            "VLLM_TOKEN": TOKEN,
            "OPENAI_API_KEY": OPENAI_KEY,
            "AZURE_OPENAI_API_KEY": AZURE_KEY,
        }
        gateway = await serve_gateway(work, keys={"acme": key}, environ=environ)
        try:
            yield Stack(gateway, vllm, saas, azure, bedrock, vertex, key)
        finally:
            await gateway.close()
            await vllm.close()
            await saas.close()
            await azure.close()
            await bedrock.close()
            await vertex.close()


@pytest_asyncio.fixture(loop_scope="module")
async def fresh(stack: Stack) -> Stack:
    for fake in (stack.vllm, stack.openai):
        fake.requests.clear()
        fake.queue.clear()
    stack.azure.requests.clear()
    stack.azure.rejected.clear()
    stack.bedrock.requests.clear()
    stack.bedrock.queue.clear()
    await stack.new_records()
    return stack


def client(stack: Stack) -> openai.AsyncOpenAI:
    sdk = openai.AsyncOpenAI(base_url=stack.gateway.base_url, api_key=stack.key, max_retries=0)
    stack.gateway.clients.append(sdk)
    return sdk


async def test_vllm_embeddings_with_the_async_sdk(fresh: Stack) -> None:
    texts = ["alpha beta", "gamma"]
    result = await client(fresh).embeddings.create(
        model="bge", input=texts, extra_headers=target("vllm")
    )
    assert [d.embedding for d in result.data] == [fake_vector(t, 16) for t in texts]
    assert (result.model, result.usage.prompt_tokens, result.usage.total_tokens) == (
        "BAAI/bge-m3",
        3,
        3,
    )
    assert fresh.vllm.requests[0].json == {
        "model": "BAAI/bge-m3",
        "input": texts,
        "encoding_format": "base64",
    }
    (record,) = await fresh.new_records()
    assert (record["operation"], record["endpoint"], record["status"]) == (
        "embeddings",
        "vllm",
        200,
    )
    assert (record["tokens"], record["cost_usd"]) == ({"input": 3, "output": 0}, 0.00003)


async def test_titan_batches_with_the_sync_sdk(fresh: Stack) -> None:
    texts = ["one", "two words", "three more words"]

    def call() -> Any:
        with openai.OpenAI(
            base_url=fresh.gateway.base_url, api_key=fresh.key, max_retries=0
        ) as sdk:
            return sdk.embeddings.create(
                model="titan",
                input=texts,
                dimensions=256,
                encoding_format="float",
                extra_headers=target("titan"),
            )

    result = await asyncio.to_thread(call)
    assert [d.embedding for d in result.data] == [fake_vector(t, 256) for t in texts]
    assert [r.json["inputText"] for r in fresh.bedrock.requests] == texts
    assert fresh.bedrock.rejected == []
    (record,) = await fresh.new_records()
    assert (record["tokens"], record["cost_usd"]) == ({"input": 6, "output": 0}, 0.00012)


async def test_openai_embeddings_with_base64_and_dimensions(fresh: Stack) -> None:
    texts = ["the quick brown fox", "jumps"]
    result = await client(fresh).embeddings.create(
        model="text-embedding-3-small",
        input=texts,
        dimensions=8,
        user="u-1",
        extra_headers=target("openai"),
    )
    assert [d.embedding for d in result.data] == [fake_vector(t, 8) for t in texts]
    (received,) = fresh.openai.requests
    assert received.headers["Authorization"] == f"Bearer {OPENAI_KEY}"
    assert received.json == {
        "model": "text-embedding-3-small",
        "input": texts,
        "dimensions": 8,
        "user": "u-1",
        "encoding_format": "base64",
    }
    (record,) = await fresh.new_records()
    assert (record["endpoint"], record["operation"], record["tokens"]) == (
        "openai",
        "embeddings",
        {"input": 5, "output": 0},
    )
    assert OPENAI_KEY not in repr(record)


async def test_azure_embeddings_name_the_deployment(fresh: Stack) -> None:
    def call() -> Any:
        with openai.OpenAI(
            base_url=fresh.gateway.base_url, api_key=fresh.key, max_retries=0
        ) as sdk:
            return sdk.embeddings.create(
                model="anything",
                input="contract clause",
                encoding_format="float",
                extra_headers=target("azure"),
            )

    result = await asyncio.to_thread(call)
    assert [d.embedding for d in result.data] == [fake_vector("contract clause", 16)]
    assert result.usage.prompt_tokens == 2
    (received,) = fresh.azure.requests
    assert (received["query"], received["headers"]["api-key"]) == (
        {"api-version": "2024-10-21"},
        AZURE_KEY,
    )
    assert received["json"] == {
        "model": "text-embedding-3-small",
        "input": "contract clause",
        "encoding_format": "float",
    }
    assert fresh.azure.rejected == []
    (record,) = await fresh.new_records()
    assert (record["endpoint"], record["status"], record["tokens"]) == (
        "azure",
        200,
        {"input": 2, "output": 0},
    )


async def test_cohere_embeddings_through_invoke_model(fresh: Stack) -> None:
    texts = ["un document", "another one here"]
    result = await client(fresh).embeddings.create(
        model="cohere", input=texts, extra_headers=target("cohere")
    )
    assert [d.embedding for d in result.data] == [fake_vector(t, 1024) for t in texts]
    (received,) = fresh.bedrock.requests
    assert received.json["texts"] == texts
    assert received.json["input_type"] == "search_document"
    assert fresh.bedrock.rejected == []
    (record,) = await fresh.new_records()
    assert (record["endpoint"], record["operation"], record["status"]) == (
        "cohere",
        "embeddings",
        200,
    )


async def test_vertex_gemini_embedding(fresh: Stack) -> None:
    result = await client(fresh).embeddings.create(
        model="g", input=["x y", "z"], extra_headers=target("vertex")
    )
    assert [d.embedding for d in result.data] == [fake_vector("x y", 3072), fake_vector("z", 3072)]
    assert result.usage.prompt_tokens == 3
    assert fresh.vertex.invalid == []


async def test_failover_and_errors_in_the_openai_shape(fresh: Stack) -> None:
    fresh.vllm.fail(503)
    result = await client(fresh).embeddings.create(
        model="m", input="fail over", extra_headers=target("vllm-then-titan")
    )
    assert result.data[0].embedding == fake_vector("fail over", 1024)
    (record,) = await fresh.new_records()
    assert [a["endpoint"] for a in record["attempts"]] == ["vllm", "titan"]
    assert record["endpoint"] == "titan"

    fresh.bedrock.queue.append(Reply(error=("ThrottlingException", 429, "Too many requests")))
    with pytest.raises(openai.RateLimitError):
        await client(fresh).embeddings.create(model="m", input="a", extra_headers=target("titan"))

    with pytest.raises(openai.BadRequestError) as info:
        await client(fresh).embeddings.create(
            model="m", input=[[1, 2]], extra_headers=target("titan")
        )
    assert info.value.code == "unsupported_request"

    requests_before = len(fresh.vllm.requests)
    with pytest.raises(openai.BadRequestError) as info:
        await client(fresh).embeddings.create(model="m", input=[""], extra_headers=target("vllm"))
    assert (info.value.code, info.value.body["message"]) == (  # type: ignore[index]
        "invalid_body",
        "'input[0]' must not be an empty string",
    )
    assert len(fresh.vllm.requests) == requests_before  # refused before any attempt
