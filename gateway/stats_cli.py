"""`kamiwaza stats`: the audit records' summary for a time window, filtered.

Without a SOURCE it reads what the gateway configured by `--config` (or
KAMIWAZA_CONFIG and the KAMIWAZA_* variables) writes: the local sink's audit
directory, or the S3/GCS bucket, and in both cases the spool's records not
shipped yet; so the numbers are those the console shows for the same window.
"""

from __future__ import annotations

import sys
from typing import Any

import click


def _sources(source: str | None, config_file: str | None) -> tuple[list[str], Any, str | None]:
    """The sources to read, their SourceOptions, and a warning when partial."""
    from gateway.audit_config import record_sources
    from gateway.errors import ConfigError
    from gateway.settings import load_settings
    from observability.audit_reader import SourceOptions

    if source is not None:
        return [source], SourceOptions(), None
    try:
        settings = load_settings(config_file)
    except ConfigError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(1)
    sources, options, complete = record_sources(settings)
    warning = (
        None
        if complete
        else "warning: the HTTP collector cannot be read back: only the spool's records "
        "(not shipped yet) are counted; give a SOURCE for the rest"
    )
    return sources, options, warning


@click.command("stats")
@click.argument("source", required=False)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Gateway config file whose audit records to read (also KAMIWAZA_CONFIG).",
)
@click.option("--since", default="24h", show_default=True, help="Start: 2h, 7d or a time.")
@click.option("--until", default=None, help="End (exclusive): a duration ago or a time; now.")
@click.option("--tenant", multiple=True, help="Only this tenant (repeatable).")
@click.option("--rule", multiple=True, help="Only this rule, override:<name> or none.")
@click.option("--endpoint", multiple=True, help="Only this endpoint, or none (repeatable).")
@click.option("--status", default=None, help="200, 5xx, or a list: 429,5xx.")
@click.option(
    "--operation", multiple=True, help="Only this operation: chat, embeddings, ... (repeatable)."
)
@click.option("--data-class", "data_class", multiple=True, help="Only this data class.")
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
    source: str | None,
    config_file: str | None,
    since: str,
    until: str | None,
    tenant: tuple[str, ...],
    rule: tuple[str, ...],
    endpoint: tuple[str, ...],
    status: str | None,
    operation: tuple[str, ...],
    data_class: tuple[str, ...],
    fmt: str,
    endpoint_url: str | None,
    region: str | None,
    project: str | None,
) -> None:
    """Latency, errors, cost, tokens and routing from the audit records in SOURCE.

    SOURCE is an audit directory, one file, or a bucket prefix
    (s3://bucket/prefix, gs://bucket/prefix); without it, the records of the
    gateway that --config (or KAMIWAZA_CONFIG, KAMIWAZA_AUDIT_DIR, ...)
    describes, spool included. Times are RFC 3339 (UTC when no offset) or
    durations before now (90s, 15m, 2h, 7d).
    """
    from datetime import UTC, datetime

    from observability.audit_reader import SourceOptions
    from observability.record_filter import FilterError, RecordFilter
    from observability.stats import ReadReport, StatsError, compute, parse_time, read_many
    from observability.stats_render import render_json, render_table

    now = datetime.now(UTC)
    sources, configured, warning = _sources(source, config_file)
    try:
        selection = RecordFilter.of(
            tenants=tenant,
            rules=rule,
            endpoints=endpoint,
            operations=operation,
            data_classes=data_class,
            status=status,
        )
    except FilterError as err:
        raise click.BadParameter(str(err), param_hint="--status") from None
    try:
        start = parse_time(since, now)
        end = parse_time(until, now) if until else now
        if start >= end:
            raise click.UsageError(f"--since ({since}) must be before --until ({until or 'now'})")
        report = ReadReport()
        options = SourceOptions(
            endpoint_url=endpoint_url or configured.endpoint_url,
            region=region or configured.region,
            project=project or configured.project,
        )
        records = selection.apply(read_many(sources, start, end, report, options))
        summary = compute(records, start, end)
    except StatsError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(1)
    if warning:
        click.echo(warning, err=True)
    if report.bad_lines:
        click.echo(f"warning: skipped {report.bad_lines} unreadable line(s)", err=True)
    if selection.active:
        summary = {"filter": selection.describe(), **summary}
    click.echo(render_json(summary) if fmt == "json" else render_table(summary), nl=False)
