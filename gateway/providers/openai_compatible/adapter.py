"""The HTTP-facing adapter for OpenAI-compatible upstreams.

Serves endpoint types `openai-compatible` (vLLM, TGI, TensorRT-LLM, or any
server with the OpenAI Chat Completions API; `flavor` says which) and `openai`
(api.openai.com). The pure translation lives in :mod:`.translate`; this module
adds the URL, the endpoint's credential and provider headers. Variants (Azure
OpenAI) subclass :class:`OpenAICompatibleAdapter` and override `url()`,
`auth_headers()` and `upstream_body()`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.errors import ProviderConfigError
from gateway.providers.adapter import (
    EMBEDDINGS,
    RESPONSES,
    Codec,
    ProviderAdapter,
    StreamTranslator,
    UpstreamRequest,
)
from gateway.providers.credentials import CredentialStore, Secret
from gateway.providers.failures import AttemptFailure
from gateway.providers.openai_compatible import translate
from gateway.providers.openai_compatible.embeddings import OpenAIEmbeddingsCodec
from gateway.providers.openai_compatible.fields import SELF_HOSTED_FLAVORS, chat_fields
from gateway.providers.openai_compatible.responses import OpenAIResponsesCodec
from gateway.providers.usage import Usage
from gateway.providers.wire import encode_body
from translator.registry import Endpoint

OPENAI_BASE_URL = "https://api.openai.com/v1"


class OpenAICompatibleAdapter(ProviderAdapter):
    """`POST {base_url}/chat/completions` with `Authorization: Bearer <token>`.

    The token comes from `auth.bearer_token_env` / `auth.bearer_token_file`
    (`auth.api_key_*` is accepted as a synonym, as OpenAI calls it an API key).
    A private server started without a key needs no `auth` at all.
    """

    chat_path = "/chat/completions"
    requires_credential = False
    default_base_url: str | None = None
    # Inputs per embeddings request: text-embeddings-inference refuses more than
    # 32 by default (`--max-client-batch-size`); OpenAI takes 2048.
    embeddings_batch = 32

    def __init__(self, endpoint: Endpoint, credentials: CredentialStore) -> None:
        super().__init__(endpoint, credentials)
        base_url = endpoint.base_url or self.default_base_url
        if not base_url:
            raise ProviderConfigError(f"endpoint '{endpoint.name}' needs a base_url")
        self.base_url = base_url.rstrip("/")
        self.flavor = str(endpoint.options.get("flavor", "openai"))
        self._token: Secret | None = self._load_token()

    def _load_token(self) -> Secret | None:
        if self.requires_credential:
            return self.credentials.require("bearer_token", "api_key")[1]
        for name in ("bearer_token", "api_key"):
            if self.credentials.has(name):
                return self.credentials.load(name)
        return None

    def url(self, body: Mapping[str, Any], *, stream: bool) -> str:
        return self.api_url(self.chat_path)

    def api_url(self, path: str) -> str:
        """The URL of the API's `path` (`/chat/completions`, `/embeddings`)."""
        if self.flavor in SELF_HOSTED_FLAVORS and not self.base_url.endswith("/v1"):
            # vLLM, TGI and TensorRT-LLM serve the API under /v1 of the server:
            # a base_url that is the server's root (or a proxy prefix) gets it.
            return self.base_url + "/v1" + path
        return self.base_url + path

    def auth_headers(self) -> dict[str, str]:
        if self._token is None:
            return {}
        return {"Authorization": f"Bearer {self._token.reveal()}"}

    async def request_headers(self) -> dict[str, str]:
        """Headers of a JSON request with the current credential (codecs of other
        operations call this; subclasses refresh tokens here)."""
        return {"Content-Type": "application/json", **self.auth_headers()}

    def build_codec(self, operation: str) -> Codec | None:
        if operation == EMBEDDINGS:
            return self.embeddings_codec()
        return super().build_codec(operation)

    def embeddings_codec(self) -> Codec:
        return OpenAIEmbeddingsCodec(self, max_batch=self.embeddings_batch)

    def upstream_body(self, body: Mapping[str, Any], *, stream: bool) -> dict[str, Any]:
        return translate.build_request_body(
            body, model=self.endpoint.model, stream=stream, fields=chat_fields(self.flavor)
        )

    async def prepare(self, body: Mapping[str, Any], *, stream: bool) -> UpstreamRequest:
        headers = {"Content-Type": "application/json", **self.auth_headers()}
        return UpstreamRequest(
            "POST",
            self.url(body, stream=stream),
            headers,
            encode_body(self.upstream_body(body, stream=stream)),
        )

    def parse_response(
        self, status: int, headers: Mapping[str, str], body: bytes
    ) -> tuple[dict[str, Any], Usage | None]:
        return translate.parse_completion(body, redact=self.redact)

    def classify_error(
        self, status: int, headers: Mapping[str, str], body: bytes
    ) -> AttemptFailure:
        return translate.classify_server_error(
            self.flavor, status, headers, body, redact=self.redact
        )

    def stream_translator(self, body: Mapping[str, Any]) -> StreamTranslator:
        return translate.OpenAIStreamTranslator.for_body(body, self.redact)


class OpenAIAdapter(OpenAICompatibleAdapter):
    """api.openai.com: a key is required; `organization` / `project` become headers."""

    requires_credential = True
    default_base_url = OPENAI_BASE_URL
    embeddings_batch = 2048

    def build_codec(self, operation: str) -> Codec | None:
        if operation == RESPONSES:
            return OpenAIResponsesCodec(self)  # passed through: .responses
        return super().build_codec(operation)

    def auth_headers(self) -> dict[str, str]:
        headers = super().auth_headers()
        if organization := self.endpoint.options.get("organization"):
            headers["OpenAI-Organization"] = str(organization)
        if project := self.endpoint.options.get("project"):
            headers["OpenAI-Project"] = str(project)
        return headers
