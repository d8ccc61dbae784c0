"""Gateway traces with the OpenTelemetry SDK, exported over OTLP/HTTP.

One server span per model request (`POST /v1/route`, `POST /v1/chat/completions`),
continuing the client's W3C `traceparent` when it sends one, with children:

- `kamiwaza.policy.decide` (client): the OPA decision (gateway/policy.py);
- `kamiwaza.upstream.attempt` (client), one per endpoint tried (gateway/upstream.py),
  whose context goes upstream as `traceparent` / `tracestate`.

Attributes are small and never carry prompt text or credentials: the HTTP
method, route and status, and `kamiwaza.endpoint`, `kamiwaza.rule`,
`kamiwaza.tenant`, `kamiwaza.decision_id`, `kamiwaza.request_id` (the server
span, filled from the finished audit record); `kamiwaza.endpoint`,
`kamiwaza.outcome` ("ok" or the error code) and the upstream's status (an
attempt). Error codes go in `error.type`; errors set the span status.

Spans are batched in memory and exported by the SDK's BatchSpanProcessor
thread; the event loop never waits on the network. Disabled, there is no
tracer at all (`GatewayTracing.tracer is None`) and the hooks skip everything.
The provider is the gateway's own, never the global one.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from opentelemetry import context as otel_context
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from observability.audit import AuditRecord
from observability.metrics import _resource, label, rule_label
from observability.otlp import otlp_target, read_otlp_env

log = logging.getLogger(__name__)

TRACES_PATH = "/v1/traces"
# W3C trace context only (not OTEL_PROPAGATORS): what we accept and send.
W3C = TraceContextTextMapPropagator()
TRACE_HEADERS = frozenset(W3C.fields)  # traceparent, tracestate


class TracingConfigError(Exception):
    """The tracing configuration is invalid; the message names the setting."""


@dataclass(frozen=True, slots=True)
class TracingConfig:
    """Where to export; see :func:`resolve_tracing_config`."""

    endpoint: str  # full URL of the OTLP/HTTP traces path
    headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    timeout_s: float = 10.0


def resolve_tracing_config(
    *,
    enabled: bool | None,
    endpoint: str | None,
    headers: Mapping[str, str],
    environ: Mapping[str, str] | None = None,
) -> TracingConfig | None:
    """Merge our settings with the standard OTEL_* variables; None: traces are off.

    - on/off: `enabled` (the `traces` setting) when set; else off with
      OTEL_SDK_DISABLED=true or OTEL_TRACES_EXPORTER=none; else on only when
      traces are asked for explicitly (OTEL_TRACES_EXPORTER=otlp or
      OTEL_EXPORTER_OTLP_TRACES_ENDPOINT). Unlike metrics they do not follow a
      bare OTLP endpoint: the documented metrics path goes straight to
      Prometheus, which takes no traces.
    - endpoint: ours (a base URL; /v1/traces is appended unless present), else
      OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (used as is), else
      OTEL_EXPORTER_OTLP_ENDPOINT (+ /v1/traces), else localhost:4318.
    - headers: OTEL_EXPORTER_OTLP_TRACES_HEADERS or OTEL_EXPORTER_OTLP_HEADERS,
      overlaid with ours.
    - protocol: only http/protobuf (OTEL_EXPORTER_OTLP[_TRACES]_PROTOCOL).
    """
    env = os.environ if environ is None else environ
    otlp = read_otlp_env(env, "TRACES")
    if enabled is None:
        asked = otlp.exporter == "otlp" or bool(otlp.signal_url)
        enabled = not otlp.sdk_disabled and otlp.exporter != "none" and asked
    if not enabled:
        return None
    try:
        url, merged = otlp_target(otlp, TRACES_PATH, endpoint, headers)
    except ValueError as err:
        raise TracingConfigError(str(err)) from None
    return TracingConfig(url, merged)


class RequestSpan:
    """The server span of one model request, current until :meth:`finish`."""

    __slots__ = ("_token", "span")

    def __init__(self, span: Span) -> None:
        self.span = span
        self._token = otel_context.attach(set_span_in_context(span))

    def finish(self, record: AuditRecord) -> None:
        """Describe the finished request from its audit record and end the span."""
        span = self.span
        try:
            status = record.status
            span.set_attributes(
                {
                    "http.response.status_code": status,
                    "kamiwaza.endpoint": label(record.endpoint),
                    "kamiwaza.rule": rule_label(record.rule, record.overridden_by),
                    "kamiwaza.tenant": label(record.tenant),
                    "kamiwaza.decision_id": label(record.decision_id),
                    "kamiwaza.stream": bool(record.stream),
                }
            )
            code = record.error.get("code") if record.error else None
            if code:
                span.set_attribute("error.type", str(code))
            # A server span fails on a 5xx, or on a stream cut after its 200.
            if status >= 500 or (code and status < 400):
                span.set_status(Status(StatusCode.ERROR, str(code or status)))
        except Exception:  # a tracing bug must never fail a request
            log.exception("tracing: cannot describe request %s", record.request_id)
        finally:
            otel_context.detach(self._token)
            span.end()


class GatewayTracing:
    """The gateway's TracerProvider, or nothing when traces are off.

    Build with :meth:`from_config` (OTLP export through a BatchSpanProcessor;
    `None` gives a disabled instance) or with any span processors (tests use
    a SimpleSpanProcessor over an InMemorySpanExporter). :meth:`shutdown`
    exports what is left: call it once, off the event loop.
    """

    def __init__(self, processors: Iterable[SpanProcessor] = (), *, enabled: bool = True) -> None:
        self._provider: TracerProvider | None = None
        self.tracer: Tracer | None = None
        if enabled:
            self._provider = TracerProvider(resource=_resource(), shutdown_on_exit=False)
            for processor in processors:
                self._provider.add_span_processor(processor)
            self.tracer = self._provider.get_tracer("kamiwaza.gateway")

    @classmethod
    def from_config(cls, config: TracingConfig | None) -> GatewayTracing:
        if config is None:
            return cls(enabled=False)
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        exporter = OTLPSpanExporter(
            endpoint=config.endpoint, headers=dict(config.headers), timeout=config.timeout_s
        )
        return cls([BatchSpanProcessor(exporter)])

    @property
    def enabled(self) -> bool:
        return self.tracer is not None

    def start_request(
        self, method: str, route: str, headers: Mapping[str, str], request_id: str
    ) -> RequestSpan | None:
        """The server span of a model request, made current (None when off).

        A valid incoming `traceparent` (and `tracestate`) is continued."""
        if self.tracer is None:
            return None
        span = self.tracer.start_span(
            f"{method} {route}",
            context=W3C.extract(headers),
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": method,
                "http.route": route,
                "kamiwaza.request_id": request_id,
            },
        )
        return RequestSpan(span)

    def shutdown(self) -> None:
        """Export what is left and stop the exporter thread (blocking)."""
        provider, self._provider, self.tracer = self._provider, None, None
        if provider is not None:
            provider.shutdown()
