"""The gateway's client for OPA decisions, failing closed.

One long-lived opa-python-client async session queries
`data.kamiwaza.route.decision`. Unreachable, slow (past the configured timeout),
erroring or result-less OPA all become :class:`PolicyUnavailableError` (503):
without a decision nothing is forwarded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from opa_client.errors import ConnectionsError
from opa_client.opa_async import AsyncOpaClient
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

from gateway.errors import PolicyUnavailableError
from observability.metrics import rule_label

log = logging.getLogger(__name__)

DECISION_PACKAGE = "kamiwaza/route"
DECISION_RULE = "decision"
GUARDS_PACKAGE = "kamiwaza/guards"
GUARDS_RULE = "refusals"


@dataclass(frozen=True, slots=True)
class ShadowDecision:
    """The candidate policy's decision for the same request (`shadow_policy`)."""

    revision: str | None
    route_to: str | None
    fallback: tuple[str, ...]
    rule: dict[str, Any] | None
    deny: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Decision:
    decision_id: str | None
    route_to: str | None
    fallback: tuple[str, ...]
    rule: dict[str, Any] | None
    conditions: list[dict[str, Any]]
    overridden_by: str | None
    deny: tuple[str, ...]
    revision: str | None
    elapsed_ms: float = 0.0
    shadow: ShadowDecision | None = None

    @property
    def route(self) -> list[str]:
        """Endpoints to try, in order."""
        return [self.route_to, *self.fallback] if self.route_to else []

    def shadow_disagreement(self) -> dict[str, Any] | None:
        """What the audit record keeps of the shadow decision: only when its
        endpoint or rule differs from the live one."""
        shadow = self.shadow
        if shadow is None or (
            shadow.route_to == self.route_to and _rule_name(shadow.rule) == _rule_name(self.rule)
        ):
            return None
        return {"revision": shadow.revision, "route_to": shadow.route_to, "rule": shadow.rule}


def _rule_name(rule: dict[str, Any] | None) -> object:
    return rule.get("name") if rule else None


def parse_shadow(doc: Any) -> ShadowDecision:
    """The decision's `shadow` field; TypeError when its shape is wrong."""
    if not isinstance(doc, dict):
        raise TypeError("shadow is not an object")
    route_to, fallback, deny = doc.get("route_to"), doc.get("fallback"), doc.get("deny")
    rule, revision = doc.get("rule"), doc.get("revision")
    if route_to is not None and not isinstance(route_to, str):
        raise TypeError("shadow.route_to")
    if not isinstance(fallback, list) or not all(isinstance(f, str) for f in fallback):
        raise TypeError("shadow.fallback")
    if not isinstance(deny, list) or not all(isinstance(d, str) for d in deny):
        raise TypeError("shadow.deny")
    if rule is not None and not (isinstance(rule, dict) and isinstance(rule.get("name"), str)):
        raise TypeError("shadow.rule")
    if revision is not None and not isinstance(revision, str):
        raise TypeError("shadow.revision")
    return ShadowDecision(revision, route_to, tuple(fallback), rule, tuple(deny))


def parse_decision(doc: dict[str, Any], decision_id: str | None, elapsed_ms: float) -> Decision:
    """Check the decision contract; a malformed answer is treated like no answer."""
    try:
        route_to = doc["route_to"]
        fallback = doc["fallback"]
        deny = doc["deny"]
        if route_to is not None and not isinstance(route_to, str):
            raise TypeError("route_to")
        if not isinstance(fallback, list) or not all(isinstance(f, str) for f in fallback):
            raise TypeError("fallback")
        if not isinstance(deny, list) or not all(isinstance(d, str) for d in deny):
            raise TypeError("deny")
        if route_to is None and not deny:
            raise TypeError("route_to is null without a deny reason")
        return Decision(
            decision_id=decision_id,
            route_to=route_to,
            fallback=tuple(fallback),
            rule=doc.get("rule"),
            conditions=list(doc.get("conditions") or []),
            overridden_by=doc.get("overridden_by"),
            deny=tuple(deny),
            revision=doc.get("revision"),
            elapsed_ms=elapsed_ms,
            shadow=_shadow_of(doc),
        )
    except (KeyError, TypeError) as err:
        raise PolicyUnavailableError(
            f"OPA returned a malformed decision ({err}); refusing to route",
            code="policy_malformed",
        ) from err


