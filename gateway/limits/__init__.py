"""Per-tenant rate limits and budgets, reserved before dispatch and settled after.

- :mod:`~gateway.limits.config`: the limits file (typed, frozen, validated).
- :mod:`~gateway.limits.estimate`: the worst case a request may cost.
- :mod:`~gateway.limits.backend`: the one async interface (reserve, settle,
  release, remaining_share), fail-closed or fail-open.
- :mod:`~gateway.limits.redis_backend` (shared by replicas) and
  :mod:`~gateway.limits.memory` (one replica only): the counters.
- :mod:`~gateway.limits.opa`: the `budget` field of OPA's input.
- :mod:`~gateway.limits.factory`: the limiter the settings describe.
"""

from gateway.limits.backend import LimitsBackend, LimitsObserver, StoreUnavailable
from gateway.limits.config import LimitsConfig, LimitsConfigError, ReservationPolicy, load_limits
from gateway.limits.estimate import Estimate, estimate_request
from gateway.limits.model import BudgetStatus, Reservation, Subject
from gateway.limits.opa import budget_input

__all__ = [
    "BudgetStatus",
    "Estimate",
    "LimitsBackend",
    "LimitsConfig",
    "LimitsConfigError",
    "LimitsObserver",
    "Reservation",
    "ReservationPolicy",
    "StoreUnavailable",
    "Subject",
    "budget_input",
    "estimate_request",
    "load_limits",
]
