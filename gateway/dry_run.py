"""Dry run of one request: what the gateway would do with it, without forwarding.

`kamiwaza route --dry-run` and `POST /v1/route/explain` (an admin key) take the
request as the client would send it (headers, key, body, path) and run the
gateway's own steps on it, stopping where the gateway would answer: the
authenticator, the metadata reader (`resolve_metadata`, `opa_input`), the
policy client (the decision, with the matched rule's conditions and their
expected and actual values, and the guards' refusals with their reasons), then
the endpoints the forwarder would try, in order, after its circuit breakers and
the endpoints it cannot reach. The result says what the client would get
(`outcome`): the status, and the error body or the endpoint that would answer.

Nothing is forwarded and no audit record is written. OPA still logs the two
queries; their request ids start with `dry-run-`, so `kamiwaza policy diff`
does not replay them.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.auth import Identity
from gateway.errors import BadRequestError, GatewayError, PermissionDeniedError, UpstreamError
from gateway.fronts import Front, all_fronts
from gateway.metadata import RequestMetadata, opa_input, resolve_metadata
from gateway.pipeline.limiting import add_budget
from gateway.policy import Decision
from gateway.server import read_body
from gateway.state import AUTHENTICATOR, FORWARDER, LIMITS, POLICY, SETTINGS

DRY_RUN_PREFIX = "dry-run-"
DEFAULT_PATH = "/v1/chat/completions"
ADMIN_ROLE = "admin"


def refusal(decision: Decision) -> PermissionDeniedError:
    """The 403 the gateway answers for a decision with deny reasons."""
    no_route = all(reason.startswith("no route") for reason in decision.deny)
    return PermissionDeniedError(
        ("no route for this request: " if no_route else "request denied by policy: ")
        + "; ".join(decision.deny),
        code="no_route" if no_route else "policy_denied",
        details={"deny": list(decision.deny)},
    )


def _fronts() -> dict[str, Front]:
    return {path: front for front in all_fronts() for path in front.paths}


def _identity(identity: Identity) -> dict[str, Any]:
    return {
        "tenant": identity.tenant,
        "user": identity.user,
        "roles": list(identity.roles),
        "key_id": identity.key_id,
        "method": str(identity.method),
        "allowed_data_classes": (
            None if identity.allowed_data_classes is None else list(identity.allowed_data_classes)
        ),
        "default_data_class": identity.default_data_class,
    }


def _metadata(meta: RequestMetadata) -> dict[str, Any]:
    return {
        "data_class": meta.data_class,
        "latency_budget_ms": meta.latency_budget_ms,
        "cost_cap_per_1k": meta.cost_cap_per_1k,
        "labels": dict(meta.labels),
    }


def _decision(decision: Decision) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "route_to": decision.route_to,
        "fallback": list(decision.fallback),
        "rule": decision.rule,
        "conditions": decision.conditions,
        "overridden_by": decision.overridden_by,
        "deny": list(decision.deny),
        "revision": decision.revision,
    }
    if decision.shadow is not None:
        s = decision.shadow
        doc["shadow"] = {
            "revision": s.revision,
            "route_to": s.route_to,
            "fallback": list(s.fallback),
            "rule": s.rule,
            "deny": list(s.deny),
        }
    return doc


def _endpoints(app: web.Application, route: list[str]) -> list[dict[str, Any]]:
    """The route as the forwarder would walk it, without reserving a trial."""
    forwarder = app[FORWARDER]
    known = set(forwarder.endpoint_names)
    out = []
    for name in dict.fromkeys(route):
        entry: dict[str, Any] = {"endpoint": name}
        if name not in known:
            reason = forwarder.unavailable.get(name, "the endpoint is not in the registry")
            entry.update(state="skip", reason=f"unavailable: {reason}")
        else:
            breaker = forwarder.breaker(name)
            state = breaker.state
            if state == "open":
                wait = breaker.retry_after() or 0.0
                entry.update(state="skip", reason=f"circuit open (trial in {wait:.0f} s)")
            elif state == "half_open":
                entry.update(state="try", reason="circuit half-open: one trial request")
            else:
                entry.update(state="try", reason=None)
        out.append(entry)
    return out


def _stop(doc: dict[str, Any], err: GatewayError) -> dict[str, Any]:
    doc["outcome"] = {"status": err.status, "endpoint": None, **err.body()}
    return doc


async def dry_run(
    app: web.Application,
    *,
    headers: Mapping[str, str],
    body: Any,
    path: str = DEFAULT_PATH,
) -> dict[str, Any]:
    """Everything the gateway would work out for this request, as plain data."""
    settings = app[SETTINGS]
    cased = CIMultiDictProxy(CIMultiDict(headers))
    doc: dict[str, Any] = {"dry_run": True, "path": path}
    try:
        identity = await app[AUTHENTICATOR].authenticate(cased)
    except GatewayError as err:
        return _stop(doc, err)
    doc["identity"] = _identity(identity)
    try:
        if not isinstance(body, dict):
            raise BadRequestError("request body must be a JSON object", code="invalid_body")
        request = _fronts()[path].parse(dict(body), cased)
        meta = resolve_metadata(identity, cased, request.body, settings)
    except GatewayError as err:
        return _stop(doc, err)
    doc["metadata"] = _metadata(meta)
    input_doc = opa_input(
        identity,
        meta,
        operation=request.operation,
        model=request.model,
        request_id=DRY_RUN_PREFIX + uuid.uuid4().hex,
        path=path,
        stream=request.stream,
    )
    doc["input"] = input_doc
    try:
        # The remaining budget a policy may route on, as the request would see it.
        await add_budget(app.get(LIMITS), identity, input_doc)
        decision = await app[POLICY].decide(input_doc)
        refusals = await app[POLICY].guard_refusals(input_doc)
    except GatewayError as err:
        return _stop(doc, err)
    doc["decision"] = _decision(decision)
    doc["guard_refusals"] = refusals
    if decision.deny:
        doc["endpoints"] = []
        return _stop(doc, refusal(decision))
    doc["endpoints"] = _endpoints(app, decision.route)
    tried = [e["endpoint"] for e in doc["endpoints"] if e["state"] == "try"]
    if not tried:
        # What the forwarder answers when it skips every endpoint of the route.
        skipped = UpstreamError(
            "no endpoint of the route is available",
            code="no_upstream_available",
            status=503,
        )
        return _stop(doc, skipped)
    # The first endpoint that would be tried; the rest are its failover order.
    doc["outcome"] = {"status": 200, "endpoint": tried[0], "error": None}
    return doc


# -- POST /v1/route/explain ----------------------------------------------------


async def route_explain(request: web.Request) -> web.Response:
    """`POST /v1/route/explain` (admin key): the dry run of the request in the body,
    `{"headers": {...}, "body": {...}, "path": "/v1/chat/completions"}`."""
    caller = await request.app[AUTHENTICATOR].authenticate(request.headers)
    if ADMIN_ROLE not in caller.roles:
        raise PermissionDeniedError(
            f"explaining a route needs a credential with the role {ADMIN_ROLE!r}",
            code="admin_required",
        )
    from gateway.pipeline.stages import parse_json

    spec = parse_json(await read_body(request, request.app[SETTINGS].body_timeout_s))
    if not isinstance(spec, dict) or not isinstance(spec.get("body"), dict):
        raise BadRequestError(
            'expected {"headers": {...}, "body": {...}, "path": ...}: the request to '
            "explain, as the client would send it",
            code="invalid_body",
        )
    unknown = sorted(set(spec) - {"headers", "body", "path"})
    if unknown:
        raise BadRequestError(f"unknown field(s): {', '.join(unknown)}", code="invalid_body")
    headers = spec.get("headers", {})
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise BadRequestError("'headers' must be an object of strings", code="invalid_body")
    path = spec.get("path", DEFAULT_PATH)
    paths = _fronts()
    if path not in paths:
        raise BadRequestError(
            f"'path' must be one of {', '.join(sorted(paths))}", code="invalid_body"
        )
    return web.json_response(
        await dry_run(request.app, headers=headers, body=spec["body"], path=path)
    )


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/route/explain", route_explain)
