"""The adapter table: which class serves each registry endpoint type.

Entries are import paths, imported on first use, so that a gateway that routes
only to vLLM never loads botocore or google-auth.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from typing import Final

from gateway.errors import ProviderNotImplementedError
from gateway.providers.adapter import ProviderAdapter
from gateway.providers.credentials import CredentialStore
from translator.registry import ENDPOINT_TYPES, Endpoint

AdapterFactory = Callable[[Endpoint, CredentialStore], ProviderAdapter]

ADAPTERS: Final[dict[str, str]] = {
    "openai-compatible": "gateway.providers.openai_compatible.adapter:OpenAICompatibleAdapter",
    "openai": "gateway.providers.openai_compatible.adapter:OpenAIAdapter",
    "azure-openai": "gateway.providers.azure_openai.adapter:AzureOpenAIAdapter",
    "anthropic": "gateway.providers.anthropic.adapter:AnthropicAdapter",
    "bedrock": "gateway.providers.bedrock.adapter:BedrockAdapter",
    "vertex": "gateway.providers.vertex.adapter:vertex_adapter",
}
_loaded: dict[str, AdapterFactory] = {}


def implemented_types() -> tuple[str, ...]:
    return tuple(t for t in ENDPOINT_TYPES if t in ADAPTERS)


def _factory(endpoint_type: str) -> AdapterFactory | None:
    factory = _loaded.get(endpoint_type)
    if factory is None:
        path = ADAPTERS.get(endpoint_type)
        if path is None:
            return None
        module_name, _, attr = path.partition(":")
        factory = _loaded[endpoint_type] = getattr(importlib.import_module(module_name), attr)
    return factory


def adapter_for(endpoint: Endpoint, *, environ: Mapping[str, str] | None = None) -> ProviderAdapter:
    """Build the adapter for `endpoint`, reading its credentials now.

    Raises ProviderNotImplementedError for a type without an adapter and
    ProviderConfigError for a missing credential.
    """
    factory = _factory(endpoint.type)
    if factory is None:
        raise ProviderNotImplementedError(
            f"endpoint '{endpoint.name}': provider type '{endpoint.type}' is not implemented "
            f"(implemented: {', '.join(implemented_types())})"
        )
    return factory(endpoint, CredentialStore(endpoint, environ))


def adapters_for(
    endpoints: Iterable[Endpoint], *, environ: Mapping[str, str] | None = None
) -> dict[str, ProviderAdapter]:
    return {ep.name: adapter_for(ep, environ=environ) for ep in endpoints}
