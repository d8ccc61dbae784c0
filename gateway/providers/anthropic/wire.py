"""Anthropic's wire shapes shared by the native Messages codecs and the Messages
front: SSE events (the SDKs read only events that carry an `event:` name) and
error bodies with Anthropic's error types.

The `anthropic` SDKs pick their exception class by HTTP status (400
`BadRequestError`, 401 `AuthenticationError`, 403 `PermissionDeniedError`, 404
`NotFoundError`, 413 `ContentTooLargeError`, 429 `RateLimitError`, 5xx
`InternalServerError` and its 503/529 subclasses) and read the body
`{"type": "error", "error": {"type", "message"}}`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from gateway.providers.failures import AttemptFailure
from gateway.providers.wire import event_frame, raw_event_frame

__all__ = [
    "ERROR_TYPES",
    "error_body",
    "error_event",
    "error_type",
    "event_frame",
    "raw_event_frame",
]

# Anthropic's error types by HTTP status (https://docs.anthropic.com/en/api/errors).
ERROR_TYPES: Final[Mapping[int, str]] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_type(status: int) -> str:
    """The Anthropic error type for an HTTP status."""
    known = ERROR_TYPES.get(status)
    if known is not None:
        return known
    return "invalid_request_error" if 400 <= status < 500 else "api_error"


def error_body(status: int, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type(status), "message": message}}


def error_event(failure: AttemptFailure) -> bytes:
    """The `error` event that ends a Messages stream failing after its first byte;
    the SDKs raise an APIStatusError on it."""
    return event_frame("error", error_body(failure.status_for_client, failure.message))
