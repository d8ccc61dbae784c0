"""How one attempt at an upstream can fail, and what the gateway does about it.

An adapter or the forwarder describes every failed attempt as an
:class:`AttemptFailure`: the status the client gets if it is the last one,
whether the next endpoint of the route may be tried, and a message that is safe
to show (redacted, bounded). Translators and parsers raise :class:`AttemptFailed`
to hand one up. Neither is what clients see: the forwarder turns the last failure
into a :class:`gateway.errors.UpstreamError`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Final

# Codes of failures the forwarder itself detects (adapters add provider codes).
CONNECT_ERROR: Final = "connect_error"
CONNECT_REFUSED: Final = "connect_refused"
CONNECT_TIMEOUT: Final = "connect_timeout"
FIRST_TOKEN_TIMEOUT: Final = "first_token_timeout"
TOTAL_TIMEOUT: Final = "timeout"
UPSTREAM_DISCONNECTED: Final = "upstream_disconnected"
BAD_UPSTREAM_RESPONSE: Final = "bad_upstream_response"
UPSTREAM_STREAM_ERROR: Final = "upstream_stream_error"
CIRCUIT_OPEN: Final = "circuit_open"
ENDPOINT_UNAVAILABLE: Final = "endpoint_unavailable"
CREDENTIAL_MISSING: Final = "credential_missing"
OPERATION_UNSUPPORTED: Final = "operation_unsupported"
CLIENT_DISCONNECTED: Final = "client_disconnected"

# Upstream error text reaching a client is cut to this length: enough to explain,
# too short to echo a whole prompt back through an error body.
MAX_ERROR_MESSAGE = 500


@dataclass(frozen=True, slots=True)
class AttemptFailure:
    """What went wrong with one attempt, and what to do about it.

    `status_for_client` is the HTTP status the client gets if this is the final
    failure; `retryable` says whether the next endpoint of the route may be
    tried; `retry_after` (seconds) is passed on for 429/503; `timeout` makes the
    final status 504. `message` is safe to show a client (redacted, bounded).
    """

    status_for_client: int
    code: str
    message: str
    retryable: bool
    retry_after: float | None = None
    upstream_status: int | None = None
    timeout: bool = False


class AttemptFailed(Exception):
    """Raised by translators and parsers when the upstream's answer is an error
    or breaks the protocol, or when the client's request cannot be expressed for
    this provider; carries the classified failure.

    A StreamTranslator sets `frames` to the frames the same feed() completed
    before the error, so that none of the answer is lost.
    """

    def __init__(self, failure: AttemptFailure, frames: list[bytes] | None = None) -> None:
        super().__init__(failure.message)
        self.failure = failure
        self.frames: list[bytes] = frames or []


def header(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive header lookup that also works on plain dicts."""
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    for key, candidate in headers.items():
        if key.lower() == lowered:
            return candidate
    return None


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait, from `retry-after-ms` (OpenAI) or `Retry-After`.

    `Retry-After` may be seconds or an HTTP date; anything unparsable is ignored.
    """
    if (ms := header(headers, "retry-after-ms")) is not None:
        try:
            value = float(ms) / 1000.0
        except ValueError:
            value = -1.0
        if math.isfinite(value) and value >= 0:
            return value
    raw = header(headers, "retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = parsedate_to_datetime(raw)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
        return max(seconds, 0.0)
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def failure_for_status(
    status: int,
    *,
    message: str | None,
    code: str | None,
    retry_after: float | None,
) -> AttemptFailure:
    """The gateway's common mapping of an upstream HTTP status.

    - 429: passed through (with Retry-After), retryable on another endpoint.
    - 401/403: the *gateway's* credential was refused; that is our
      misconfiguration, not the client's, so the client gets 502 and the next
      endpoint (with its own credential) is tried.
    - 408, 5xx: 502, retryable.
    - 3xx: redirects are never followed (the URL comes from the registry only):
      502, retryable.
    - other 4xx: the client's request is at fault; passed through, no failover.
    """
    text = (message or "").strip()[:MAX_ERROR_MESSAGE]
    if status == 429:
        return AttemptFailure(
            429,
            code or "rate_limit_exceeded",
            text or "the upstream is rate limiting requests",
            True,
            retry_after,
            status,
        )
    if status in (401, 403):
        return AttemptFailure(
            502,
            "upstream_auth_failed",
            f"the upstream refused the gateway's credential (HTTP {status})",
            True,
            None,
            status,
        )
    if status == 408 or status >= 500:
        return AttemptFailure(
            502,
            code or "upstream_unavailable",
            text or f"the upstream failed (HTTP {status})",
            True,
            retry_after,
            status,
        )
    if 300 <= status < 400:
        return AttemptFailure(
            502,
            "upstream_redirect",
            f"the upstream answered with a redirect (HTTP {status}), which is not followed",
            True,
            None,
            status,
        )
    if 400 <= status < 500:
        return AttemptFailure(
            status,
            code or "upstream_bad_request",
            text or f"the upstream rejected the request (HTTP {status})",
            False,
            None,
            status,
        )
    return AttemptFailure(
        502,
        BAD_UPSTREAM_RESPONSE,
        f"unexpected upstream status {status}",
        True,
        None,
        status,
    )
