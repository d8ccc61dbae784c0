"""Traces: the span tree of requests through the gateway (real OPA sidecar, fake
upstreams, in-memory spans), W3C trace context in and out, tracing off, and the
OTLP exporter's configuration (our settings and the standard OTEL_* variables)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from gateway.settings import SettingsError, load_settings
from gateway.state import TRACING
from observability.tracing import (
    GatewayTracing,
    TracingConfig,
    TracingConfigError,
    resolve_tracing_config,
)
from tests.gateway_harness import Gateway, start_gateway
from tests.processes import free_port, serve_app

MESSAGES = [{"role": "user", "content": "a secret prompt"}]
CLIENT_TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN_ID = "b7ad6b7169203331"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
async def gw(
    tmp_path: Path, fake_upstream: Any, opa_bin: str, exporter: InMemorySpanExporter
) -> AsyncIterator[Gateway]:
    tracing = GatewayTracing([SimpleSpanProcessor(exporter)])
    gateway = await start_gateway(tmp_path, fake_upstream, tracing=tracing)
    yield gateway
    await gateway.close()


async def post(
    gw: Gateway, tenant: str, headers: dict[str, str] | None = None, **body: Any
) -> tuple[int, CIMultiDict[str], bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            gw.url("/v1/chat/completions"),
            json={"model": "gpt-4o", "messages": MESSAGES, **body},
            headers={"Authorization": f"Bearer {gw.keys[tenant]}", **(headers or {})},
        ) as resp,
    ):
        return resp.status, CIMultiDict(resp.headers), await resp.read()


def tree(exporter: InMemorySpanExporter) -> tuple[ReadableSpan, list[ReadableSpan]]:
    """The one server span and its children, in start order."""
    spans = exporter.get_finished_spans()
    (server,) = [s for s in spans if s.kind is SpanKind.SERVER]
    assert server.context is not None
    children = sorted((s for s in spans if s is not server), key=lambda s: s.start_time or 0)
    assert len(children) == len(spans) - 1
    for child in children:
        assert child.parent is not None
        assert child.parent.span_id == server.context.span_id
        assert child.context is not None
        assert child.context.trace_id == server.context.trace_id
    return server, children


def traceparent(span: ReadableSpan) -> str:
    """The version, trace id and parent id of a `traceparent` naming `span` (not the flags)."""
    assert span.context is not None
    return f"00-{span.context.trace_id:032x}-{span.context.span_id:016x}"


def sent_traceparent(headers: CIMultiDict[str]) -> str:
    value = headers["traceparent"]
    assert value[-3:] in ("-01", "-03")  # sampled (and, W3C level 2, a random trace id)
    return value[:-3]


async def test_a_failover_request_is_one_server_span_with_opa_and_attempt_children(
    gw: Gateway, exporter: InMemorySpanExporter
) -> None:
    gw.upstreams["private-gpu"].fail(503)
    status, headers, _ = await post(gw, "acme", {"X-Data-Class": "pii-restricted"})
    assert status == 200
    server, (opa, first, second) = tree(exporter)

    assert server.name == "POST /v1/chat/completions"
    assert dict(server.attributes or {}) == {
        "http.request.method": "POST",
        "http.route": "/v1/chat/completions",
        "http.response.status_code": 200,
        "kamiwaza.request_id": headers["X-Request-Id"],
        "kamiwaza.endpoint": "private-gpu-b",
        "kamiwaza.rule": "pii-on-prem",
        "kamiwaza.tenant": "enterprise-acme",
        "kamiwaza.decision_id": headers["X-Kamiwaza-Decision-Id"],
        "kamiwaza.stream": False,
    }
    assert server.status.status_code is StatusCode.UNSET

    assert (opa.name, opa.kind) == ("kamiwaza.policy.decide", SpanKind.CLIENT)
    assert dict(opa.attributes or {}) == {
        "kamiwaza.decision_id": headers["X-Kamiwaza-Decision-Id"],
        "kamiwaza.rule": "pii-on-prem",
        "kamiwaza.route_to": "private-gpu",
        "kamiwaza.decision": "route",
    }

    assert [(s.name, s.kind) for s in (first, second)] == [
        ("kamiwaza.upstream.attempt", SpanKind.CLIENT)
    ] * 2
    assert dict(first.attributes or {}) == {
        "kamiwaza.endpoint": "private-gpu",
        "kamiwaza.outcome": "upstream_unavailable",
        "http.response.status_code": 503,
        "error.type": "upstream_unavailable",
    }
    assert first.status.status_code is StatusCode.ERROR
    assert dict(second.attributes or {}) == {
        "kamiwaza.endpoint": "private-gpu-b",
        "kamiwaza.outcome": "ok",
        "http.response.status_code": 200,
    }
    assert second.status.status_code is StatusCode.UNSET

    # Each upstream got its own attempt's context, in the server span's trace.
    assert sent_traceparent(gw.upstreams["private-gpu"].requests[0].headers) == traceparent(first)
    assert sent_traceparent(gw.upstreams["private-gpu-b"].requests[0].headers) == traceparent(
        second
    )
    # Nothing of the prompt or the credential in any span.
    everything = json.dumps([json.loads(s.to_json()) for s in exporter.get_finished_spans()])
    assert "secret prompt" not in everything
    assert gw.keys["acme"] not in everything


async def test_an_incoming_traceparent_is_continued_and_never_forwarded_as_is(
    gw: Gateway, exporter: InMemorySpanExporter
) -> None:
    incoming = f"00-{CLIENT_TRACE_ID}-{CLIENT_SPAN_ID}-01"
    status, _, _ = await post(gw, "globex", {"traceparent": incoming, "tracestate": "vendor=v1"})
    assert status == 200
    server, (_, attempt) = tree(exporter)
    assert server.context is not None
    assert server.parent is not None
    assert f"{server.context.trace_id:032x}" == CLIENT_TRACE_ID
    assert f"{server.parent.span_id:016x}" == CLIENT_SPAN_ID
    sent = gw.upstreams["anthropic"].requests[0].headers
    assert sent_traceparent(sent) == traceparent(attempt)
    assert not incoming.startswith(traceparent(attempt))
    assert sent["tracestate"] == "vendor=v1"


async def test_a_stream_span_ends_with_the_stream(
    gw: Gateway, exporter: InMemorySpanExporter
) -> None:
    gw.upstreams["anthropic"].next(chunk_delay=0.02)
    status, _, body = await post(gw, "globex", stream=True)
    assert status == 200
    assert body.rstrip().endswith(b"data: [DONE]")
    server, (_, attempt) = tree(exporter)
    assert (server.attributes or {})["kamiwaza.stream"] is True
    assert attempt.end_time is not None
    assert attempt.start_time is not None
    assert server.end_time is not None
    assert attempt.end_time - attempt.start_time > 0.1e9  # the whole stream, not its headers
    assert server.end_time >= attempt.end_time


async def test_failures_set_the_span_status(gw: Gateway, exporter: InMemorySpanExporter) -> None:
    gw.upstreams["anthropic"].fail(500)
    status, _, _ = await post(gw, "globex")
    assert status >= 500
    server, (_, attempt) = tree(exporter)
    attributes = server.attributes or {}
    assert attributes["http.response.status_code"] == status
    assert attributes["error.type"] == (attempt.attributes or {})["error.type"]
    assert server.status.status_code is StatusCode.ERROR
    assert attempt.status.status_code is StatusCode.ERROR

    exporter.clear()
    status, _, _ = await post(gw, "limited", {"X-Data-Class": "pii-restricted"})
    assert status == 403  # a client error: not a server span error
    server, children = tree(exporter)
    assert children == []  # refused before the policy was asked
    assert (server.attributes or {})["error.type"] == "data_class_not_allowed"
    assert (server.attributes or {})["kamiwaza.endpoint"] == "none"
    assert server.status.status_code is StatusCode.UNSET


async def test_opa_down_fails_the_decision_span(
    tmp_path: Path, fake_upstream: Any, opa_bin: str, exporter: InMemorySpanExporter
) -> None:
    tracing = GatewayTracing([SimpleSpanProcessor(exporter)])
    opa_url = f"http://127.0.0.1:{free_port()}"
    gw = await start_gateway(tmp_path, fake_upstream, opa_url=opa_url, tracing=tracing)
    try:
        status, _, _ = await post(gw, "globex")
        assert status == 503
        server, (opa,) = tree(exporter)
        assert (opa.attributes or {})["error.type"] == "policy_unreachable"
        assert opa.status.status_code is StatusCode.ERROR
        assert (server.attributes or {})["error.type"] == "policy_unreachable"
        assert server.status.status_code is StatusCode.ERROR
    finally:
        await gw.close()


async def test_tracing_off_makes_no_spans_and_sends_no_traceparent(
    tmp_path: Path, fake_upstream: Any, opa_bin: str, exporter: InMemorySpanExporter
) -> None:
    off = GatewayTracing([SimpleSpanProcessor(exporter)], enabled=False)
    assert off.tracer is None
    gw = await start_gateway(tmp_path, fake_upstream, tracing=off)
    try:
        incoming = f"00-{CLIENT_TRACE_ID}-{CLIENT_SPAN_ID}-01"
        status, _, _ = await post(gw, "globex", {"traceparent": incoming})
        assert status == 200
        sent = gw.upstreams["anthropic"].requests[0].headers
        assert "traceparent" not in sent
        assert "tracestate" not in sent
        assert exporter.get_finished_spans() == ()
    finally:
        await gw.close()


async def test_settings_without_an_otlp_endpoint_leave_tracing_off(
    tmp_path: Path, fake_upstream: Any, opa_bin: str
) -> None:
    gw = await start_gateway(tmp_path, fake_upstream)
    try:
        assert gw.app[TRACING].tracer is None
        status, _, _ = await post(gw, "globex")
        assert status == 200
        assert "traceparent" not in gw.upstreams["anthropic"].requests[0].headers
    finally:
        await gw.close()


# -- configuration ---------------------------------------------------------------


def resolve(env: dict[str, str], **kwargs: Any) -> TracingConfig | None:
    args: dict[str, Any] = {"enabled": None, "endpoint": None, "headers": {}}
    args.update(kwargs)
    return resolve_tracing_config(**args, environ=env)


def test_traces_are_opt_in() -> None:
    # Metrics alone (often straight to Prometheus, which takes no traces) do not
    # turn traces on; an explicit switch does.
    assert resolve({}) is None
    assert resolve({}, endpoint="http://c:4318") is None
    assert resolve({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}) is None
    assert resolve({}, enabled=True) == TracingConfig("http://localhost:4318/v1/traces")
    assert resolve({}, enabled=True, endpoint="http://c:4318") == TracingConfig(
        "http://c:4318/v1/traces"
    )
    assert resolve({"OTEL_TRACES_EXPORTER": "otlp"}, endpoint="http://c:4318") == TracingConfig(
        "http://c:4318/v1/traces"
    )
    assert resolve({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:4318/v1/traces"}) == (
        TracingConfig("http://t:4318/v1/traces")
    )
    # Our own `traces` setting wins over everything.
    assert resolve({"OTEL_TRACES_EXPORTER": "otlp"}, enabled=False) is None
    assert resolve({"OTEL_SDK_DISABLED": "true"}, enabled=True) is not None


@pytest.mark.parametrize(
    "env",
    [
        {"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"},
        {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"},
    ],
)
def test_otel_switches_turn_traces_off(env: dict[str, str]) -> None:
    assert resolve(env) is None
    # Off wins even when a traces endpoint is named.
    assert resolve({**env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:4318/v1/traces"}) is None


def test_otel_variables_and_our_settings() -> None:
    config = resolve(
        {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/",
            "OTEL_EXPORTER_OTLP_HEADERS": "Authorization=Bearer%20abc,x-tenant=ops",
        }
    )
    assert config == TracingConfig(
        "http://collector:4318/v1/traces", {"authorization": "Bearer abc", "x-tenant": "ops"}
    )
    signal = resolve(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://tempo:4318/v1/traces",
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "a=1",
            "OTEL_EXPORTER_OTLP_HEADERS": "b=2",
        }
    )
    assert signal == TracingConfig("http://tempo:4318/v1/traces", {"a": "1"})
    ours = resolve(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
            "OTEL_EXPORTER_OTLP_HEADERS": "a=e",
        },
        enabled=True,
        endpoint="http://otel:4318/",
        headers={"b": "ours"},
    )
    assert ours == TracingConfig("http://otel:4318/v1/traces", {"a": "e", "b": "ours"})
    with pytest.raises(TracingConfigError, match="OTLP/HTTP only"):
        resolve({"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"}, enabled=True)


def test_settings() -> None:
    assert load_settings(environ={"KAMIWAZA_TRACES": "false"}).traces is False
    assert load_settings(environ={}).traces is None
    with pytest.raises(SettingsError, match="KAMIWAZA_TRACES: expected true or false"):
        load_settings(environ={"KAMIWAZA_TRACES": "maybe"})


async def test_spans_are_exported_over_otlp_http_with_the_configured_headers() -> None:
    received: list[tuple[str, str | None, bytes]] = []

    async def traces(request: web.Request) -> web.Response:
        received.append((request.path, request.headers.get("x-scope"), await request.read()))
        return web.Response(content_type="application/x-protobuf", body=b"")

    app = web.Application()
    app.router.add_post("/otlp/v1/traces", traces)
    runner, port = await serve_app(app, "127.0.0.1")
    try:
        config = resolve(
            {"OTEL_EXPORTER_OTLP_HEADERS": "x-scope=ops"},
            enabled=True,
            endpoint=f"http://127.0.0.1:{port}/otlp",
        )
        tracing = GatewayTracing.from_config(config)
        assert tracing.tracer is not None
        tracing.tracer.start_span("probe").end()
        await asyncio.to_thread(tracing.shutdown)  # flushes the batch
        assert tracing.tracer is None
    finally:
        await runner.cleanup()
    ((path, scope, body),) = received
    assert (path, scope) == ("/otlp/v1/traces", "ops")
    request = ExportTraceServiceRequest.FromString(body)
    (resource_spans,) = request.resource_spans
    names = [s.name for scope_spans in resource_spans.scope_spans for s in scope_spans.spans]
    assert names == ["probe"]
    service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
    assert service["service.name"] == "kamiwaza-gateway"
