"""The fake Bedrock runtime's `InvokeModel` for embedding models (tests/fake_bedrock.py).

`POST /model/{modelId}/invoke` is checked like Converse: the SigV4 signature is
recomputed with botocore, the call is validated against botocore's InvokeModel
input shape. Its body is the model's own JSON, so it is validated against the
documented request shapes:

- Titan Text Embeddings v2 (`amazon.titan-embed-text-v2:0`): `inputText`
  (required, at most 50,000 characters), `dimensions` 256/512/1024,
  `normalize`, `embeddingTypes` (`float`, `binary`); v1 takes `inputText` only.
  The answer is `{"embedding", "inputTextTokenCount"}` (and `embeddingsByType`
  when `embeddingTypes` is given).
- Cohere Embed v3 (`cohere.embed-english-v3`, `cohere.embed-multilingual-v3`):
  `texts` (1 to 96, each at most 2048 characters), `input_type` (required:
  `search_document`, `search_query`, `classification`, `clustering`),
  `truncate` (`NONE`, `START`, `END`), `embedding_types` (`float`, `int8`,
  `uint8`, `binary`, `ubinary`). The answer is `{"id", "texts", "embeddings",
  "response_type"}`, the embeddings a list (`embeddings_floats`) or, with
  `embedding_types`, by type (`embeddings_by_type`).

Vectors come from tests/fake_embeddings.py, token counts are words; every answer
carries `X-Amzn-Bedrock-Input-Token-Count` unless `FakeBedrock.report_input_tokens`
is false. Errors are the fake's usual `Reply(error=...)`, in AWS's shape.
"""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import unquote

from aiohttp import web
from botocore.validate import ParamValidator

from tests.fake_embeddings import fake_vector, word_tokens

if TYPE_CHECKING:
    from tests.fake_bedrock import FakeBedrock

TITAN_V2: Final = "titan-v2"
TITAN_V1: Final = "titan-v1"
COHERE: Final = "cohere"
MODELS: Final = {
    "amazon.titan-embed-text-v2:0": TITAN_V2,
    "amazon.titan-embed-text-v1": TITAN_V1,
    "cohere.embed-english-v3": COHERE,
    "cohere.embed-multilingual-v3": COHERE,
}
TITAN_V2_DIMENSIONS: Final = (256, 512, 1024)
TITAN_V1_DIMENSIONS: Final = 1536
COHERE_DIMENSIONS: Final = 1024
COHERE_INPUT_TYPES: Final = ("search_document", "search_query", "classification", "clustering")
COHERE_TYPES: Final = ("float", "int8", "uint8", "binary", "ubinary")
# Words the models take before an input is too long (8192 Titan, 512 Cohere tokens).
TITAN_MAX_TOKENS: Final = 8192
COHERE_MAX_TOKENS: Final = 512


def _malformed(problem: str) -> str:
    return f"Malformed input request: {problem}, please reformat your input and try again."


def _extraneous(body: dict[str, Any], allowed: set[str]) -> str | None:
    extra = sorted(set(body) - allowed)
    return _malformed(f"#: extraneous key [{extra[0]}] is not permitted") if extra else None


def validate_titan(body: Any, family: str) -> str | None:
    """Why Bedrock refuses a Titan Text Embeddings body (None when it does not)."""
    if not isinstance(body, dict):
        return _malformed("#: expected type: JSONObject")
    allowed = {"inputText"} | (
        {"dimensions", "normalize", "embeddingTypes"} if family == TITAN_V2 else set()
    )
    if (problem := _extraneous(body, allowed)) is not None:
        return problem
    text = body.get("inputText")
    if not isinstance(text, str) or not text:
        return _malformed("#/inputText: expected a non-empty string")
    if len(text) > 50_000:
        return _malformed("#/inputText: expected maxLength: 50000")
    if "dimensions" in body and body["dimensions"] not in TITAN_V2_DIMENSIONS:
        return _malformed(f"#/dimensions: {body['dimensions']} is not a valid enum value")
    if "normalize" in body and not isinstance(body["normalize"], bool):
        return _malformed("#/normalize: expected type: Boolean")
    types = body.get("embeddingTypes", ["float"])
    if not isinstance(types, list) or not types or not set(types) <= {"float", "binary"}:
        return _malformed("#/embeddingTypes: expected a non-empty subset of [float, binary]")
    return None


