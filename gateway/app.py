"""The composition root: `create_app(settings)` wires the aiohttp application.

It builds each component from its own typed configuration, stores the shared
ones under the `web.AppKey` constants of :mod:`gateway.state`, opens and closes
every long-lived resource (audit spool, OPA sidecar and client, upstream
sessions, JWKS session, metrics exporters) in a `cleanup_ctx`, and registers
the routes: one handler per API front (:mod:`gateway.fronts`), all running the
one request pipeline (:mod:`gateway.pipeline`), plus :mod:`gateway.routes`.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path

from aiohttp import web

from gateway import dry_run
from gateway.access_log import AccessLog
from gateway.audit_config import audit_config, sink_config
from gateway.auth import Authenticator, JwtVerifier, KeyStore
from gateway.console import add_console
from gateway.errors import (
    ConfigError,
    ProviderConfigError,
    ProviderNotImplementedError,
    StartupError,
)
from gateway.forwarding import BreakerPolicy, Forwarder
from gateway.fronts import ChatFront, Front, all_fronts
from gateway.health.stage import attach as attach_health
from gateway.health.stage import build_health
from gateway.limits.factory import LimitsSetupError, build_limits
from gateway.limits.stage import LimitsStage
from gateway.pipeline import Pipeline, request_middleware
from gateway.policy import PolicyClient
from gateway.policy_reload import reloader_ctx
from gateway.policy_source import (
    load_registry,
    sidecar_paths,
    sidecar_settings_env,
    write_sidecar_config,
)
from gateway.policy_state import POLICY_STATE, PolicyState, policy_state_ctx
from gateway.providers.adapter import ProviderAdapter
from gateway.providers.registry import adapter_for
from gateway.routes import health, models
from gateway.settings import Settings
from gateway.sidecar import OpaSidecar, go_runtime_env
from gateway.state import (
    AUDIT,
    AUTHENTICATOR,
    COMPILED,
    FORWARDER,
    LIMITS,
    METRICS,
    OBSERVERS,
    PIPELINE,
    POLICY,
    REGISTRY,
    SETTINGS,
    TRACING,
    WORKER,
)
from gateway.worker import WorkerIdentity
from observability.metrics import (
    AuditPipelineSnapshot,
    GatewayMetrics,
    MetricsConfigError,
    resolve_metrics_config,
    set_instance_attributes,
)
from observability.pipeline import AuditConfigError, AuditPipeline
from observability.tracing import GatewayTracing, TracingConfigError, resolve_tracing_config
from translator.opa import find_opa
from translator.registry import Registry

log = logging.getLogger("kamiwaza.gateway")

__all__ = ["create_app", "load_policy"]


def load_policy(settings: Settings) -> tuple[Registry, dict[str, str]]:
    """Check and compile the routing policy and its registry, or fail naming every error."""
    from translator.errors import PolicyError
    from translator.pipeline import compile_policy

    try:
        result, files = compile_policy(
            settings.policy, settings.endpoints, classes=settings.classes_data()
        )
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
    worker: WorkerIdentity | None = None,
) -> web.Application:
    """Build the gateway. Configuration problems raise StartupError here, not later.

    `tracing` replaces the one the settings describe (tests: in-memory spans);
    `worker` is set in a worker process of `serve --workers` (gateway/worker.py)."""
    if worker is not None:
        set_instance_attributes({"kamiwaza.worker": worker.name})
    compiled: dict[str, str] = {}
    if settings.policy_source == "bundle":  # the sidecar pulls the policy (policy_source.py)
        registry = load_registry(settings)
    else:
        registry, compiled = load_policy(settings)
    authenticator = _authenticator(settings)
    if tracing is None:
        tracing = _tracing(settings, environ)
    adapters, unavailable = _adapters(settings, registry, environ)
    forwarder = Forwarder.from_registry(
        registry,
        adapters=adapters,
        unavailable=unavailable,
        environ=environ,
        skip_unavailable=True,
        breaker=BreakerPolicy(settings.breaker_failures, settings.breaker_cooldown_s),
        clock=clock,
        tracer=tracing.tracer,
    )
    try:
        audit = AuditPipeline.build(
            audit_config(settings, environ, worker=worker), sink_config(settings), environ=environ
        )
    except AuditConfigError as err:
        raise StartupError(f"audit: {err}") from err
    metrics = _metrics(settings, environ)
    metrics.watch_breakers(forwarder)
    observers = [audit.write, metrics.observe]
    observers.append(AccessLog().observe)
    limits = _limits(settings, registry, metrics, environ)
    pipeline = Pipeline(
        settings,
        authenticator=authenticator,
        forwarder=forwarder,
        audit=audit,
        observers=observers,
        limits=limits,
    )
    pipeline.health = monitor = build_health(settings, registry, forwarder)
    if monitor is not None:
        metrics.health.watch(monitor.snapshot)
        monitor.on_transition.append(metrics.health.transition)
    fronts = all_fronts()
    by_path: dict[str, Front] = {path: front for front in fronts for path in front.paths}

    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[request_middleware(pipeline, by_path, tracing, ChatFront())],
    )
    app[SETTINGS] = settings
    app[REGISTRY] = registry
    app[AUTHENTICATOR] = authenticator
    app[FORWARDER] = forwarder
    app[COMPILED] = compiled
    app[AUDIT] = audit
    app[OBSERVERS] = observers
    app[METRICS] = metrics
    app[TRACING] = tracing
    app[PIPELINE] = pipeline
    app[POLICY_STATE] = PolicyState(settings.policy_source)
    if limits is not None:
        app[LIMITS] = limits
        app.cleanup_ctx.append(_limits_ctx)
    if worker is not None:
        app[WORKER] = worker
    app.cleanup_ctx.append(_metrics_ctx)
    app.cleanup_ctx.extend(
        [_audit_ctx, _policy_ctx, policy_state_ctx, reloader_ctx, forwarder.cleanup_ctx, _auth_ctx]
    )
    attach_health(app, monitor, registry, settings.health_scrape_interval_s)
    for front in fronts:
        for path in front.paths:
            app.router.add_post(path, pipeline.handler(front))
    models.add_routes(app)
    health.add_routes(app)
    dry_run.add_routes(app)
    add_console(app)
    return app


# -- components ----------------------------------------------------------------


def _authenticator(settings: Settings) -> Authenticator:
    keys = None
    if settings.keys and (Path(settings.keys).exists() or settings.jwt is None):
        try:
            keys = KeyStore.load(settings.keys, known_data_classes=settings.data_classes)
        except (ConfigError, OSError) as err:
            raise StartupError(f"keys file {settings.keys}: {err}") from err
    jwt = JwtVerifier(settings.jwt) if settings.jwt is not None else None
    return Authenticator(keys=keys, jwt=jwt)


def _adapters(
    settings: Settings, registry: Registry, environ: Mapping[str, str] | None
) -> tuple[dict[str, ProviderAdapter], dict[str, str]]:
    """Every endpoint's adapter, and the endpoints left out with why: a missing
    credential stops start-up unless `allow_unconfigured_endpoints`."""
    adapters: dict[str, ProviderAdapter] = {}
    unavailable: dict[str, str] = {}
    for endpoint in registry.endpoints.values():
        try:
            adapters[endpoint.name] = adapter_for(endpoint, environ=environ)
        except ProviderNotImplementedError as err:
            raise StartupError(f"endpoint registry: {err}") from err
        except ProviderConfigError as err:
            if not settings.allow_unconfigured_endpoints:
                raise StartupError(f"endpoint registry: {err}") from err
            # Routes to it record a "credential_missing" attempt and fail over.
            log.warning("endpoint unavailable: %s", err)
            unavailable[endpoint.name] = str(err)
    return adapters, unavailable


def _limits(
    settings: Settings,
    registry: Registry,
    metrics: GatewayMetrics,
    environ: Mapping[str, str] | None,
) -> LimitsStage | None:
    """The per-tenant limiter the settings describe (None: no `limits` file)."""
    try:
        limiter = build_limits(settings, environ=environ, observer=metrics.limits)
    except LimitsSetupError as err:
        raise StartupError(f"limits: {err}") from err
    if limiter is None:
        return None
    if limiter.shared:
        log.info("limits: %s, counters in Redis (shared by every replica)", settings.limits)
    else:
        log.warning(
            "limits: %s, counters in this process: correct for a single replica only "
            "(set limits_redis_url to share them)",
            settings.limits,
        )
    return LimitsStage(limiter, registry)


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


# -- long-lived resources ------------------------------------------------------


async def _metrics_ctx(app: web.Application) -> AsyncIterator[None]:
    yield
    # The last exports do network I/O: not on the event loop.
    await asyncio.to_thread(app[METRICS].shutdown)
    await asyncio.to_thread(app[TRACING].shutdown)


async def _audit_ctx(app: web.Application) -> AsyncIterator[None]:
    pipeline = app[AUDIT]
    try:
        await pipeline.start()
    except AuditConfigError as err:
        raise StartupError(f"audit: {err}") from err
    unregister = app[METRICS].register_audit_pipeline(
        pipeline.sink.name, lambda: AuditPipelineSnapshot.from_stats(pipeline.stats())
    )
    yield
    unregister()
    await pipeline.close()


async def _policy_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    worker = app.get(WORKER)
    # Worker i > 0 of `serve --workers`: its sidecar's own log and bundle directory.
    suffix = worker.name if worker is not None and worker.index else None
    sidecar: OpaSidecar | None = None
    runtime_dir: str | None = None
    url = settings.opa_url
    try:
        if url is None:
            from translator.pipeline import write_output

            runtime_dir = tempfile.mkdtemp(prefix="kamiwaza-opa-")
            write_output(app[COMPILED], runtime_dir)
            opa_bin = settings.opa_bin or find_opa()
            sidecar = OpaSidecar(
                opa_bin,
                sidecar_paths(settings, runtime_dir),
                Path(settings.audit_dir) / (f"opa-{suffix}.log" if suffix else "opa.log"),
                config_file=write_sidecar_config(settings, app[AUDIT], runtime_dir, worker=suffix),
                env={
                    **go_runtime_env(settings.opa_gomaxprocs, settings.opa_gogc),
                    **sidecar_settings_env(settings),
                },
            )
            await sidecar.start()
            url = sidecar.url
        client = PolicyClient(url, settings.opa_timeout_ms, tracer=app[TRACING].tracer)
        await client.start()
    except Exception as err:
        if sidecar is not None:
            await sidecar.stop()
        if runtime_dir is not None:
            shutil.rmtree(runtime_dir, ignore_errors=True)
        raise StartupError(f"OPA: {err}") from err
    app[POLICY] = client
    app[PIPELINE].policy = client
    try:
        yield
    finally:
        await client.close()
        if sidecar is not None:
            await sidecar.stop()
        if runtime_dir is not None:
            shutil.rmtree(runtime_dir, ignore_errors=True)


async def _limits_ctx(app: web.Application) -> AsyncIterator[None]:
    # Redis down at start-up is not fatal: the limiter fails closed (or open) per request.
    limits = app[LIMITS]
    await limits.start()
    try:
        yield
    finally:
        await limits.close()


async def _auth_ctx(app: web.Application) -> AsyncIterator[None]:
    yield
    await app[AUTHENTICATOR].close()
