"""The `kamiwaza` command: one entry point with a subcommand group per area."""

from __future__ import annotations

import asyncio
import sys

import click

from gateway.dry_run_cli import route
from gateway.keys_cli import keys
from gateway.policy_cli import diff_cmd, shadow_report_cmd
from observability.audit_cli import ConfigReader, audit
from translator.cli import policy


@click.group()
@click.version_option(package_name="kamiwaza-gateway")
@click.pass_context
def main(ctx: click.Context) -> None:
    """Kamiwaza AI model gateway."""
    from gateway.audit_config import configured_sink

    # `kamiwaza audit` reads the configured sink through this (observability
    # never imports the gateway).
    ctx.obj = ConfigReader(sink=configured_sink)


main.add_command(policy)
policy.add_command(diff_cmd)  # they read the audit trail: gateway/policy_cli.py
policy.add_command(shadow_report_cmd)
main.add_command(keys)
main.add_command(audit)
main.add_command(route)


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
    from gateway import server
    from gateway.app import create_app
    from gateway.errors import ConfigError
    from gateway.logs import configure_logging
    from gateway.reload import reload_keys_on_sighup
    from gateway.runtime import pin_mmap_threshold
    from gateway.settings import load_settings

    try:
        settings = load_settings(config_file, overrides=flags)
        configure_logging(settings.log_level)
        app = create_app(settings)
    except ConfigError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(1)
    app.on_startup.append(reload_keys_on_sighup)
    pin_mmap_threshold()
    click.echo(f"kamiwaza gateway on http://{settings.host}:{settings.port}", err=True)
    try:
        server.run(
            app,
            host=settings.host,
            port=settings.port,
            limits=server.limits_of(settings),
            loop=_event_loop(),
        )
    except ConfigError as err:  # raised inside a cleanup_ctx, e.g. OPA would not start
        click.echo(f"error: {err}", err=True)
        sys.exit(1)
    except OSError as err:  # e.g. the port is taken; the sidecar is already stopped
        click.echo(
            f"error: cannot listen on {settings.host}:{settings.port}: {err.strerror or err}",
            err=True,
        )
        sys.exit(1)


def _event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it is installed (Linux, macOS): a faster loop for the hot path."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


@main.command("stats")
@click.argument("source", required=False, envvar="KAMIWAZA_AUDIT_DIR", default="audit")
@click.option("--since", default="24h", show_default=True, help="Start: 2h, 7d or a time.")
@click.option("--until", default=None, help="End (exclusive): a duration ago or a time; now.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
)
@click.option("--endpoint-url", default=None, help="S3-compatible store or GCS emulator URL.")
@click.option("--region", default=None, help="S3 region of a bucket SOURCE.")
@click.option("--project", default=None, help="GCP project of a gs:// SOURCE.")
def stats(
    *,
    source: str,
    since: str,
    until: str | None,
    fmt: str,
    endpoint_url: str | None,
    region: str | None,
    project: str | None,
) -> None:
    """Latency, errors, cost, tokens and routing from the audit records in SOURCE.

    SOURCE is the audit directory (default: $KAMIWAZA_AUDIT_DIR, else ./audit),
    one file, or a bucket prefix (s3://bucket/prefix, gs://bucket/prefix);
    times are RFC 3339 (UTC when no offset) or durations before now (90s, 15m,
    2h, 7d).
    """
    from datetime import UTC, datetime

    from observability.audit_reader import SourceOptions
    from observability.stats import (
        ReadReport,
        StatsError,
        compute,
        parse_time,
        read_records,
        render_json,
        render_table,
    )

    now = datetime.now(UTC)
    try:
        start = parse_time(since, now)
        end = parse_time(until, now) if until else now
        if start >= end:
            raise click.UsageError(f"--since ({since}) must be before --until ({until or 'now'})")
        report = ReadReport()
        options = SourceOptions(endpoint_url=endpoint_url, region=region, project=project)
        summary = compute(read_records(source, start, end, report, options), start, end)
    except StatsError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(1)
    if report.bad_lines:
        click.echo(f"warning: skipped {report.bad_lines} unreadable line(s)", err=True)
    click.echo(render_json(summary) if fmt == "json" else render_table(summary), nl=False)