def validate_cohere(body: Any) -> str | None:
    """Why Bedrock refuses a Cohere Embed v3 body (None when it does not)."""
    if not isinstance(body, dict):
        return _malformed("#: expected type: JSONObject")
    allowed = {"texts", "input_type", "truncate", "embedding_types"}
    if (problem := _extraneous(body, allowed)) is not None:
        return problem
    texts = body.get("texts")
    if not isinstance(texts, list) or not texts:
        return _malformed("#: required key [texts] not found")
    if len(texts) > 96:
        return _malformed(f"#/texts: expected maximum item count: 96, found: {len(texts)}")
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text or len(text) > 2048:
            return _malformed(f"#/texts/{i}: expected a string of 1 to 2048 characters")
    if body.get("input_type") not in COHERE_INPUT_TYPES:
        return _malformed("#/input_type: required, one of " + ", ".join(COHERE_INPUT_TYPES))
    if body.get("truncate", "NONE") not in ("NONE", "START", "END"):
        return _malformed("#/truncate: is not a valid enum value")
    types = body.get("embedding_types", ["float"])
    if not isinstance(types, list) or not types or not set(types) <= set(COHERE_TYPES):
        return _malformed("#/embedding_types: expected a non-empty subset of " + str(COHERE_TYPES))
    return None


def _titan_answer(body: dict[str, Any], family: str) -> dict[str, Any] | str:
    text = body["inputText"]
    tokens = word_tokens(text)
    if tokens > TITAN_MAX_TOKENS:
        return "Input is too long for requested model."
    size = body.get("dimensions", 1024) if family == TITAN_V2 else TITAN_V1_DIMENSIONS
    vector = fake_vector(text, size)
    answer: dict[str, Any] = {"embedding": vector, "inputTextTokenCount": tokens}
    if "embeddingTypes" in body and "float" in body["embeddingTypes"]:
        answer["embeddingsByType"] = {"float": vector}
    return answer


def _cohere_answer(body: dict[str, Any]) -> dict[str, Any] | str:
    texts = body["texts"]
    if body.get("truncate", "NONE") == "NONE" and any(
        word_tokens(t) > COHERE_MAX_TOKENS for t in texts
    ):
        return "Input is too long for requested model."
    vectors = [fake_vector(t, COHERE_DIMENSIONS) for t in texts]
    answer: dict[str, Any] = {"id": str(uuid.uuid4()), "texts": texts}
    if "embedding_types" in body:
        answer["embeddings"] = {"float": vectors} if "float" in body["embedding_types"] else {}
        answer["response_type"] = "embeddings_by_type"
    else:
        answer["embeddings"] = vectors
        answer["response_type"] = "embeddings_floats"
    return answer


async def invoke(fake: FakeBedrock, request: web.Request) -> web.Response:
    """`InvokeModel` for the embedding models in MODELS."""
    from tests.fake_bedrock import INVOKE_MODEL_INPUT, Received, Reply, verify_sigv4

    raw = await request.read()
    model_id = unquote(request.raw_path.split("/")[2])
    problem = verify_sigv4(
        request, raw, service="bedrock", region=fake.region, secrets=fake.secrets
    )
    if problem is not None:
        fake.rejected.append(problem[0])
        return fake._error(problem[0], 403, problem[1])
    params: dict[str, Any] = {"modelId": model_id, "body": raw}
    for name, key in (("Content-Type", "contentType"), ("Accept", "accept")):
        if name in request.headers:
            params[key] = request.headers[name]
    report = ParamValidator().validate(params, INVOKE_MODEL_INPUT)
    if report.has_errors():
        fake.rejected.append("ValidationException")
        return fake._error("ValidationException", 400, report.generate_report())
    try:
        payload = json.loads(raw)
    except ValueError:
        payload = None
    fake.requests.append(Received(request.path, model_id, dict(request.headers), payload))
    family = MODELS.get(model_id)
    if family is None:
        return fake._error("ValidationException", 400, "The provided model identifier is invalid.")
    problem_text = validate_cohere(payload) if family == COHERE else validate_titan(payload, family)
    if problem_text is not None:
        fake.rejected.append("ValidationException")
        return fake._error("ValidationException", 400, problem_text)
    reply = fake.queue.popleft() if fake.queue else Reply()
    if reply.hang:
        await fake._hang.wait()
    if reply.error is not None:
        kind, status, message = reply.error
        return fake._error(kind, status, message)
    answer = _cohere_answer(payload) if family == COHERE else _titan_answer(payload, family)
    if isinstance(answer, str):
        return fake._error("ValidationException", 400, answer)
    texts = payload["texts"] if family == COHERE else [payload["inputText"]]
    headers = {
        "x-amzn-RequestId": str(uuid.uuid4()),
        "X-Amzn-Bedrock-Invocation-Latency": "12",
    }
    if fake.report_input_tokens:
        headers["X-Amzn-Bedrock-Input-Token-Count"] = str(sum(word_tokens(t) for t in texts))
    return web.json_response(answer, headers=headers)