def _shadow_of(doc: dict[str, Any]) -> ShadowDecision | None:
    # The shadow never affects routing: a malformed one is dropped, not a 503.
    if "shadow" not in doc:
        return None
    try:
        return parse_shadow(doc["shadow"])
    except TypeError as err:
        log.warning("OPA returned a malformed shadow decision (%s); ignored", err)
        return None


class PolicyClient:
    """Queries OPA for routing decisions over one long-lived session."""

    def __init__(self, url: str, timeout_ms: int, *, tracer: Tracer | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"OPA URL must be http(s)://host:port, got {url!r}")
        self.url = url
        self.timeout = timeout_ms / 1000
        self.tracer = tracer  # None: no spans (observability/tracing.py)
        # No retries: a retry would blow the latency budget; failing closed is the point.
        self._client = AsyncOpaClient(
            host=parts.hostname,
            port=parts.port or (443 if parts.scheme == "https" else 80),
            ssl=parts.scheme == "https",
            retries=0,
            timeout=self.timeout,
        )

    async def start(self) -> None:
        await self._client._init_session()

    async def close(self) -> None:
        await self._client.close_connection()

    async def healthy(self) -> bool:
        return bool(await self._client.check_health())

    async def decide(self, input_doc: dict[str, Any]) -> Decision:
        if self.tracer is None:
            return await self._decide(input_doc)
        with self.tracer.start_as_current_span(
            "kamiwaza.policy.decide",
            kind=SpanKind.CLIENT,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                decision = await self._decide(input_doc)
            except PolicyUnavailableError as err:
                span.set_attribute("error.type", err.code)
                span.set_status(Status(StatusCode.ERROR, err.code))
                raise
            span.set_attributes(
                {
                    "kamiwaza.decision_id": decision.decision_id or "none",
                    "kamiwaza.rule": rule_label(decision.rule, decision.overridden_by),
                    "kamiwaza.route_to": decision.route_to or "none",
                    "kamiwaza.decision": "deny" if decision.deny else "route",
                }
            )
            return decision

    async def _query(self, input_doc: dict[str, Any], package: str, rule: str) -> Any:
        """One OPA query, every failure mapped to PolicyUnavailableError (fail closed)."""
        try:
            async with asyncio.timeout(self.timeout):
                return await self._client.query_rule(input_doc, package, rule)
        except TimeoutError as err:
            raise PolicyUnavailableError(
                f"OPA did not answer within {self.timeout * 1000:.0f} ms; refusing to route",
                code="policy_timeout",
            ) from err
        except (aiohttp.ClientError, ConnectionsError, OSError) as err:
            raise PolicyUnavailableError(
                f"OPA is unreachable ({type(err).__name__}); refusing to route",
                code="policy_unreachable",
            ) from err

    async def refused_endpoints(self, input_doc: dict[str, Any]) -> frozenset[str]:
        """Endpoints the guards refuse for this caller (`data.kamiwaza.guards.refusals`)."""
        answer = await self._query(input_doc, GUARDS_PACKAGE, GUARDS_RULE)
        result = answer.get("result", {}) if isinstance(answer, dict) else None
        if not isinstance(result, dict):
            raise PolicyUnavailableError(
                "OPA answered the guards query without an object; refusing to list",
                code="policy_malformed",
            )
        return frozenset(result)

    async def guard_refusals(self, input_doc: dict[str, Any]) -> dict[str, list[str]]:
        """Each endpoint the guards refuse for this request, with their reasons."""
        answer = await self._query(input_doc, GUARDS_PACKAGE, GUARDS_RULE)
        result = answer.get("result", {}) if isinstance(answer, dict) else None
        if not isinstance(result, dict):
            raise PolicyUnavailableError(
                "OPA answered the guards query without an object", code="policy_malformed"
            )
        return {name: sorted(map(str, reasons)) for name, reasons in sorted(result.items())}

    async def _decide(self, input_doc: dict[str, Any]) -> Decision:
        start = time.perf_counter()
        answer = await self._query(input_doc, DECISION_PACKAGE, DECISION_RULE)
        elapsed_ms = (time.perf_counter() - start) * 1000
        result = answer.get("result") if isinstance(answer, dict) else None
        if not isinstance(result, dict):
            raise PolicyUnavailableError(
                "OPA answered without a decision (is the policy loaded?); refusing to route",
                code="policy_no_result",
            )
        return parse_decision(result, answer.get("decision_id"), elapsed_ms)
