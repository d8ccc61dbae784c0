"""API fronts: one module per model API a client can speak (:mod:`.base`)."""

from gateway.fronts.base import Front, ModelRequest
from gateway.fronts.chat import ChatFront
from gateway.fronts.embeddings import EmbeddingsFront

__all__ = ["ChatFront", "EmbeddingsFront", "Front", "ModelRequest", "all_fronts"]


def all_fronts() -> tuple[Front, ...]:
    """Every front the gateway serves, in route registration order."""
    return (ChatFront(), EmbeddingsFront())
