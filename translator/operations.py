"""The operations a model request can be (`chat`, `embeddings`, `messages`,
`responses`) and which ones an endpoint serves when its registry entry does not
say.

An embedding model serves `embeddings` only; any other model serves `chat` and,
through the gateway's translation where the provider has no native API for them,
`messages` (Anthropic) and `responses` (OpenAI). Anthropic has no embeddings API.
"""

from __future__ import annotations

import re
from typing import Final

CHAT: Final = "chat"
EMBEDDINGS: Final = "embeddings"
MESSAGES: Final = "messages"
RESPONSES: Final = "responses"
OPERATIONS: Final = (CHAT, EMBEDDINGS, MESSAGES, RESPONSES)
GENERATION: Final = frozenset({CHAT, MESSAGES, RESPONSES})

# Names of embedding models as providers and Hugging Face spell them.
_EMBEDDING_MODEL = re.compile(
    r"embed|(^|[/._-])(bge|e5|gte|minilm|mxbai|nomic)([._-]|$)", re.IGNORECASE
)


def is_embedding_model(model: str | None) -> bool:
    return bool(model) and _EMBEDDING_MODEL.search(model or "") is not None


def default_operations(endpoint_type: str, model: str | None) -> frozenset[str]:
    """What an endpoint of `endpoint_type` serving `model` serves by default."""
    if endpoint_type != "anthropic" and is_embedding_model(model):
        return frozenset({EMBEDDINGS})
    return GENERATION
