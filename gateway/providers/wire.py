"""The bytes adapters write: compact JSON bodies and SSE frames."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

from gateway.providers.failures import AttemptFailed, AttemptFailure


def encode_body(body: Mapping[str, Any]) -> bytes:
    """A request body as compact UTF-8 JSON.

    A string that UTF-8 cannot carry (a lone surrogate such as `"\\ud800"`,
    which JSON can spell) is the client's fault: a 400 that never counts
    against the endpoint.
    """
    try:
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise AttemptFailed(
            AttemptFailure(
                400,
                "invalid_body",
                "the request contains text that is not valid Unicode (a lone surrogate)",
                False,
            )
        ) from None


def sse_frame(payload: Mapping[str, Any]) -> bytes:
    """One SSE `data:` event carrying a JSON object."""
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def error_frame(failure: AttemptFailure) -> bytes:
    """The final SSE event of a stream that failed after its first byte.

    OpenAI SDKs raise an APIError on a `data:` event carrying `error`.
    """
    return sse_frame(
        {"error": {"message": failure.message, "type": "upstream_error", "code": failure.code}}
    )


DONE_FRAME: Final = b"data: [DONE]\n\n"
