"""Graceful drain: how `kamiwaza serve` runs the server and stops it on SIGTERM.

The first SIGTERM (or SIGINT):

1. readiness fails at once (`/readyz` answers 503 `draining`), so that a load
   balancer that still probes takes the replica out;
2. the listening socket closes (new connections are refused) and idle
   keep-alive connections are closed; a busy connection closes after its
   response, so no new request is accepted after the signal;
3. requests and streams in flight finish, for up to `drain_timeout_s`;
4. whatever is still running then (or at once on a second SIGTERM) is
   cancelled; each such request's audit record says `gateway_shutdown` (503);
5. the application's cleanup runs: the audit spool is flushed to the sink,
   the OPA sidecar is stopped; the process exits 0.

In Kubernetes the pod's `preStop` hook waits first, while the endpoints
controller removes the pod from its Service (deploy/helm/kamiwaza); the
chart's `terminationGracePeriodSeconds` covers that wait, `drain_timeout_s`
and the audit flush.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway.server import GatewayRunner, ServerLimits

log = logging.getLogger("gateway.drain")

CANCEL_GRACE_S = 5.0  # for cancelled handlers to write their records and unwind
SHUTDOWN_STATUS = 503
SHUTDOWN_CODE = "gateway_shutdown"
SHUTDOWN_MESSAGE = "the gateway shut down before the answer was complete"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Set on a request whose handler the drain cancels (read by the pipeline's
# middleware to record why the answer is incomplete).
CANCELLED_BY_DRAIN = web.RequestKey("kamiwaza_cancelled_by_drain", bool)


class Drain:
    """The drain's state and the middleware that tracks requests in flight."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.draining = False
        self._inflight: dict[asyncio.Task[object], web.Request] = {}
        self._requested = asyncio.Event()
        self._hurry = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - aiohttp runs handlers in tasks
            return await handler(request)
        self._inflight[task] = request
        self._idle.clear()
        try:
            return await handler(request)
        finally:
            self._inflight.pop(task, None)
            if not self._inflight:
                self._idle.set()

    def signal(self, signum: int) -> None:
        """The signal handler: the first starts the drain, the next cuts it short."""
        if not self.draining:
            self.draining = True
            log.info(
                "%s: draining (readiness failed, no new connections; %d in flight, up to %gs)",
                signal.Signals(signum).name,
                self.inflight,
                self.timeout_s,
            )
            self._requested.set()
        else:
            log.warning(
                "%s again: ending the %d requests in flight now",
                signal.Signals(signum).name,
                self.inflight,
            )
            self._hurry.set()

    async def wait_requested(self) -> None:
        await self._requested.wait()

    async def wait_drained(self) -> bool:
        """Until nothing is in flight (True), or the deadline or a second signal (False)."""
        idle = asyncio.ensure_future(self._idle.wait())
        hurry = asyncio.ensure_future(self._hurry.wait())
        try:
            await asyncio.wait({idle, hurry}, timeout=self.timeout_s, return_when="FIRST_COMPLETED")
        finally:
            idle.cancel()
            hurry.cancel()
        return not self._inflight

    async def cancel_rest(self) -> None:
        """Cancel what is still in flight; wait (bounded) for their records."""
        tasks = list(self._inflight.items())
        if not tasks:
            return
        log.warning("drain: cancelling %d requests still in flight", len(tasks))
        for task, request in tasks:
            request[CANCELLED_BY_DRAIN] = True
            task.cancel()
        await asyncio.wait([t for t, _ in tasks], timeout=CANCEL_GRACE_S)


def cancel_reason(request: web.Request, client_closed: int) -> tuple[int, str, str]:
    """Status, code and message for a request whose handler was cancelled."""
    if request.get(CANCELLED_BY_DRAIN):
        return SHUTDOWN_STATUS, SHUTDOWN_CODE, SHUTDOWN_MESSAGE
    return client_closed, "client_disconnected", "the client disconnected"


DRAIN = web.AppKey("drain", Drain)


async def serve(
    app: web.Application,
    *,
    host: str,
    port: int,
    drain_timeout_s: float,
    limits: ServerLimits | None = None,
    on_listening: Callable[[], None] | None = None,
    reuse_port: bool = False,
) -> None:
    """Serve `app` until SIGTERM/SIGINT, then drain (module docstring). With
    `limits`, on the guarded server (gateway/server.py: header, body and idle
    timeouts, a connection cap, JSON parser errors); with `reuse_port`, on a
    port other workers listen on too (gateway/supervisor.py)."""
    drain = Drain(drain_timeout_s)
    app[DRAIN] = drain
    app.middlewares.insert(0, drain.middleware)  # outermost: sees every request
    # handler_cancellation: a client that goes away cancels its handler, and so
    # its upstream request, at once rather than at the next write.
    runner: web.AppRunner
    if limits is not None:
        runner = GatewayRunner(app, limits=limits, shutdown_timeout=CANCEL_GRACE_S)
    else:
        runner = web.AppRunner(
            app,
            handle_signals=False,
            access_log=None,
            handler_cancellation=True,
            shutdown_timeout=CANCEL_GRACE_S,
        )
    loop = asyncio.get_running_loop()
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, reuse_port=reuse_port or None)
        await site.start()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, drain.signal, signum)
        if on_listening is not None:
            on_listening()
        await drain.wait_requested()
        started = time.monotonic()
        await site.stop()
        if runner.server is not None:
            runner.server.pre_shutdown()  # idle keep-alive connections close now
        if await drain.wait_drained():
            log.info("drain: every request finished in %.1fs", time.monotonic() - started)
        await drain.cancel_rest()
    finally:
        # on_shutdown, then every cleanup_ctx: the audit spool ships, OPA stops.
        # The handlers stay meanwhile: a further signal must not kill the flush.
        try:
            await runner.cleanup()
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, ValueError, RuntimeError):
                    loop.remove_signal_handler(signum)
