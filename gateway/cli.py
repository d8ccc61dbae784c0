"""The `kamiwaza` command: one entry point with a subcommand group per area."""

from __future__ import annotations

import sys

import click

from gateway.keys_cli import keys
from translator.cli import policy


@click.group()
@click.version_option(package_name="kamiwaza-gateway")
def main() -> None:
    """Kamiwaza AI model gateway."""


main.add_command(policy)
main.add_command(keys)


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
def serve(config_file: str | None, **flags: object) -> None:
    """Run the gateway (and, unless --opa-url is given, its OPA sidecar)."""
    from aiohttp import web

    from gateway.app import StartupError, configure_logging, create_app, reload_keys_on_sighup
    from gateway.settings import SettingsError, load_settings

    try:
        settings = load_settings(config_file, overrides=flags)
        configure_logging(settings.log_level)
        app = create_app(settings)
    except (SettingsError, StartupError) as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(1)
    app.on_startup.append(reload_keys_on_sighup)
    click.echo(f"kamiwaza gateway on http://{settings.host}:{settings.port}", err=True)
    # handler_cancellation: a client that goes away cancels its handler, and so
    # its upstream request, at once rather than at the next write.
    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        access_log=None,
        handler_cancellation=True,
        print=None,
    )
