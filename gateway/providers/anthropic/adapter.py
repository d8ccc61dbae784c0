"""The HTTP-facing adapter for Anthropic's Messages API.

`POST {base_url}/v1/messages` with the endpoint's key in `x-api-key` and the
API version in `anthropic-version`. The pure translation lives in
:mod:`.translate`. Claude on Vertex AI (:mod:`gateway.providers.vertex.adapter`)
subclasses :class:`AnthropicAdapter` and overrides `url()`, `auth_headers()`
and `upstream_body()`: same translation, Vertex's URL, token and body fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.providers.adapter import (
    MESSAGES,
    Codec,
    ProviderAdapter,
    StreamTranslator,
    UpstreamRequest,
)
from gateway.providers.anthropic import messages, translate
from gateway.providers.chat import check_model_name
from gateway.providers.credentials import CredentialStore, Secret
from gateway.providers.failures import AttemptFailure
from gateway.providers.usage import Usage
from gateway.providers.wire import encode_body
from translator.registry import Endpoint

ANTHROPIC_BASE_URL = "https://api.anthropic.com"


class AnthropicAdapter(ProviderAdapter):
    """Endpoint type `anthropic`.

    Registry fields: `anthropic_version` (default: the current API version,
    2026-10-21), `max_tokens_default` (Anthropic requires `max_tokens`; used when
    the client gives none), `base_url` (default https://api.anthropic.com; a URL
    ending in `/v1` is accepted too), and the key in `auth.api_key_env` /
    `auth.api_key_file`.
    """

    def __init__(self, endpoint: Endpoint, credentials: CredentialStore) -> None:
        super().__init__(endpoint, credentials)
        self.version = str(endpoint.options.get("anthropic_version", self.default_version()))
        self.max_tokens_default = int(
            endpoint.options.get("max_tokens_default", translate.DEFAULT_MAX_TOKENS)
        )
        self._load_credentials()

    # -- hooks for variants -------------------------------------------------

    def default_version(self) -> str:
        return translate.DEFAULT_VERSION

    def _load_credentials(self) -> None:
        self._api_key: Secret = self.credentials.require("api_key")[1]

    def url(self, model: str, *, stream: bool) -> str:
        base = (self.endpoint.base_url or ANTHROPIC_BASE_URL).rstrip("/")
        if not base.endswith("/v1"):
            base += "/v1"
        return base + "/messages"

    async def auth_headers(self) -> dict[str, str]:
        return {"x-api-key": self._api_key.reveal(), "anthropic-version": self.version}

    def upstream_body(self, body: Mapping[str, Any], model: str, *, stream: bool) -> dict[str, Any]:
        return translate.build_request(
            body,
            model=model,
            max_tokens_default=self.max_tokens_default,
            stream=stream,
            sampling=translate.accepts_sampling(self.version),
        )

    # -- the adapter seam ---------------------------------------------------

    def build_codec(self, operation: str) -> Codec | None:
        # Messages (and count_tokens) pass through natively; see .messages.
        if operation == MESSAGES:
            return messages.AnthropicMessagesCodec(self)
        if operation == messages.COUNT_TOKENS:
            return messages.AnthropicCountTokensCodec(self)
        return super().build_codec(operation)

    async def prepare(self, body: Mapping[str, Any], *, stream: bool) -> UpstreamRequest:
        model = check_model_name(self.upstream_model(body))
        payload = self.upstream_body(body, model, stream=stream)
        headers = {"Content-Type": "application/json", **(await self.auth_headers())}
        return UpstreamRequest(
            "POST", self.url(model, stream=stream), headers, encode_body(payload)
        )

    def parse_response(
        self, status: int, headers: Mapping[str, str], body: bytes
    ) -> tuple[dict[str, Any], Usage | None]:
        return translate.parse_message(body, redact=self.redact)

    def classify_error(
        self, status: int, headers: Mapping[str, str], body: bytes
    ) -> AttemptFailure:
        return translate.classify_error(status, headers, body, redact=self.redact)

    def stream_translator(self, body: Mapping[str, Any]) -> StreamTranslator:
        return translate.AnthropicStreamTranslator(
            body, model=self.upstream_model(body) or "", redact=self.redact
        )
