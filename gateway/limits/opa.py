"""The limiter's part of OPA's input document: the subject's remaining budget.

The gateway adds it as `input.budget` before asking for a routing decision,
so that a policy can send a tenant near its cap to a cheaper endpoint
(`budget_remaining_share: "<0.1"` in the YAML policy) instead of refusing it::

    "budget": {"remaining_share": 0.12, "remaining_usd": 6.0, "limit": "tenant.usd_per_day"}

`remaining_share` is what is left of the tightest spend limit (day or month;
the tenant's, its key's or its user's), from 0 (spent) to 1 (untouched),
in-flight reservations counted as spent. Without a spend limit the field is
left out (absent, never null), and a condition on it is false.
"""

from __future__ import annotations

from typing import Any

from gateway.limits.model import BudgetStatus

FIELD = "budget"


def budget_input(status: BudgetStatus | None) -> dict[str, Any] | None:
    """The `budget` object of the input document, or None to leave it out."""
    if status is None:
        return None
    return {
        "remaining_share": status.remaining_share,
        "remaining_usd": round(status.remaining_usd, 6),
        "limit": status.limit_id,
    }
