"""Embeddings on AWS Bedrock: `InvokeModel` (`POST /model/{modelId}/invoke`), SigV4-signed.

InvokeModel's body is the model's own JSON, so each family has its shape:

- Titan Text Embeddings v2 (`amazon.titan-embed-text-v2:0`) embeds one
  `inputText` per call, with `dimensions` 256, 512 or 1024 and `normalize`
  (always true here, as OpenAI's vectors are unit length); a batch of N inputs
  is N calls. Titan v1 (`amazon.titan-embed-text-v1`) takes `inputText` only.
  Usage is each answer's `inputTextTokenCount`.
- Cohere Embed v3 (`cohere.embed-english-v3`, `cohere.embed-multilingual-v3`)
  embeds up to 96 `texts` per call, with an `input_type` (`search_document`
  unless the request's `input_type` says otherwise) and `embedding_types`
  `["float"]`. Usage is the `X-Amzn-Bedrock-Input-Token-Count` response
  header where Bedrock sends it, else estimated.

Signing, credentials and error classification are the Bedrock adapter's own
(:meth:`BedrockAdapter.signed_request`, `classify_error`). Neither family
takes token arrays or a `dimensions` it does not offer: a 400 says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from gateway.providers.adapter import Call, UpstreamRequest
from gateway.providers.chat import bad_response, json_answer, unsupported
from gateway.providers.embeddings import (
    CLASSIFICATION,
    CLUSTERING,
    DOCUMENT,
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
from gateway.providers.failures import AttemptFailed, AttemptFailure, header
from gateway.providers.usage import Usage
from gateway.providers.wire import encode_body

if TYPE_CHECKING:
    from gateway.providers.bedrock.adapter import BedrockAdapter

TITAN_V2: Final = "titan-v2"
TITAN_V1: Final = "titan-v1"
COHERE: Final = "cohere"
TITAN_V2_DIMENSIONS: Final = (256, 512, 1024)
COHERE_MAX_TEXTS: Final = 96
COHERE_DEFAULT_INPUT_TYPE: Final = "search_document"
COHERE_INPUT_TYPES: Final[Mapping[str, str]] = {
    QUERY: "search_query",
    DOCUMENT: "search_document",
    CLASSIFICATION: "classification",
    CLUSTERING: "clustering",
}
INPUT_TOKENS_HEADER: Final = "X-Amzn-Bedrock-Input-Token-Count"
PROVIDER: Final = "Bedrock"
# One InvokeModel call: the indices of the inputs it carries, and its body.
InvokeCall = tuple[range, dict[str, Any]]


def embedding_family(model: str) -> str | None:
    """The embeddings family of a Bedrock model id, inference profile or ARN."""
    name = model.lower()
    if "titan-embed-text-v2" in name:
        return TITAN_V2
    if "titan-embed" in name:
        return TITAN_V1
    if "cohere.embed" in name:
        return COHERE
    return None


@dataclass(frozen=True, slots=True)
class Plan:
    """The InvokeModel calls of one request: which inputs each carries, and its body."""

    request: EmbeddingsRequest
    model: str
    family: str
    calls: tuple[InvokeCall, ...]


def _titan_calls(request: EmbeddingsRequest, family: str, model: str) -> list[InvokeCall]:
    texts = request.text_inputs(PROVIDER)
    request.portable_input_type()  # checked; Titan has no input types
    options: dict[str, Any] = {}
    if family == TITAN_V2:
        if request.dimensions is not None:
            if request.dimensions not in TITAN_V2_DIMENSIONS:
                raise unsupported(
                    f"{model} offers 'dimensions' {', '.join(map(str, TITAN_V2_DIMENSIONS))} only"
                )
            options["dimensions"] = request.dimensions
        options["normalize"] = True
    elif request.dimensions is not None:
        raise unsupported(f"{model} has a fixed number of dimensions: leave out 'dimensions'")
    return [(range(i, i + 1), {"inputText": text, **options}) for i, text in enumerate(texts)]


def _cohere_calls(request: EmbeddingsRequest, model: str) -> list[InvokeCall]:
    texts = request.text_inputs(PROVIDER)
    if request.dimensions is not None:
        raise unsupported(f"{model} has a fixed number of dimensions: leave out 'dimensions'")
    portable = request.portable_input_type()
    input_type = COHERE_INPUT_TYPES[portable] if portable else COHERE_DEFAULT_INPUT_TYPE
    return [
        (
            part,
            {
                "texts": [texts[i] for i in part],
                "input_type": input_type,
                "embedding_types": ["float"],
            },
        )
        for part in batches(len(texts), COHERE_MAX_TEXTS)
    ]


def _header_count(headers: Mapping[str, str]) -> int | None:
    value = header(headers, INPUT_TOKENS_HEADER)
    return int(value) if value is not None and value.strip().isdigit() else None


def _titan_vector(answer: Mapping[str, Any], index: int) -> list[float]:
    vector = answer.get("embedding")
    by_type = answer.get("embeddingsByType")
    if vector is None and isinstance(by_type, Mapping):
        vector = by_type.get("float")
    return read_vector(vector, f"embedding {index}")


def _cohere_vectors(answer: Mapping[str, Any], part: range) -> list[list[float]]:
    embeddings = answer.get("embeddings")
    if isinstance(embeddings, Mapping):  # response_type embeddings_by_type
        embeddings = embeddings.get("float")
    if not isinstance(embeddings, list) or len(embeddings) != len(part):
        raise AttemptFailed(
            bad_response(f"Cohere Embed did not return {len(part)} float embeddings")
        )
    return [read_vector(v, f"embedding {i}") for v, i in zip(embeddings, part, strict=True)]


def _cohere_count(answer: Mapping[str, Any], headers: Mapping[str, str]) -> int | None:
    if (counted := _header_count(headers)) is not None:
        return counted
    # Cohere's own API reports billed units in the body; use them when present.
    meta = answer.get("meta")
    units = meta.get("billed_units") if isinstance(meta, Mapping) else None
    return reported_count(units.get("input_tokens")) if isinstance(units, Mapping) else None


class BedrockEmbeddingsCodec(EmbeddingsCodec):
    """The `embeddings` codec of a Bedrock adapter (Titan Text Embeddings, Cohere Embed)."""

    def __init__(self, adapter: BedrockAdapter) -> None:
        self.adapter = adapter

    def upstream_model(self, call: Call) -> str | None:
        return self.adapter.upstream_model(call.body)

    def plan(self, call: Call) -> Plan:
        request = self.request(call)
        model = self.upstream_model(call)
        if not model:
            raise unsupported("no model: the endpoint names none and neither does the request")
        family = embedding_family(model)
        if family is None:
            raise unsupported(
                f"{model} is not a Bedrock embeddings model the gateway speaks "
                "(Titan Text Embeddings, Cohere Embed)"
            )
        if family == COHERE:
            calls = _cohere_calls(request, model)
        else:
            calls = _titan_calls(request, family, model)
        return Plan(request, model, family, tuple(calls))

    async def prepare_all(self, call: Call) -> list[UpstreamRequest]:
        plan = self.plan(call)
        url = self.adapter.model_url(plan.model, "invoke")
        return [
            await self.adapter.signed_request(url, encode_body(body), accept="application/json")
            for _, body in plan.calls
        ]

    def parse_all(
        self, call: Call, answers: list[tuple[int, Mapping[str, str], bytes]]
    ) -> tuple[dict[str, Any], Usage | None]:
        plan = self.plan(call)
        self.check_answers(answers, len(plan.calls))
        texts = plan.request.texts
        vectors: list[list[float]] = []
        reported: list[int | None] = []
        for (_, headers, raw), (part, _) in zip(answers, plan.calls, strict=True):
            answer = json_answer(raw)
            if plan.family == COHERE:
                vectors += _cohere_vectors(answer, part)
                reported.append(_cohere_count(answer, headers))
            else:
                vectors.append(_titan_vector(answer, part.start))
                counted = reported_count(answer.get("inputTextTokenCount"))
                reported.append(counted if counted is not None else _header_count(headers))
        estimates = [estimate_tokens([texts[i] for i in part]) for part, _ in plan.calls]
        usage = batch_usage(reported, estimates)
        rendered = render_response(
            vectors,
            model=plan.model,
            usage=usage,
            encoding_format=plan.request.encoding_format,
        )
        return rendered, usage

    def classify_error(self, status: int, headers: Mapping[str, str], raw: bytes) -> AttemptFailure:
        return self.adapter.classify_error(status, headers, raw)
