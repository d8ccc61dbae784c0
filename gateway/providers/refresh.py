"""A credential that expires, fetched once and refreshed before it does.

Short-lived provider credentials (an STS assume-role session, a Microsoft Entra
ID access token) are shared by every request of an endpoint. :class:`Refreshing`
fetches one on first use, hands the cached value to every request, and fetches
the next one in the background once the value enters its refresh window (the
last `margin_s` seconds of its life, or its last half when it lives shorter
than twice that), so that no request waits for a refresh while the old value
is still good. Only when the value is about to expire (or the background
refresh failed until then) does a request wait, and then all waiting requests
share one fetch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

# A value this close to its expiry is not handed out: a request signed with it
# could reach the provider after it expired.
EXPIRY_SKEW_S = 30.0
# After a failed background refresh, the next one is tried this much later.
RETRY_AFTER_FAILURE_S = 10.0


class Refreshing(Generic[T]):
    """`await get()` returns a value that is valid for a while yet.

    `fetch()` returns `(value, expires_at)`, `expires_at` in `clock()` seconds
    (epoch by default) or None for a value that never expires. Its exceptions
    propagate to the requests that waited for it.
    """

    def __init__(
        self,
        fetch: Callable[[], Awaitable[tuple[T, float | None]]],
        *,
        name: str,
        margin_s: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._fetch = fetch
        self._name = name
        self._margin = margin_s
        self._clock = clock
        self._value: T | None = None
        self._refresh_at = 0.0
        self._stale_at = 0.0
        self._lock = asyncio.Lock()
        self._background: asyncio.Task[None] | None = None

    def _store(self, value: T, expires_at: float | None) -> None:
        now = self._clock()
        self._value = value
        if expires_at is None:
            self._refresh_at = self._stale_at = float("inf")
            return
        life = max(expires_at - now, 0.0)
        self._refresh_at = expires_at - min(self._margin, life / 2)
        self._stale_at = expires_at - min(EXPIRY_SKEW_S, life / 4)

    async def get(self) -> T:
        now = self._clock()
        value = self._value
        if value is not None and now < self._refresh_at:
            return value
        if value is not None and now < self._stale_at:
            if self._background is None or self._background.done():
                self._background = asyncio.create_task(self._refresh_in_background())
            return value
        async with self._lock:
            if self._value is not None and self._clock() < self._stale_at:
                return self._value
            fresh, expires_at = await self._fetch()
            self._store(fresh, expires_at)
            return fresh

    async def _refresh_in_background(self) -> None:
        try:
            async with self._lock:
                if self._clock() < self._refresh_at:
                    return  # a waiting request refreshed meanwhile
                fresh, expires_at = await self._fetch()
                self._store(fresh, expires_at)
        except Exception as err:
            # Requests keep the current value; the next one past the refresh
            # point tries again, and past expiry a request fetches itself.
            log.warning("background refresh of %s failed: %s", self._name, type(err).__name__)
            # Not again on every request: wait a little (never past expiry).
            self._refresh_at = min(self._clock() + RETRY_AFTER_FAILURE_S, self._stale_at)

    async def settle(self) -> None:
        """Wait for a background refresh in progress, if any, to end."""
        task = self._background
        if task is not None:
            await asyncio.wait([task])

    async def close(self) -> None:
        task, self._background = self._background, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
