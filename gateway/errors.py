"""The gateway's two exception trees.

**What clients see.** Every error a client can see is a :class:`GatewayError`
carrying its HTTP status, a type, a code, a message and optional details and
headers. The request middleware (:mod:`gateway.pipeline.middleware`) renders it
in the shape of the front the client speaks: OpenAI's
`{"error": {"message", "type", "code"}}` (so OpenAI SDKs raise their usual
classes) or Anthropic's `{"type": "error", "error": {"type", "message"}}`.
Third-party errors are mapped to these at the edge (`raise ... from err`);
anything else is a 500 whose body names only the request id. Messages never
contain secrets.

    GatewayError (500)
    ├── BadRequestError (400) ── PayloadTooLargeError (413), RequestTimeoutError (408)
    ├── AuthenticationError (401)
    ├── PermissionDeniedError (403)
    ├── NotFoundError (404)
    ├── PolicyUnavailableError (503)
    ├── AuditUnavailableError (503)
    └── UpstreamError (502; 504 on timeouts; the upstream's 4xx or 429)

(`gateway.auth` adds `AuthUnavailableError`, a 503 under GatewayError.)

**What operators see at start-up.** A configuration that cannot work raises a
:class:`ConfigError` before the gateway serves anything; `kamiwaza serve` prints
its message (never a traceback) and exits 2. Components keep their own
subclasses (settings, keys, providers, audit, metrics) so that the message names
the key or variable at fault; :class:`StartupError` wraps them in the
composition root.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.providers.failures import AttemptFailure
    from observability.audit import Attempt


class ConfigError(Exception):
    """Root of start-up failures: a configuration value that cannot work."""


class StartupError(ConfigError):
    """The gateway cannot start: bad policy, registry, keys, credentials or sidecar."""


class ProviderConfigError(ConfigError):
    """An endpoint cannot be used as configured (missing credential, unknown type).

    The message names the endpoint and the variable or file, never a secret value.
    """


class ProviderNotImplementedError(ProviderConfigError):
    """The registry names an endpoint type that has no adapter."""


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


class RequestTimeoutError(BadRequestError):
    """The client did not send its body within `body_timeout_s` (408)."""

    status = 408
    code = "request_timeout"


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
    """No endpoint of the route answered, or one refused the request itself.

    `status` is 504 when the last failure was a timeout, 429 (with Retry-After)
    when rate limited, the upstream's status for a client error (4xx, no
    failover), 503 when every endpoint was skipped, else 502. `attempts` are
    every endpoint tried or skipped, with why; `failure` the last one.
    """

    status = 502
    type = "upstream_error"
    code = "upstream_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        attempts: Sequence[Attempt] = (),
        failure: AttemptFailure | None = None,
        headers: dict[str, str] | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message, code=code, status=status, headers=headers, details=details)
        if 400 <= self.status < 500 and self.status != 429:
            self.type = "invalid_request_error"
        self.attempts: tuple[Attempt, ...] = tuple(attempts)
        self.failure = failure


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
