"""A minimal, fast OpenAI-compatible upstream for load benchmarks.

Answers every chat completion with a precomputed body (or a short precomputed
SSE stream), so that the benchmark measures the gateway, not the upstream.

    python bench/fast_upstream.py PORT
"""

from __future__ import annotations

import json
import sys

from aiohttp import web

COMPLETION = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "bench-model",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "pong"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 8, "completion_tokens": 1, "total_tokens": 9},
    }
).encode()


def _chunk(delta: dict[str, object], finish: str | None = None) -> bytes:
    doc = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "bench-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(doc).encode() + b"\n\n"


STREAM_CHUNKS = [
    _chunk({"role": "assistant", "content": ""}),
    *[_chunk({"content": f" word{i}"}) for i in range(8)],
    _chunk({}, "stop"),
]
USAGE_CHUNK = (
    b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,'
    b'"model":"bench-model","choices":[],'
    b'"usage":{"prompt_tokens":8,"completion_tokens":8,"total_tokens":16}}\n\n'
)


async def chat(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    if not body.get("stream"):
        return web.Response(body=COMPLETION, content_type="application/json")
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for chunk in STREAM_CHUNKS:
        await resp.write(chunk)
    if (body.get("stream_options") or {}).get("include_usage"):
        await resp.write(USAGE_CHUNK)
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


def main() -> None:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()
