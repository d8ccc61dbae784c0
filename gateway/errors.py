"""The gateway's exception hierarchy.

Every error a client can see is a :class:`GatewayError` carrying its HTTP status
and the OpenAI error shape (`{"error": {"message", "type", "code"}}`) so that
OpenAI SDKs raise their usual exception classes. One middleware in
:mod:`gateway.app` renders them; third-party errors are mapped to these at the
edge (`raise ... from err`). Messages never contain secrets.
"""

from __future__ import annotations

from typing import Any


class GatewayError(Exception):
    """Root of all gateway errors; renders as an OpenAI-style error body."""

    status = 500
    type = "server_error"
    code = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.headers = headers or {}
        self.details = details or {}

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"message": self.message, "type": self.type, "code": self.code}
        error.update(self.details)
        return {"error": error}


class BadRequestError(GatewayError):
    """Malformed JSON, a body that is not a chat completion, bad metadata (400)."""

    status = 400
    type = "invalid_request_error"
    code = "bad_request"


class PayloadTooLargeError(BadRequestError):
    """The body exceeds the configured limit (413)."""

    status = 413
    code = "payload_too_large"


class AuthenticationError(GatewayError):
    """Missing, unknown, revoked or invalid credential (401)."""

    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDeniedError(GatewayError):
    """Authenticated, but not allowed: a data class the tenant may not use,
    a policy deny, or no route (403)."""

    status = 403
    type = "permission_error"
    code = "forbidden"


class NotFoundError(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class PolicyUnavailableError(GatewayError):
    """OPA unreachable, timing out or answering without a result: fail closed (503)."""

    status = 503
    type = "policy_unavailable"
    code = "policy_unavailable"


class AuditUnavailableError(GatewayError):
    """The audit spool is at its bound (refuse mode): nothing is served unaudited (503)."""

    status = 503
    type = "server_error"
    code = "audit_unavailable"

    def __init__(self, message: str, **kwargs: Any) -> None:
        kwargs.setdefault("headers", {"Retry-After": "5"})
        super().__init__(message, **kwargs)


class UpstreamError(GatewayError):
    """Every endpoint tried failed (502, or 504 on timeouts, or the upstream's 4xx/429)."""

    status = 502
    type = "upstream_error"
    code = "upstream_error"


class RateLimitedError(GatewayError):
    """A tenant's rate limit (`rate_limit_exceeded`) or budget (`budget_exceeded`)
    refused the request before it was forwarded (429). The message names the
    limit; `limit` is its id (e.g. `tenant.usd_per_day`); the headers carry
    `Retry-After` and `x-ratelimit-limit-*` / `-remaining-*` / `-reset-*`."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, limit: str, retry_after_s: int, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.limit = limit
        self.retry_after_s = retry_after_s
        self.headers.setdefault("Retry-After", str(retry_after_s))


class LimitsUnavailableError(GatewayError):
    """The shared limits store (Redis) is unreachable and the limiter fails closed:
    nothing is forwarded (503)."""

    status = 503
    type = "server_error"
    code = "limits_unavailable"

    def __init__(self, message: str, **kwargs: Any) -> None:
        kwargs.setdefault("headers", {"Retry-After": "1"})
        super().__init__(message, **kwargs)
