"""The HTTP-facing adapters for GCP Vertex AI.

Endpoint type `vertex` serves two publishers' models:

- `google` (Gemini): `POST .../publishers/google/models/{model}:generateContent`,
  streams from `:streamGenerateContent?alt=sse`; translation in :mod:`.gemini`.
- `anthropic` (Claude): `POST .../publishers/anthropic/models/{model}:rawPredict`,
  streams from `:streamRawPredict`; the Anthropic adapter reused, with the model
  in the URL instead of the body and `anthropic_version` in the body instead of
  a header.

Both authenticate with an OAuth access token of a service account
(:mod:`.auth`), sent as `Authorization: Bearer`. The URL is
`{base}/v1/projects/{project}/locations/{location}/...`, where `base` is the
regional endpoint for `location` (`https://{location}-aiplatform.googleapis.com`,
`https://aiplatform.googleapis.com` for `global`) or the registry's `base_url`,
e.g. a Private Service Connect endpoint.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import quote

from gateway.errors import ProviderConfigError
from gateway.providers.adapter import (
    EMBEDDINGS,
    MESSAGES,
    Codec,
    ProviderAdapter,
    StreamTranslator,
    UpstreamRequest,
)
from gateway.providers.anthropic import translate as anthropic_translate
from gateway.providers.anthropic.adapter import AnthropicAdapter
from gateway.providers.anthropic.messages import COUNT_TOKENS
from gateway.providers.chat import check_model_name
from gateway.providers.credentials import CredentialStore
from gateway.providers.failures import AttemptFailure
from gateway.providers.usage import Usage
from gateway.providers.vertex import gemini
from gateway.providers.vertex import messages as vertex_messages
from gateway.providers.vertex.auth import AccessTokens, load_service_account
from gateway.providers.vertex.embeddings import VertexEmbeddingsCodec
from gateway.providers.wire import encode_body
from translator.registry import Endpoint

# Project ids (and domain-scoped ones, `example.com:project`) or numbers; regions.
_PROJECT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.:-]*$")
_LOCATION_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_VERSIONED = re.compile(r"/v1(?:beta1)?$")
# The multi-region endpoints the official SDKs know besides `global`.
_MULTI_REGIONS: Final = frozenset({"us", "eu"})


def default_base_url(location: str) -> str:
    if location == "global":
        return "https://aiplatform.googleapis.com"
    if location in _MULTI_REGIONS:
        return f"https://aiplatform.{location}.rep.googleapis.com"
    return f"https://{location}-aiplatform.googleapis.com"


class VertexSite:
    """Where one Vertex AI endpoint lives and how to authenticate to it."""

    def __init__(self, endpoint: Endpoint, credentials: CredentialStore) -> None:
        where = f"endpoint '{endpoint.name}'"
        self.project = str(endpoint.options.get("project", ""))
        self.location = str(endpoint.options.get("location", ""))
        if not _PROJECT_RE.match(self.project):
            raise ProviderConfigError(f"{where}: 'project' is not a GCP project id")
        if not _LOCATION_RE.match(self.location):
            raise ProviderConfigError(f"{where}: 'location' is not a GCP location")
        base = (endpoint.base_url or default_base_url(self.location)).rstrip("/")
        self.base_url = base if _VERSIONED.search(base) else base + "/v1"
        key = credentials.require("service_account")[1]
        self.tokens = AccessTokens(load_service_account(key.reveal(), where))

    def model_url(self, publisher: str, model: str, method: str) -> str:
        return (
            f"{self.base_url}/projects/{quote(self.project, safe=':')}"
            f"/locations/{self.location}/publishers/{publisher}"
            f"/models/{quote(model, safe='@:')}:{method}"
        )

    async def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {await self.tokens.token()}"}

    def redact(self, text: str) -> str:
        return self.tokens.redact(text)

    def close(self) -> None:
        self.tokens.close()


class VertexGeminiAdapter(ProviderAdapter):
    """Gemini models on Vertex AI (publisher `google`)."""

    def __init__(self, endpoint: Endpoint, credentials: CredentialStore) -> None:
        super().__init__(endpoint, credentials)
        self.site = VertexSite(endpoint, credentials)
        default = endpoint.options.get("max_tokens_default")
        self.max_tokens_default = int(default) if default is not None else None

    def build_codec(self, operation: str) -> Codec | None:
        if operation == EMBEDDINGS:
            return self.embeddings_codec()
        return super().build_codec(operation)

    def embeddings_codec(self) -> Codec:
        """`:predict` for text-embedding-005, gemini-embedding-001 and their kin."""
        return VertexEmbeddingsCodec(self)

    async def prepare(self, body: Mapping[str, Any], *, stream: bool) -> UpstreamRequest:
        model = check_model_name(self.upstream_model(body))
        payload = gemini.build_request(body, max_tokens_default=self.max_tokens_default)
        if stream:
            url = self.site.model_url("google", model, "streamGenerateContent") + "?alt=sse"
        else:
            url = self.site.model_url("google", model, "generateContent")
        headers = {"Content-Type": "application/json", **(await self.site.auth_headers())}
        return UpstreamRequest("POST", url, headers, encode_body(payload))

    def parse_response(
        self, status: int, headers: Mapping[str, str], body: bytes
    ) -> tuple[dict[str, Any], Usage | None]:
        return gemini.parse_response(body, model=self.endpoint.model or "", redact=self.redact)

    def classify_error(
        self, status: int, headers: Mapping[str, str], body: bytes
    ) -> AttemptFailure:
        return gemini.classify_error(status, headers, body, redact=self.redact)

    def stream_translator(self, body: Mapping[str, Any]) -> StreamTranslator:
        return gemini.GeminiStreamTranslator(
            body, model=self.upstream_model(body) or "", redact=self.redact
        )

    def redact(self, text: str) -> str:
        return self.site.redact(super().redact(text))

    async def close(self) -> None:
        self.site.close()


class VertexAnthropicAdapter(AnthropicAdapter):
    """Claude models on Vertex AI (publisher `anthropic`): the Anthropic adapter
    with Vertex's URL, token and body differences."""

    site: VertexSite

    def _load_credentials(self) -> None:
        self.site = VertexSite(self.endpoint, self.credentials)

    def build_codec(self, operation: str) -> Codec | None:
        # Messages pass through natively (Vertex's URL and body fields): .messages.
        if operation == MESSAGES:
            return vertex_messages.VertexMessagesCodec(self)
        if operation == COUNT_TOKENS:
            return vertex_messages.VertexCountTokensCodec(self)
        return super().build_codec(operation)

    def url(self, model: str, *, stream: bool) -> str:
        return self.site.model_url(
            "anthropic", model, "streamRawPredict" if stream else "rawPredict"
        )

    async def auth_headers(self) -> dict[str, str]:
        return await self.site.auth_headers()

    def upstream_body(self, body: Mapping[str, Any], model: str, *, stream: bool) -> dict[str, Any]:
        payload = super().upstream_body(body, model, stream=stream)
        del payload["model"]  # in the URL instead
        return {"anthropic_version": self.version, **payload}

    def classify_error(
        self, status: int, headers: Mapping[str, str], body: bytes
    ) -> AttemptFailure:
        # Claude's own errors are Anthropic-shaped; Vertex's front end (quota,
        # auth, unknown model) answers in Google's shape.
        kind, _ = anthropic_translate.error_details(body)
        if kind is not None:
            return super().classify_error(status, headers, body)
        return gemini.classify_error(status, headers, body, redact=self.redact)

    def redact(self, text: str) -> str:
        return self.site.redact(super().redact(text))

    async def close(self) -> None:
        self.site.close()


def vertex_adapter(endpoint: Endpoint, credentials: CredentialStore) -> ProviderAdapter:
    """The adapter for a `vertex` endpoint, by `publisher`.

    Without `publisher`, a model whose name starts with `claude` is Anthropic's,
    any other Google's.
    """
    publisher = endpoint.options.get("publisher")
    if publisher is None:
        publisher = "anthropic" if (endpoint.model or "").startswith("claude") else "google"
    if publisher == "anthropic":
        return VertexAnthropicAdapter(endpoint, credentials)
    return VertexGeminiAdapter(endpoint, credentials)
