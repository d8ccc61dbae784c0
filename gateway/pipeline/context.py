"""The state of one model request as it moves through the pipeline's stages."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from aiohttp import web

from gateway.auth import Identity
from gateway.forwarding import ForwardTrace
from gateway.fronts.base import Front, ModelRequest
from gateway.metadata import RequestMetadata
from gateway.policy import Decision
from observability.audit import AuditRecord
from observability.tracing import RequestSpan

REQUEST_ID = web.RequestKey("kamiwaza_request_id", str)


@dataclass(slots=True)
class RequestContext:
    """Filled stage by stage; the audit record is written from it exactly once."""

    request: web.Request
    front: Front
    request_id: str
    record: AuditRecord
    started: float = field(default_factory=time.perf_counter)
    span: RequestSpan | None = None
    identity: Identity | None = None
    model_request: ModelRequest | None = None
    meta: RequestMetadata | None = None
    decision: Decision | None = None
    trace: ForwardTrace | None = None
    recorded: bool = False  # the record reached the observers (audit spool first)


CONTEXT: web.RequestKey[RequestContext] = web.RequestKey("kamiwaza_context")
