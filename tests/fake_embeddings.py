"""What the fake providers share for embeddings: deterministic vectors, token
counts, and OpenAI's embeddings wire format (for the OpenAI-compatible and Azure fakes).

Every fake derives a vector from the input text alone (:func:`fake_vector`:
SHA-256 of the text, scaled to unit length, float32 values), so a test computes
the vector it expects for each input and sees which vector answered which input;
float32 values make base64 round trips exact. A token array embeds as the text
:func:`token_text` spells for it. Token counts are words (:func:`word_tokens`),
as in the chat fakes.
"""

from __future__ import annotations

import base64
import hashlib
import math
import struct
from array import array
from collections.abc import Sequence
from typing import Any, get_type_hints

from openai.types.embedding_create_params import EmbeddingCreateParams
from pydantic import TypeAdapter, ValidationError

OPENAI_MAX_INPUTS = 2048
_PARAMS = TypeAdapter(EmbeddingCreateParams)
OPENAI_FIELDS = frozenset(get_type_hints(EmbeddingCreateParams))


def fake_vector(text: str, dimensions: int) -> list[float]:
    """A unit vector of `dimensions` float32 values that only `text` maps to."""
    raw = b""
    block = 0
    while len(raw) < 4 * dimensions:
        raw += hashlib.sha256(f"{block}:{text}".encode()).digest()
        block += 1
    values = [n / 2**31 - 1.0 for n in struct.unpack(f"<{dimensions}I", raw[: 4 * dimensions])]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return array("f", [v / norm for v in values]).tolist()


def token_text(tokens: Sequence[int]) -> str:
    """The text a token array embeds as in the fakes."""
    return "tokens:" + " ".join(map(str, tokens))


def word_tokens(text: str) -> int:
    return len(text.split())


def b64_floats(vector: Sequence[float]) -> str:
    """OpenAI's base64 encoding: little-endian float32."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def openai_inputs(value: Any) -> list[str | list[int]] | str:
    """The inputs of an OpenAI `input`, or why the API refuses it (a str)."""
    if isinstance(value, str):
        return [value] if value else "'$.input' is invalid: it cannot be an empty string"
    if not isinstance(value, list) or not value:
        return "'$.input' is invalid: it must be a string or a non-empty array"
    if len(value) > OPENAI_MAX_INPUTS:
        return f"'$.input' is invalid: at most {OPENAI_MAX_INPUTS} inputs per request"
    if all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
        return [list(value)]
    out: list[str | list[int]] = []
    for item in value:
        if isinstance(item, str) and item:
            out.append(item)
        elif (
            isinstance(item, list)
            and item
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in item)
        ):
            out.append(list(item))
        else:
            return "'$.input' is invalid: items must be non-empty strings or token arrays"
    if len({type(item) for item in out}) != 1:
        return "'$.input' is invalid: strings and token arrays cannot be mixed"
    return out


def validate_openai_embeddings(body: Any, *, extra: frozenset[str] | None = None) -> str | None:
    """None when OpenAI would accept `body`: the openai package's
    EmbeddingCreateParams (strict) and the API's rules for `input`. Fields
    outside the type are refused unless named in `extra` (None: any extra
    field is accepted, as vLLM and TEI do)."""
    if not isinstance(body, dict):
        return "the body must be a JSON object"
    if extra is not None:
        unknown = sorted(set(body) - OPENAI_FIELDS - extra)
        if unknown:
            return f"Unrecognized request argument supplied: {', '.join(unknown)}"
    known = {k: v for k, v in body.items() if k in OPENAI_FIELDS and k != "input"}
    try:
        _PARAMS.validate_python({**known, "input": "x"}, strict=True)
    except ValidationError as err:
        return str(err)
    if "input" not in body:
        return "'input' is a required property"
    inputs = openai_inputs(body["input"])
    return inputs if isinstance(inputs, str) else None


def openai_answer(
    body: dict[str, Any],
    *,
    model: str,
    dimensions: int,
    include_usage: bool = True,
    prompt_tokens: int | None = None,
) -> dict[str, Any]:
    """The OpenAI `list` answer to a valid body (vectors in the requested encoding)."""
    inputs = openai_inputs(body["input"])
    assert not isinstance(inputs, str)
    size = body.get("dimensions") or dimensions
    data = []
    tokens = 0
    for index, item in enumerate(inputs):
        text = item if isinstance(item, str) else token_text(item)
        tokens += word_tokens(item) if isinstance(item, str) else len(item)
        vector = fake_vector(text, size)
        encoded: Any = b64_floats(vector) if body.get("encoding_format") == "base64" else vector
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    answer: dict[str, Any] = {"object": "list", "data": data, "model": model}
    if include_usage:
        counted = prompt_tokens if prompt_tokens is not None else tokens
        answer["usage"] = {"prompt_tokens": counted, "total_tokens": counted}
    return answer
