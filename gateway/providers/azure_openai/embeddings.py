"""Embeddings on Azure OpenAI: `POST {base}/openai/deployments/{d}/embeddings?api-version=...`.

The OpenAI-compatible embeddings codec with Azure's URL, credential (`api-key`
or an Entra ID token, refreshed by the adapter) and error classification, all
the adapter's own. The deployment decides the model; `model` is sent as the
deployment's name, as the openai SDK's Azure client does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.providers.adapter import Call
from gateway.providers.openai_compatible.embeddings import OpenAIEmbeddingsCodec

if TYPE_CHECKING:
    from gateway.providers.azure_openai.adapter import AzureOpenAIAdapter

# Azure OpenAI takes up to 2048 inputs per embeddings request, as OpenAI does.
AZURE_MAX_BATCH = 2048


class AzureEmbeddingsCodec(OpenAIEmbeddingsCodec):
    """The `embeddings` codec of an Azure OpenAI deployment."""

    def __init__(self, adapter: AzureOpenAIAdapter, *, max_batch: int = AZURE_MAX_BATCH) -> None:
        super().__init__(adapter, max_batch=max_batch)
        self.deployment = adapter.deployment

    def upstream_model(self, call: Call) -> str | None:
        return self.adapter.endpoint.model or self.deployment
