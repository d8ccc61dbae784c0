"""The fake Vertex AI's text embeddings (`publishers/google/models/{model}:predict`).

Authentication is the fake's own (tests/fake_vertex.py: only tokens it issued).
The body is validated as Vertex AI documents it: `instances` of `{content,
task_type?, title?}` (at most 250; one for `gemini-embedding-001`), `parameters`
`{autoTruncate?, outputDimensionality?}` within the model's dimensions; an input
over the model's token limit is a 400 unless `autoTruncate` is true (then cut,
with `statistics.truncated`). Each prediction is `{"embeddings": {"values",
"statistics": {"token_count", "truncated"}}}`, with a vector from
tests/fake_embeddings.py and words as tokens. Queued `GoogleFailure`s answer in
Google's error shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

from tests.fake_embeddings import fake_vector, word_tokens

if TYPE_CHECKING:
    from tests.fake_anthropic import Failure
    from tests.fake_vertex import FakeVertex, GoogleFailure


@dataclass(frozen=True)
class EmbeddingModel:
    dimensions: int
    max_instances: int
    max_tokens: int


MODELS: Final = {
    "text-embedding-005": EmbeddingModel(768, 250, 2048),
    "text-multilingual-embedding-002": EmbeddingModel(768, 250, 2048),
    "gemini-embedding-001": EmbeddingModel(3072, 1, 2048),
}
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


def validate_predict(body: Any, model: str, spec: EmbeddingModel) -> str | None:
    """Why Vertex AI refuses an embeddings `:predict` body (None when it does not)."""
    if not isinstance(body, dict):
        return "Invalid JSON payload received: the body must be an object."
    unknown = sorted(set(body) - {"instances", "parameters"})
    if unknown:
        return f"Invalid JSON payload received. Unknown name {unknown[0]!r}: Cannot find field."
    instances = body.get("instances")
    if not isinstance(instances, list) or not instances:
        return "instances must be a non-empty list."
    if len(instances) > spec.max_instances:
        return (
            f"{model} accepts at most {spec.max_instances} instance(s) per request, "
            f"got {len(instances)}."
        )
    for i, instance in enumerate(instances):
        if not isinstance(instance, dict) or set(instance) - {"content", "task_type", "title"}:
            return f"instances[{i}]: only content, task_type and title are allowed."
        if not isinstance(instance.get("content"), str) or not instance["content"]:
            return f"instances[{i}].content must be a non-empty string."
        if "task_type" in instance and instance["task_type"] not in TASK_TYPES:
            return f"instances[{i}].task_type {instance['task_type']!r} is not a task type."
    parameters = body.get("parameters", {})
    if not isinstance(parameters, dict) or set(parameters) - {
        "autoTruncate",
        "outputDimensionality",
    }:
        return "parameters: only autoTruncate and outputDimensionality are allowed."
    if not isinstance(parameters.get("autoTruncate", True), bool):
        return "parameters.autoTruncate must be a boolean."
    size = parameters.get("outputDimensionality", spec.dimensions)
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= spec.dimensions:
        return f"parameters.outputDimensionality must be between 1 and {spec.dimensions}."
    return None


def predict(
    fake: FakeVertex, body: Any, model: str, failure: GoogleFailure | Failure | None
) -> web.Response:
    from tests.fake_vertex import google_error

    spec = MODELS.get(model)
    if spec is None:
        return google_error(
            404,
            "NOT_FOUND",
            f"Publisher Model `projects/{fake.project}/locations/{fake.location}/publishers/"
            f"google/models/{model}` was not found or your project does not have access to it.",
        )
    problem = validate_predict(body, model, spec)
    if problem is not None:
        fake.invalid.append(problem)
        return google_error(400, "INVALID_ARGUMENT", problem)
    if failure is not None:
        return fake._failure_response(failure)
    parameters = body.get("parameters", {})
    truncate = parameters.get("autoTruncate", True)
    size = parameters.get("outputDimensionality", spec.dimensions)
    predictions = []
    for instance in body["instances"]:
        text = instance["content"]
        tokens = word_tokens(text)
        truncated = tokens > spec.max_tokens
        if truncated and not truncate:
            message = (
                f"Unable to submit request because the input token count is {tokens} but the "
                f"model supports up to {spec.max_tokens}. Reduce the input token count and try "
                "again. You can also use the auto truncate option."
            )
            fake.invalid.append(message)
            return google_error(400, "INVALID_ARGUMENT", message)
        if truncated:
            text = " ".join(text.split()[: spec.max_tokens])
            tokens = spec.max_tokens
        predictions.append(
            {
                "embeddings": {
                    "values": fake_vector(text, size),
                    "statistics": {"token_count": tokens, "truncated": truncated},
                }
            }
        )
    billable = sum(len(i["content"]) for i in body["instances"])
    return web.json_response(
        {"predictions": predictions, "metadata": {"billableCharacterCount": billable}}
    )
