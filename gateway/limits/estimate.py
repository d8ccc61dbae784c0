"""The worst case a request may cost, worked out from its body before it is sent.

A request reserves, before it is forwarded, the tokens and dollars it could use
at most: its prompt (estimated from the body, as for upstreams that report no
usage) plus the output it allows (`max_completion_tokens`, `max_tokens` or
`max_output_tokens`, times `n`), at the highest prices of the endpoints its
route may reach (the chosen one and its fallbacks). The reservation policy caps
it: a request that allows 100,000 output tokens reserves `max_output_tokens`,
so that one large `max_tokens` cannot lock a tenant out of its own budget. The
cap is a trade-off, stated in the README: such a request may cost more than it
reserved, which settles as overspend.

Pure functions; no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from gateway.limits.config import ReservationPolicy
from gateway.providers.adapter import EMBEDDINGS
from gateway.providers.usage import estimate_prompt_tokens, estimate_text_tokens
from translator.registry import Pricing

# Body fields that bound the output, in the order OpenAI's APIs prefer them.
OUTPUT_LIMIT_FIELDS: Final = ("max_completion_tokens", "max_tokens", "max_output_tokens")
MAX_CHOICES: Final = 128  # OpenAI's own bound on `n`


@dataclass(frozen=True, slots=True)
class Estimate:
    """What a request reserves: tokens in and out, and their cost in USD."""

    input_tokens: int
    output_tokens: int
    cost_usd: float
    capped: bool = False  # the output (or cost) was cut to the reservation cap

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens


def requested_output_tokens(body: Mapping[str, Any]) -> int | None:
    """The output bound the request names, or None (a bad value counts as none:
    the adapter rejects it later, and the reservation uses the default)."""
    for name in OUTPUT_LIMIT_FIELDS:
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def choices(body: Mapping[str, Any]) -> int:
    value = body.get("n")
    if isinstance(value, int) and not isinstance(value, bool) and value > 1:
        return min(value, MAX_CHOICES)
    return 1


def worst_pricing(prices: Iterable[Pricing]) -> Pricing:
    """The highest input and output price among `prices` (zero when there are none)."""
    items = list(prices)
    return Pricing(
        input_per_1k=max((p.input_per_1k for p in items), default=0.0),
        output_per_1k=max((p.output_per_1k for p in items), default=0.0),
    )


def embedding_input_tokens(body: Mapping[str, Any]) -> int:
    """Tokens of an embeddings request's `input`: a string, a list of strings,
    or token arrays (counted as given)."""
    value = body.get("input")
    items = value if isinstance(value, list) else [value]
    total = 0
    for item in items:
        if isinstance(item, str):
            total += estimate_text_tokens(len(item))
        elif isinstance(item, int) and not isinstance(item, bool):
            total += 1  # one token id of a flat token array
        elif isinstance(item, list):
            total += len(item)  # a token array
    return total


def estimate_request(
    body: Mapping[str, Any],
    prices: Pricing | Iterable[Pricing],
    policy: ReservationPolicy,
    operation: str = "chat",
) -> Estimate:
    """The reservation for `body` at `prices` (one endpoint's, or every endpoint of
    the route: the highest counts), capped by `policy`. Embeddings have no output."""
    pricing = prices if isinstance(prices, Pricing) else worst_pricing(prices)
    if operation == EMBEDDINGS:
        tokens = embedding_input_tokens(body)
        cost = cost_usd(tokens, 0, pricing)
        if policy.max_usd is not None and cost > policy.max_usd:
            return Estimate(tokens, 0, policy.max_usd, capped=True)
        return Estimate(tokens, 0, cost)
    input_tokens = estimate_prompt_tokens(body)
    requested = requested_output_tokens(body)
    wanted = (requested if requested is not None else policy.default_output_tokens) * choices(body)
    output_tokens = min(wanted, policy.max_output_tokens)
    capped = output_tokens < wanted
    cost = cost_usd(input_tokens, output_tokens, pricing)
    if policy.max_usd is not None and cost > policy.max_usd:
        cost, capped = policy.max_usd, True
    return Estimate(input_tokens, output_tokens, cost, capped)


def cost_usd(input_tokens: int, output_tokens: int, pricing: Pricing) -> float:
    """The registry's per-1k prices applied (as gateway.providers.usage.Usage.cost_usd)."""
    return (input_tokens * pricing.input_per_1k + output_tokens * pricing.output_per_1k) / 1000.0
