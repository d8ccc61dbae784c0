"""Azure OpenAI: the OpenAI-compatible adapter with Azure's URL, auth and errors.

Azure serves the Chat Completions protocol itself, so this adapter subclasses
:class:`OpenAICompatibleAdapter` and changes only what differs:

- the URL names a deployment and an API version:
  `{base_url}/openai/deployments/{deployment}/chat/completions?api-version=...`;
- the credential is an `api-key` header (`auth.api_key_env` / `_file`), or a
  Microsoft Entra ID access token obtained with the client-credentials grant
  (`auth.entra_tenant_id`, `entra_client_id`, `entra_client_secret_env` /
  `_file`), cached and refreshed in the background before it expires;
- API versions before 2024-09-01 do not know `stream_options`, so streams to
  them are sent without it (usage is then estimated);
- Azure's error bodies (a numeric string `code`, `DeploymentNotFound`, content
  filter results) are classified for the client and for failover.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Mapping
from typing import Any, Final
from urllib.parse import quote

import aiohttp

from gateway.errors import ProviderConfigError
from gateway.providers.adapter import RESPONSES, Codec, UpstreamRequest
from gateway.providers.azure_openai.embeddings import AzureEmbeddingsCodec
from gateway.providers.azure_openai.responses import AzureResponsesCodec
from gateway.providers.credentials import CredentialStore, Secret, redact_values
from gateway.providers.failures import (
    MAX_ERROR_MESSAGE,
    AttemptFailed,
    AttemptFailure,
    failure_for_status,
)
from gateway.providers.openai_compatible import translate
from gateway.providers.openai_compatible.adapter import OpenAICompatibleAdapter
from gateway.providers.refresh import Refreshing
from translator.registry import Endpoint

ENTRA_AUTHORITY: Final = "https://login.microsoftonline.com"
ENTRA_SCOPE: Final = "https://cognitiveservices.azure.com/.default"
# The first API version that accepts `stream_options` (usage in streams).
STREAM_OPTIONS_SINCE: Final = "2024-09-01"
TOKEN_REQUEST_TIMEOUT_S: Final = 10.0
TOKEN_REFRESH_MARGIN_S: Final = 300.0


class EntraTokenError(Exception):
    """Entra ID issued no token (the message names no secret)."""


class EntraTokenSource:
    """Access tokens for the Azure OpenAI scope, by the OAuth 2.0 client-credentials grant."""

    def __init__(
        self,
        *,
        endpoint: str,
        authority: str,
        tenant_id: str,
        client_id: str,
        client_secret: Secret,
        scope: str = ENTRA_SCOPE,
    ) -> None:
        self.token_url = f"{authority.rstrip('/')}/{quote(tenant_id, safe='')}/oauth2/v2.0/token"
        self._client_id = client_id
        self._client_secret = client_secret
        self._scope = scope
        self._session: aiohttp.ClientSession | None = None
        self._cache: Refreshing[Secret] = Refreshing(
            self._fetch,
            name=f"Entra ID token of endpoint '{endpoint}'",
            margin_s=TOKEN_REFRESH_MARGIN_S,
        )

    async def token(self) -> Secret:
        return await self._cache.get()

    async def close(self) -> None:
        await self._cache.close()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _fetch(self) -> tuple[Secret, float | None]:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=TOKEN_REQUEST_TIMEOUT_S),
                trust_env=False,
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        form = {
            "grant_type": "client_credentials",
            "client_id": self._client_id,
            "client_secret": self._client_secret.reveal(),
            "scope": self._scope,
        }
        started = time.time()
        try:
            async with self._session.post(self.token_url, data=form, allow_redirects=False) as resp:
                raw = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as err:
            raise EntraTokenError(
                f"the Entra ID token endpoint could not be reached ({type(err).__name__})"
            ) from None
        try:
            answer = json.loads(raw)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise EntraTokenError(f"the Entra ID token endpoint answered HTTP {status}")
        if status != 200 or not isinstance(answer.get("access_token"), str):
            # `error` is an OAuth error code (e.g. invalid_client); the
            # description is left out: it may quote request details.
            code = answer.get("error")
            reason = code if isinstance(code, str) and code.isidentifier() else f"HTTP {status}"
            raise EntraTokenError(f"Entra ID refused the gateway's client credentials ({reason})")
        try:
            lifetime = float(answer.get("expires_in", 3600))
        except (TypeError, ValueError):
            lifetime = 3600.0
        return Secret(answer["access_token"]), started + lifetime


class AzureOpenAIAdapter(OpenAICompatibleAdapter):
    """An Azure OpenAI deployment (`deployment`, `api_version`, `base_url` of the resource)."""

    def __init__(self, endpoint: Endpoint, credentials: CredentialStore) -> None:
        self.entra: EntraTokenSource | None = None
        super().__init__(endpoint, credentials)
        self.deployment = str(endpoint.options.get("deployment", ""))
        self.api_version = str(endpoint.options.get("api_version", ""))
        if not self.deployment or not self.api_version:
            raise ProviderConfigError(
                f"endpoint '{endpoint.name}' needs a deployment and an api_version"
            )
        self._entra_token: Secret | None = None

    def _load_token(self) -> Secret | None:
        auth = self.endpoint.auth
        entra = [k for k in ("entra_tenant_id", "entra_client_id") if k in auth]
        if entra or self.credentials.has("entra_client_secret"):
            missing = [f"auth.{k}" for k in ("entra_tenant_id", "entra_client_id") if k not in auth]
            if not self.credentials.has("entra_client_secret"):
                missing.append("auth.entra_client_secret_env or auth.entra_client_secret_file")
            if missing:
                raise ProviderConfigError(
                    f"endpoint '{self.endpoint.name}' (type azure-openai) uses Entra ID but "
                    f"lacks {', '.join(missing)}"
                )
            secret = self.credentials.load("entra_client_secret")
            assert secret is not None
            self.entra = EntraTokenSource(
                endpoint=self.endpoint.name,
                authority=auth.get("entra_authority", ENTRA_AUTHORITY),
                tenant_id=auth["entra_tenant_id"],
                client_id=auth["entra_client_id"],
                client_secret=secret,
            )
            return None
        return self.credentials.require("api_key")[1]

    def url(self, body: Mapping[str, Any], *, stream: bool) -> str:
        return self.api_url(self.chat_path)

    def api_url(self, path: str) -> str:
        return (
            f"{self.base_url}/openai/deployments/{quote(self.deployment, safe='')}"
            f"{path}?api-version={quote(self.api_version, safe='')}"
        )

    def embeddings_codec(self) -> Codec:
        return AzureEmbeddingsCodec(self)

    def auth_headers(self) -> dict[str, str]:
        if self.entra is not None:
            assert self._entra_token is not None, "prepare() fetches the token first"
            return {"Authorization": f"Bearer {self._entra_token.reveal()}"}
        assert self._token is not None
        return {"api-key": self._token.reveal()}

    def upstream_body(self, body: Mapping[str, Any], *, stream: bool) -> dict[str, Any]:
        # The deployment decides the model; `model` is informational for Azure.
        out = translate.build_request_body(
            body, model=self.endpoint.model or self.deployment, stream=stream
        )
        if stream and self.api_version < STREAM_OPTIONS_SINCE:
            out.pop("stream_options", None)
        return out

    def build_codec(self, operation: str) -> Codec | None:
        if operation == RESPONSES:
            return AzureResponsesCodec(self)  # passed through: .responses
        return super().build_codec(operation)

    async def fetch_token(self) -> None:
        """Have the Entra ID token ready for auth_headers() (no-op with an api-key)."""
        if self.entra is not None:
            try:
                self._entra_token = await self.entra.token()
            except EntraTokenError as err:
                raise AttemptFailed(
                    AttemptFailure(502, "upstream_auth_failed", self.redact(str(err)), True)
                ) from None

    async def prepare(self, body: Mapping[str, Any], *, stream: bool) -> UpstreamRequest:
        await self.fetch_token()
        return await super().prepare(body, stream=stream)

    async def request_headers(self) -> dict[str, str]:
        await self.fetch_token()
        return await super().request_headers()

    async def close(self) -> None:
        if self.entra is not None:
            await self.entra.close()

    def classify_error(
        self, status: int, headers: Mapping[str, str], body: bytes
    ) -> AttemptFailure:
        return classify_azure_error(status, headers, body, redact=self.redact)

    def redact(self, text: str) -> str:
        token = self._entra_token
        return redact_values(super().redact(text), [token.reveal()] if token else [])


def _filtered_categories(error: Mapping[str, Any]) -> list[str]:
    inner = error.get("innererror")
    results = inner.get("content_filter_result") if isinstance(inner, Mapping) else None
    if not isinstance(results, Mapping):
        return []
    return sorted(
        name
        for name, result in results.items()
        if isinstance(result, Mapping) and result.get("filtered") is True
    )


def classify_azure_error(
    status: int, headers: Mapping[str, str], body: bytes, *, redact: Callable[[str], str]
) -> AttemptFailure:
    """Azure's errors: the OpenAI shape, with Azure's codes and content filter results."""
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, dict):
        code = error.get("code")
        message = error.get("message")
        text = redact(message)[:MAX_ERROR_MESSAGE] if isinstance(message, str) else None
        if code == "content_filter" or (
            isinstance(error.get("innererror"), Mapping)
            and error["innererror"].get("code") == "ResponsibleAIPolicyViolation"
        ):
            categories = _filtered_categories(error)
            detail = f" (filtered: {', '.join(categories)})" if categories else ""
            return AttemptFailure(
                400,
                "content_filter",
                f"Azure OpenAI's content filter rejected the prompt{detail}",
                False,
                None,
                status,
            )
        if code == "DeploymentNotFound" or (status == 404 and code == "404"):
            # The registry names a deployment the resource does not have.
            return AttemptFailure(
                502,
                "upstream_deployment_not_found",
                text or "the Azure OpenAI deployment does not exist",
                True,
                None,
                status,
            )
    translated = translate.classify_error(status, headers, body, redact=redact)
    if translated.code.isdigit():
        # Azure puts the HTTP status in `code`; that is no code: the status's own instead.
        default = failure_for_status(status, message=None, code=None, retry_after=None).code
        translated = dataclasses.replace(translated, code=default)
    return translated
