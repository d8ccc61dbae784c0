"""`kamiwaza demo-upstream`: run one demo model endpoint (NOT a model)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from gateway.demo.server import DemoUpstream


@click.command("demo-upstream")
@click.option("--name", required=True, help="The demo endpoint's name, said in every reply.")
@click.option("--port", type=int, required=True, help="Listen port.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Listen address.")
@click.option("--model", default="demo-model", show_default=True, help="Model id it serves.")
@click.option(
    "--exit-with-parent",
    is_flag=True,
    help="Stop when the process that started it exits (make run's gateway).",
)
def demo_upstream(name: str, port: int, host: str, model: str, exit_with_parent: bool) -> None:
    """A demo OpenAI-compatible server with canned replies, for the quick start.

    It is not a model: it answers every chat completion (JSON or SSE stream,
    with usage) with a fixed reply naming this demo endpoint, embeddings with
    vectors made from a hash of the input, and lists its model at /v1/models.
    """
    from gateway.demo.server import DemoUpstream

    try:
        asyncio.run(_serve(DemoUpstream(name, model), host, port, exit_with_parent))
    except OSError as err:
        click.echo(f"error: demo upstream {name}: cannot listen on {host}:{port}: {err}", err=True)
        sys.exit(1)


async def _serve(upstream: DemoUpstream, host: str, port: int, exit_with_parent: bool) -> None:
    from aiohttp import web

    from gateway.demo.server import watch_parent

    parent = os.getppid()
    runner = web.AppRunner(upstream.app(), access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    click.echo(
        f"demo upstream {upstream.name!r} (canned replies, not a model) on http://{host}:{port}/v1",
        err=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    async def parent_gone() -> None:
        stop.set()

    watcher = asyncio.create_task(watch_parent(parent, parent_gone)) if exit_with_parent else None
    try:
        await stop.wait()
    finally:
        if watcher is not None:
            watcher.cancel()
        await runner.cleanup()
