"""Which headers go upstream: the gateway's own, the codec's, and a short
allow-list of the client's (never a credential, never a hop-by-hop header or
one named in `Connection`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

from multidict import CIMultiDict

from observability.tracing import TRACE_HEADERS, W3C

DEFAULT_USER_AGENT: Final = "kamiwaza-gateway/0.1"

# RFC 9110 §7.6.1 hop-by-hop headers, plus the non-standard ones proxies use.
HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# Never taken from the client, whatever the allow-list says: credentials (the
# client's must never leave), and headers the gateway itself sets.
NEVER_FROM_CLIENT: Final = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "api-key",
        "x-api-key",
        "x-goog-api-key",
        "cookie",
        "host",
        "content-length",
        "content-type",
        "content-encoding",
        "accept-encoding",
        "x-request-id",
        # Trace context: the gateway sends its own attempt span's (tracing on)
        # and continues the client's in its server span, never forwards it.
        *TRACE_HEADERS,
    }
)
DEFAULT_CLIENT_HEADERS: Final = ("user-agent",)


def forwardable_client_headers(
    headers: Mapping[str, str] | None, allowed: frozenset[str]
) -> list[tuple[str, str]]:
    """The client headers that may go upstream: on `allowed`, not hop-by-hop,
    not named in `Connection`, never a credential."""
    if not headers:
        return []
    picked: list[tuple[str, str, str]] = []
    named: set[str] = set()
    for key, value in headers.items():
        low = key.lower()
        if low == "connection":
            named.update(token.strip().lower() for token in value.split(","))
        elif low in allowed and low not in HOP_BY_HOP and low not in NEVER_FROM_CLIENT:
            picked.append((low, key, value))
    return [(key, value) for low, key, value in picked if low not in named]


class HeaderPolicy:
    """Builds every upstream request's headers."""

    def __init__(
        self,
        client_headers: Iterable[str] = DEFAULT_CLIENT_HEADERS,
        *,
        user_agent: str = DEFAULT_USER_AGENT,
        inject_trace: bool = False,
    ) -> None:
        allowed = frozenset(h.lower() for h in client_headers)
        if bad := sorted(allowed & (NEVER_FROM_CLIENT | HOP_BY_HOP)):
            raise ValueError(f"these headers are never forwarded from clients: {', '.join(bad)}")
        self.allowed = allowed
        self.user_agent = user_agent
        self.inject_trace = inject_trace

    def build(
        self,
        codec_headers: Mapping[str, str],
        client_headers: Mapping[str, str] | None,
        request_id: str,
        *,
        stream: bool,
    ) -> CIMultiDict[str]:
        headers: CIMultiDict[str] = CIMultiDict()
        for key, value in forwardable_client_headers(client_headers, self.allowed):
            if key not in headers:
                headers[key] = value
        headers.setdefault("User-Agent", self.user_agent)
        if stream:
            headers["Accept"] = "text/event-stream"
            # Compressed SSE would be buffered by the compressor, not streamed.
            headers["Accept-Encoding"] = "identity"
        else:
            headers["Accept"] = "application/json"
        headers["X-Request-Id"] = request_id
        if self.inject_trace:
            W3C.inject(headers)  # the current attempt span's traceparent/tracestate
        # The codec's own headers (credential, content type) win over all else.
        headers.update(codec_headers)
        return headers
