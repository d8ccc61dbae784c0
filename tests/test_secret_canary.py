"""Secret canaries: provider credentials of every adapter type are planted, an
upstream echoes whatever credential it receives back in every way an upstream
can fail (error statuses, a 200 carrying an error object, an error event in a
stream, plain text, response headers), in three spellings (plain, JSON with
`\\/`, JSON with `\\uXXXX`), and every output of the gateway is searched:
client answers, audit records (with OPA's decision log, shipped beside them),
OPA's own log, the gateway's log, metrics and traces. None may hold a canary.
"""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import gateway.app
from gateway.auth import KeyStore
from observability.metrics import GatewayMetrics
from observability.tracing import GatewayTracing
from tests.bedrock_azure_harness import AWS_ENV_CLEARED
from tests.fake_vertex import make_service_account
from tests.gateway_harness import serve_gateway
from tests.processes import serve_app

pytestmark = pytest.mark.integration

OPENAI_COMPATIBLE = "sk-canary-compat-1/2+3"
OPENAI = "sk-proj-canary-openai/4+5"
AZURE = "azure-canary-key-6/7+8"
ANTHROPIC = "sk-ant-canary-9/0+a"
AWS_SECRET = "aws-secret-canary/bcd+ef"
AWS_SESSION = "aws-session-canary/FQoGZX+IvYXdz"
VERTEX_TOKEN = "ya29.vertex-canary/token+1"
CANARIES = (OPENAI_COMPATIBLE, OPENAI, AZURE, ANTHROPIC, AWS_SECRET, AWS_SESSION, VERTEX_TOKEN)

ENDPOINTS = ("compat", "openai", "azure", "anthropic", "bedrock", "vertex")
MODES = (
    "401",
    "400",
    "429",
    "500-text",
    "502-non-string-message",
    "200-error-object",
    "stream-error-first",
    "stream-error-mid",
    "header-echo",
)


def spellings(secret: str) -> list[str]:
    """`secret` as JSON string content: plain, with `\\/`, and all `\\uXXXX`."""
    plain = json.dumps(secret)[1:-1]
    return [plain, plain.replace("/", "\\/"), "".join(f"\\u{ord(c):04x}" for c in secret)]


class EchoUpstream:
    """Every provider's upstream at once: it answers any path, failing as `mode`
    says, and quotes back every credential it was sent."""

    def __init__(self) -> None:
        self.mode = "401"
        self.spelling = 0
        self.seen: set[str] = set()
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/token", self._token)
        app.router.add_route("*", "/{tail:.*}", self._answer)
        self.runner, port = await serve_app(app)
        self.url = f"http://127.0.0.1:{port}"

    async def _token(self, request: web.Request) -> web.Response:
        await request.read()
        return web.json_response(
            {"access_token": VERTEX_TOKEN, "expires_in": 3600, "token_type": "Bearer"}
        )

    def _credentials(self, request: web.Request) -> list[str]:
        found = []
        for name in ("Authorization", "api-key", "x-api-key", "X-Amz-Security-Token"):
            value = request.headers.get(name, "")
            if value.startswith("Bearer "):
                value = value[len("Bearer ") :]
            if value and not value.startswith("AWS4-HMAC-SHA256"):
                found.append(value)
        self.seen.update(found)
        return found

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        creds = self._credentials(request) or ["(none)"]
        spelled = [spellings(c)[self.spelling % 3] for c in creds]
        message = "Incorrect API key provided: " + " and ".join(spelled)
        body = (
            '{"type":"error","message":"' + message + '","error":{"type":"authentication_error",'
            '"code":"invalid_api_key","status":"UNAUTHENTICATED","message":"' + message + '"}}'
        )
        json_headers = {
            "Content-Type": "application/json",
            "x-amzn-ErrorType": "ThrottlingException",
        }
        mode = self.mode
        if mode in ("401", "400", "429"):
            return web.Response(status=int(mode), text=body, headers=json_headers)
        if mode == "500-text":
            return web.Response(status=500, text=f"exploded; key={creds[0]} Bearer {creds[0]}")
        if mode == "502-non-string-message":
            nested = '{"error":{"message":{"detail":"' + message + '"},"code":5}}'
            return web.Response(status=502, text=nested, headers=json_headers)
        if mode == "200-error-object":
            return web.Response(status=200, text=body, headers=json_headers)
        if mode == "header-echo":
            return web.Response(status=503, text=body, headers={**json_headers, "X-Echo": creds[0]})
        # Streams: an error event, first or after some content, in the path's protocol.
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        anthropic = request.path.endswith("/messages")
        if mode == "stream-error-mid" and not anthropic:
            await response.write(
                b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m",'
                b'"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}\n\n'
            )
        event = b"event: error\n" if anthropic else b""
        await response.write(event + b"data: " + body.encode() + b"\n\n")
        await response.write_eof()
        return response


POLICY = "version: v1\nrules:\n" + "".join(
    f"  - name: {name}\n    match: {{labels.target: {name}}}\n    route_to: {name}\n"
    for name in ENDPOINTS
)


