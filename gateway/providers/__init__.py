"""Provider adapters: one package per provider, all behind the seam in `base`.

:func:`adapter_for` builds the adapter for a registry endpoint by its type.
"""

from gateway.providers.base import (
    CredentialStore,
    ProviderAdapter,
    ProviderConfigError,
    ProviderNotImplementedError,
    Secret,
    StreamTranslator,
    UpstreamFailure,
    UpstreamFailureError,
    UpstreamRequest,
    Usage,
    adapter_for,
    adapters_for,
    implemented_types,
    register_adapter,
)

register_adapter("bedrock", "gateway.providers.bedrock.adapter:BedrockAdapter")
register_adapter("azure-openai", "gateway.providers.azure_openai.adapter:AzureOpenAIAdapter")
register_adapter("anthropic", "gateway.providers.anthropic.adapter:AnthropicAdapter")
register_adapter("vertex", "gateway.providers.vertex.adapter:vertex_adapter")

__all__ = [
    "CredentialStore",
    "ProviderAdapter",
    "ProviderConfigError",
    "ProviderNotImplementedError",
    "Secret",
    "StreamTranslator",
    "UpstreamFailure",
    "UpstreamFailureError",
    "UpstreamRequest",
    "Usage",
    "adapter_for",
    "adapters_for",
    "implemented_types",
    "register_adapter",
]
