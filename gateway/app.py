"""The composition root: `create_app(settings)` wires the aiohttp application.

Shared objects live under `web.AppKey` constants; every long-lived resource
(audit log, OPA sidecar and client, upstream sessions, JWKS session) is opened
and closed in a `cleanup_ctx`. One middleware assigns request ids, renders every
error in the OpenAI error shape and writes exactly one audit record per model
request, whatever happens to it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from gateway.auth import Authenticator, Identity, JwtVerifier, KeyStore
from gateway.errors import (
    AuditUnavailableError,
    BadRequestError,
    GatewayError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
)
from gateway.metadata import BODY_FIELD, opa_input, resolve_metadata
from gateway.policy import Decision, PolicyClient
from gateway.providers.base import (
    ProviderAdapter,
    ProviderConfigError,
    ProviderNotImplementedError,
    adapter_for,
)
from gateway.settings import Settings
from gateway.sidecar import OpaSidecar, go_runtime_env
from gateway.upstream import (
    Attempt,
    BreakerPolicy,
    ClientDisconnectedError,
    Forwarder,
    ForwardResult,
    ForwardTrace,
    UpstreamFailedError,
)
from observability.audit import Attempt as AuditAttempt
from observability.audit import AuditRecord, utc_now
from observability.metrics import (
    AuditPipelineSnapshot,
    GatewayMetrics,
    MetricsConfigError,
    resolve_metrics_config,
)
from observability.pipeline import AuditConfigError, AuditPipeline
from observability.tracing import GatewayTracing, TracingConfigError, resolve_tracing_config
from translator.opa import find_opa
from translator.registry import Registry

log = logging.getLogger("kamiwaza.gateway")

SETTINGS = web.AppKey("settings", Settings)
REGISTRY = web.AppKey("registry", Registry)
AUTHENTICATOR = web.AppKey("authenticator", Authenticator)
POLICY = web.AppKey("policy", PolicyClient)
FORWARDER = web.AppKey("forwarder", Forwarder)
AUDIT = web.AppKey("audit", AuditPipeline)
COMPILED = web.AppKey("compiled", dict)  # path -> text of the compiled policy files
RELOADS = web.AppKey("reloads", set)  # keeps SIGHUP reload tasks referenced
# Called with every finished model request's audit record (audit sink, metrics).
# Observers run on the request path: they must not block or raise.
RecordObserver = Callable[[AuditRecord], None]
OBSERVERS = web.AppKey("observers", list)
# OpenTelemetry metrics; always present (disabled: observe() does nothing), so
# that e.g. the audit spool can register its gauges (observability/metrics.py).
METRICS = web.AppKey("metrics", GatewayMetrics)
# OpenTelemetry traces; always present (disabled: no tracer, no spans).
TRACING = web.AppKey("tracing", GatewayTracing)

CHAT_PATHS = frozenset({"/v1/route", "/v1/chat/completions"})
# Status recorded when the client goes away before the answer is complete.
CLIENT_CLOSED = 499

_RECORD = web.RequestKey("kamiwaza_audit_record", AuditRecord)
_REQUEST_ID = web.RequestKey("kamiwaza_request_id", str)
_TRACE = web.RequestKey("kamiwaza_forward_trace", ForwardTrace)


class StartupError(Exception):
    """The gateway cannot start: bad policy, registry, keys or credentials."""


# -- composition ---------------------------------------------------------------


def load_policy(settings: Settings) -> tuple[Registry, dict[str, str]]:
    """Check and compile the routing policy and its registry, or fail naming every error."""
    from translator.errors import PolicyError
    from translator.pipeline import compile_policy

    try:
        result, files = compile_policy(settings.policy, settings.endpoints)
    except PolicyError as err:
        raise StartupError(f"the routing policy has errors:\n{err.report}") from err
    if settings.shadow_policy:
        from gateway.shadow import ShadowPolicyError, compile_shadow

        try:
            files.update(compile_shadow(settings))
        except ShadowPolicyError as err:
            raise StartupError(str(err)) from err
    return result.registry, files


def create_app(
    settings: Settings,
    *,
    environ: Mapping[str, str] | None = None,
    clock: Callable[[], float] = time.monotonic,
    tracing: GatewayTracing | None = None,
) -> web.Application:
    """Build the gateway. Configuration problems raise StartupError here, not later.

    `tracing` replaces the one the settings describe (tests: in-memory spans)."""
    registry, compiled = load_policy(settings)
    keys = None
    if settings.keys and (Path(settings.keys).exists() or settings.jwt is None):
        try:
            keys = KeyStore.load(settings.keys, known_data_classes=settings.data_classes)
        except Exception as err:  # AuthConfigError, OSError: both are startup errors
            raise StartupError(f"keys file {settings.keys}: {err}") from err
    jwt = JwtVerifier(settings.jwt) if settings.jwt is not None else None
    authenticator = Authenticator(keys=keys, jwt=jwt)
    adapters: dict[str, ProviderAdapter] = {}
    for endpoint in registry.endpoints.values():
        try:
            adapters[endpoint.name] = adapter_for(endpoint, environ=environ)
        except ProviderNotImplementedError:
            continue  # a code limitation, not configuration: the Forwarder logs it
        except ProviderConfigError as err:
            if not settings.allow_unconfigured_endpoints:
                raise StartupError(f"endpoint registry: {err}") from err
    if tracing is None:
        tracing = _tracing(settings, environ)
    forwarder = Forwarder.from_registry(
        registry,
        adapters=adapters,
        environ=environ,
        skip_unavailable=True,
        breaker=BreakerPolicy(settings.breaker_failures, settings.breaker_cooldown_s),
        clock=clock,
        tracer=tracing.tracer,
    )

    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[_request_middleware],
    )
    app[SETTINGS] = settings
    app[REGISTRY] = registry
    app[AUTHENTICATOR] = authenticator
    app[FORWARDER] = forwarder
    app[COMPILED] = compiled
    try:
        app[AUDIT] = AuditPipeline.from_settings(settings, environ=environ)
    except AuditConfigError as err:
        raise StartupError(f"audit: {err}") from err
    app[OBSERVERS] = [app[AUDIT].write]
    app[METRICS] = _metrics(settings, environ)
    app[METRICS].watch_breakers(forwarder)
    app[OBSERVERS].append(app[METRICS].observe)
    app[TRACING] = tracing
    app.cleanup_ctx.append(_metrics_ctx)
    app.cleanup_ctx.extend([_audit_ctx, _policy_ctx, forwarder.cleanup_ctx, _auth_ctx])
    app.router.add_post("/v1/route", chat_completions)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", list_models)
    from gateway.dry_run import route_explain  # it reads this module's AppKeys

    app.router.add_post("/v1/route/explain", route_explain)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


def _metrics(settings: Settings, environ: Mapping[str, str] | None) -> GatewayMetrics:
    try:
        config = resolve_metrics_config(
            enabled=settings.metrics,
            endpoint=settings.otlp_endpoint,
            headers=settings.otlp_headers,
            interval_s=settings.metrics_interval_s,
            environ=environ,
        )
    except MetricsConfigError as err:
        raise StartupError(f"metrics: {err}") from err
    if config is not None:
        log.info("metrics: OTLP/HTTP to %s every %gs", config.endpoint, config.interval_s)
    return GatewayMetrics.from_config(config)


def _tracing(settings: Settings, environ: Mapping[str, str] | None) -> GatewayTracing:
    try:
        config = resolve_tracing_config(
            enabled=settings.traces,
            endpoint=settings.otlp_endpoint,
            headers=settings.otlp_headers,
            environ=environ,
        )
    except TracingConfigError as err:
        raise StartupError(f"traces: {err}") from err
    if config is not None:
        log.info("traces: OTLP/HTTP to %s", config.endpoint)
    return GatewayTracing.from_config(config)


async def _metrics_ctx(app: web.Application) -> AsyncIterator[None]:
    yield
    # The last exports do network I/O: not on the event loop.
    await asyncio.to_thread(app[METRICS].shutdown)
    await asyncio.to_thread(app[TRACING].shutdown)


async def _audit_ctx(app: web.Application) -> AsyncIterator[None]:
    pipeline = app[AUDIT]
    await pipeline.start()
    unregister = app[METRICS].register_audit_pipeline(
        pipeline.sink.name, lambda: AuditPipelineSnapshot.from_stats(pipeline.stats())
    )
    yield
    unregister()
    await pipeline.close()


async def _policy_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    sidecar: OpaSidecar | None = None
    runtime_dir: str | None = None
    url = settings.opa_url
    if url is None:
        from translator.pipeline import write_output

        runtime_dir = tempfile.mkdtemp(prefix="kamiwaza-opa-")
        write_output(app[COMPILED], runtime_dir)
        opa_bin = settings.opa_bin or find_opa()
        sidecar = OpaSidecar(
            opa_bin,
            [runtime_dir, settings.rego_dir, *settings.overrides_dirs],
            Path(settings.audit_dir) / "opa.log",
            config_file=app[AUDIT].write_opa_config(runtime_dir),
            env=go_runtime_env(settings.opa_gomaxprocs, settings.opa_gogc),
        )
        await sidecar.start()
        url = sidecar.url
    client = PolicyClient(url, settings.opa_timeout_ms, tracer=app[TRACING].tracer)
    await client.start()
    app[POLICY] = client
    try:
        yield
    finally:
        await client.close()
        if sidecar is not None:
            await sidecar.stop()
        if runtime_dir is not None:
            shutil.rmtree(runtime_dir, ignore_errors=True)


async def _auth_ctx(app: web.Application) -> AsyncIterator[None]:
    yield
    await app[AUTHENTICATOR].close()


# -- middleware ----------------------------------------------------------------


def _error_response(err: GatewayError, request_id: str) -> web.Response:
    headers = {**err.headers, "X-Request-Id": request_id}
    return web.json_response(err.body(), status=err.status, headers=headers)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _request_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = "req-" + uuid.uuid4().hex
    request[_REQUEST_ID] = request_id
    record: AuditRecord | None = None
    span = None
    started = time.perf_counter()
    if request.path in CHAT_PATHS and request.method == "POST":
        record = AuditRecord(request_id=request_id, timestamp=utc_now(), path=request.path)
        request[_RECORD] = record
        span = request.app[TRACING].start_request("POST", request.path, request.headers, request_id)
    try:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            # aiohttp's own errors (404, 405, 413 from the body limit) in our shape.
            raise _from_http_exception(exc) from exc
        except (ClientDisconnectedError, ConnectionResetError, asyncio.CancelledError):
            # aiohttp cancels the handler when the client goes away.
            _fail(record, CLIENT_CLOSED, "client_disconnected", "the client disconnected")
            raise
        if not response.prepared:
            response.headers["X-Request-Id"] = request_id
        if record is not None:
            record.status = response.status
        return response
    except GatewayError as err:
        _fail(record, err.status, err.code, err.message, type_=err.type)
        return _error_response(err, request_id)
    except Exception:
        # Never a traceback to the client; the log has it, keyed by request id.
        log.exception("unhandled error in request %s", request_id)
        _fail(record, 500, "internal_error", "internal error")
        return _error_response(GatewayError(f"internal error (request {request_id})"), request_id)
    finally:
        if record is not None:
            trace = request.get(_TRACE)
            if trace is not None:
                # What was tried, even when the request failed or was cancelled.
                record.endpoint = trace.endpoint
                record.model = trace.model
                record.attempts = [_audit_attempt(a) for a in trace.attempts]
            record.latency_ms["total"] = round((time.perf_counter() - started) * 1000, 3)
            for observe in request.app[OBSERVERS]:
                try:
                    observe(record)
                except Exception:
                    log.exception("observer %r failed for request %s", observe, request_id)
            if span is not None:
                span.finish(record)


def _from_http_exception(exc: web.HTTPException) -> GatewayError:
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return PayloadTooLargeError(
            f"request body too large (limit {exc.max_size} bytes)"
            if hasattr(exc, "max_size")
            else "request body too large"
        )
    if isinstance(exc, web.HTTPNotFound):
        return NotFoundError("no such route")
    err = GatewayError(exc.reason or "error", status=exc.status, code=f"http_{exc.status}")
    err.type = "invalid_request_error" if exc.status < 500 else "server_error"
    return err


def _fail(
    record: AuditRecord | None,
    status: int,
    code: str,
    message: str,
    *,
    type_: str = "server_error",
) -> None:
    if record is None:
        return
    record.status = status
    record.error = {"type": type_, "code": code, "message": message}


def _audit_attempt(attempt: Attempt) -> AuditAttempt:
    return AuditAttempt(
        endpoint=attempt.endpoint,
        status=attempt.status,
        error=attempt.error,
        latency_ms=round(attempt.latency_ms, 3),
    )


# -- handlers ------------------------------------------------------------------


async def _read_body(request: web.Request) -> dict[str, Any]:
    limit = request.app[SETTINGS].max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLargeError(f"request body too large (limit {limit} bytes)")
    raw = await request.read()
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BadRequestError(
            f"request body is not valid JSON: {err}", code="invalid_json"
        ) from err
    if not isinstance(body, dict):
        raise BadRequestError("request body must be a JSON object", code="invalid_body")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequestError(
            "'messages' must be a non-empty list of chat messages", code="invalid_body"
        )
    if "stream" in body and not isinstance(body["stream"], bool):
        raise BadRequestError("'stream' must be true or false", code="invalid_body")
    if "model" in body and not isinstance(body["model"], str):
        raise BadRequestError("'model' must be a string", code="invalid_body")
    return body


def _fill_identity(record: AuditRecord, identity: Identity) -> None:
    record.tenant = identity.tenant
    record.user = identity.user
    record.roles = list(identity.roles)
    record.key_id = identity.key_id
    record.auth_method = str(identity.method)


def _fill_decision(record: AuditRecord, decision: Decision) -> None:
    record.decision_id = decision.decision_id
    record.policy_revision = decision.revision
    record.rule = decision.rule
    record.conditions = decision.conditions
    record.overridden_by = decision.overridden_by
    record.deny = list(decision.deny)
    record.route_to = decision.route_to
    record.fallback = list(decision.fallback)
    record.shadow = decision.shadow_disagreement()
    record.latency_ms["policy"] = round(decision.elapsed_ms, 3)


def _fill_result(record: AuditRecord, result: ForwardResult) -> None:
    record.tokens = {"input": result.usage.input_tokens, "output": result.usage.output_tokens}
    record.cost_usd = result.cost_usd
    record.latency_ms["upstream"] = round(result.upstream_latency_ms, 3)
    record.latency_ms["ttft"] = round(result.ttft_ms, 3) if result.ttft_ms is not None else None
    if result.stream_error is not None:
        failure = result.stream_error
        record.error = {"type": "upstream_error", "code": failure.code, "message": failure.message}


def _rule_header(decision: Decision) -> str:
    if decision.overridden_by:
        return f"override:{decision.overridden_by}"
    return str(decision.rule["name"]) if decision.rule else ""


def _decision_headers(decision: Decision) -> dict[str, str]:
    return {
        "X-Kamiwaza-Rule": _rule_header(decision),
        "X-Kamiwaza-Decision-Id": decision.decision_id or "",
    }


def _routing_headers(request_id: str, decision: Decision, endpoint: str) -> dict[str, str]:
    return {
        "X-Request-Id": request_id,
        "X-Kamiwaza-Endpoint": endpoint,
        **_decision_headers(decision),
    }


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """`POST /v1/route` and `POST /v1/chat/completions`: one routed chat completion."""
    app = request.app
    settings = app[SETTINGS]
    record: AuditRecord = request[_RECORD]
    request_id: str = request[_REQUEST_ID]
    if not app[AUDIT].admits():
        raise AuditUnavailableError(
            "audit spool full: requests are refused until the audit sink catches up"
        )

    identity = await app[AUTHENTICATOR].authenticate(request.headers)
    _fill_identity(record, identity)
    body = await _read_body(request)
    stream = bool(body.get("stream", False))
    record.stream = stream
    record.prompt_hash = app[AUDIT].prompt_hash(body["messages"])
    record.requested_model = body.get("model")
    meta = resolve_metadata(identity, request.headers, body, settings)
    record.data_class = meta.data_class
    record.latency_budget_ms = meta.latency_budget_ms
    record.cost_cap_per_1k = meta.cost_cap_per_1k
    record.labels = dict(meta.labels)
    body.pop(BODY_FIELD, None)  # the gateway's metadata never goes upstream

    decision = await app[POLICY].decide(
        opa_input(
            identity,
            meta,
            model=body.get("model"),
            request_id=request_id,
            path=request.path,
            stream=stream,
        )
    )
    _fill_decision(record, decision)
    if decision.deny:
        no_route = all(reason.startswith("no route") for reason in decision.deny)
        raise PermissionDeniedError(
            ("no route for this request: " if no_route else "request denied by policy: ")
            + "; ".join(decision.deny),
            code="no_route" if no_route else "policy_denied",
            headers={"X-Kamiwaza-Decision-Id": decision.decision_id or ""},
            details={"deny": list(decision.deny)},
        )

    forwarder = app[FORWARDER]
    trace = ForwardTrace()
    request[_TRACE] = trace
    try:
        if not stream:
            result = await forwarder.complete(
                decision.route,
                body,
                request_id=request_id,
                client_headers=request.headers,
                trace=trace,
            )
            _fill_result(record, result)
            assert result.response is not None
            return web.json_response(
                result.response,
                status=result.status,
                headers=_routing_headers(request_id, decision, result.endpoint),
            )

        response: web.StreamResponse | None = None

        async def start_response(endpoint: str) -> web.StreamResponse:
            nonlocal response
            response = web.StreamResponse(
                status=200,
                headers={
                    "Content-Type": "text/event-stream",
                    "Cache-Control": "no-cache",
                    **_routing_headers(request_id, decision, endpoint),
                },
            )
            await response.prepare(request)
            return response

        result = await forwarder.stream(
            decision.route,
            body,
            request_id=request_id,
            start_response=start_response,
            client_headers=request.headers,
            trace=trace,
        )
        _fill_result(record, result)
        assert response is not None
        return response
    except UpstreamFailedError as err:
        err.headers.update(_decision_headers(decision))
        raise


async def list_models(request: web.Request) -> web.Response:
    """`GET /v1/models`: the models of the endpoints this caller may be routed to.

    An endpoint is left out when the guards refuse it for the caller's effective
    data class (e.g. a tenant whose floor is pii-restricted sees only in-VPC
    endpoints) or when the gateway cannot reach it (no adapter or credential).
    """
    app = request.app
    identity = await app[AUTHENTICATOR].authenticate(request.headers)
    meta = resolve_metadata(identity, request.headers, {}, app[SETTINGS])
    refused = await app[POLICY].refused_endpoints(
        opa_input(
            identity,
            meta,
            model=None,
            request_id=request[_REQUEST_ID],
            path=request.path,
            stream=False,
        )
    )
    unavailable = app[FORWARDER].unavailable
    seen: dict[str, dict[str, Any]] = {}
    for name, endpoint in sorted(app[REGISTRY].endpoints.items()):
        if name in refused or name in unavailable:
            continue
        model_id = endpoint.model or name
        seen.setdefault(
            model_id,
            {"id": model_id, "object": "model", "created": 0, "owned_by": endpoint.type},
        )
    return web.json_response({"object": "list", "data": list(seen.values())})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    policy = request.app.get(POLICY)
    healthy = policy is not None and await policy.healthy()
    if not healthy:
        return web.json_response({"status": "unavailable", "opa": "unhealthy"}, status=503)
    return web.json_response({"status": "ready", "opa": "healthy"})


# Credentials as they can appear in text: our API keys, bearer tokens, api-key headers.
_CREDENTIAL_RE = re.compile(
    r"(kw_[0-9a-f]+_)[A-Za-z0-9_-]+|((?:bearer|api-key:|x-api-key:)\s*)[^\s'\"\\]+",
    re.IGNORECASE,
)


def redact_credentials(text: str) -> str:
    return _CREDENTIAL_RE.sub(lambda m: (m.group(1) or m.group(2)) + "<redacted>", text)


class RedactingFilter(logging.Filter):
    """Keeps client credentials out of every log line.

    aiohttp logs a malformed request with the raw bytes of its headers, the
    client's Authorization header included; that record is reduced to a
    one-line summary, and any other message is scrubbed as a last resort.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            summary = (record.getMessage(), type(exc).__name__, exc.code)
            record.msg, record.args = "%s: malformed HTTP request (%s %s)", summary
            record.exc_info = None
            record.exc_text = None
            return True
        message = record.getMessage()
        cleaned = redact_credentials(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter())
    # aiohttp's access log would be a second, unaudited record of every request.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


__all__ = [
    "StartupError",
    "configure_logging",
    "create_app",
    "load_policy",
    "reload_keys_on_sighup",
]


async def reload_keys_on_sighup(app: web.Application) -> None:
    """Re-read the keys file on SIGHUP, so that revocations take effect without a restart."""
    import signal

    keys = app[AUTHENTICATOR].keys
    if keys is None:
        return
    loop = asyncio.get_running_loop()

    def schedule() -> None:
        async def reload() -> None:
            try:
                await asyncio.to_thread(keys.reload)
                log.info("keys file reloaded (%d keys)", len(keys))
            except Exception:
                log.exception("keys file reload failed; the previous keys stay in force")

        app[RELOADS].add(asyncio.ensure_future(reload()))

    app[RELOADS] = set()
    loop.add_signal_handler(signal.SIGHUP, schedule)
