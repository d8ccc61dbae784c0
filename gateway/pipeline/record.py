"""Filling the audit record from what each stage learnt, and writing it once.

The record is handed to the observers (the audit spool first, then metrics and
the access log) exactly once per model request, whatever happens to it: by the
stream stage before the client sees the end of a stream, else by the middleware
as the request leaves (before aiohttp sends a JSON answer).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from gateway.auth import Identity
from gateway.forwarding import ForwardResult
from gateway.metadata import RequestMetadata
from gateway.pipeline.context import RequestContext
from gateway.policy import Decision
from observability.audit import AuditRecord

log = logging.getLogger("gateway.pipeline")


def fill_identity(record: AuditRecord, identity: Identity) -> None:
    record.tenant = identity.tenant
    record.user = identity.user
    record.roles = list(identity.roles)
    record.key_id = identity.key_id
    record.auth_method = str(identity.method)


def fill_metadata(record: AuditRecord, meta: RequestMetadata) -> None:
    record.data_class = meta.data_class
    record.latency_budget_ms = meta.latency_budget_ms
    record.cost_cap_per_1k = meta.cost_cap_per_1k
    record.labels = dict(meta.labels)


def fill_decision(record: AuditRecord, decision: Decision) -> None:
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


def fill_result(record: AuditRecord, result: ForwardResult) -> None:
    record.tokens = {"input": result.usage.input_tokens, "output": result.usage.output_tokens}
    record.cost_usd = result.cost_usd
    record.latency_ms["upstream"] = round(result.upstream_latency_ms, 3)
    record.latency_ms["ttft"] = round(result.ttft_ms, 3) if result.ttft_ms is not None else None
    if result.stream_error is not None:
        failure = result.stream_error
        record.error = {"type": "upstream_error", "code": failure.code, "message": failure.message}


def fail(record: AuditRecord, status: int, code: str, message: str, *, type_: str) -> None:
    record.status = status
    record.error = {"type": type_, "code": code, "message": message}


def write_record(ctx: RequestContext, observers: Sequence[Callable[[AuditRecord], None]]) -> None:
    """Complete the record from the forward trace and hand it to every observer, once."""
    if ctx.recorded:
        return
    ctx.recorded = True
    record = ctx.record
    trace = ctx.trace
    if trace is not None:
        # What was tried, even when the request failed or was cancelled: the
        # endpoint is the one that served, or else the last one tried.
        record.endpoint = trace.last_tried
        record.model = trace.model
        record.attempts = list(trace.attempts)
    record.latency_ms["total"] = round((time.perf_counter() - ctx.started) * 1000, 3)
    for observe in observers:
        try:
            observe(record)
        except Exception:
            log.exception("observer %r failed for request %s", observe, ctx.request_id)
    if ctx.span is not None:
        ctx.span.finish(record)
