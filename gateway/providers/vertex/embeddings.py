"""Embeddings on Vertex AI: `POST .../publishers/google/models/{model}:predict`.

The body is `{"instances": [{"content", "task_type"?}], "parameters":
{"autoTruncate", "outputDimensionality"?}}`; each prediction carries
`embeddings.values` and `embeddings.statistics.token_count`, the usage.
`text-embedding-005` (and the other text-embedding models) take up to 250
instances per request; `gemini-embedding-001` takes one, so a batch becomes
one request per input. `autoTruncate` is false: an input longer than the model
takes is a 400, as with OpenAI, never silently cut. The request's `input_type`
becomes the instances' `task_type` (portable values, or Vertex's own task
names such as `RETRIEVAL_QUERY`).

The URL, the service account's access token and error classification are the
Vertex adapter's (:class:`~gateway.providers.vertex.adapter.VertexSite`,
`classify_error`). Vertex embeds text only: token arrays are a 400.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from gateway.providers.adapter import Call, UpstreamRequest
from gateway.providers.chat import bad_response, check_model_name, json_answer, unsupported
from gateway.providers.embeddings import (
    CLASSIFICATION,
    CLUSTERING,
    DOCUMENT,
    INPUT_TYPES,
    QUERY,
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
    from gateway.providers.vertex.adapter import VertexGeminiAdapter

MAX_INSTANCES: Final = 250
# Models whose :predict takes a single instance per request.
ONE_INSTANCE_MODELS: Final = ("gemini-embedding",)
TASK_TYPES: Final = frozenset(
    {
        "RETRIEVAL_QUERY",
        "RETRIEVAL_DOCUMENT",
        "SEMANTIC_SIMILARITY",
        "CLASSIFICATION",
        "CLUSTERING",
        "QUESTION_ANSWERING",
        "FACT_VERIFICATION",
        "CODE_RETRIEVAL_QUERY",
    }
)
PORTABLE_TASK_TYPES: Final[Mapping[str, str]] = {
    QUERY: "RETRIEVAL_QUERY",
    DOCUMENT: "RETRIEVAL_DOCUMENT",
    CLASSIFICATION: "CLASSIFICATION",
    CLUSTERING: "CLUSTERING",
}
PROVIDER: Final = "Vertex AI"
CONTEXT_LENGTH_EXCEEDED: Final = "context_length_exceeded"
# The embeddings models' words for an input over their limit (with autoTruncate off).
_INPUT_TOO_LONG = re.compile(
    r"input token count is \d+ but (the )?model (only )?supports up to", re.IGNORECASE
)


def instances_per_request(model: str) -> int:
    return 1 if model.startswith(ONE_INSTANCE_MODELS) else MAX_INSTANCES


def task_type(request: EmbeddingsRequest) -> str | None:
    """The Vertex task type for the request's `input_type`, if any."""
    value = request.input_type
    if value is None:
        return None
    if value.lower() in INPUT_TYPES:
        return PORTABLE_TASK_TYPES[INPUT_TYPES[value.lower()]]
    if value.upper() in TASK_TYPES:
        return value.upper()
    raise unsupported(
        f"'input_type' {value!r} is neither query, document, classification, clustering "
        f"nor a Vertex AI task type ({', '.join(sorted(TASK_TYPES))})"
    )


def read_prediction(prediction: Any, index: int) -> tuple[list[float], int | None]:
    """One prediction's vector and token count (None when it reports none)."""
    embeddings = prediction.get("embeddings") if isinstance(prediction, Mapping) else None
    if not isinstance(embeddings, Mapping):
        raise AttemptFailed(bad_response(f"prediction {index} has no embeddings"))
    vector = read_vector(embeddings.get("values"), f"embedding {index}")
    statistics = embeddings.get("statistics")
    if not isinstance(statistics, Mapping):
        return vector, None
    return vector, reported_count(statistics.get("token_count"))


class VertexEmbeddingsCodec(EmbeddingsCodec):
    """The `embeddings` codec of a Vertex AI (publisher `google`) adapter."""

    def __init__(self, adapter: VertexGeminiAdapter) -> None:
        self.adapter = adapter

    def upstream_model(self, call: Call) -> str | None:
        return self.adapter.upstream_model(call.body)

    def plan(self, call: Call) -> tuple[EmbeddingsRequest, str, list[range]]:
        request = self.request(call)
        request.text_inputs(PROVIDER)
        model = check_model_name(self.upstream_model(call))
        return request, model, batches(request.count, instances_per_request(model))

    @staticmethod
    def upstream_body(request: EmbeddingsRequest, part: range) -> dict[str, Any]:
        task = task_type(request)
        instances: list[dict[str, Any]] = []
        for i in part:
            instance: dict[str, Any] = {"content": request.texts[i]}
            if task is not None:
                instance["task_type"] = task
            instances.append(instance)
        parameters: dict[str, Any] = {"autoTruncate": False}
        if request.dimensions is not None:
            parameters["outputDimensionality"] = request.dimensions
        return {"instances": instances, "parameters": parameters}

    async def prepare_all(self, call: Call) -> list[UpstreamRequest]:
        request, model, plan = self.plan(call)
        url = self.adapter.site.model_url("google", model, "predict")
        headers = {"Content-Type": "application/json", **(await self.adapter.site.auth_headers())}
        return [
            UpstreamRequest("POST", url, headers, encode_body(self.upstream_body(request, part)))
            for part in plan
        ]

    def parse_all(
        self, call: Call, answers: list[tuple[int, Mapping[str, str], bytes]]
    ) -> tuple[dict[str, Any], Usage | None]:
        request, model, plan = self.plan(call)
        self.check_answers(answers, len(plan))
        vectors: list[list[float]] = []
        reported: list[int | None] = []
        for (_, _, raw), part in zip(answers, plan, strict=True):
            predictions = json_answer(raw).get("predictions")
            if not isinstance(predictions, list) or len(predictions) != len(part):
                raise AttemptFailed(
                    bad_response(f"Vertex AI did not return {len(part)} predictions")
                )
            counts: list[int | None] = []
            for prediction, index in zip(predictions, part, strict=True):
                vector, counted = read_prediction(prediction, index)
                vectors.append(vector)
                counts.append(counted)
            reported.append(None if None in counts else sum(c or 0 for c in counts))
        estimates = [estimate_tokens([request.texts[i] for i in part]) for part in plan]
        usage = batch_usage(reported, estimates)
        rendered = render_response(
            vectors, model=model, usage=usage, encoding_format=request.encoding_format
        )
        return rendered, usage

    def classify_error(self, status: int, headers: Mapping[str, str], raw: bytes) -> AttemptFailure:
        failure = self.adapter.classify_error(status, headers, raw)
        if failure.status_for_client == 400 and _INPUT_TOO_LONG.search(failure.message):
            return dataclasses.replace(failure, code=CONTEXT_LENGTH_EXCEEDED)
        return failure
