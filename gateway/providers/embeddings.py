"""The OpenAI embeddings wire format, shared by every provider's embeddings codec (pure, no I/O).

Clients speak `POST /v1/embeddings` as OpenAI defines it: `input` is a string, a
list of strings, a token array or a list of token arrays; `encoding_format` is
`float` (the default) or `base64` (little-endian float32, which the openai SDK
asks for by default and decodes itself); `dimensions`, `user` and `model` are
optional. :func:`parse_request` reads such a body into an
:class:`EmbeddingsRequest`, or raises a 400 (`invalid_body`) naming what is
wrong. :func:`render_response` writes the answer exactly as the SDK reads it
(`openai.types.CreateEmbeddingResponse`), whatever the provider sent, and
:func:`read_vector` reads a provider's vector (JSON numbers or base64).

One extension field travels with the request: `input_type`, which some
providers need to embed well (Cohere's `search_query` / `search_document`,
Vertex AI's task types). The portable values are `query`, `document`
(`passage`), `classification` and `clustering`; each codec maps them.

:class:`EmbeddingsCodec` holds what every provider's embeddings codec shares:
reading the request from a :class:`~gateway.providers.adapter.Call`, refusing
streams, and estimating usage when the provider reports none.
"""

from __future__ import annotations

import abc
import base64
import binascii
import math
import sys
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from gateway.errors import BadRequestError
from gateway.providers.adapter import EMBEDDINGS, Call, Codec, StreamTranslator, UpstreamRequest
from gateway.providers.chat import bad_response, unsupported
from gateway.providers.failures import AttemptFailed, AttemptFailure
from gateway.providers.usage import Usage, estimate_text_tokens

FLOAT: Final = "float"
BASE64: Final = "base64"
ENCODINGS: Final = (FLOAT, BASE64)
# OpenAI's own limit on inputs per request; every provider's batches are smaller.
MAX_INPUTS: Final = 2048
# Token ids are int32 in every tokenizer and server.
MAX_TOKEN_ID: Final = 2**31 - 1
# No embedding model has more dimensions; a larger number is a typo or an attack.
MAX_DIMENSIONS: Final = 65536

# The portable `input_type` values (and the providers' spellings clients use).
QUERY: Final = "query"
DOCUMENT: Final = "document"
CLASSIFICATION: Final = "classification"
CLUSTERING: Final = "clustering"
INPUT_TYPES: Final[Mapping[str, str]] = {
    "query": QUERY,
    "search_query": QUERY,
    "document": DOCUMENT,
    "passage": DOCUMENT,
    "search_document": DOCUMENT,
    "classification": CLASSIFICATION,
    "clustering": CLUSTERING,
}

# Vectors are float32 on the wire (base64) and in every model.
_BIG_ENDIAN = sys.byteorder == "big"


def invalid(message: str) -> BadRequestError:
    return BadRequestError(message, code="invalid_body")


@dataclass(frozen=True, slots=True)
class EmbeddingsRequest:
    """One embeddings request: its inputs (text or token arrays) and options."""

    texts: tuple[str, ...] = ()
    token_arrays: tuple[tuple[int, ...], ...] = ()
    encoding_format: str = FLOAT
    dimensions: int | None = None
    user: str | None = None
    model: str | None = None
    input_type: str | None = None

    @property
    def count(self) -> int:
        return len(self.texts) or len(self.token_arrays)

    def text_inputs(self, provider: str) -> tuple[str, ...]:
        """The inputs as text; a 400 for token arrays, which `provider` cannot take."""
        if self.token_arrays:
            raise unsupported(
                f"{provider} embeds text only: token arrays cannot be sent to it "
                "(send the text itself)"
            )
        return self.texts

    def portable_input_type(self) -> str | None:
        """`input_type` as a portable value; a 400 for one no provider mapping knows."""
        if self.input_type is None:
            return None
        value = INPUT_TYPES.get(self.input_type.lower())
        if value is None:
            raise unsupported(
                f"'input_type' {self.input_type!r} is not one of "
                "query, document, classification, clustering"
            )
        return value


def _text(value: str, where: str) -> str:
    if not value:
        raise invalid(f"'{where}' must not be an empty string")
    return value


