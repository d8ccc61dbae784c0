"""The OpenAI embeddings front (`POST /v1/embeddings`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from gateway.fronts.base import Front, ModelRequest, invalid, optional_str
from gateway.providers.adapter import EMBEDDINGS


class EmbeddingsFront(Front):
    operation: ClassVar[str] = EMBEDDINGS
    paths: ClassVar[tuple[str, ...]] = ("/v1/embeddings",)

    def parse(self, body: dict[str, Any], headers: Mapping[str, str]) -> ModelRequest:
        if "input" not in body:
            raise invalid("'input' is required: a string, a list of strings or token arrays")
        if body.get("stream"):
            raise invalid("embeddings cannot be streamed")
        return ModelRequest(
            operation=EMBEDDINGS,
            body=body,
            stream=False,
            model=optional_str(body, "model"),
            prompt=body["input"],
        )
