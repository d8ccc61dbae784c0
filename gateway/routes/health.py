"""`GET /healthz` (liveness) and `GET /readyz` (readiness: OPA answers)."""

from __future__ import annotations

from aiohttp import web

from gateway.state import POLICY


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    policy = request.app.get(POLICY)
    healthy = policy is not None and await policy.healthy()
    if not healthy:
        return web.json_response({"status": "unavailable", "opa": "unhealthy"}, status=503)
    return web.json_response({"status": "ready", "opa": "healthy"})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