def registry(echo: str, account: Path) -> str:
    timeouts = "    timeouts: {connect_ms: 1000, first_token_ms: 5000, total_ms: 10000}\n"
    return (
        "endpoints:\n"
        f"  compat:\n    type: openai-compatible\n    flavor: vllm\n    base_url: {echo}/v1\n"
        "    model: m\n    auth: {bearer_token_env: COMPAT_TOKEN}\n" + timeouts
        + f"  openai:\n    type: openai\n    base_url: {echo}/v1\n    model: gpt-4o\n"
        "    auth: {api_key_env: OPENAI_API_KEY}\n" + timeouts
        + f"  azure:\n    type: azure-openai\n    base_url: {echo}\n    deployment: gpt-4o\n"
        '    api_version: "2024-10-21"\n    auth: {api_key_env: AZURE_OPENAI_API_KEY}\n'
        + timeouts
        + f"  anthropic:\n    type: anthropic\n    base_url: {echo}\n    model: claude-sonnet-4-5\n"
        "    auth: {api_key_env: ANTHROPIC_API_KEY}\n" + timeouts
        + f"  bedrock:\n    type: bedrock\n    region: us-east-1\n    vpc_endpoint_url: {echo}\n"
        "    model: anthropic.claude-3-haiku-20240307-v1:0\n" + timeouts
        + "  vertex:\n    type: vertex\n    project: test-project\n    location: us-central1\n"
        f"    publisher: google\n    base_url: {echo}\n    model: gemini-2.5-flash\n"
        f"    auth: {{service_account_file: {account}}}\n" + timeouts
    )  # fmt: skip


@pytest.fixture
def aws_canary_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in AWS_ENV_CLEARED:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAKAMIWAZACANARY01")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", AWS_SESSION)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))


def text_of(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else json.dumps(value, default=str)


def leaks(where: str, value: Any) -> list[str]:
    """The canaries found in `value`, in any of their spellings."""
    text = text_of(value)
    return [
        f"{where}: {secret}"
        for secret in CANARIES
        if any(s in text for s in (secret, *spellings(secret)))
    ]


async def test_no_provider_secret_reaches_any_output(
    tmp_path: Path,
    opa_bin: str,
    aws_canary_env: None,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.INFO)
    echo = EchoUpstream()
    await echo.start()
    reader = InMemoryMetricReader()
    monkeypatch.setattr(gateway.app, "_metrics", lambda *_: GatewayMetrics([reader]))
    spans = InMemorySpanExporter()
    workdir = tmp_path / "gw"
    workdir.mkdir()
    account = make_service_account(workdir, f"{echo.url}/token")
    (workdir / "routing.yaml").write_text(POLICY)
    (workdir / "endpoints.yaml").write_text(registry(echo.url, account.path))
    key = KeyStore.load(workdir / "keys.json", missing_ok=True).create(tenant="acme")[1]
    gw = await serve_gateway(
        workdir,
        keys={"acme": key},
        environ={
            "COMPAT_TOKEN": OPENAI_COMPATIBLE,
            "OPENAI_API_KEY": OPENAI,
            "AZURE_OPENAI_API_KEY": AZURE,
            "ANTHROPIC_API_KEY": ANTHROPIC,
        },
        overrides={"breaker_failures": 10_000, "opa_timeout_ms": 5000},
        tracing=GatewayTracing([SimpleSpanProcessor(spans)]),
    )
    found: list[str] = []
    answers = 0
    try:
        async with aiohttp.ClientSession() as http:
            for mode in MODES:
                echo.mode = mode
                for endpoint in ENDPOINTS:
                    for spelling in range(3):
                        echo.spelling = spelling
                        async with http.post(
                            gw.url("/v1/chat/completions"),
                            json={
                                "model": "m",
                                "messages": [{"role": "user", "content": "hi"}],
                                "stream": mode.startswith("stream"),
                            },
                            headers={
                                "Authorization": f"Bearer {key}",
                                "X-Labels": f"target={endpoint}",
                            },
                        ) as resp:
                            body = await resp.read()
                        answers += 1
                        where = f"answer {endpoint}/{mode}/{spelling} ({resp.status})"
                        found += leaks(where, body) + leaks(where, dict(resp.headers))
        records = await gw.audit_records()
    finally:
        await gw.close()
        assert echo.runner is not None
        await echo.runner.cleanup()
    # Every planted credential was really sent, so that each could have leaked.
    assert {OPENAI_COMPATIBLE, OPENAI, AZURE, ANTHROPIC, AWS_SESSION, VERTEX_TOKEN} <= echo.seen
    assert answers == len(MODES) * len(ENDPOINTS) * 3
    assert len(records) == answers
    assert {r["attempts"][0]["endpoint"] for r in records} == set(ENDPOINTS)
    for path in sorted((workdir / "audit").rglob("*")):
        if path.is_file():
            raw = path.read_bytes()
            found += leaks(str(path), gzip.decompress(raw) if path.suffix == ".gz" else raw)
    found += leaks("audit records", records)
    found += leaks("log", caplog.text)
    found += leaks("metrics", reader.get_metrics_data().to_json())
    found += leaks("traces", [span.to_json() for span in spans.get_finished_spans()])
    assert spans.get_finished_spans() and reader.get_metrics_data() is not None
    assert found == []
