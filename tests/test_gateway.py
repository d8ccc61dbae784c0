"""The gateway end to end: real OPA sidecar, fake OpenAI-compatible upstreams on
loopback, and the official `openai` SDK (sync and async) as the client."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from tests.gateway_harness import EXAMPLE_OVERRIDES, Gateway, start_gateway, token_of
from tests.processes import free_port
from translator.pipeline import check

pytestmark = pytest.mark.integration

MESSAGES = [{"role": "user", "content": "Say hello to the gateway"}]


@pytest.fixture
async def gw(tmp_path: Path, fake_upstream: Any, opa_bin: str) -> AsyncIterator[Gateway]:
    gateway = await start_gateway(tmp_path, fake_upstream)
    yield gateway
    await gateway.close()


def client(gw: Gateway, tenant: str = "acme", **kwargs: Any) -> openai.AsyncOpenAI:
    """An SDK client for `tenant`, closed with the gateway."""
    sdk = openai.AsyncOpenAI(base_url=gw.base_url, api_key=gw.keys[tenant], max_retries=0, **kwargs)
    gw.clients.append(sdk)
    return sdk


async def routed(
    gw: Gateway, tenant: str, *, headers: dict[str, str] | None = None, **extra: Any
) -> tuple[Any, Any]:
    raw = await client(gw, tenant).chat.completions.with_raw_response.create(
        model="gpt-4o", messages=MESSAGES, extra_headers=headers or {}, **extra
    )
    return raw, raw.parse()


@pytest.mark.parametrize(
    ("tenant", "headers", "endpoint", "rule"),
    [
        ("acme", {"X-Data-Class": "pii-restricted"}, "private-gpu", "pii-on-prem"),
        ("acme", {"X-Latency-Budget-Ms": "300"}, "anthropic", "acme-low-latency"),
        ("globex", {"X-Cost-Cap-Per-1k": "0.0015"}, "bedrock", "cost-capped"),
        ("acme", {"X-Latency-Budget-Ms": "400"}, "anthropic", "default"),
        ("globex", {}, "anthropic", "default"),
        # The tenant's floor raises the class: hospital's requests are always PII.
        ("hospital", {"X-Data-Class": "public"}, "private-gpu", "pii-on-prem"),
    ],
)
async def test_every_rule_of_the_example_policy_routes_where_it_should(
    gw: Gateway, tenant: str, headers: dict[str, str], endpoint: str, rule: str
) -> None:
    raw, completion = await routed(gw, tenant, headers=headers)
    assert raw.headers["X-Kamiwaza-Endpoint"] == endpoint
    assert raw.headers["X-Kamiwaza-Rule"] == rule
    assert raw.headers["X-Kamiwaza-Decision-Id"]
    assert raw.headers["X-Request-Id"].startswith("req-")
    assert completion.choices[0].message.content == (
        "Hello from the fake upstream, streamed word by word."
    )
    assert completion.model == f"model-of-{endpoint}"
    counts = gw.upstream_requests()
    assert counts == {name: int(name == endpoint) for name in counts}
    sent = gw.upstreams[endpoint].requests[0]
    assert sent.headers["Authorization"] == f"Bearer {token_of(endpoint)}"
    assert sent.json["model"] == f"model-of-{endpoint}"
    assert sent.json["messages"] == MESSAGES
    assert gw.keys[tenant] not in json.dumps(dict(sent.headers))


async def test_metadata_in_the_body_with_extra_body(gw: Gateway) -> None:
    raw, _ = await routed(
        gw, "acme", extra_body={"kamiwaza": {"latency_budget_ms": 200, "labels": {"team": "x"}}}
    )
    assert raw.headers["X-Kamiwaza-Rule"] == "acme-low-latency"
    sent = gw.upstreams["anthropic"].requests[0].json
    assert "kamiwaza" not in sent  # gateway metadata never goes upstream
    (record,) = await gw.audit_records()
    assert record["latency_budget_ms"] == 200
    assert record["labels"] == {"team": "x"}


async def test_unknown_metadata_in_the_body_is_refused(gw: Gateway) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await routed(gw, "acme", extra_body={"kamiwaza": {"colour": "red", "labels": {}}})
    assert info.value.body == {
        "message": "unknown field(s) in 'kamiwaza': colour (known: data_class, "
        "latency_budget_ms, cost_cap_per_1k, labels)",
        "type": "invalid_request_error",
        "code": "bad_metadata",
    }
    assert sum(gw.upstream_requests().values()) == 0


async def test_streaming_with_the_async_sdk(gw: Gateway) -> None:
    stream = await client(gw).chat.completions.create(
        model="gpt-4o",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"X-Latency-Budget-Ms": "10"},
    )
    pieces = []
    usage = None
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if chunk.usage:
            usage = chunk.usage
    assert "".join(pieces) == "Hello from the fake upstream, streamed word by word."
    assert len(pieces) == 9  # passed through chunk by chunk
    assert usage is not None
    assert usage.completion_tokens == 9
    (record,) = await gw.audit_records()
    assert record["stream"] is True
    assert record["endpoint"] == "anthropic"
    assert record["tokens"] == {"input": 5, "output": 9}
    assert record["latency_ms"]["ttft"] is not None


async def test_sync_sdk_json_and_stream(gw: Gateway) -> None:
    def run() -> tuple[str, str]:
        with openai.OpenAI(base_url=gw.base_url, api_key=gw.keys["globex"], max_retries=0) as sync:
            completion = sync.chat.completions.create(model="m", messages=MESSAGES)
            with sync.chat.completions.create(model="m", messages=MESSAGES, stream=True) as chunks:
                streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return completion.choices[0].message.content or "", streamed

    text, streamed = await asyncio.to_thread(run)
    assert text == streamed == "Hello from the fake upstream, streamed word by word."
    records = await gw.audit_records()
    assert [(r["stream"], r["status"], r["rule"]["name"]) for r in records] == [
        (False, 200, "default"),
        (True, 200, "default"),
    ]


async def test_route_endpoint_is_the_same_handler(gw: Gateway) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            gw.url("/v1/route"),
            json={"model": "m", "messages": MESSAGES},
            headers={
                "Authorization": f"Bearer {gw.keys['acme']}",
                "X-Data-Class": "pii-restricted",
            },
        ) as resp,
    ):
        body = await resp.json()
        assert resp.status == 200
        assert resp.headers["X-Kamiwaza-Endpoint"] == "private-gpu"
    assert body["object"] == "chat.completion"
    (record,) = await gw.audit_records()
    assert record["path"] == "/v1/route"


async def test_the_example_override_is_not_loaded_by_default(gw: Gateway) -> None:
    raw, _ = await routed(gw, "globex", headers={"X-Labels": "legal_hold=true"})
    assert raw.headers["X-Kamiwaza-Endpoint"] == "anthropic"
    assert raw.headers["X-Kamiwaza-Rule"] == "default"


@pytest.fixture
async def gw_with_overrides(
    tmp_path: Path, fake_upstream: Any, opa_bin: str
) -> AsyncIterator[Gateway]:
    gateway = await start_gateway(
        tmp_path, fake_upstream, settings_overrides={"overrides_dirs": [EXAMPLE_OVERRIDES]}
    )
    yield gateway
    await gateway.close()


async def test_overrides_force_a_route_and_deny(gw_with_overrides: Gateway) -> None:
    gw = gw_with_overrides
    raw, _ = await routed(gw, "globex", headers={"X-Labels": "legal_hold=true"})
    assert raw.headers["X-Kamiwaza-Endpoint"] == "private-gpu"
    assert raw.headers["X-Kamiwaza-Rule"] == "override:legal_hold"
    with pytest.raises(openai.PermissionDeniedError) as info:
        await routed(gw, "globex", headers={"X-Labels": '{"export_control": "embargoed"}'})
    assert info.value.status_code == 403
    assert info.value.body == {
        "message": "request denied by policy: override legal_hold: export-controlled request: "
        "data labelled export_control=embargoed may not be processed",
        "type": "permission_error",
        "code": "policy_denied",
        "deny": [
            "override legal_hold: export-controlled request: data labelled "
            "export_control=embargoed may not be processed"
        ],
    }
    assert gw.upstream_requests()["private-gpu"] == 1
    records = await gw.audit_records()
    assert records[0]["overridden_by"] == "legal_hold"
    assert records[1]["status"] == 403
    assert records[1]["endpoint"] is None
    assert records[1]["attempts"] == []


PII_TO_SAAS = """\
version: v1
rules:
  - name: acme-pii-to-saas
    match: {tenant: enterprise-acme, data_class: pii-restricted}
    route_to: anthropic
  - name: pii-with-saas-fallback
    match: {data_class: pii-restricted}
    route_to: private-gpu
    fallback: [anthropic, private-gpu-b]
  - default: {route_to: anthropic}
