"""Anthropic's Messages API for Claude on Vertex AI, the body passed through.

`POST .../publishers/anthropic/models/{model}:rawPredict` (`:streamRawPredict`
for streams) with the service account's token. Vertex takes the model in the
URL and the API version in the body, so the client's body goes up with `model`
removed and `anthropic_version: vertex-2023-10-16` put first; everything else
is the client's, in its order. The client's `anthropic-beta` header is
forwarded (Vertex reads it for the betas it offers); `anthropic-version` is not
(the body's version is Vertex's own). Answers and stream events are
Anthropic's, passed through as from Anthropic's own API.

Token counting is `count-tokens:rawPredict` with the model in the body.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from gateway.providers.adapter import Call
from gateway.providers.anthropic.messages import (
    BETA_HEADER,
    AnthropicCountTokensCodec,
    AnthropicMessagesCodec,
)
from gateway.providers.wire import passthrough_body

if TYPE_CHECKING:
    from gateway.providers.vertex.adapter import VertexAnthropicAdapter

VERTEX_ANTHROPIC_VERSION: Final = "vertex-2023-10-16"


def _beta(call: Call) -> dict[str, str]:
    beta = call.headers.get(BETA_HEADER)
    return {BETA_HEADER: beta} if beta else {}


class VertexMessagesCodec(AnthropicMessagesCodec):
    """rawPredict / streamRawPredict with the client's Messages body."""

    adapter: VertexAnthropicAdapter

    def __init__(self, adapter: VertexAnthropicAdapter) -> None:
        super().__init__(adapter)

    @property
    def version(self) -> str:
        # A registry `anthropic_version` of Vertex's own form wins; the Messages
        # API versions Anthropic's endpoint takes (2023-06-01, ...) are not Vertex's.
        configured = self.adapter.version
        return configured if configured.startswith("vertex-") else VERTEX_ANTHROPIC_VERSION

    def body(self, call: Call, model: str) -> dict[str, Any]:
        return passthrough_body(
            call.body, None, drop=("model",), first={"anthropic_version": self.version}
        )

    async def headers(self, call: Call) -> dict[str, str]:
        return {
            "Content-Type": "application/json",
            **(await self.adapter.auth_headers()),
            **_beta(call),
        }


class VertexCountTokensCodec(AnthropicCountTokensCodec):
    """`publishers/anthropic/models/count-tokens:rawPredict`, the model in the body."""

    adapter: VertexAnthropicAdapter

    def __init__(self, adapter: VertexAnthropicAdapter) -> None:
        super().__init__(adapter)

    def url(self, model: str, *, stream: bool) -> str:
        return self.adapter.site.model_url("anthropic", "count-tokens", "rawPredict")

    async def headers(self, call: Call) -> dict[str, str]:
        return {
            "Content-Type": "application/json",
            **(await self.adapter.auth_headers()),
            **_beta(call),
        }
