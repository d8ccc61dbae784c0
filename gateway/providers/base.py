"""The provider adapter seam: what every upstream provider implements.

The forwarding engine (:mod:`gateway.upstream`) speaks to every provider through
a :class:`ProviderAdapter`. An adapter never does network I/O for the request
itself: it turns the client's OpenAI Chat Completions body into an
:class:`UpstreamRequest`, turns the upstream's answer back into an OpenAI
``chat.completion`` (or, for streams, OpenAI SSE frames through a
:class:`StreamTranslator`), and classifies upstream errors into an
:class:`UpstreamFailure` that says what the client sees and whether failing over
to the next endpoint makes sense. Timeouts, pooling, failover and the circuit
breaker belong to the forwarder, so each adapter stays small and testable.

Provider packages keep the pure wire translation (``translate.py``) apart from
the HTTP-facing adapter (``adapter.py``) so that variants (Azure OpenAI on the
OpenAI-compatible translation, Anthropic on Vertex on the Anthropic one) reuse
the translation rather than copy it.

Credentials are read once at startup by :class:`CredentialStore` from the
environment variables or files the registry names; a missing one fails startup
with the variable's name. Secret values live in :class:`Secret`, whose repr
never shows them, and adapters pass any upstream text through
:meth:`CredentialStore.redact` before it can reach a client or a log.
"""

from __future__ import annotations

import abc
import importlib
import json
import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Final

from translator.registry import ENDPOINT_TYPES, Endpoint, Pricing

# Codes of failures the forwarder itself detects (adapters add provider codes).
CONNECT_ERROR: Final = "connect_error"
CONNECT_TIMEOUT: Final = "connect_timeout"
FIRST_TOKEN_TIMEOUT: Final = "first_token_timeout"
TOTAL_TIMEOUT: Final = "timeout"
UPSTREAM_DISCONNECTED: Final = "upstream_disconnected"
BAD_UPSTREAM_RESPONSE: Final = "bad_upstream_response"
UPSTREAM_STREAM_ERROR: Final = "upstream_stream_error"
CIRCUIT_OPEN: Final = "circuit_open"
ENDPOINT_UNAVAILABLE: Final = "endpoint_unavailable"
CLIENT_DISCONNECTED: Final = "client_disconnected"

# Upstream error text reaching a client is cut to this length: enough to explain,
# too short to echo a whole prompt back through an error body.
MAX_ERROR_MESSAGE = 500


class ProviderConfigError(Exception):
    """An endpoint cannot be used as configured (missing credential, unknown type).

    Raised at startup, so that a misconfigured gateway never starts serving. The
    message names the endpoint and the variable or file, never a secret value.
    """


class ProviderNotImplementedError(ProviderConfigError):
    """The registry names an endpoint type whose adapter does not exist yet."""


