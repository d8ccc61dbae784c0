"""The console's JSON API (`/console/api/...`): every handler checks the admin
credential first (:mod:`gateway.console.access`); errors are the gateway's
usual `{"error": {...}}` bodies (the request middleware renders them)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from gateway.console.access import admin_identity
from gateway.console.data import ConsoleData, Window
from gateway.errors import BadRequestError, NotFoundError
from observability.record_filter import FilterError, RecordFilter
from observability.times import parse_moment

CONSOLE: web.AppKey[ConsoleData] = web.AppKey("console")
MAX_LIMIT = 1000
# Console answers hold every tenant's traffic: never cached on the way.
NO_STORE = {"Cache-Control": "no-store"}


def _json(doc: Any) -> web.Response:
    return web.json_response(doc, headers=NO_STORE)


def window(request: web.Request, default_since: str = "1h") -> Window:
    """`since` / `until`: a time (RFC 3339) or a duration before now."""
    now = datetime.now(UTC)
    since_text = request.query.get("since") or default_since
    until_text = request.query.get("until")
    try:
        since = parse_moment(since_text, now)
        until = parse_moment(until_text, now) if until_text else now
    except ValueError as err:
        raise BadRequestError(f"window: {err}", code="invalid_window") from None
    if since >= until:
        raise BadRequestError(
            f"window: since ({since_text}) must be before until ({until_text or 'now'})",
            code="invalid_window",
        )
    return Window(since, until)


def selection(request: web.Request) -> RecordFilter:
    """The filters: repeatable or comma-separated `tenant`, `rule`, `endpoint`,
    `operation`, `data_class`; `status` as `kamiwaza stats --status` takes it."""

    def values(name: str) -> list[str]:
        return [v.strip() for raw in request.query.getall(name, []) for v in raw.split(",")]

    try:
        return RecordFilter.of(
            tenants=values("tenant"),
            rules=values("rule"),
            endpoints=values("endpoint"),
            operations=values("operation"),
            data_classes=values("data_class"),
            status=request.query.get("status") or None,
        )
    except FilterError as err:
        raise BadRequestError(f"status: {err}", code="invalid_filter") from None


async def whoami(request: web.Request) -> web.Response:
    identity = await admin_identity(request)
    return _json(
        {
            "tenant": identity.tenant,
            "user": identity.user,
            "roles": list(identity.roles),
            "auth_method": identity.method,
        }
    )


async def overview(request: web.Request) -> web.Response:
    await admin_identity(request)
    data = request.app[CONSOLE]
    return _json(await data.overview(window(request), selection(request)))


async def requests(request: web.Request) -> web.Response:
    await admin_identity(request)
    raw_limit = request.query.get("limit", "200")
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_LIMIT:
        raise BadRequestError(
            f"limit: expected a number from 1 to {MAX_LIMIT}, got {raw_limit!r}",
            code="invalid_limit",
        )
    data = request.app[CONSOLE]
    search = request.query.get("q", "").strip()
    return _json(await data.requests(window(request), selection(request), search, int(raw_limit)))


async def request_detail(request: web.Request) -> web.Response:
    await admin_identity(request)
    request_id = request.match_info["request_id"]
    record = await request.app[CONSOLE].request(window(request, "7d"), request_id)
    if record is None:
        raise NotFoundError(
            f"no audit record of request {request_id} in the window", code="request_not_found"
        )
    return _json(record)


async def policy(request: web.Request) -> web.Response:
    await admin_identity(request)
    return _json(request.app[CONSOLE].policy())


def add_routes(app: web.Application) -> None:
    app.router.add_get("/console/api/whoami", whoami)
    app.router.add_get("/console/api/overview", overview)
    app.router.add_get("/console/api/requests", requests)
    app.router.add_get("/console/api/requests/{request_id}", request_detail)
    app.router.add_get("/console/api/policy", policy)
