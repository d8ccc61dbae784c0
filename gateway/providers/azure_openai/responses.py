"""Azure OpenAI's Responses API, passed through as OpenAI's is.

Azure serves the Responses API on the resource's v1 surface,
`POST {resource}/openai/v1/responses`, with the deployment name as the body's
`model` (there is no deployment segment in the URL). Resources still on the
preview surface take `POST {resource}/openai/responses?api-version=...`: set
`responses_api_version` in the registry entry for that form. The credential is
the endpoint's `api-key` or Entra ID token, as for Chat Completions; errors are
classified as Azure's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import quote

from gateway.providers.adapter import Call, UpstreamRequest
from gateway.providers.openai_compatible.responses import OpenAIResponsesCodec

if TYPE_CHECKING:
    from gateway.providers.azure_openai.adapter import AzureOpenAIAdapter


class AzureResponsesCodec(OpenAIResponsesCodec):
    adapter: AzureOpenAIAdapter

    def __init__(self, adapter: AzureOpenAIAdapter) -> None:
        super().__init__(adapter)

    def url(self) -> str:
        version = self.adapter.endpoint.options.get("responses_api_version")
        if version:
            return (
                f"{self.adapter.base_url}/openai/responses"
                f"?api-version={quote(str(version), safe='')}"
            )
        return f"{self.adapter.base_url}/openai/v1/responses"

    def model(self, call: Call) -> str | None:
        # The deployment decides what runs; Azure reads it from `model`.
        return self.adapter.endpoint.model or self.adapter.deployment

    async def prepare(self, call: Call) -> UpstreamRequest:
        await self.adapter.fetch_token()
        return await super().prepare(call)
