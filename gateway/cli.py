"""The `kamiwaza` command: one entry point with a subcommand group per area."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import click

from gateway.bundle_cli import publish
from gateway.demo.cli import demo_upstream
from gateway.dry_run_cli import route
from gateway.keys_cli import keys
from gateway.limits.cli import budgets
from gateway.policy_cli import diff_cmd, shadow_report_cmd
from gateway.stats_cli import stats
from observability.audit_cli import ConfigReader, audit
from translator.cli import policy

if TYPE_CHECKING:
    from gateway.settings import Settings
    from gateway.worker import WorkerIdentity


@click.group()
@click.version_option(package_name="kamiwaza-gateway")
@click.pass_context
def main(ctx: click.Context) -> None:
    """Kamiwaza AI model gateway."""
    from gateway.audit_config import configured_sink

    # `kamiwaza audit` reads the configured sink through this (observability
    # never imports the gateway).
    ctx.obj = ConfigReader(sink=configured_sink)


policy.add_command(publish)  # needs boto3/GCS, which translator/ does not import
main.add_command(policy)
policy.add_command(diff_cmd)  # they read the audit trail: gateway/policy_cli.py
policy.add_command(shadow_report_cmd)
main.add_command(keys)
main.add_command(audit)
main.add_command(route)
main.add_command(budgets)
main.add_command(stats)
main.add_command(demo_upstream)


@main.command("serve")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="YAML config file (also KAMIWAZA_CONFIG).",
)
@click.option("--policy", default=None, help="Routing policy YAML.")
@click.option("--endpoints", default=None, help="Endpoint registry (default: beside the policy).")
@click.option("--keys", default=None, help="API keys file (kamiwaza keys create).")
@click.option("--host", default=None, help="Listen address (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Listen port (default 8080).")
@click.option("--audit-dir", default=None, help="Directory for audit records.")
@click.option("--opa-url", default=None, help="Use this OPA instead of starting a sidecar.")
@click.option("--rego", "rego_dir", default=None, help="Hand-written Rego (default ./rego).")
@click.option(
    "--allow-unconfigured-endpoints",
    is_flag=True,
    default=None,
    help="Start even if an endpoint's credential is missing.",
)
@click.option(
    "--workers",
    default=None,
    help="Worker processes on the port (default 1; auto: one per CPU).",
)
def serve(config_file: str | None, **flags: object) -> None:
    """Run the gateway (and, unless --opa-url is given, its OPA sidecar)."""
    from gateway.audit_config import spool_dir
    from gateway.errors import ConfigError
    from gateway.logs import configure_logging
    from gateway.settings import load_settings
    from gateway.worker import warn_orphan_spools

    try:
        settings = load_settings(config_file, overrides=flags)
        configure_logging(settings.log_level, settings.log_format)
    except ConfigError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(1)
    warn_orphan_spools(spool_dir(settings), settings.workers)
    if settings.workers == 1:
        sys.exit(_run_gateway(settings, port=settings.port))
    sys.exit(_supervise(settings))


def _supervise(settings: Settings) -> int:
    """`serve --workers N`: the supervisor forks the workers (gateway/supervisor.py)."""
    from gateway.supervisor import Supervisor

    def run_worker(worker: WorkerIdentity, port: int, listening: Callable[[], None]) -> int:
        return _run_gateway(settings, port=port, worker=worker, on_listening=listening)

    def serving(port: int) -> None:
        click.echo(
            f"kamiwaza gateway on http://{settings.host}:{port} ({settings.workers} workers)",
            err=True,
        )

    supervisor = Supervisor(settings.workers, run_worker, host=settings.host, port=settings.port)
    try:
        return supervisor.run(on_serving=serving)
    except OSError as err:
        click.echo(
            f"error: cannot listen on {settings.host}:{settings.port}: {err.strerror or err}",
            err=True,
        )
        return 1


def _run_gateway(
    settings: Settings,
    *,
    port: int,
    worker: WorkerIdentity | None = None,
    on_listening: Callable[[], None] | None = None,
) -> int:
    """Build and serve the gateway in this process until SIGTERM; its exit status."""
    from gateway import server
    from gateway.app import create_app
    from gateway.drain import serve
    from gateway.errors import ConfigError
    from gateway.logs import tag_worker
    from gateway.reload import reload_keys_on_sighup
    from gateway.runtime import pin_mmap_threshold

    if worker is not None:
        tag_worker(worker.name)
    try:
        app = create_app(settings, worker=worker)
    except ConfigError as err:
        click.echo(f"error: {err}", err=True)
        return 1
    app.on_startup.append(reload_keys_on_sighup)
    pin_mmap_threshold()
    if worker is None:
        click.echo(f"kamiwaza gateway on http://{settings.host}:{port}", err=True)
    # SIGTERM drains: gateway/drain.py.
    loop = _event_loop()
    try:
        loop.run_until_complete(
            serve(
                app,
                host=settings.host,
                port=port,
                drain_timeout_s=settings.drain_timeout_s,
                limits=server.limits_of(settings),
                on_listening=on_listening,
                reuse_port=worker is not None,
            )
        )
    except ConfigError as err:  # raised inside a cleanup_ctx, e.g. OPA would not start
        click.echo(f"error: {err}", err=True)
        return 1
    except OSError as err:  # e.g. the port is taken; the sidecar is already stopped
        click.echo(
            f"error: cannot listen on {settings.host}:{port}: {err.strerror or err}",
            err=True,
        )
        return 1
    finally:
        _close_loop(loop)
    return 0


def _close_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what is left (as aiohttp's run_app does) and close the loop."""
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()


def _event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it is installed (Linux, macOS): a faster loop for the hot path."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()
