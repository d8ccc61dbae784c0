"""The fast upstream of bench/fast_upstream.py, failing a share of its requests.

Every request whose turn comes up (deterministically: `share` of them, evenly
spread) gets a 503 in OpenAI's error shape, so that the gateway fails over to
the next endpoint of the route; the rest are answered as fast_upstream does.

    python bench/flaky_upstream.py PORT SHARE
"""

from __future__ import annotations

import sys
from pathlib import Path

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.fast_upstream import chat

FAILURE = (
    b'{"error":{"message":"overloaded (flaky upstream)","type":"server_error","code":"overloaded"}}'
)


def app(share: float) -> web.Application:
    state = {"seen": 0, "failed": 0}

    async def flaky(request: web.Request) -> web.StreamResponse:
        state["seen"] += 1
        if state["failed"] < state["seen"] * share:
            state["failed"] += 1
            await request.read()
            return web.Response(status=503, body=FAILURE, content_type="application/json")
        return await chat(request)

    application = web.Application()
    application.router.add_post("/v1/chat/completions", flaky)
    return application


def main() -> None:
    port, share = int(sys.argv[1]), float(sys.argv[2])
    web.run_app(app(share), host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main()
