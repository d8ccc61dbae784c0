"""The HTTP-facing adapter for AWS Bedrock (Converse / ConverseStream).

Requests go to `POST {endpoint}/model/{modelId}/converse` (or
`/converse-stream`), where the endpoint is the registry's `vpc_endpoint_url`
(a PrivateLink interface endpoint), else `base_url`, else the public
`https://bedrock-runtime.{region}.amazonaws.com`. They are signed with SigV4
(service `bedrock`, the endpoint's `region`) by botocore.

Credentials come from botocore's standard chain (environment, shared config and
credentials files, SSO, container and instance roles), resolved on first use,
never at startup (so that a gateway that never routes to Bedrock never asks the
instance metadata service). With `assume_role_arn`, the chain's credentials
assume that role through STS (`sts_endpoint_url` for an STS VPC endpoint) and
the session credentials are refreshed in the background before they expire.
botocore's resolution and STS calls block, so they run in a worker thread;
signing itself is a few HMACs and runs inline.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import botocore.session
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials, ReadOnlyCredentials, RefreshableCredentials
from yarl import URL

from gateway.errors import ProviderConfigError
from gateway.providers.adapter import (
    EMBEDDINGS,
    MESSAGES,
    Codec,
    ProviderAdapter,
    StreamTranslator,
    UpstreamRequest,
)
from gateway.providers.anthropic.messages import COUNT_TOKENS
from gateway.providers.bedrock import invoke, translate
from gateway.providers.bedrock.embeddings import BedrockEmbeddingsCodec, embedding_family
from gateway.providers.chat import unsupported
from gateway.providers.credentials import CredentialStore, redact_values
from gateway.providers.failures import AttemptFailed, AttemptFailure, header
from gateway.providers.refresh import Refreshing
from gateway.providers.usage import Usage
from gateway.providers.wire import encode_body
from translator.registry import Endpoint

SIGNING_NAME = "bedrock"
STREAM_CONTENT_TYPE = "application/vnd.amazon.eventstream"
# STS role sessions last an hour by default; refreshed in their last 10 minutes.
ROLE_SESSION_SECONDS = 3600
ROLE_REFRESH_MARGIN_S = 600.0


def _session_name(endpoint: str) -> str:
    """An STS RoleSessionName (2-64 of [\\w+=,.@-]) that names the endpoint in CloudTrail."""
    return ("kamiwaza-" + re.sub(r"[^\w+=,.@-]", "-", endpoint))[:64]


class AwsCredentialError(Exception):
    """No usable AWS credentials (the message names no secret)."""


class AwsCredentialSource:
    """The endpoint's AWS credentials: the standard chain, optionally assuming a role."""

    def __init__(
        self,
        *,
        endpoint: str,
        region: str,
        role_arn: str | None,
        sts_endpoint_url: str | None,
    ) -> None:
        self._endpoint = endpoint
        self._region = region
        self._role_arn = role_arn
        self._sts_endpoint_url = sts_endpoint_url
        self._session: botocore.session.Session | None = None
        self._chain: Credentials | None = None
        self._chain_lock = asyncio.Lock()
        self._sts: Any = None
        self._role: Refreshing[ReadOnlyCredentials] | None = None
        if role_arn:
            self._role = Refreshing(
                self._assume_role,
                name=f"assumed role of endpoint '{endpoint}'",
                margin_s=ROLE_REFRESH_MARGIN_S,
            )

    async def get(self) -> ReadOnlyCredentials:
        if self._role is not None:
            return await self._role.get()
        chain = await self._chain_credentials()
        if isinstance(chain, RefreshableCredentials) and chain.refresh_needed():
            # A refresh may call a credential endpoint: not on the event loop.
            return await asyncio.to_thread(chain.get_frozen_credentials)
        return chain.get_frozen_credentials()

    async def close(self) -> None:
        if self._role is not None:
            await self._role.close()

    async def _chain_credentials(self) -> Credentials:
        if self._chain is not None:
            return self._chain
        async with self._chain_lock:
            if self._chain is None:
                self._chain = await asyncio.to_thread(self._resolve_chain)
        return self._chain

    def _resolve_chain(self) -> Credentials:
        if self._session is None:
            self._session = botocore.session.Session()
        credentials = self._session.get_credentials()
        if credentials is None:
            raise AwsCredentialError(
                "no AWS credentials were found by the standard chain (environment, "
                "shared config, SSO, container or instance role)"
            )
        return credentials

    async def _assume_role(self) -> tuple[ReadOnlyCredentials, float | None]:
        # The chain's credentials are resolved first (and their absence reported
        # as such); the STS client then signs with them.
        await self._chain_credentials()
        return await asyncio.to_thread(self._assume_role_blocking)

    def _assume_role_blocking(self) -> tuple[ReadOnlyCredentials, float | None]:
        if self._sts is None:
            assert self._session is not None
            self._sts = self._session.create_client(
                "sts", region_name=self._region, endpoint_url=self._sts_endpoint_url
            )
        try:
            answer = self._sts.assume_role(
                RoleArn=self._role_arn,
                RoleSessionName=_session_name(self._endpoint),
                DurationSeconds=ROLE_SESSION_SECONDS,
            )
        except Exception as err:
            code = getattr(err, "response", {}).get("Error", {}).get("Code")
            raise AwsCredentialError(
                f"assuming role {self._role_arn} failed ({code or type(err).__name__})"
            ) from None
        creds = answer["Credentials"]
        frozen = ReadOnlyCredentials(
            creds["AccessKeyId"], creds["SecretAccessKey"], creds["SessionToken"]
        )
        return frozen, creds["Expiration"].timestamp()


