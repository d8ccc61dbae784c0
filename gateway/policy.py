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
    # What endpoint health did to the route (rego/kamiwaza/health): skipped, moved,
    # verdicts; None when the policy has no health section.
    health: dict[str, Any] | None = None

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


class _Malformed(TypeError):
    """A field of OPA's answer breaks the decision contract (named in the message)."""


def _opt_str(doc: dict[str, Any], key: str, where: str) -> str | None:
    value = doc.get(key)
    if value is not None and not isinstance(value, str):
        raise _Malformed(f"{where}{key} must be a string or null")
    return value


def _str_list(doc: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
    if key not in doc:
        raise _Malformed(f"{where}{key} is missing")
    value = doc[key]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise _Malformed(f"{where}{key} must be a list of strings")
    return tuple(value)


def _rule(value: Any, where: str) -> dict[str, Any] | None:
    """`rule`: null (an override or a deny), or {index: int, name: str, source: str}.

    Only those three fields are kept: the rule goes into every audit record."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _Malformed(f"{where}rule must be an object or null")
    index, name, source = value.get("index"), value.get("name"), value.get("source")
    if isinstance(index, bool) or not isinstance(index, int):
        raise _Malformed(f"{where}rule.index must be an integer")
    if not isinstance(name, str) or not name:
        raise _Malformed(f"{where}rule.name must be a non-empty string")
    if not isinstance(source, str):
        raise _Malformed(f"{where}rule.source must be a string")
    return {"index": index, "name": name, "source": source}


def parse_shadow(doc: Any) -> ShadowDecision:
    """The decision's `shadow` field; TypeError when its shape is wrong."""
    if not isinstance(doc, dict):
        raise _Malformed("shadow is not an object")
    route_to = _opt_str(doc, "route_to", "shadow.")
    fallback = _str_list(doc, "fallback", "shadow.")
    deny = _str_list(doc, "deny", "shadow.")
    rule = _rule(doc.get("rule"), "shadow.")
    revision = _opt_str(doc, "revision", "shadow.")
    return ShadowDecision(revision, route_to, fallback, rule, deny)


def parse_decision(doc: Any, decision_id: Any, elapsed_ms: float) -> Decision:
    """Check the whole decision contract; a malformed answer is treated like no
    answer (503 `policy_malformed`), before anything is forwarded.

    `route_to` a string or null (then `deny` gives a reason); `fallback` and
    `deny` lists of strings; `rule` null or {index, name, source}; `conditions`
    a list of objects; `overridden_by` and `revision` strings or null;
    `decision_id` (OPA's, beside the result) a string or absent.
    """
    try:
        if not isinstance(doc, dict):
            raise _Malformed("the decision is not an object")
        if "route_to" not in doc:
            raise _Malformed("route_to is missing")
        route_to = _opt_str(doc, "route_to", "")
        fallback = _str_list(doc, "fallback", "")
        deny = _str_list(doc, "deny", "")
        if route_to is None and not deny:
            raise _Malformed("route_to is null without a deny reason")
        if route_to is not None and not route_to:
            raise _Malformed("route_to is empty")
        conditions = doc.get("conditions")
        if conditions is None:
            conditions = []
        if not isinstance(conditions, list) or not all(isinstance(c, dict) for c in conditions):
            raise _Malformed("conditions must be a list of objects")
        if decision_id is not None and not isinstance(decision_id, str):
            raise _Malformed("decision_id must be a string")
        return Decision(
            decision_id=decision_id,
            route_to=route_to,
            fallback=fallback,
            rule=_rule(doc.get("rule"), ""),
            conditions=list(conditions),
            overridden_by=_opt_str(doc, "overridden_by", ""),
            deny=deny,
            revision=_opt_str(doc, "revision", ""),
            elapsed_ms=elapsed_ms,
            shadow=_shadow_of(doc),
            health=_health_of(doc),
        )
    except _Malformed as err:
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


def _health_of(doc: dict[str, Any]) -> dict[str, Any] | None:
    # The report explains the route, it does not make it (route_to and fallback
    # do): a malformed one is dropped, not a 503.
    health = doc.get("health")
    if not isinstance(health, dict):
        if health is not None:
            log.warning("OPA returned a malformed health report; ignored")
        return None
    ok = all(
        isinstance(entries := health.get(key, []), list)
        and all(isinstance(e, dict) and isinstance(e.get("endpoint"), str) for e in entries)
        for key in ("skipped", "moved")
    )
    if not ok or not isinstance(health.get("verdicts", {}), dict):
        log.warning("OPA returned a malformed health report; ignored")
        return None
    return health


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
        except (aiohttp.ContentTypeError, ValueError, RecursionError) as err:
            # An answer that is not JSON (whatever its content type says).
            raise PolicyUnavailableError(
                "OPA answered with a body that is not JSON; refusing to route",
                code="policy_malformed",
            ) from err
        except (aiohttp.ClientError, ConnectionsError, OSError) as err:
            raise PolicyUnavailableError(
                f"OPA is unreachable ({type(err).__name__}); refusing to route",
                code="policy_unreachable",
            ) from err

    async def refused_endpoints(self, input_doc: dict[str, Any]) -> frozenset[str]:
        """Endpoints the guards refuse for this caller (`data.kamiwaza.guards.refusals`)."""
        return frozenset(await self.guard_refusals(input_doc))

    async def guard_refusals(self, input_doc: dict[str, Any]) -> dict[str, list[str]]:
        """Each endpoint the guards refuse for this request, with their reasons."""
        answer = await self._query(input_doc, GUARDS_PACKAGE, GUARDS_RULE)
        result = answer.get("result", {}) if isinstance(answer, dict) else None
        if not isinstance(result, dict) or not all(
            isinstance(reasons, list) and all(isinstance(r, str) for r in reasons)
            for reasons in result.values()
        ):
            raise PolicyUnavailableError(
                "OPA answered the guards query without an object of reason lists",
                code="policy_malformed",
            )
        return {name: sorted(reasons) for name, reasons in sorted(result.items())}

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