class Secret:
    """A credential value that does not show itself in repr, str or logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The value itself: only for building the upstream request."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        # Pickling would copy the secret into wherever the pickle goes.
        raise TypeError("a Secret cannot be pickled")


class CredentialStore:
    """Reads an endpoint's credentials from the env vars / files its `auth` names.

    `auth` holds `<name>_env` (an environment variable) or `<name>_file` (a
    file) for each credential, e.g. `bearer_token_env: PRIVATE_GPU_TOKEN`.
    Everything is read when asked for, at adapter construction (startup), so
    that a missing credential fails fast and names the variable.
    """

    def __init__(self, endpoint: Endpoint, environ: Mapping[str, str] | None = None) -> None:
        self._endpoint = endpoint
        self._environ = os.environ if environ is None else environ
        self._loaded: list[str] = []

    def has(self, name: str) -> bool:
        """Whether `auth` names a source for credential `name`."""
        auth = self._endpoint.auth
        return f"{name}_env" in auth or f"{name}_file" in auth

    def load(self, name: str) -> Secret | None:
        """The credential `name`, or None when `auth` names no source for it.

        Raises ProviderConfigError when the named variable is unset or empty, or
        the named file is missing, unreadable or empty.
        """
        auth = self._endpoint.auth
        where = f"endpoint '{self._endpoint.name}'"
        env_key, file_key = f"{name}_env", f"{name}_file"
        if env_key in auth:
            variable = auth[env_key]
            value = self._environ.get(variable, "").strip()
            if not value:
                raise ProviderConfigError(
                    f"{where}: environment variable {variable} (auth.{env_key}) is not set"
                )
        elif file_key in auth:
            path = auth[file_key]
            try:
                # Read once at startup, before the event loop serves requests.
                with open(path, encoding="utf-8") as fh:
                    value = fh.read().strip()
            except OSError as err:
                raise ProviderConfigError(
                    f"{where}: cannot read credential file {path} (auth.{file_key}): "
                    f"{err.strerror or type(err).__name__}"
                ) from None
            if not value:
                raise ProviderConfigError(
                    f"{where}: credential file {path} (auth.{file_key}) is empty"
                )
        else:
            return None
        self._loaded.append(value)
        return Secret(value)

    def require(self, *names: str) -> tuple[str, Secret]:
        """The first of `names` that `auth` configures; fails naming the accepted keys."""
        for name in names:
            secret = self.load(name)
            if secret is not None:
                return name, secret
        accepted = ", ".join(f"auth.{n}_env or auth.{n}_file" for n in names)
        raise ProviderConfigError(
            f"endpoint '{self._endpoint.name}' (type {self._endpoint.type}) needs a "
            f"credential: set {accepted}"
        )

    def redact(self, text: str) -> str:
        """`text` with every loaded secret value replaced by `***`."""
        return redact_values(text, self._loaded)


def redact_values(text: str, values: Iterable[str]) -> str:
    """`text` with each of `values` (secrets) replaced by `***`."""
    for value in values:
        if value and value in text:
            text = text.replace(value, "***")
    return text


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of one completion.

    `input_tokens` counts the whole prompt (OpenAI's `prompt_tokens`), cached
    parts included; `cache_read_tokens` / `cache_write_tokens` say how much of it
    was read from or written to a prompt cache, where the provider reports it.
    `estimated` is true when the gateway counted approximately because the
    upstream reported nothing (see :func:`estimate_text_tokens`).
    """

    input_tokens: int
    output_tokens: int
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    estimated: bool = False

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def cost_usd(self, pricing: Pricing) -> float:
        """Cost at the registry's per-1k prices (no separate cache pricing yet)."""
        return (
            self.input_tokens * pricing.input_per_1k + self.output_tokens * pricing.output_per_1k
        ) / 1000.0

    def as_openai(self) -> dict[str, Any]:
        """The OpenAI `usage` object for these counts."""
        usage: dict[str, Any] = {
            "prompt_tokens": self.input_tokens,
            "completion_tokens": self.output_tokens,
            "total_tokens": self.total_tokens,
        }
        if self.cache_read_tokens:
            usage["prompt_tokens_details"] = {"cached_tokens": self.cache_read_tokens}
        return usage


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    """One HTTP request to send upstream, fully built (and signed) by an adapter.

    Headers carry the endpoint's credential, so neither they nor the body (the
    prompt) appear in repr.
    """

    method: str
    url: str
    headers: Mapping[str, str] = field(repr=False)
    body: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class UpstreamFailure:
    """What went wrong with one attempt, and what to do about it.

    `status_for_client` is the HTTP status the client gets if this is the final
    failure; `retryable` says whether the next endpoint of the route may be
    tried; `retry_after` (seconds) is passed on for 429/503; `timeout` makes the
    final status 504. `message` is safe to show a client (redacted, bounded).
    """

    status_for_client: int
    code: str
    message: str
    retryable: bool
    retry_after: float | None = None
    upstream_status: int | None = None
    timeout: bool = False


class UpstreamFailureError(Exception):
    """Raised by translators and parsers when the upstream's answer is an error
    or breaks the protocol; carries the classified failure.

    A StreamTranslator sets `frames` to the frames the same feed() completed
    before the error, so that none of the answer is lost.
    """

    def __init__(self, failure: UpstreamFailure, frames: list[bytes] | None = None) -> None:
        super().__init__(failure.message)
        self.failure = failure
        self.frames: list[bytes] = frames or []


class StreamTranslator(abc.ABC):
    """Turns one upstream streamed response into OpenAI SSE frames, incrementally.

    The forwarder feeds bytes as they arrive from the network and writes the
    frames returned (each a complete `data: ...\\n\\n` event) to the client at
    once; nothing waits for the whole answer. `finish()` is called at upstream
    EOF and returns the closing frames (`data: [DONE]` included). Either raises
    UpstreamFailureError when the upstream reports an error or breaks the
    protocol; before the first frame reached the client the forwarder may then
    fail over, afterwards it ends the stream with an error event.
    """

    @abc.abstractmethod
    def feed(self, data: bytes) -> list[bytes]:
        """Consume upstream bytes (any split); return the frames now complete."""

    @abc.abstractmethod
    def finish(self) -> list[bytes]:
        """The upstream ended: return the last frames, ending with `data: [DONE]`."""

    @property
    @abc.abstractmethod
    def usage(self) -> Usage | None:
        """Usage so far: the upstream's own report, else an estimate."""


