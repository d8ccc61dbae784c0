"""`GET /healthz` (liveness; in a worker of `serve --workers`, which one) and
`GET /readyz` (readiness: OPA answers, a policy is active, the gateway is not
draining), with the active policy revision."""

from __future__ import annotations

import os
from typing import Any

from aiohttp import web

from gateway.drain import DRAIN
from gateway.policy_state import POLICY_STATE
from gateway.state import POLICY, WORKER


async def healthz(request: web.Request) -> web.Response:
    worker = request.app.get(WORKER)
    if worker is None:
        return web.json_response({"status": "ok"})
    # Which process answered (`serve --workers`): a probe can tell them apart.
    return web.json_response({"status": "ok", "worker": worker.name, "pid": os.getpid()})


async def readyz(request: web.Request) -> web.Response:
    drain = request.app.get(DRAIN)
    if drain is not None and drain.draining:
        return web.json_response({"status": "draining"}, status=503)
    policy = request.app.get(POLICY)
    healthy = policy is not None and await policy.healthy()
    state = request.app.get(POLICY_STATE)
    body: dict[str, Any] = {"status": "ready", "opa": "healthy" if healthy else "unhealthy"}
    if state is not None:
        body["policy"] = state.describe()
    if not healthy or (state is not None and not state.ready):
        body["status"] = "unavailable"
        return web.json_response(body, status=503)
    return web.json_response(body)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
