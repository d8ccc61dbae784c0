"""Talking to an upstream and to the client: bounded reads, stream writes, and
what a transport error means for the attempt."""

from __future__ import annotations

import asyncio
import errno as errnos
import logging
import os
from typing import Final

import aiohttp
from aiohttp import web

from gateway.providers.adapter import StreamTranslator
from gateway.providers.failures import (
    BAD_UPSTREAM_RESPONSE,
    CONNECT_ERROR,
    CONNECT_REFUSED,
    CONNECT_TIMEOUT,
    FIRST_TOKEN_TIMEOUT,
    TOTAL_TIMEOUT,
    UPSTREAM_DISCONNECTED,
    AttemptFailed,
    AttemptFailure,
)

log = logging.getLogger("gateway.forwarding")

# An error body is read only this far: enough for the message.
ERROR_BODY_LIMIT: Final = 64 * 1024
# Writing the final frames to a client that does not read must not hang.
ERROR_EVENT_WRITE_TIMEOUT_S: Final = 5.0


class ClientGone(Exception):
    """Writing to the client failed (kept apart from upstream errors)."""


def transport_failure(err: Exception, first_cm: asyncio.Timeout | None) -> AttemptFailure:
    """Classify an exception raised while talking to the upstream."""
    if isinstance(err, aiohttp.ConnectionTimeoutError):
        return AttemptFailure(
            504, CONNECT_TIMEOUT, "connecting to the upstream timed out", True, timeout=True
        )
    if isinstance(err, TimeoutError):
        if first_cm is not None and first_cm.expired():
            return AttemptFailure(
                504,
                FIRST_TOKEN_TIMEOUT,
                "the upstream did not start answering in time",
                True,
                timeout=True,
            )
        return AttemptFailure(
            504, TOTAL_TIMEOUT, "the upstream did not finish answering in time", True, timeout=True
        )
    if isinstance(err, aiohttp.ClientConnectorError):
        # Only the errno's text: the OS message names the upstream's address,
        # which is the operator's business, not the client's.
        errno = err.os_error.errno
        reason = os.strerror(errno) if errno else type(err.os_error).__name__
        code = CONNECT_REFUSED if errno == errnos.ECONNREFUSED else CONNECT_ERROR
        return AttemptFailure(502, code, f"cannot connect to the upstream: {reason}", True)
    if isinstance(err, aiohttp.ClientResponseError | aiohttp.ClientPayloadError):
        return AttemptFailure(
            502, BAD_UPSTREAM_RESPONSE, "the upstream's answer was malformed or cut short", True
        )
    if isinstance(err, aiohttp.ClientError):
        return AttemptFailure(
            502, UPSTREAM_DISCONNECTED, "the upstream closed the connection", True
        )
    log.exception("unexpected error while forwarding", exc_info=err)
    return AttemptFailure(502, "forwarding_error", "the gateway failed to forward", True)


async def read_limited(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    if resp.content_length is not None and resp.content_length > limit:
        raise AttemptFailed(
            AttemptFailure(502, BAD_UPSTREAM_RESPONSE, "the upstream's answer is too large", True)
        )
    parts: list[bytes] = []
    size = 0
    while chunk := await resp.content.readany():
        size += len(chunk)
        if size > limit:
            raise AttemptFailed(
                AttemptFailure(
                    502, BAD_UPSTREAM_RESPONSE, "the upstream's answer is too large", True
                )
            )
        parts.append(chunk)
    return b"".join(parts)


async def read_prefix(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """Up to `limit` bytes of an error body; the rest is not worth waiting for."""
    parts: list[bytes] = []
    size = 0
    while size < limit and (chunk := await resp.content.readany()):
        parts.append(chunk)
        size += len(chunk)
    return b"".join(parts)[:limit]


async def first_frames(
    resp: aiohttp.ClientResponse, translator: StreamTranslator
) -> tuple[list[bytes], bool]:
    """Read until the translator has frames for the client; (frames, at EOF)."""
    while True:
        chunk = await resp.content.readany()
        if not chunk:
            return translator.finish(), True
        frames = translator.feed(chunk)
        if frames:
            return frames, False


async def write(client: web.StreamResponse, frames: list[bytes]) -> None:
    try:
        await client.write(frames[0] if len(frames) == 1 else b"".join(frames))
    except (ConnectionResetError, aiohttp.ClientConnectionResetError) as err:
        raise ClientGone from err


async def end(client: web.StreamResponse) -> None:
    try:
        await client.write_eof()
    except (ConnectionResetError, aiohttp.ClientConnectionResetError) as err:
        raise ClientGone from err


async def write_tail(client: web.StreamResponse, frames: list[bytes] | tuple[bytes, ...]) -> None:
    """The last frames of a stream and its end, bounded in time: a client that
    stopped reading must not hold the request (and its upstream) open."""
    try:
        async with asyncio.timeout(ERROR_EVENT_WRITE_TIMEOUT_S):
            if frames:
                await write(client, list(frames))
            await end(client)
    except TimeoutError:
        log.warning("client did not take the end of the stream in time")
