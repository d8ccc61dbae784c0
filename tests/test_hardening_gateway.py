"""Regression tests of issue 17's defects through a running gateway: a malformed
answer from an external OPA is a 503 with nothing forwarded, a request the
gateway cannot encode never opens an endpoint's circuit, client fields outside
the API never reach an OpenAI-compatible upstream, and bad input is a 400."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.gateway_harness import Gateway, start_gateway
from tests.processes import serve_app

pytestmark = pytest.mark.integration

MESSAGES = [{"role": "user", "content": "hello"}]
# A generous OPA timeout: a slow decision on a loaded machine is not what is tested.
SLOW_OPA_OK = {"opa_timeout_ms": 5000}
GOOD_DECISION = {
    "route_to": "private-gpu",
    "fallback": [],
    "rule": {"index": 0, "name": "pii-on-prem", "source": "routing.yaml:9"},
    "conditions": [],
    "overridden_by": None,
    "deny": [],
    "revision": "sha256:test",
}


class FakeOpa:
    """An "external OPA" (`opa_url`) answering decisions as the test says."""

    def __init__(self) -> None:
        self.body: bytes = json.dumps({"result": GOOD_DECISION, "decision_id": "d-1"}).encode()
        self.content_type = "application/json"
        self.queries = 0
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_post("/v1/data/kamiwaza/route/decision", self._decide)
        self.runner, port = await serve_app(app, "127.0.0.1")
        self.url = f"http://127.0.0.1:{port}"

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({})

    async def _decide(self, request: web.Request) -> web.Response:
        await request.read()
        self.queries += 1
        return web.Response(body=self.body, content_type=self.content_type)

    def answer(self, result: Any, **beside: Any) -> None:
        self.body = json.dumps({"result": result, **beside}).encode()


@pytest.fixture
async def opa() -> AsyncIterator[FakeOpa]:
    fake = FakeOpa()
    await fake.start()
    yield fake
    assert fake.runner is not None
    await fake.runner.cleanup()


async def post(
    gw: Gateway, body: Any, *, tenant: str = "acme", raw: bytes | None = None
) -> tuple[int, Any, str]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            gw.url("/v1/chat/completions"),
            data=raw if raw is not None else json.dumps(body),
            headers={
                "Authorization": f"Bearer {gw.keys[tenant]}",
                "Content-Type": "application/json",
            },
        ) as resp,
    ):
        text = await resp.text()
        return resp.status, json.loads(text), resp.headers["X-Request-Id"]


MALFORMED = [
    ("not JSON", b"{this is not json", "OPA answered with a body that is not JSON"),
    ("rule a string", {"result": {**GOOD_DECISION, "rule": "pii"}}, "rule must be an object"),
    ("rule a list", {"result": {**GOOD_DECISION, "rule": ["pii"]}}, "rule must be an object"),
    (
        "rule without name",
        {"result": {**GOOD_DECISION, "rule": {"index": 0, "source": "x"}}},
        "rule.name must be a non-empty string",
    ),
    ("integer decision_id", {"result": GOOD_DECISION, "decision_id": 42}, "decision_id"),
    (
        "overridden_by a number",
        {"result": {**GOOD_DECISION, "overridden_by": 3}},
        "overridden_by must be a string or null",
    ),
    (
        "revision an object",
        {"result": {**GOOD_DECISION, "revision": {"r": 1}}},
        "revision must be a string or null",
    ),
    (
        "conditions not objects",
        {"result": {**GOOD_DECISION, "conditions": [1]}},
        "conditions must be a list of objects",
    ),
    ("fallback a string", {"result": {**GOOD_DECISION, "fallback": "b"}}, "fallback must be"),
    ("no result", {"decision_id": "d"}, "OPA answered without a decision"),
]


async def test_malformed_answers_of_an_external_opa_are_503_with_nothing_forwarded(
    tmp_path: Path, fake_upstream: Any, opa_bin: str, opa: FakeOpa
) -> None:
    gw = await start_gateway(
        tmp_path, fake_upstream, opa_url=opa.url, settings_overrides=SLOW_OPA_OK
    )
    try:
        status, body, _ = await post(gw, {"model": "m", "messages": MESSAGES})
        assert status == 200, body  # the fake OPA's good answer routes
        answered = []
        for name, answer, why in MALFORMED:
            opa.body = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
            status, body, request_id = await post(gw, {"model": "m", "messages": MESSAGES})
            answered.append((name, status, body, request_id, why))
        records = {r["request_id"]: r for r in await gw.audit_records()}
    finally:
        await gw.close()
    assert opa.queries == 1 + len(MALFORMED)
    assert sum(gw.upstream_requests().values()) == 1  # only the good one was forwarded
    for name, status, body, request_id, why in answered:
        code = "policy_no_result" if name == "no result" else "policy_malformed"
        assert status == 503, name
        assert body["error"]["type"] == "policy_unavailable"
        assert body["error"]["code"] == code, name
        assert why in body["error"]["message"], (name, body)
        record = records[request_id]
        assert (record["status"], record["error"]["code"]) == (503, code)
        assert why in record["error"]["message"]
        assert record["endpoint"] is None and record["attempts"] == []


async def test_requests_the_gateway_cannot_encode_never_open_the_circuit(
    tmp_path: Path, fake_upstream: Any, opa_bin: str
) -> None:
    gw = await start_gateway(tmp_path, fake_upstream, settings_overrides=SLOW_OPA_OK)
    lone = b'{"model": "m", "messages": [{"role": "user", "content": "x\\ud800"}]}'
    try:
        refused = [await post(gw, None, raw=lone) for _ in range(8)]
        status, body, _ = await post(gw, {"model": "m", "messages": MESSAGES}, tenant="globex")
    finally:
        await gw.close()
    for status_, body_, _ in refused:
        assert status_ == 400
        assert body_["error"]["code"] == "invalid_body"
        assert "lone surrogate" in body_["error"]["message"]
    assert sum(gw.upstream_requests().values()) == 1
    assert status == 200, body  # another tenant's next request is served


async def test_fields_outside_the_api_are_not_forwarded(
    tmp_path: Path, fake_upstream: Any, opa_bin: str
) -> None:
    gw = await start_gateway(tmp_path, fake_upstream, settings_overrides=SLOW_OPA_OK)
    body = {
        "model": "m",
        "messages": MESSAGES,
        "temperature": 0.5,
        "api_base": "http://attacker.example",
        "base_url": "http://attacker.example",
        "extra_headers": {"X-Forwarded-Host": "attacker.example"},
        "unknown_field": [1, 2],
    }
    try:
        status, answer, _ = await post(gw, body, tenant="globex")
    finally:
        await gw.close()
    assert status == 200, answer
    (sent,) = [r for up in gw.upstreams.values() for r in up.requests]
    assert sent.json == {
        "model": "model-of-anthropic",
        "messages": MESSAGES,
        "temperature": 0.5,
        "stream": False,
    }


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        (
            b'{"model": "m", "max_tokens": ' + b"9" * 5000 + b', "messages": []}',
            400,
            "invalid_json",
        ),
        (b'{"messages": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", 400, "invalid_json"),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": "x"}], '
            b'"kamiwaza": {"latency_budget_ms": ' + b"9" * 400 + b"}}",
            400,
            "bad_metadata",
        ),
        (
            b'{"model": "m", "stream": true, "messages": [{"role": "assistant", '
            b'"tool_calls": "x"}]}',
            400,
            "invalid_body",
        ),
    ],
)
async def test_hostile_bodies_are_400s_not_500s(
    tmp_path: Path, fake_upstream: Any, opa_bin: str, raw: bytes, status: int, code: str
) -> None:
    gw = await start_gateway(
        tmp_path, fake_upstream, settings_overrides={"max_body_bytes": 1 << 20}
    )
    try:
        got, body, request_id = await post(gw, None, raw=raw)
        records = await gw.audit_records()
    finally:
        await gw.close()
    assert (got, body["error"]["code"]) == (status, code), body
    assert [r["request_id"] for r in records] == [request_id]
    assert sum(gw.upstream_requests().values()) == 0