def _token_array(value: list[Any], where: str) -> tuple[int, ...]:
    if not value:
        raise invalid(f"'{where}' must not be an empty token array")
    for i, token in enumerate(value):
        if isinstance(token, bool) or not isinstance(token, int):
            raise invalid(f"'{where}[{i}]' must be a token id (an integer)")
        if not 0 <= token <= MAX_TOKEN_ID:
            raise invalid(f"'{where}[{i}]' must be a token id between 0 and {MAX_TOKEN_ID}")
    return tuple(value)


def _inputs(raw: Any) -> tuple[tuple[str, ...], tuple[tuple[int, ...], ...]]:
    """(texts, token arrays) of `input`; exactly one of them is non-empty."""
    kinds = "a string, a list of strings, a token array or a list of token arrays"
    if isinstance(raw, str):
        return (_text(raw, "input"),), ()
    if not isinstance(raw, list):
        raise invalid(f"'input' must be {kinds}")
    if not raw:
        raise invalid("'input' must not be an empty list")
    if len(raw) > MAX_INPUTS:
        raise invalid(f"'input' has {len(raw)} items; at most {MAX_INPUTS} are allowed")
    first = raw[0]
    if isinstance(first, str):
        texts = []
        for i, item in enumerate(raw):
            if not isinstance(item, str):
                raise invalid(f"'input[{i}]' must be a string, like the other items")
            texts.append(_text(item, f"input[{i}]"))
        return tuple(texts), ()
    if isinstance(first, int) and not isinstance(first, bool):
        return (), (_token_array(raw, "input"),)
    if isinstance(first, list):
        arrays = []
        for i, item in enumerate(raw):
            if not isinstance(item, list):
                raise invalid(f"'input[{i}]' must be a token array, like the other items")
            arrays.append(_token_array(item, f"input[{i}]"))
        return (), tuple(arrays)
    raise invalid(f"'input' must be {kinds}")


