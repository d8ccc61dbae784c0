"""The request pipeline every API front goes through (:mod:`.stages`), the
per-request state (:mod:`.context`), the audit record (:mod:`.record`) and the
middleware that renders errors and writes one record per request
(:mod:`.middleware`)."""

from gateway.pipeline.context import RequestContext
from gateway.pipeline.middleware import request_middleware
from gateway.pipeline.stages import Pipeline

__all__ = ["Pipeline", "RequestContext", "request_middleware"]
