"""The embedded console: `GET /console`, served by the gateway itself.

A page for administrators (a credential with the admin role; loopback
clients only unless `console: any`): the overview of a chosen window
(requests, error rate, latency and time to first token by endpoint, cost by
tenant, usage by endpoint, model and rule, endpoint states, failovers, the
active policy revision), the recent requests from the audit records with each
one's decision, and the active policy and endpoint registry (no secrets).

The page (`static/`) is plain HTML and JavaScript that signs in with the
admin's key, keeps it in the tab's sessionStorage and sends it as a bearer
credential to the JSON API (:mod:`.api`); no cookie, so no cross-site request
can use it. Charts are drawn by Chart.js, installed by `make setup` (`npm ci`
of the committed package.json / package-lock.json) into node_modules/ and
served from there; without it the page shows its tables only.

`create_app` registers all of it with one call: :func:`add_console`.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from gateway.console.access import check_client
from gateway.console.api import CONSOLE, add_routes
from gateway.console.data import ConsoleData
from gateway.errors import NotFoundError
from gateway.state import AUDIT, COMPILED, FORWARDER, REGISTRY, SETTINGS

__all__ = ["add_console"]

STATIC = Path(__file__).parent / "static"
# The files of the page, by the name they are served under.
PAGE_FILES = {"console.js": "text/javascript", "console.css": "text/css"}
CHART_JS = Path("chart.js") / "dist" / "chart.umd.min.js"
# The page loads only its own scripts, styles and API: no inline script, no
# third-party origin, never framed.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
ASSET_ROOT: web.AppKey[Path | None] = web.AppKey("console_assets")


def chart_library(assets_dir: str | None) -> Path | None:
    """Where `make setup` installed Chart.js: the setting's directory, else the
    checkout's node_modules/, else the working directory's."""
    checkout = Path(__file__).resolve().parents[2] / "node_modules"
    candidates = [Path(assets_dir)] if assets_dir else [checkout, Path.cwd() / "node_modules"]
    for root in candidates:
        if (root / CHART_JS).is_file():
            return root / CHART_JS
    return None


async def page(request: web.Request) -> web.StreamResponse:
    check_client(request)
    return web.FileResponse(
        STATIC / "index.html",
        headers={**SECURITY_HEADERS, "Content-Type": "text/html; charset=utf-8"},
    )


async def static_file(request: web.Request) -> web.StreamResponse:
    check_client(request)
    name = request.match_info["name"]
    if name not in PAGE_FILES:
        raise NotFoundError(f"no console file {name!r}")
    return web.FileResponse(
        STATIC / name, headers={**SECURITY_HEADERS, "Content-Type": PAGE_FILES[name]}
    )


async def chart_js(request: web.Request) -> web.StreamResponse:
    check_client(request)
    path = request.app[ASSET_ROOT]
    if path is None:
        raise NotFoundError(
            "the console's chart library is not installed: run `make setup` (npm ci)",
            code="console_assets_missing",
        )
    return web.FileResponse(path, headers={**SECURITY_HEADERS, "Content-Type": "text/javascript"})


def add_console(app: web.Application) -> None:
    """Register the console on `app` (after create_app has set the shared state)."""
    settings = app[SETTINGS]
    if settings.console == "off":
        return
    compiled: dict[str, str] = app[COMPILED]
    app[CONSOLE] = ConsoleData(settings, app[REGISTRY], app[FORWARDER], app[AUDIT], compiled)
    app[ASSET_ROOT] = chart_library(settings.console_assets_dir)
    app.router.add_get("/console", page)
    app.router.add_get("/console/", page)
    app.router.add_get("/console/static/{name}", static_file)
    app.router.add_get("/console/lib/chart.js", chart_js)
    add_routes(app)
