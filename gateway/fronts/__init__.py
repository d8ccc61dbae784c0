"""API fronts: one module per model API a client can speak (:mod:`.base`)."""

from gateway.fronts.base import Front, ModelRequest
from gateway.fronts.chat import ChatFront
from gateway.fronts.embeddings import EmbeddingsFront
from gateway.fronts.messages import CountTokensFront, MessagesFront
from gateway.fronts.responses import ResponsesFront

__all__ = [
    "ChatFront",
    "CountTokensFront",
    "EmbeddingsFront",
    "Front",
    "MessagesFront",
    "ModelRequest",
    "ResponsesFront",
    "all_fronts",
]


def all_fronts() -> tuple[Front, ...]:
    """Every front the gateway serves, in route registration order."""
    return (ChatFront(), EmbeddingsFront(), MessagesFront(), CountTokensFront(), ResponsesFront())
