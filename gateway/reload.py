"""Reloading what can change without a restart, on SIGHUP."""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from gateway.state import AUTHENTICATOR, RELOADS

log = logging.getLogger("gateway.reload")


async def reload_keys_on_sighup(app: web.Application) -> None:
    """Re-read the keys file on SIGHUP, so that revocations take effect without a restart."""
    keys = app[AUTHENTICATOR].keys
    if keys is None:
        return
    loop = asyncio.get_running_loop()

    def schedule() -> None:
        async def reload() -> None:
            try:
                await asyncio.to_thread(keys.reload)
                log.info("keys file reloaded (%d keys)", len(keys))
            except Exception:
                log.exception("keys file reload failed; the previous keys stay in force")

        app[RELOADS].add(asyncio.ensure_future(reload()))

    app[RELOADS] = set()
    loop.add_signal_handler(signal.SIGHUP, schedule)
