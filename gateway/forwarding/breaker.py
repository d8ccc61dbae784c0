"""The per-endpoint circuit breaker."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    failure_threshold: int = 5  # consecutive failures that open the circuit
    cooldown_s: float = 30.0  # how long an open circuit skips the endpoint


BreakerState = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """Per-endpoint breaker: closed → open after N consecutive failures → after
    the cooldown, half-open lets one trial request through → closed on its
    success, open again on its failure.

    State is per process (per replica): it protects this replica from waiting on
    a dead endpoint and needs no coordination.
    """

    def __init__(self, policy: BreakerPolicy, clock: Callable[[], float]) -> None:
        self._policy = policy
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_in_flight = False

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return "closed"
        if self._clock() - self._opened_at < self._policy.cooldown_s:
            return "open"
        return "half_open"

    def retry_after(self) -> float | None:
        """Seconds until an open circuit lets a trial through."""
        if self._opened_at is None:
            return None
        return max(self._policy.cooldown_s - (self._clock() - self._opened_at), 0.0)

    def allow(self) -> bool:
        """Whether to send a request now; in half-open, reserves the one trial."""
        state = self.state
        if state == "closed":
            return True
        if state == "open" or self._trial_in_flight:
            return False
        self._trial_in_flight = True
        return True

    def success(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._trial_in_flight = False

    def failure(self) -> None:
        self._failures += 1
        if self._trial_in_flight or self._failures >= self._policy.failure_threshold:
            self._opened_at = self._clock()
        self._trial_in_flight = False

    def abandon(self) -> None:
        """An allowed request ended without a verdict (cancelled): free the trial."""
        self._trial_in_flight = False