def _optional_str(body: Mapping[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise invalid(f"'{key}' must be a string")
    return value


def parse_request(body: Mapping[str, Any]) -> EmbeddingsRequest:
    """Read an OpenAI embeddings body; a 400 (`invalid_body`) that says what is wrong."""
    if "input" not in body:
        raise invalid(
            "'input' is required: a string, a list of strings, a token array "
            "or a list of token arrays"
        )
    texts, arrays = _inputs(body["input"])
    encoding = body.get("encoding_format")
    if encoding is None:
        encoding = FLOAT
    elif encoding not in ENCODINGS:
        raise invalid("'encoding_format' must be 'float' or 'base64'")
    dimensions = body.get("dimensions")
    if dimensions is not None and (
        isinstance(dimensions, bool)
        or not isinstance(dimensions, int)
        or not 1 <= dimensions <= MAX_DIMENSIONS
    ):
        raise invalid(f"'dimensions' must be an integer between 1 and {MAX_DIMENSIONS}")
    return EmbeddingsRequest(
        texts=texts,
        token_arrays=arrays,
        encoding_format=encoding,
        dimensions=dimensions,
        user=_optional_str(body, "user"),
        model=_optional_str(body, "model"),
        input_type=_optional_str(body, "input_type"),
    )


def request_of(call: Call) -> EmbeddingsRequest:
    """`parse_request` for a codec: the same 400, as a failed attempt (no failover)."""
    try:
        return parse_request(call.body)
    except BadRequestError as err:
        raise AttemptFailed(AttemptFailure(400, err.code, err.message, False)) from None


# ---------------------------------------------------------------------------
# Vectors and answers.


def _finite(vector: array[float], where: str) -> list[float]:
    if not vector:
        raise AttemptFailed(bad_response(f"{where} is an empty vector"))
    # One sum instead of a test per number: NaN and infinities propagate.
    if not math.isfinite(sum(vector)):
        raise AttemptFailed(bad_response(f"{where} has a value that is not a finite number"))
    return vector.tolist()


def read_vector(value: Any, where: str) -> list[float]:
    """A provider's vector: a JSON array of numbers, or base64 of little-endian float32."""
    if isinstance(value, list):
        try:
            numbers = array("d", value)
        except TypeError:
            raise AttemptFailed(bad_response(f"{where} is not a list of numbers")) from None
        return _finite(numbers, where)
    if isinstance(value, str):
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise AttemptFailed(bad_response(f"{where} is not valid base64")) from None
        if len(raw) % 4:
            raise AttemptFailed(bad_response(f"{where} is not a whole number of float32 values"))
        floats = array("f")
        floats.frombytes(raw)
        if _BIG_ENDIAN:
            floats.byteswap()
        return _finite(floats, where)
    raise AttemptFailed(bad_response(f"{where} is not an embedding vector"))


def encode_base64(vector: Sequence[float]) -> str:
    """`vector` as OpenAI's base64: little-endian float32, as the SDK decodes it."""
    floats = array("f", vector)
    if not math.isfinite(sum(floats)):
        raise AttemptFailed(bad_response("the upstream's vector does not fit in float32"))
    if _BIG_ENDIAN:
        floats.byteswap()
    return base64.b64encode(floats.tobytes()).decode("ascii")


def render_response(
    vectors: Sequence[Sequence[float]], *, model: str, usage: Usage, encoding_format: str
) -> dict[str, Any]:
    """The OpenAI embeddings answer (`CreateEmbeddingResponse`), vectors in input order."""
    data = [
        {
            "object": "embedding",
            "index": index,
            "embedding": encode_base64(vector) if encoding_format == BASE64 else list(vector),
        }
        for index, vector in enumerate(vectors)
    ]
    tokens = usage.input_tokens
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def reported_count(value: Any) -> int | None:
    """A token count a provider reported (a non-negative number), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(value) or value < 0:
        return None
    return round(value)


# ---------------------------------------------------------------------------
# Usage.


def estimate_tokens(texts: Sequence[str] = (), token_arrays: Sequence[Sequence[int]] = ()) -> int:
    """Approximate input tokens: ~4 characters a token for text, the length of token arrays."""
    return sum(estimate_text_tokens(len(t)) for t in texts) + sum(len(a) for a in token_arrays)


def batch_usage(reported: Sequence[int | None], estimates: Sequence[int]) -> Usage:
    """Usage of several upstream calls: each call's own count where it reported
    one, its estimate where it did not (then the whole is flagged `estimated`)."""
    total = sum(r if r is not None else e for r, e in zip(reported, estimates, strict=True))
    return Usage(total, 0, estimated=any(r is None for r in reported))


def batches(total: int, size: int) -> list[range]:
    """The input indices of each upstream call when a provider takes `size` at most."""
    return [range(start, min(start + size, total)) for start in range(0, total, size)]


class EmbeddingsCodec(Codec):
    """What every provider's embeddings codec shares.

    Subclasses build the upstream requests (`prepare_all`, several when the
    provider takes fewer inputs per call than the client sent) and read all of
    their answers at once (`parse_all`); both derive the same batches from the
    request, so the codec keeps no per-request state.
    """

    operation = EMBEDDINGS

    def request(self, call: Call) -> EmbeddingsRequest:
        return request_of(call)

    async def prepare(self, call: Call) -> UpstreamRequest:
        requests = await self.prepare_all(call)
        if len(requests) != 1:
            raise RuntimeError("this request needs several upstream calls: use prepare_all()")
        return requests[0]

    @abc.abstractmethod
    async def prepare_all(self, call: Call) -> list[UpstreamRequest]:
        """Every upstream request the call needs, in input order."""

    def parse_response(
        self, call: Call, status: int, headers: Mapping[str, str], raw: bytes
    ) -> tuple[dict[str, Any], Usage | None]:
        return self.parse_all(call, [(status, headers, raw)])

    @abc.abstractmethod
    def parse_all(
        self, call: Call, answers: list[tuple[int, Mapping[str, str], bytes]]
    ) -> tuple[dict[str, Any], Usage | None]:
        """The OpenAI answer from the answers to `prepare_all`'s requests.

        Usage is never None: where the provider reports no count, it is estimated
        and flagged, so that the answer's `usage` and the audit record agree.
        """

    def stream_translator(self, call: Call) -> StreamTranslator:
        raise unsupported("embeddings cannot be streamed")

    def estimate_usage(self, call: Call, answer: Mapping[str, Any] | None) -> Usage:
        try:
            request = parse_request(call.body)
        except BadRequestError:
            return Usage(0, 0, estimated=True)
        return Usage(estimate_tokens(request.texts, request.token_arrays), 0, estimated=True)

    @staticmethod
    def check_answers(answers: Sequence[object], planned: int) -> None:
        if len(answers) != planned:
            raise AttemptFailed(
                bad_response(f"expected {planned} upstream answers, got {len(answers)}")
            )