class BedrockAdapter(ProviderAdapter):
    """Bedrock's Converse API for any model it hosts (`model` is the model id,
    an inference profile id or an ARN)."""

    def __init__(self, endpoint: Endpoint, credentials: CredentialStore) -> None:
        super().__init__(endpoint, credentials)
        region = endpoint.options.get("region")
        if not isinstance(region, str) or not region:
            raise ProviderConfigError(f"endpoint '{endpoint.name}' needs a region")
        self.region = region
        base = endpoint.options.get("vpc_endpoint_url") or endpoint.base_url
        self.base_url = str(base or f"https://bedrock-runtime.{region}.amazonaws.com").rstrip("/")
        role = endpoint.options.get("assume_role_arn")
        sts_url = endpoint.options.get("sts_endpoint_url")
        self.aws = AwsCredentialSource(
            endpoint=endpoint.name,
            region=region,
            role_arn=str(role) if role else None,
            sts_endpoint_url=str(sts_url) if sts_url else None,
        )
        # The credentials in use (AWS keys, session token), redacted from upstream text.
        self._current: ReadOnlyCredentials | None = None
        self._secrets: tuple[str, ...] = ()

    async def close(self) -> None:
        await self.aws.close()

    def url(self, model: str, *, stream: bool) -> str:
        return self.model_url(model, "converse-stream" if stream else "converse")

    def build_codec(self, operation: str) -> Codec | None:
        if operation == EMBEDDINGS:
            return self.embeddings_codec()
        # Claude models also take Anthropic's Messages API through InvokeModel.
        if operation in (MESSAGES, COUNT_TOKENS) and invoke.serves_messages(self.endpoint):
            if operation == MESSAGES:
                return invoke.BedrockMessagesCodec(self)
            return invoke.BedrockCountTokensCodec(self)
        return super().build_codec(operation)

    def embeddings_codec(self) -> Codec | None:
        """InvokeModel for Titan Text Embeddings and Cohere Embed; None when the
        endpoint names a model of neither family."""
        model = self.endpoint.model
        if model and embedding_family(model) is None:
            return None
        return BedrockEmbeddingsCodec(self)

    def model_url(self, model: str, action: str) -> str:
        """`{endpoint}/model/{modelId}/{action}` (`converse`, `invoke`, ...)."""
        raw = f"{self.base_url}/model/{quote(model, safe='')}/{action}"
        # Sign exactly the URL aiohttp will send (yarl normalises the quoting).
        return str(URL(raw))

    async def _credentials(self) -> ReadOnlyCredentials:
        try:
            creds = await self.aws.get()
        except AwsCredentialError as err:
            raise AttemptFailed(
                AttemptFailure(502, "upstream_auth_failed", self.redact(str(err)), True)
            ) from None
        if creds is not self._current:
            self._current = creds
            self._secrets = tuple(v for v in (creds.secret_key, creds.token, creds.access_key) if v)
        return creds

    async def prepare(self, body: Mapping[str, Any], *, stream: bool) -> UpstreamRequest:
        model = self.upstream_model(body)
        if not model:
            raise unsupported("no model: the endpoint names none and the request gives none")
        payload = encode_body(translate.build_converse_request(body))
        return await self.signed(self.url(model, stream=stream), payload, stream=stream)

    async def signed(self, url: str, payload: bytes, *, stream: bool) -> UpstreamRequest:
        """A POST of `payload` to `url`, signed with SigV4, for a JSON or event-stream answer."""
        return await self.signed_request(
            url, payload, accept=STREAM_CONTENT_TYPE if stream else "application/json"
        )

    async def signed_request(self, url: str, payload: bytes, *, accept: str) -> UpstreamRequest:
        """A JSON `POST url`, signed with SigV4 by the endpoint's current credentials."""
        creds = await self._credentials()
        request = AWSRequest(
            method="POST",
            url=url,
            data=payload,
            headers={"Content-Type": "application/json", "Accept": accept},
        )
        SigV4Auth(creds, SIGNING_NAME, self.region).add_auth(request)
        return UpstreamRequest("POST", url, dict(request.headers.items()), payload)

    def parse_response(
        self, status: int, headers: Mapping[str, str], body: bytes
    ) -> tuple[dict[str, Any], Usage | None]:
        return translate.parse_converse(
            body,
            model=self.endpoint.model,
            request_id=header(headers, "x-amzn-RequestId"),
        )

    def classify_error(
        self, status: int, headers: Mapping[str, str], body: bytes
    ) -> AttemptFailure:
        return translate.classify_error(status, headers, body, redact=self.redact)

    def stream_translator(self, body: Mapping[str, Any]) -> StreamTranslator:
        return translate.ConverseStreamTranslator(
            body, model=self.upstream_model(body), redact=self.redact
        )

    def redact(self, text: str) -> str:
        return redact_values(super().redact(text), self._secrets)
