"""The provider adapter seam: what every upstream provider implements.

The forwarder (:mod:`gateway.forwarding`) speaks to every provider through a
:class:`ProviderAdapter`, one per registry endpoint, and, for each request,
through the adapter's :class:`Codec` for the request's operation (`chat`,
`embeddings`, `messages`, `responses`). A codec never does network I/O for the
request itself: it builds the :class:`UpstreamRequest` (signed), turns the
upstream's answer into the front's shape (or, for streams, SSE frames through a
:class:`StreamTranslator`), and classifies upstream errors into an
:class:`~gateway.providers.failures.AttemptFailure` that says what the client sees
and whether failing over makes sense. Timeouts, pooling, failover and the
circuit breaker belong to the forwarder, so each codec stays small and testable.

An adapter is its provider's Chat Completions translation (`prepare`,
`parse_response`, `classify_error`, `stream_translator`); :meth:`ProviderAdapter.codec`
wraps that as the `chat` codec and adds the codecs of the other operations the
provider serves natively. A front whose operation an endpoint has no native codec
for wraps the endpoint's chat codec in a bridge (:mod:`gateway.fronts`).

Provider packages keep the pure wire translation (``translate.py``) apart from
the HTTP-facing adapter (``adapter.py``) so that variants (Azure OpenAI on the
OpenAI-compatible translation, Anthropic on Vertex on the Anthropic one) reuse
the translation rather than copy it.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from gateway.providers.credentials import CredentialStore
from gateway.providers.failures import AttemptFailure
from gateway.providers.usage import Usage, estimate_completion_usage, estimate_prompt_tokens
from gateway.providers.wire import error_frame
from translator.registry import Endpoint

CHAT: Final = "chat"
EMBEDDINGS: Final = "embeddings"
MESSAGES: Final = "messages"
RESPONSES: Final = "responses"
OPERATIONS: Final = (CHAT, EMBEDDINGS, MESSAGES, RESPONSES)

_NO_HEADERS: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    """One HTTP request to send upstream, fully built (and signed) by a codec.

    Headers carry the endpoint's credential, so neither they nor the body (the
    prompt) appear in repr.
    """

    method: str
    url: str
    headers: Mapping[str, str] = field(repr=False)
    body: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Call:
    """One request as a codec sees it: the front's body and what goes with it."""

    operation: str
    body: Mapping[str, Any] = field(repr=False)
    stream: bool = False
    request_id: str = ""
    # Client headers the front passes to native codecs (lower-case names), e.g.
    # `anthropic-version` and `anthropic-beta` for Messages.
    headers: Mapping[str, str] = field(default_factory=lambda: _NO_HEADERS, repr=False)


class StreamTranslator(abc.ABC):
    """Turns one upstream streamed response into SSE frames in the front's shape.

    The forwarder feeds bytes as they arrive from the network and writes the
    frames returned (each a complete SSE event) to the client at once; nothing
    waits for the whole answer. `finish()` is called at upstream EOF and returns
    the closing frames (`data: [DONE]` for OpenAI). Either raises AttemptFailed
    when the upstream reports an error or breaks the protocol; before the first
    frame reached the client the forwarder may then fail over, afterwards it
    ends the stream with `error_frames()`.
    """

    @abc.abstractmethod
    def feed(self, data: bytes) -> list[bytes]:
        """Consume upstream bytes (any split); return the frames now complete."""

    @abc.abstractmethod
    def finish(self) -> list[bytes]:
        """The upstream ended: return the last frames."""

    @property
    @abc.abstractmethod
    def usage(self) -> Usage | None:
        """Usage so far: the upstream's own report, else an estimate."""

    def error_frames(self, failure: AttemptFailure) -> list[bytes]:
        """The frames that end a stream failing after its first byte."""
        return [error_frame(failure)]


