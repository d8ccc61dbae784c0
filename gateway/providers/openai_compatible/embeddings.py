"""Embeddings on OpenAI-compatible servers: `POST {base}/embeddings`.

OpenAI, vLLM, Hugging Face text-embeddings-inference (its OpenAI-compatible
route) and Azure OpenAI (through :mod:`gateway.providers.azure_openai.embeddings`)
speak the client's own protocol, so the body passes through (the endpoint's
model replacing the client's, extra fields such as vLLM's
`truncate_prompt_tokens` kept) with token arrays as they are. The answer is read
and written again rather than relayed: its vectors (floats or base64, whatever
the server chose) come back in the encoding the client asked for, and a batch
larger than the server takes is split into several requests whose answers are
joined in input order.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from gateway.providers.adapter import Call, UpstreamRequest
from gateway.providers.chat import bad_response, json_answer
from gateway.providers.embeddings import (
    EmbeddingsCodec,
    EmbeddingsRequest,
    batch_usage,
    batches,
    estimate_tokens,
    read_vector,
    render_response,
    reported_count,
)
from gateway.providers.failures import AttemptFailed, AttemptFailure
from gateway.providers.usage import Usage
from gateway.providers.wire import encode_body

if TYPE_CHECKING:
    from gateway.providers.openai_compatible.adapter import OpenAICompatibleAdapter

EMBEDDINGS_PATH = "/embeddings"
OPTIONAL_FIELDS = ("encoding_format", "dimensions", "user")


class OpenAIEmbeddingsCodec(EmbeddingsCodec):
    """The `embeddings` codec of an OpenAI-compatible adapter.

    URL, credential headers (refreshed tokens included) and error
    classification are the adapter's own (`api_url`, `request_headers`,
    `classify_error`); `max_batch` is the most inputs one request carries.
    """

    def __init__(self, adapter: OpenAICompatibleAdapter, *, max_batch: int) -> None:
        self.adapter = adapter
        self.max_batch = max_batch

    def upstream_model(self, call: Call) -> str | None:
        return self.adapter.upstream_model(call.body)

    def plan(self, request: EmbeddingsRequest) -> list[range]:
        return batches(request.count, self.max_batch)

    def upstream_body(self, call: Call, request: EmbeddingsRequest, part: range) -> dict[str, Any]:
        body = dict(call.body)
        body.pop("stream", None)
        # Null means "not given" to the gateway; OpenAI's schema has no nulls there.
        for key in OPTIONAL_FIELDS:
            if key in body and body[key] is None:
                del body[key]
        model = self.upstream_model(call)
        if model:
            body["model"] = model
        if part.start != 0 or len(part) != request.count:
            if request.token_arrays:
                body["input"] = [list(request.token_arrays[i]) for i in part]
            else:
                body["input"] = [request.texts[i] for i in part]
        return body

    async def prepare_all(self, call: Call) -> list[UpstreamRequest]:
        request = self.request(call)
        url = self.adapter.api_url(EMBEDDINGS_PATH)
        headers = await self.adapter.request_headers()
        return [
            UpstreamRequest("POST", url, headers, encode_body(self.upstream_body(call, request, p)))
            for p in self.plan(request)
        ]

    def parse_all(
        self, call: Call, answers: list[tuple[int, Mapping[str, str], bytes]]
    ) -> tuple[dict[str, Any], Usage | None]:
        request = self.request(call)
        plan = self.plan(request)
        self.check_answers(answers, len(plan))
        vectors: list[list[float]] = []
        reported: list[int | None] = []
        estimates: list[int] = []
        model: str | None = None
        for (_, _, raw), part in zip(answers, plan, strict=True):
            answer = json_answer(raw)
            vectors += read_data(answer, len(part))
            usage = answer.get("usage")
            reported.append(
                reported_count(usage.get("prompt_tokens", usage.get("total_tokens")))
                if isinstance(usage, Mapping)
                else None
            )
            estimates.append(
                estimate_tokens(
                    [request.texts[i] for i in part] if request.texts else (),
                    [request.token_arrays[i] for i in part] if request.token_arrays else (),
                )
            )
            if model is None and isinstance(answer.get("model"), str):
                model = answer["model"]
        usage_total = batch_usage(reported, estimates)
        rendered = render_response(
            vectors,
            model=model or self.upstream_model(call) or "",
            usage=usage_total,
            encoding_format=request.encoding_format,
        )
        return rendered, usage_total

    def classify_error(self, status: int, headers: Mapping[str, str], raw: bytes) -> AttemptFailure:
        return self.adapter.classify_error(status, headers, raw)


def read_data(answer: Mapping[str, Any], expected: int) -> list[list[float]]:
    """The vectors of one OpenAI `list` answer, in input order (by `index`)."""
    data = answer.get("data")
    if not isinstance(data, list):
        if "error" in answer:
            raise AttemptFailed(bad_response("the upstream answered with an error object"))
        raise AttemptFailed(bad_response("the upstream's answer has no embeddings ('data')"))
    if len(data) != expected:
        raise AttemptFailed(
            bad_response(f"the upstream returned {len(data)} embeddings for {expected} inputs")
        )
    slots: list[list[float] | None] = [None] * expected
    for position, item in enumerate(data):
        if not isinstance(item, Mapping):
            raise AttemptFailed(bad_response(f"embedding {position} is not an object"))
        index = item.get("index", position)
        if (
            isinstance(index, bool)
            or not isinstance(index, int)
            or not 0 <= index < expected
            or slots[index] is not None
        ):
            raise AttemptFailed(bad_response(f"embedding {position} has a wrong 'index'"))
        slots[index] = read_vector(item.get("embedding"), f"embedding {index}")
    return [vector for vector in slots if vector is not None]