class ProviderAdapter(abc.ABC):
    """One endpoint's translation to and from its provider's wire protocol.

    Constructed once per endpoint at startup (reading credentials through
    `credentials`), shared by all requests, so it must hold no per-request
    state: per-request stream state lives in the StreamTranslator.
    """

    def __init__(self, endpoint: Endpoint, credentials: CredentialStore) -> None:
        self.endpoint = endpoint
        self.credentials = credentials

    @property
    def name(self) -> str:
        return self.endpoint.name

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
        """Build the upstream request for an OpenAI Chat Completions body.

        Async because some providers refresh a token or sign with fresh
        credentials here.
        """

    @abc.abstractmethod
    def parse_response(
        self, status: int, headers: Mapping[str, str], body: bytes
    ) -> tuple[dict[str, Any], Usage | None]:
        """A successful (2xx) non-streamed answer as an OpenAI `chat.completion`.

        Returns None for usage when the upstream reported none (the forwarder
        then estimates). Raises UpstreamFailureError on a malformed answer.
        """

    @abc.abstractmethod
    def classify_error(
        self, status: int, headers: Mapping[str, str], body: bytes
    ) -> UpstreamFailure:
        """Classify a non-2xx answer (the body may be cut short)."""

    @abc.abstractmethod
    def stream_translator(self, body: Mapping[str, Any]) -> StreamTranslator:
        """A fresh translator for one streamed answer to `body` (the client's body)."""

    def redact(self, text: str) -> str:
        return self.credentials.redact(text)


# ---------------------------------------------------------------------------
# Helpers shared by adapters.