class Codec(abc.ABC):
    """One operation of one endpoint: build the upstream request(s), read the answer."""

    operation: str = CHAT

    @abc.abstractmethod
    def upstream_model(self, call: Call) -> str | None:
        """The model the upstream is asked for."""

    @abc.abstractmethod
    async def prepare(self, call: Call) -> UpstreamRequest:
        """The upstream request for `call`, signed. Async: some providers refresh a
        token or sign with fresh credentials here."""

    async def prepare_all(self, call: Call) -> list[UpstreamRequest]:
        """Every upstream request `call` needs (several when a provider takes
        fewer inputs per call than the client sent); all are sent, all must succeed."""
        return [await self.prepare(call)]

    @abc.abstractmethod
    def parse_response(
        self, call: Call, status: int, headers: Mapping[str, str], raw: bytes
    ) -> tuple[dict[str, Any], Usage | None]:
        """A successful (2xx) non-streamed answer in the front's shape; None for
        usage when the upstream reported none. Raises AttemptFailed on a
        malformed answer."""

    def parse_all(
        self, call: Call, answers: list[tuple[int, Mapping[str, str], bytes]]
    ) -> tuple[dict[str, Any], Usage | None]:
        """The answers to `prepare_all`'s requests, in order, as one answer."""
        status, headers, raw = answers[0]
        return self.parse_response(call, status, headers, raw)

    @abc.abstractmethod
    def classify_error(self, status: int, headers: Mapping[str, str], raw: bytes) -> AttemptFailure:
        """Classify a non-2xx answer (the body may be cut short)."""

    @abc.abstractmethod
    def stream_translator(self, call: Call) -> StreamTranslator:
        """A fresh translator for one streamed answer to `call`."""

    @abc.abstractmethod
    def estimate_usage(self, call: Call, answer: Mapping[str, Any] | None) -> Usage:
        """Usage when the upstream reported none (flagged `estimated`)."""


class ProviderAdapter(abc.ABC):
    """One endpoint's translation to and from its provider's wire protocol.

    Constructed once per endpoint at start-up (reading credentials through
    `credentials`), shared by all requests, so it must hold no per-request
    state: per-request stream state lives in the StreamTranslator. The abstract
    methods are the provider's Chat Completions translation; `codec()` gives
    the codec of each operation the provider serves natively.
    """

    def __init__(self, endpoint: Endpoint, credentials: CredentialStore) -> None:
        self.endpoint = endpoint
        self.credentials = credentials
        self._codecs: dict[str, Codec | None] = {}

    @property
    def name(self) -> str:
        return self.endpoint.name

    def codec(self, operation: str) -> Codec | None:
        """The codec for `operation`, or None when the provider has no native one."""
        try:
            return self._codecs[operation]
        except KeyError:
            codec = self._codecs[operation] = self.build_codec(operation)
            return codec

    def build_codec(self, operation: str) -> Codec | None:
        """Subclasses add their other native operations here (called once each)."""
        return ChatCodec(self) if operation == CHAT else None

    def upstream_model(self, body: Mapping[str, Any]) -> str | None:
        """The model the upstream is asked for: the endpoint's, else the client's."""
        if self.endpoint.model:
            return self.endpoint.model
        model = body.get("model")
        return model if isinstance(model, str) else None

    async def start(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Acquire what the adapter needs at runtime (e.g. a token refresher)."""

    async def close(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Release what start() acquired."""

    @abc.abstractmethod
    async def prepare(self, body: Mapping[str, Any], *, stream: bool) -> UpstreamRequest:
        """Build the upstream request for an OpenAI Chat Completions body."""

    @abc.abstractmethod
    def parse_response(
        self, status: int, headers: Mapping[str, str], body: bytes
    ) -> tuple[dict[str, Any], Usage | None]:
        """A successful (2xx) non-streamed answer as an OpenAI `chat.completion`."""

    @abc.abstractmethod
    def classify_error(
        self, status: int, headers: Mapping[str, str], body: bytes
    ) -> AttemptFailure:
        """Classify a non-2xx answer (the body may be cut short)."""

    @abc.abstractmethod
    def stream_translator(self, body: Mapping[str, Any]) -> StreamTranslator:
        """A fresh translator for one streamed answer to `body` (the client's body)."""

    def redact(self, text: str) -> str:
        return self.credentials.redact(text)


class ChatCodec(Codec):
    """An adapter's Chat Completions translation as the `chat` codec."""

    operation = CHAT

    def __init__(self, adapter: ProviderAdapter) -> None:
        self.adapter = adapter

    def upstream_model(self, call: Call) -> str | None:
        return self.adapter.upstream_model(call.body)

    async def prepare(self, call: Call) -> UpstreamRequest:
        return await self.adapter.prepare(call.body, stream=call.stream)

    def parse_response(
        self, call: Call, status: int, headers: Mapping[str, str], raw: bytes
    ) -> tuple[dict[str, Any], Usage | None]:
        return self.adapter.parse_response(status, headers, raw)

    def classify_error(self, status: int, headers: Mapping[str, str], raw: bytes) -> AttemptFailure:
        return self.adapter.classify_error(status, headers, raw)

    def stream_translator(self, call: Call) -> StreamTranslator:
        return self.adapter.stream_translator(call.body)

    def estimate_usage(self, call: Call, answer: Mapping[str, Any] | None) -> Usage:
        if answer is None:
            return Usage(estimate_prompt_tokens(call.body), 0, estimated=True)
        return estimate_completion_usage(call.body, answer)
