"""What an API front is: the wire format of one model API, at the edge.

A front parses its wire format into the shared :class:`ModelRequest`, picks the
codec each endpoint serves its operation with (native, or a bridge over the
endpoint's chat codec), and renders errors in its own shape. Everything between
(credentials, metadata, decision, forwarding with failover, audit record,
metrics) is the one pipeline of :mod:`gateway.pipeline`: no front has its own
path around policy or audit.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from gateway.errors import BadRequestError, GatewayError
from gateway.providers.adapter import Codec, ProviderAdapter


@dataclass(slots=True)
class ModelRequest:
    """One model request as every stage after the front sees it."""

    operation: str
    body: dict[str, Any] = field(repr=False)  # the client's body, gateway metadata removed
    stream: bool = False
    model: str | None = None  # the model the client asked for
    # What the optional prompt hash of the audit record covers.
    prompt: Any = field(default=None, repr=False)
    # Client headers the front passes to native codecs (lower-case names).
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    # Request fields a bridge dropped or changed, for the audit record.
    notes: list[str] = field(default_factory=list)


class Front(abc.ABC):
    """One model API: its paths, its request reader, its error shape."""

    operation: ClassVar[str]
    paths: ClassVar[tuple[str, ...]]

    @abc.abstractmethod
    def parse(self, body: dict[str, Any], headers: Mapping[str, str]) -> ModelRequest:
        """Check the body (a JSON object) and read what the pipeline needs.

        Raises BadRequestError naming what is wrong; nothing is decided or
        forwarded before this holds.
        """

    def codec_for(self, adapter: ProviderAdapter) -> Codec | None:
        """The codec `adapter` serves this front's operation with, if any."""
        return adapter.codec(self.operation)

    def error_body(self, err: GatewayError) -> dict[str, Any]:
        """The error in this front's shape (OpenAI's by default)."""
        return err.body()

    def local_answer(self, request: ModelRequest) -> dict[str, Any] | None:
        """The answer when no endpoint of the route serves this front natively or
        through a bridge, if the gateway can give one itself (None: it cannot)."""
        return None


def invalid(message: str) -> BadRequestError:
    return BadRequestError(message, code="invalid_body")


def optional_bool(body: Mapping[str, Any], key: str) -> bool:
    value = body.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise invalid(f"'{key}' must be true or false")
    return value


def optional_str(body: Mapping[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise invalid(f"'{key}' must be a string")
    return value
