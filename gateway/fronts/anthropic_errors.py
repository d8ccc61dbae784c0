"""Gateway errors in Anthropic's shape, for the Messages front.

The gateway keeps its own statuses (they follow the same conventions as
Anthropic's: 400 invalid request, 401, 403, 404, 413, 429, 5xx); this module
names the Anthropic error type of each (503 and 529 are `overloaded_error`) so
that the `anthropic` SDKs raise their own exception classes. The shapes
themselves live with the Anthropic provider (:mod:`gateway.providers.anthropic.wire`),
which writes the same `error` event when a passed-through stream fails.
"""

from __future__ import annotations

from typing import Any

from gateway.errors import GatewayError
from gateway.providers.anthropic.wire import ERROR_TYPES, error_body, error_event, error_type

__all__ = ["ERROR_TYPES", "error_body", "error_event", "error_type", "gateway_error_body"]


def gateway_error_body(err: GatewayError) -> dict[str, Any]:
    """A gateway error (whatever raised it) as an Anthropic error body."""
    return error_body(err.status, err.message)
