"""Forwarding a decided request upstream: the attempt loop with failover
(:mod:`.forwarder`), the circuit breaker (:mod:`.breaker`), the header policy
(:mod:`.headers`), transport reads and writes (:mod:`.transport`) and what an
attempt leaves behind (:mod:`.attempts`)."""

from gateway.forwarding.attempts import (
    Attempt,
    ClientDisconnectedError,
    ForwardResult,
    ForwardTrace,
)
from gateway.forwarding.breaker import BreakerPolicy, CircuitBreaker
from gateway.forwarding.forwarder import Forwarder
from gateway.forwarding.headers import forwardable_client_headers

__all__ = [
    "Attempt",
    "BreakerPolicy",
    "CircuitBreaker",
    "ClientDisconnectedError",
    "ForwardResult",
    "ForwardTrace",
    "Forwarder",
    "forwardable_client_headers",
]
