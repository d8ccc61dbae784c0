"""What forwarding one request did: every attempt, and the answer that won."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.providers.failures import AttemptFailure
from gateway.providers.usage import Usage
from observability.audit import Attempt

__all__ = ["Attempt", "ClientDisconnectedError", "ForwardResult", "ForwardTrace"]


@dataclass(slots=True)
class ForwardTrace:
    """What the forwarder did so far; pass one in to know it even when the
    call ends with an exception (client disconnect, cancellation)."""

    attempts: list[Attempt] = field(default_factory=list)
    endpoint: str | None = None  # the endpoint that answered (streams: that started)
    model: str | None = None
    usage: Usage | None = None
    ttft_ms: float | None = None

    @property
    def last_tried(self) -> str | None:
        """The endpoint that answered, else the last one tried or skipped."""
        if self.endpoint is not None:
            return self.endpoint
        return self.attempts[-1].endpoint if self.attempts else None


@dataclass(frozen=True, slots=True)
class ForwardResult:
    """The outcome of a forwarded request that an endpoint answered."""

    endpoint: str
    model: str | None  # the model the upstream was asked for
    status: int  # the HTTP status the client gets (200)
    response: dict[str, Any] | None  # the answer in the front's shape; None for streams
    usage: Usage
    cost_usd: float
    attempts: tuple[Attempt, ...]
    upstream_latency_ms: float  # from the first attempt's start to the answer's end
    ttft_ms: float | None  # streams: from the first attempt's start to the first frame
    # A stream that failed after its first byte ends with this error.
    stream_error: AttemptFailure | None = None
    # Streams: the last frames, not yet written, so that the audit record is
    # durable before the client sees the end of the answer (gateway.pipeline).
    tail: tuple[bytes, ...] = ()


class ClientDisconnectedError(ConnectionResetError):
    """The client went away mid-stream; the upstream request was closed.

    A ConnectionResetError, so handlers that catch those still do; `trace`
    tells what was sent and used (for the audit record).
    """

    def __init__(self, trace: ForwardTrace) -> None:
        super().__init__("the client disconnected")
        self.trace = trace
