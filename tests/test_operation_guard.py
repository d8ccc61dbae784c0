"""The operation guard end to end: whatever the YAML says, a request only
reaches endpoints that serve its operation, fallbacks included."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest

from tests.gateway_harness import start_gateway

pytestmark = pytest.mark.integration

# A policy that routes everything to chat endpoints, embeddings included, and
# gives an embeddings rule a chat fallback.
CARELESS = """\
version: v1
rules:
  - name: vectors-with-chat-fallback
    match: {operation: embeddings, tenant: globex}
    route_to: private-embeddings
    fallback: [private-gpu, openai-embeddings]
  - default: {route_to: private-gpu, fallback: [private-embeddings]}
"""


async def test_embeddings_never_reach_a_chat_endpoint(
    tmp_path: Path, fake_upstream: Any, opa_bin: str
) -> None:
    gw = await start_gateway(tmp_path, fake_upstream, policy=CARELESS)
    try:
        sdk = openai.AsyncOpenAI(base_url=gw.base_url, api_key=gw.keys["acme"], max_retries=0)
        gw.clients.append(sdk)
        with pytest.raises(openai.PermissionDeniedError) as info:
            await sdk.embeddings.create(model="bge", input="a confidential contract")
        assert info.value.status_code == 403
        assert info.value.body["code"] == "policy_denied"
        assert info.value.body["deny"] == [
            'guard operation: "private-gpu" does not serve embeddings requests '
            "(it serves chat, messages, responses)"
        ]
        # Chat through the same policy: the embeddings fallback is dropped.
        await sdk.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        globex = openai.AsyncOpenAI(base_url=gw.base_url, api_key=gw.keys["globex"], max_retries=0)
        gw.clients.append(globex)
        # Routed to private-embeddings, with openai-embeddings (never private-gpu) behind it.
        gw.upstreams["private-embeddings"].fail(503)
        vectors = await globex.embeddings.create(model="bge", input="hello")
        assert len(vectors.data) == 1
        assert {k: v for k, v in gw.upstream_requests().items() if v} == {
            "private-gpu": 1,  # the chat request
            "private-embeddings": 1,
            "openai-embeddings": 1,
        }
        denied, chat, embedding = await gw.audit_records()
        assert (denied["operation"], denied["status"], denied["route_to"]) == (
            "embeddings",
            403,
            None,
        )
        assert (chat["operation"], chat["endpoint"], chat["fallback"]) == (
            "chat",
            "private-gpu",
            [],
        )
        assert embedding["operation"] == "embeddings"
        assert embedding["route_to"] == "private-embeddings"
        assert embedding["fallback"] == ["openai-embeddings"]
        assert [(a["endpoint"], a["status"]) for a in embedding["attempts"]] == [
            ("private-embeddings", 503),
            ("openai-embeddings", 200),
        ]
    finally:
        await gw.close()