def header(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive header lookup that also works on plain dicts."""
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    for key, candidate in headers.items():
        if key.lower() == lowered:
            return candidate
    return None


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait, from `retry-after-ms` (OpenAI) or `Retry-After`.

    `Retry-After` may be seconds or an HTTP date; anything unparsable is ignored.
    """
    if (ms := header(headers, "retry-after-ms")) is not None:
        try:
            value = float(ms) / 1000.0
        except ValueError:
            value = -1.0
        if math.isfinite(value) and value >= 0:
            return value
    raw = header(headers, "retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = parsedate_to_datetime(raw)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
        return max(seconds, 0.0)
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def failure_for_status(
    status: int,
    *,
    message: str | None,
    code: str | None,
    retry_after: float | None,
) -> UpstreamFailure:
    """The gateway's common mapping of an upstream HTTP status.

    - 429: passed through (with Retry-After), retryable on another endpoint.
    - 401/403: the *gateway's* credential was refused; that is our
      misconfiguration, not the client's, so the client gets 502 and the next
      endpoint (with its own credential) is tried.
    - 408, 5xx: 502, retryable.
    - 3xx: redirects are never followed (the URL comes from the registry only):
      502, retryable.
    - other 4xx: the client's request is at fault; passed through, no failover.
    """
    text = (message or "").strip()[:MAX_ERROR_MESSAGE]
    if status == 429:
        return UpstreamFailure(
            429,
            code or "rate_limit_exceeded",
            text or "the upstream is rate limiting requests",
            True,
            retry_after,
            status,
        )
    if status in (401, 403):
        return UpstreamFailure(
            502,
            "upstream_auth_failed",
            f"the upstream refused the gateway's credential (HTTP {status})",
            True,
            None,
            status,
        )
    if status == 408 or status >= 500:
        return UpstreamFailure(
            502,
            code or "upstream_unavailable",
            text or f"the upstream failed (HTTP {status})",
            True,
            retry_after,
            status,
        )
    if 300 <= status < 400:
        return UpstreamFailure(
            502,
            "upstream_redirect",
            f"the upstream answered with a redirect (HTTP {status}), which is not followed",
            True,
            None,
            status,
        )
    if 400 <= status < 500:
        return UpstreamFailure(
            status,
            code or "upstream_bad_request",
            text or f"the upstream rejected the request (HTTP {status})",
            False,
            None,
            status,
        )
    return UpstreamFailure(
        502,
        BAD_UPSTREAM_RESPONSE,
        f"unexpected upstream status {status}",
        True,
        None,
        status,
    )


# Token estimation, for upstreams that report no usage. About four characters
# per token is the usual figure for English text with BPE tokenizers; it is an
# approximation (within tens of percent), flagged by Usage.estimated.
CHARS_PER_TOKEN = 4
# Chat formats add a few tokens of framing per message and to prime the reply
# (OpenAI's documented rule of thumb: 3 per message, 3 for the reply).
TOKENS_PER_MESSAGE = 3
TOKENS_REPLY_PRIMING = 3


def estimate_text_tokens(chars: int) -> int:
    return math.ceil(chars / CHARS_PER_TOKEN) if chars > 0 else 0


def _text_chars(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        total = 0
        for part in value:
            if isinstance(part, dict):
                text = part.get("text")
                if isinstance(text, str):
                    total += len(text)
            elif isinstance(part, str):
                total += len(part)
        return total
    return 0


def estimate_prompt_tokens(body: Mapping[str, Any]) -> int:
    """Approximate prompt tokens of an OpenAI Chat Completions body."""
    messages = body.get("messages")
    chars = 0
    count = 0
    if isinstance(messages, list):
        for message in messages:
            if not isinstance(message, dict):
                continue
            count += 1
            chars += _text_chars(message.get("content"))
            for call in message.get("tool_calls") or ():
                if isinstance(call, dict):
                    chars += len(json.dumps(call.get("function", {}), separators=(",", ":")))
    tools = body.get("tools")
    if isinstance(tools, list) and tools:
        # Tool schemas are part of the prompt the model sees.
        chars += len(json.dumps(tools, separators=(",", ":")))
    return estimate_text_tokens(chars) + TOKENS_PER_MESSAGE * count + TOKENS_REPLY_PRIMING


def estimate_completion_usage(body: Mapping[str, Any], completion: Mapping[str, Any]) -> Usage:
    """Approximate usage of a non-streamed OpenAI `chat.completion`."""
    chars = 0
    for choice in completion.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        message = choice.get("message")
        if not isinstance(message, dict):
            continue
        chars += _text_chars(message.get("content"))
        for call in message.get("tool_calls") or ():
            if isinstance(call, dict):
                chars += len(json.dumps(call.get("function", {}), separators=(",", ":")))
    return Usage(estimate_prompt_tokens(body), estimate_text_tokens(chars), estimated=True)


def encode_body(body: Mapping[str, Any]) -> bytes:
    """A request body as compact UTF-8 JSON."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def sse_frame(payload: Mapping[str, Any]) -> bytes:
    """One SSE `data:` event carrying a JSON object."""
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def error_frame(failure: UpstreamFailure) -> bytes:
    """The final SSE event of a stream that failed after its first byte.

    OpenAI SDKs raise an APIError on a `data:` event carrying `error`.
    """
    return sse_frame(
        {"error": {"message": failure.message, "type": "upstream_error", "code": failure.code}}
    )


DONE_FRAME: Final = b"data: [DONE]\n\n"


# ---------------------------------------------------------------------------
# The adapter registry. Entries are import paths, imported on first use, so a
# gateway that routes only to vLLM never loads botocore or google-auth.

AdapterFactory = Callable[[Endpoint, CredentialStore], ProviderAdapter]

_ADAPTER_PATHS: dict[str, str] = {
    "openai-compatible": "gateway.providers.openai_compatible.adapter:OpenAICompatibleAdapter",
    "openai": "gateway.providers.openai_compatible.adapter:OpenAIAdapter",
}
_ADAPTER_FACTORIES: dict[str, AdapterFactory] = {}


def register_adapter(endpoint_type: str, factory: AdapterFactory | str) -> None:
    """Make `factory` (or the class at "module:attr") the adapter for `endpoint_type`."""
    if endpoint_type not in ENDPOINT_TYPES:
        raise ValueError(f"unknown endpoint type '{endpoint_type}'")
    if isinstance(factory, str):
        _ADAPTER_PATHS[endpoint_type] = factory
        _ADAPTER_FACTORIES.pop(endpoint_type, None)
    else:
        _ADAPTER_FACTORIES[endpoint_type] = factory


def implemented_types() -> tuple[str, ...]:
    return tuple(t for t in ENDPOINT_TYPES if t in _ADAPTER_PATHS or t in _ADAPTER_FACTORIES)


def _factory(endpoint_type: str) -> AdapterFactory | None:
    factory = _ADAPTER_FACTORIES.get(endpoint_type)
    if factory is not None:
        return factory
    path = _ADAPTER_PATHS.get(endpoint_type)
    if path is None:
        return None
    module_name, _, attr = path.partition(":")
    loaded: AdapterFactory = getattr(importlib.import_module(module_name), attr)
    _ADAPTER_FACTORIES[endpoint_type] = loaded
    return loaded


def adapter_for(endpoint: Endpoint, *, environ: Mapping[str, str] | None = None) -> ProviderAdapter:
    """Build the adapter for `endpoint`, reading its credentials now.

    Raises ProviderNotImplementedError for a type without an adapter yet and
    ProviderConfigError for a missing credential.
    """
    factory = _factory(endpoint.type)
    if factory is None:
        raise ProviderNotImplementedError(
            f"endpoint '{endpoint.name}': provider type '{endpoint.type}' is not implemented "
            f"yet (implemented: {', '.join(implemented_types())})"
        )
    return factory(endpoint, CredentialStore(endpoint, environ))


def adapters_for(
    endpoints: Iterable[Endpoint], *, environ: Mapping[str, str] | None = None
) -> dict[str, ProviderAdapter]:
    return {ep.name: adapter_for(ep, environ=environ) for ep in endpoints}
