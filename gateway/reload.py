"""Reloading what can change without a restart, on SIGHUP."""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from gateway.limits import LimitsConfigError
from gateway.limits.stage import LimitsStage
from gateway.policy_reload import POLICY_RELOADER
from gateway.state import AUTHENTICATOR, LIMITS, RELOADS

log = logging.getLogger("gateway.reload")


async def reload_limits(limits: LimitsStage) -> bool:
    """Re-read the limits file (in a thread); on an error the previous limits stay
    in force and every problem is logged. True when the new file is in force."""
    try:
        config = await asyncio.to_thread(limits.reload)
    except LimitsConfigError as err:
        log.error(
            "limits file reload failed; the previous limits stay in force:\n  %s",
            "\n  ".join(err.problems),
        )
        return False
    log.info("limits file %s reloaded (%d tenants)", config.path, len(config.tenants))
    return True


async def reload_keys_on_sighup(app: web.Application) -> None:
    """On SIGHUP, re-read the keys file (revocations take effect without a
    restart), the limits file, and, in files mode, the routing policy
    (gateway/policy_reload.py)."""
    keys = app[AUTHENTICATOR].keys
    policy = app.get(POLICY_RELOADER)
    limits = app.get(LIMITS)
    if keys is None and policy is None and limits is None:
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
        if limits is not None:
            task = asyncio.ensure_future(reload_limits(limits))
            app[RELOADS].add(task)
            task.add_done_callback(app[RELOADS].discard)
        if policy is not None:
            policy.trigger("SIGHUP")

    app[RELOADS] = set()
    loop.add_signal_handler(signal.SIGHUP, schedule)
