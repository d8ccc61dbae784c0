"""The objects the application shares, as `web.AppKey` constants.

`create_app` (:mod:`gateway.app`) sets each one; stages, routes and observers
read them. Keeping the keys apart from the composition root lets any module
reach a shared object without importing the root.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import web

from gateway.auth import Authenticator
from gateway.forwarding import Forwarder
from gateway.limits.stage import LimitsStage
from gateway.policy import PolicyClient
from gateway.settings import Settings
from gateway.worker import WorkerIdentity
from observability.audit import AuditRecord
from observability.metrics import GatewayMetrics
from observability.pipeline import AuditPipeline
from observability.tracing import GatewayTracing
from translator.registry import Registry

if TYPE_CHECKING:
    from gateway.pipeline.stages import Pipeline

SETTINGS = web.AppKey("settings", Settings)
REGISTRY = web.AppKey("registry", Registry)
AUTHENTICATOR = web.AppKey("authenticator", Authenticator)
POLICY = web.AppKey("policy", PolicyClient)
FORWARDER = web.AppKey("forwarder", Forwarder)
AUDIT = web.AppKey("audit", AuditPipeline)
PIPELINE: web.AppKey[Pipeline] = web.AppKey("pipeline")
COMPILED = web.AppKey("compiled", dict)  # path -> text of the compiled policy files
RELOADS = web.AppKey("reloads", set)  # keeps SIGHUP reload tasks referenced
# Per-tenant rate limits and budgets; set only when the `limits` setting names a file.
LIMITS = web.AppKey("limits", LimitsStage)
# Called with every finished model request's audit record (audit spool, metrics,
# access log). Observers run on the request path: they must not block or raise.
RecordObserver = Callable[[AuditRecord], None]
OBSERVERS = web.AppKey("observers", list)
# OpenTelemetry metrics; always present (disabled: observe() does nothing), so
# that e.g. the audit spool can register its gauges (observability/metrics.py).
METRICS = web.AppKey("metrics", GatewayMetrics)
# OpenTelemetry traces; always present (disabled: no tracer, no spans).
TRACING = web.AppKey("tracing", GatewayTracing)
# Set only in a worker process of `kamiwaza serve --workers` (gateway/worker.py).
WORKER = web.AppKey("worker", WorkerIdentity)
