"""Provider adapters: one package per provider, all behind the seam in `adapter`.

:func:`adapter_for` builds the adapter for a registry endpoint by its type
(:mod:`.registry`); failures are described in :mod:`.failures`, credentials in
:mod:`.credentials`, token counts in :mod:`.usage`.
"""

from gateway.errors import ProviderConfigError, ProviderNotImplementedError
from gateway.providers.adapter import (
    Call,
    Codec,
    ProviderAdapter,
    StreamTranslator,
    UpstreamRequest,
)
from gateway.providers.credentials import CredentialStore, Secret
from gateway.providers.failures import AttemptFailed, AttemptFailure
from gateway.providers.registry import adapter_for, adapters_for, implemented_types
from gateway.providers.usage import Usage

__all__ = [
    "AttemptFailed",
    "AttemptFailure",
    "Call",
    "Codec",
    "CredentialStore",
    "ProviderAdapter",
    "ProviderConfigError",
    "ProviderNotImplementedError",
    "Secret",
    "StreamTranslator",
    "UpstreamRequest",
    "Usage",
    "adapter_for",
    "adapters_for",
    "implemented_types",
]
