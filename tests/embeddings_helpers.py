"""Running an embeddings codec against a fake provider over real HTTP, as the
forwarder will: every request of `prepare_all` sent with a plain aiohttp
session, every 2xx answer handed to `parse_all`, the first other answer
classified by `classify_error`."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import aiohttp

from gateway.providers import AttemptFailed, Call, Codec, Usage


def embeddings_call(**body: Any) -> Call:
    return Call("embeddings", body, request_id="req-1")


async def run_codec(
    codec: Codec, call: Call
) -> tuple[dict[str, Any], Usage | None, list[Mapping[str, Any]]]:
    """(answer, usage, the JSON bodies sent); raises AttemptFailed like an attempt."""
    requests = await codec.prepare_all(call)
    answers: list[tuple[int, Mapping[str, str], bytes]] = []
    async with aiohttp.ClientSession() as session:
        for request in requests:
            async with session.request(
                request.method,
                request.url,
                data=request.body,
                headers=dict(request.headers),
                allow_redirects=False,
            ) as resp:
                raw = await resp.read()
                if not 200 <= resp.status < 300:
                    raise AttemptFailed(codec.classify_error(resp.status, resp.headers, raw))
                answers.append((resp.status, resp.headers, raw))
    answer, usage = codec.parse_all(call, answers)
    return answer, usage, [json.loads(r.body) for r in requests]
