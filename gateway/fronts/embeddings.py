"""The OpenAI embeddings front (`POST /v1/embeddings`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from gateway.fronts.base import Front, ModelRequest, invalid
from gateway.providers.adapter import EMBEDDINGS
from gateway.providers.embeddings import parse_request


class EmbeddingsFront(Front):
    operation: ClassVar[str] = EMBEDDINGS
    paths: ClassVar[tuple[str, ...]] = ("/v1/embeddings",)

    def parse(self, body: dict[str, Any], headers: Mapping[str, str]) -> ModelRequest:
        if body.get("stream"):
            raise invalid("embeddings cannot be streamed")
        # The whole body is checked here, so a malformed one is refused before
        # any decision or upstream attempt.
        request = parse_request(body)
        return ModelRequest(
            operation=EMBEDDINGS,
            body=body,
            stream=False,
            model=request.model,
            prompt=body["input"],
        )
