"""The bytes codecs write: compact JSON bodies and SSE frames."""

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


def passthrough_body(
    body: Mapping[str, Any],
    model: str | None,
    *,
    drop: tuple[str, ...] = (),
    first: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The client's body with `model` replaced in place (its key order kept).

    `drop` removes keys (a provider that takes the model in its URL); `first`
    puts provider fields before the client's (Vertex and Bedrock's
    `anthropic_version`).
    """
    out: dict[str, Any] = dict(first or {})
    for key, value in body.items():
        if key in drop:
            continue
        out[key] = model if key == "model" and model else value
    if model and "model" not in body and "model" not in drop:
        out["model"] = model
    return out


def sse_frame(payload: Mapping[str, Any]) -> bytes:
    """One SSE `data:` event carrying a JSON object."""
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def event_frame(name: str, payload: Mapping[str, Any]) -> bytes:
    """One SSE event with an `event:` name (Anthropic's and the Responses API's form)."""
    data = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    return b"event: " + name.encode() + b"\ndata: " + data.encode() + b"\n\n"


def raw_event_frame(name: str, data: bytes) -> bytes:
    """An upstream event re-framed with its name and its data bytes untouched."""
    lines = b"".join(b"data: " + line + b"\n" for line in data.split(b"\n"))
    return b"event: " + name.encode() + b"\n" + lines + b"\n"


def error_frame(failure: AttemptFailure) -> bytes:
    """The final SSE event of a stream that failed after its first byte.

    OpenAI SDKs raise an APIError on a `data:` event carrying `error`.
    """
    return sse_frame(
        {"error": {"message": failure.message, "type": "upstream_error", "code": failure.code}}
    )


DONE_FRAME: Final = b"data: [DONE]\n\n"