"""


async def test_pii_guard_holds_whatever_the_yaml_says(
    tmp_path: Path, fake_upstream: Any, opa_bin: str
) -> None:
    gw = await start_gateway(tmp_path, fake_upstream, policy=PII_TO_SAAS)
    try:
        with pytest.raises(openai.PermissionDeniedError) as info:
            await routed(gw, "acme", headers={"X-Data-Class": "pii-restricted"})
        assert info.value.body["deny"] == [
            "guard in-vpc: pii-restricted data may only reach an endpoint with in_vpc: true; "
            '"anthropic" is outside the VPC'
        ]
        # Fallbacks are bound too: PII never fails over to SaaS.
        gw.upstreams["private-gpu"].fail(503)
        raw, _ = await routed(gw, "hospital")
        assert raw.headers["X-Kamiwaza-Endpoint"] == "private-gpu-b"
        assert gw.upstream_requests() == {
            "private-gpu": 1,
            "private-gpu-b": 1,
            "anthropic": 0,
            "bedrock": 0,
            "private-embeddings": 0,
            "openai-embeddings": 0,
        }
        records = await gw.audit_records()
        assert records[1]["fallback"] == ["private-gpu-b"]
    finally:
        await gw.close()


async def test_fallback_taken_when_the_first_endpoint_fails(gw: Gateway) -> None:
    gw.upstreams["private-gpu"].fail(503)
    raw, _ = await routed(gw, "acme", headers={"X-Data-Class": "pii-restricted"})
    assert raw.headers["X-Kamiwaza-Endpoint"] == "private-gpu-b"
    (record,) = await gw.audit_records()
    assert record["endpoint"] == "private-gpu-b"
    assert [(a["endpoint"], a["status"], a["error"]) for a in record["attempts"]] == [
        ("private-gpu", 503, "upstream_unavailable"),
        ("private-gpu-b", 200, None),
    ]


async def test_upstream_failure_still_names_the_rule_and_decision(gw: Gateway) -> None:
    gw.upstreams["private-gpu"].fail(503)
    gw.upstreams["private-gpu-b"].fail(503)
    with pytest.raises(openai.APIStatusError) as info:
        await routed(gw, "acme", headers={"X-Data-Class": "pii-restricted"})
    assert info.value.status_code == 502
    headers = info.value.response.headers
    assert headers["X-Kamiwaza-Rule"] == "pii-on-prem"
    assert headers["X-Kamiwaza-Decision-Id"]
    assert headers["X-Request-Id"].startswith("req-")
    (record,) = await gw.audit_records()
    assert record["decision_id"] == headers["X-Kamiwaza-Decision-Id"]
    assert [(a["endpoint"], a["status"], a["error"]) for a in record["attempts"]] == [
        ("private-gpu", 503, "upstream_unavailable"),
        ("private-gpu-b", 503, "upstream_unavailable"),
    ]


async def test_opa_down_gives_503_and_forwards_nothing(
    tmp_path: Path, fake_upstream: Any, opa_bin: str
) -> None:
    gw = await start_gateway(tmp_path, fake_upstream, opa_url=f"http://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(openai.InternalServerError) as info:
            await routed(gw, "acme")
        assert info.value.status_code == 503
        assert info.value.body["code"] == "policy_unreachable"
        assert sum(gw.upstream_requests().values()) == 0
        (record,) = await gw.audit_records()
        assert record["status"] == 503
        assert record["error"]["code"] == "policy_unreachable"
        assert record["decision_id"] is None
    finally:
        await gw.close()


@pytest.mark.parametrize(
    ("api_key", "headers", "code"),
    [
        ("kw_0000000000000000_" + "x" * 43, {}, "invalid_api_key"),
        ("not-a-key", {}, "invalid_api_key"),
        # No credential at all: a spoofed tenant header is not one.
        ("", {"X-Tenant": "enterprise-acme"}, "missing_credential"),
    ],
)
async def test_bad_credentials_get_401(
    gw: Gateway, api_key: str, headers: dict[str, str], code: str
) -> None:
    default_headers = {} if api_key else {"Authorization": ""}
    c = openai.AsyncOpenAI(
        base_url=gw.base_url,
        api_key=api_key or "x",
        max_retries=0,
        default_headers=default_headers,
    )
    gw.clients.append(c)
    with pytest.raises(openai.AuthenticationError) as info:
        await c.chat.completions.create(model="m", messages=MESSAGES, extra_headers=headers)
    assert info.value.status_code == 401
    assert info.value.body["code"] == code
    assert info.value.response.headers["WWW-Authenticate"].startswith("Bearer")
    assert sum(gw.upstream_requests().values()) == 0
    (record,) = await gw.audit_records()
    assert record["status"] == 401
    assert record["tenant"] is None


@pytest.mark.parametrize(
    ("tenant", "headers", "status", "code"),
    [
        ("acme", {"X-Latency-Budget-Ms": "fast"}, 400, "bad_metadata"),
        ("acme", {"X-Cost-Cap-Per-1k": "-1"}, 400, "bad_metadata"),
        ("acme", {"X-Data-Class": "top-secret"}, 400, "bad_metadata"),
        ("acme", {"X-Labels": "no-equals-sign"}, 400, "bad_metadata"),
        ("limited", {"X-Data-Class": "confidential"}, 403, "data_class_not_allowed"),
    ],
)
async def test_bad_metadata(
    gw: Gateway, tenant: str, headers: dict[str, str], status: int, code: str
) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        await routed(gw, tenant, headers=headers)
    assert info.value.status_code == status
    assert info.value.body["code"] == code
    assert sum(gw.upstream_requests().values()) == 0


async def test_oversized_and_malformed_bodies(
    tmp_path: Path, fake_upstream: Any, opa_bin: str
) -> None:
    gw = await start_gateway(tmp_path, fake_upstream, settings_overrides={"max_body_bytes": 2048})
    auth = {"Authorization": f"Bearer {gw.keys['acme']}"}
    try:
        async with aiohttp.ClientSession() as http:
            big = {"model": "m", "messages": [{"role": "user", "content": "x" * 4096}]}
            async with http.post(gw.url("/v1/chat/completions"), json=big, headers=auth) as r:
                assert r.status == 413
                assert (await r.json())["error"]["code"] == "payload_too_large"
            async with http.post(
                gw.url("/v1/chat/completions"), data=b"{not json", headers=auth
            ) as r:
                assert r.status == 400
                assert (await r.json())["error"]["code"] == "invalid_json"
            async with http.post(
                gw.url("/v1/chat/completions"), json={"model": "m"}, headers=auth
            ) as r:
                assert r.status == 400
                assert (await r.json())["error"]["message"] == (
                    "'messages' must be a non-empty list of chat messages"
                )
        assert sum(gw.upstream_requests().values()) == 0
        assert [r["status"] for r in await gw.audit_records()] == [413, 400, 400]
    finally:
        await gw.close()


async def test_client_disconnect_mid_stream_cancels_upstream(gw: Gateway) -> None:
    upstream = gw.upstreams["anthropic"]
    upstream.behavior.chunk_delay = 0.05
    async with aiohttp.ClientSession() as http:
        resp = await http.post(
            gw.url("/v1/chat/completions"),
            json={"model": "m", "messages": MESSAGES, "stream": True},
            headers={"Authorization": f"Bearer {gw.keys['globex']}"},
        )
        assert resp.status == 200
        first = await resp.content.readline()
        assert first.startswith(b"data: ")
        resp.close()  # the client goes away mid-stream
    await upstream.wait_cancelled()
    assert upstream.cancelled_streams == 1
    assert upstream.completed_streams == 0
    for _ in range(100):
        records = await gw.audit_records()
        if records:
            break
        await asyncio.sleep(0.01)
    (record,) = records
    assert record["status"] == 499
    assert record["error"]["code"] == "client_disconnected"
    assert record["endpoint"] == "anthropic"
    assert [(a["endpoint"], a["status"], a["error"]) for a in record["attempts"]] == [
        ("anthropic", 200, "cancelled")  # TestServer cancels the handler, as serve does
    ]


async def test_every_request_leaves_exactly_one_audit_record(gw: Gateway) -> None:
    await routed(gw, "acme", headers={"X-Data-Class": "pii-restricted"})
    await routed(gw, "globex", headers={"X-Cost-Cap-Per-1k": "0.0015"})
    with pytest.raises(openai.BadRequestError):
        await routed(gw, "acme", headers={"X-Latency-Budget-Ms": "soon"})
    records = await gw.audit_records()
    assert len(records) == 3
    assert len({r["request_id"] for r in records}) == 3
    pii, cheap, bad = records
    assert pii["rule"] == {"index": 2, "name": "pii-on-prem", "source": pii["rule"]["source"]}
    assert pii["rule"]["source"].endswith("routing.yaml:17")
    assert pii["conditions"] == [
        {
            "field": "data_class",
            "op": "==",
            "expected": "pii-restricted",
            "actual": "pii-restricted",
            "result": True,
        }
    ]
    assert (pii["tenant"], pii["user"], pii["roles"]) == ("enterprise-acme", "u-17", ["analyst"])
    assert pii["endpoint"] == "private-gpu"
    assert pii["model"] == "model-of-private-gpu"
    assert pii["tokens"] == {"input": 5, "output": 9}
    assert pii["cost_usd"] == pytest.approx((5 * 0.0002 + 9 * 0.0002) / 1000)
    assert pii["policy_revision"].startswith("sha256:")
    assert pii["decision_id"]
    assert cheap["endpoint"] == "bedrock"
    assert cheap["cost_usd"] == pytest.approx((5 * 0.00025 + 9 * 0.00125) / 1000)
    assert bad["status"] == 400
    assert bad["decision_id"] is None
    text = json.dumps(records)
    assert "Say hello" not in text  # prompts are never stored
    assert all(token_of(n) not in text for n in gw.upstreams)
    assert all(key not in text for key in gw.keys.values())


async def test_models_health_and_readiness(gw: Gateway) -> None:
    models = await client(gw).models.list()
    generation = ["chat", "messages", "responses"]
    assert sorted((m.id, m.owned_by, m.model_extra["operations"]) for m in models.data) == [
        ("model-of-anthropic", "openai-compatible", generation),
        ("model-of-bedrock", "openai-compatible", generation),
        ("model-of-openai-embeddings", "openai-compatible", ["embeddings"]),
        ("model-of-private-embeddings", "openai-compatible", ["embeddings"]),
        ("model-of-private-gpu", "openai-compatible", generation),
        ("model-of-private-gpu-b", "openai-compatible", generation),
    ]
    # Per operation, as an SDK asks: embedding models only.
    embedding = await client(gw).models.list(extra_query={"operation": "embeddings"})
    assert sorted(m.id for m in embedding.data) == [
        "model-of-openai-embeddings",
        "model-of-private-embeddings",
    ]
    # One model, and one the caller cannot use, as the SDK retrieves them.
    model = await client(gw).models.retrieve("model-of-private-gpu")
    assert (model.id, model.object) == ("model-of-private-gpu", "model")
    with pytest.raises(openai.NotFoundError) as missing:
        await client(gw).models.retrieve("gpt-unknown")
    assert missing.value.body["code"] == "model_not_found"
    # What the caller may use: a PII tenant (floor) or a PII request sees only
    # the in-VPC endpoints the guards allow.
    for sdk, headers in (
        (client(gw, "hospital"), {}),
        (client(gw), {"X-Data-Class": "pii-restricted"}),
    ):
        models = await sdk.models.list(extra_headers=headers)
        assert sorted(m.id for m in models.data) == [
            "model-of-private-embeddings",
            "model-of-private-gpu",
            "model-of-private-gpu-b",
        ]
        with pytest.raises(openai.NotFoundError):
            await sdk.models.retrieve("model-of-anthropic", extra_headers=headers)
    # No unauthenticated listing.
    async with openai.AsyncOpenAI(base_url=gw.base_url, api_key="nope", max_retries=0) as anon:
        with pytest.raises(openai.AuthenticationError):
            await anon.models.list()
    async with aiohttp.ClientSession() as http:
        async with http.get(gw.url("/healthz")) as r:
            assert (r.status, await r.json()) == (200, {"status": "ok"})
        async with http.get(gw.url("/readyz")) as r:
            ready = await r.json()
        revision = check(str(gw.workdir / "routing.yaml")).ir.revision  # type: ignore[union-attr]
        assert (r.status, ready) == (
            200,
            {
                "status": "ready",
                "opa": "healthy",
                "policy": {
                    "source": "files",
                    "revision": revision,
                    "active": True,
                    "failures": 0,
                    "activated_at": ready["policy"]["activated_at"],
                },
            },
        )
        async with http.get(gw.url("/v1/nothing")) as r:
            assert r.status == 404
            assert (await r.json())["error"]["code"] == "not_found"
    assert await gw.audit_records() == []  # only model requests are audited


async def test_opa_timeout_and_missing_result_fail_closed(
    tmp_path: Path, fake_upstream: Any, opa_server: Any, aiohttp_server: Any
) -> None:
    async def hang(request: aiohttp.web.Request) -> aiohttp.web.Response:
        await asyncio.sleep(30)
        return aiohttp.web.json_response({})

    slow = aiohttp.web.Application()
    slow.router.add_post("/{tail:.*}", hang)
    slow_server = await aiohttp_server(slow)
    gw = await start_gateway(
        tmp_path / "slow",
        fake_upstream,
        opa_url=str(slow_server.make_url("")).rstrip("/"),
        settings_overrides={"opa_timeout_ms": 100},
    )
    empty_opa = opa_server([])  # no policy loaded: OPA answers without a result
    gw_empty = await start_gateway(tmp_path / "empty", fake_upstream, opa_url=empty_opa.url)
    try:
        for gateway, code in ((gw, "policy_timeout"), (gw_empty, "policy_no_result")):
            with pytest.raises(openai.InternalServerError) as info:
                await routed(gateway, "acme")
            assert info.value.status_code == 503
            assert info.value.body["code"] == code
            assert sum(gateway.upstream_requests().values()) == 0
            (record,) = await gateway.audit_records()
            assert (record["status"], record["error"]["code"]) == (503, code)
    finally:
        await gw.close()
        await gw_empty.close()
