"""The cheapest proxy the gateway's design allows: the floor under its latency.

An aiohttp/uvloop server that, per request, asks OPA for the routing decision
through opa-python-client's async client on one long-lived session (as the
gateway does) and then forwards the body to one upstream over one pooled
aiohttp session, returning its answer (JSON, or the SSE stream chunk by chunk).
Nothing else: no credential check, metadata, failover, adapters, audit record or
metrics. Whatever latency this adds is what the components the gateway is
built from (aiohttp on both sides, an OPA round trip over loopback HTTP) cost
on this machine, before any of the gateway's own work.

    python bench/floor_proxy.py PORT OPA_URL UPSTREAM_URL
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import aiohttp
import uvloop
from aiohttp import web
from opa_client.opa_async import AsyncOpaClient

OPA = web.AppKey("opa", AsyncOpaClient)
SESSION = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM = web.AppKey("upstream", str)


async def handler(request: web.Request) -> web.StreamResponse:
    app = request.app
    raw = await request.read()
    body = json.loads(raw)  # as the gateway does: no second decode of the body
    answer = await app[OPA].query_rule(
        {
            "tenant": "bench",
            "user": {"roles": []},
            "data_class": "internal",
            "latency_budget_ms": 50,
            "model": body.get("model"),
            "request": {"id": "floor", "path": request.path, "stream": bool(body.get("stream"))},
        },
        "kamiwaza/route",
        "decision",
    )
    if not answer.get("result", {}).get("route_to"):
        return web.json_response({"error": "no route"}, status=403)
    headers = {"Content-Type": "application/json", "Authorization": "Bearer bench-token"}
    async with app[SESSION].post(app[UPSTREAM], data=raw, headers=headers) as upstream:
        if not body.get("stream"):
            return web.Response(
                body=await upstream.read(), status=upstream.status, content_type="application/json"
            )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
        return response


def create_app(opa_url: str, upstream: str) -> web.Application:
    app = web.Application()
    app[UPSTREAM] = upstream

    async def clients(app: web.Application) -> AsyncIterator[None]:
        parts = urlsplit(opa_url)
        opa = AsyncOpaClient(host=parts.hostname, port=parts.port, retries=0, timeout=0.25)
        await opa._init_session()
        app[OPA] = opa
        app[SESSION] = aiohttp.ClientSession()
        yield
        await app[SESSION].close()
        await opa.close_connection()

    app.cleanup_ctx.append(clients)
    app.router.add_post("/v1/chat/completions", handler)
    return app


def main() -> None:
    port, opa_url, upstream = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    web.run_app(
        create_app(opa_url, upstream),
        host="127.0.0.1",
        port=port,
        access_log=None,
        print=None,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()
