"""Reloading what can change without a restart, on SIGHUP."""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from gateway.policy_reload import POLICY_RELOADER
from gateway.state import AUTHENTICATOR, RELOADS

log = logging.getLogger("gateway.reload")


async def reload_keys_on_sighup(app: web.Application) -> None:
    """On SIGHUP, re-read the keys file (revocations take effect without a
    restart) and, in files mode, the routing policy (gateway/policy_reload.py)."""
    keys = app[AUTHENTICATOR].keys
    policy = app.get(POLICY_RELOADER)
    if keys is None and policy is None:
        return
    loop = asyncio.get_running_loop()

    def schedule() -> None:
        async def reload() -> None:
            assert keys is not None
            try:
                await asyncio.to_thread(keys.reload)
                log.info("keys file reloaded (%d keys)", len(keys))
            except Exception:
                log.exception("keys file reload failed; the previous keys stay in force")

        if keys is not None:
            app[RELOADS].add(asyncio.ensure_future(reload()))
        if policy is not None:
            policy.trigger("SIGHUP")

    app[RELOADS] = set()
    loop.add_signal_handler(signal.SIGHUP, schedule)
