"""`kamiwaza audit`: verify, reconcile and query shipped audit records.

SOURCE is a local directory (the local sink writes under `<audit_dir>/<prefix>`),
`s3://bucket/prefix` or `gs://bucket/prefix`; without it, the gateway's
configuration (`--config`, KAMIWAZA_* variables) names the configured sink.
Exit codes: 0 ok, 1 problems found (a broken chain, unmatched decisions),
2 usage errors.
"""

from __future__ import annotations

import functools
import json
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import click

from observability.audit_reader import SourceOptions, entry_time, iter_entries, open_source
from observability.chain import KIND_DECISION, KIND_REQUEST, ChainVerifier
from observability.decision_log import is_route_decision
from observability.pipeline import AuditConfigError, SinkConfig
from observability.sinks import ObjectSource
from observability.times import parse_duration, parse_moment, parse_timestamp


def parse_when(text: str | None, now: datetime | None = None) -> datetime | None:
    """RFC 3339 (naive = UTC), a date, or a duration before now (90s, 15m, 2h, 7d)."""
    if text is None:
        return None
    try:
        return parse_moment(text, now or datetime.now(UTC))
    except ValueError as err:
        raise click.BadParameter(str(err)) from None


@dataclass(frozen=True, slots=True)
class ConfigReader:
    """How to read the gateway's configuration, handed down as the click
    context's object by the command that embeds this group (`kamiwaza`), so
    that observability never imports the gateway. `sink(config_file)` returns
    the configured sink or raises AuditConfigError naming what is wrong."""

    sink: Callable[[str | None], SinkConfig]


def _configured_source(config_file: str | None) -> tuple[str, SourceOptions]:
    reader = click.get_current_context().find_object(ConfigReader)
    if reader is None:
        raise click.UsageError("no SOURCE given (and no gateway configuration to read it from)")
    try:
        return reader.sink(config_file).read_back()
    except AuditConfigError as err:
        raise click.UsageError(f"no SOURCE given and the configuration is invalid: {err}") from err


@dataclass(frozen=True, slots=True)
class Where:
    """SOURCE and the options that say how to reach it (see `source_options`)."""

    source: str | None
    config_file: str | None
    endpoint_url: str | None
    region: str | None
    project: str | None

    def open(self) -> ObjectSource:
        source = self.source
        if source is None:
            source, options = _configured_source(self.config_file)
        else:
            options = SourceOptions()
        options = SourceOptions(
            endpoint_url=self.endpoint_url or options.endpoint_url,
            region=self.region or options.region,
            project=self.project or options.project,
        )
        return open_source(source, options)


def source_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """SOURCE, --config, --endpoint-url, --region and --project, handed to the
    command as one `where` (opened when the command calls `where.open()`)."""

    @functools.wraps(func)
    def command(
        *,
        source: str | None,
        config_file: str | None,
        endpoint_url: str | None,
        region: str | None,
        project: str | None,
        **kwargs: Any,
    ) -> Any:
        return func(where=Where(source, config_file, endpoint_url, region, project), **kwargs)

    options = [
        click.argument("source", required=False),
        click.option("--config", "config_file", default=None, help="Gateway config file."),
        click.option("--endpoint-url", default=None, help="S3-compatible or GCS emulator URL."),
        click.option("--region", default=None, help="S3 region."),
        click.option("--project", default=None, help="GCP project."),
    ]
    wrapped: Callable[..., Any] = command
    for option in reversed(options):
        wrapped = option(wrapped)
    return wrapped


def _outside(moment: datetime | None, start: datetime | None, end: datetime | None) -> bool:
    """Whether an entry's time falls outside [start, end) (an entry without one never does)."""
    return moment is not None and (
        (start is not None and moment < start) or (end is not None and moment >= end)
    )


@contextmanager
def _progress(enabled: bool | None) -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar on stderr (a terminal, or --progress) while objects are read."""
    show = sys.stderr.isatty() if enabled is None else enabled
    if not show:
        yield None
        return
    state: dict[str, Any] = {}

    def update(done: int, total: int) -> None:
        if "bar" not in state:
            if total < 2:
                return
            state["bar"] = click.progressbar(
                length=total, label="reading audit objects", file=sys.stderr
            ).__enter__()
        bar = state["bar"]
        bar.update(done - bar.pos)

    try:
        yield update
    finally:
        if "bar" in state:
            state["bar"].__exit__(None, None, None)


def _entries(
    objects: ObjectSource,
    verifier: ChainVerifier,
    since: datetime | None,
    until: datetime | None,
    progress: bool | None,
) -> Iterator[dict[str, Any]]:
    try:
        with _progress(progress) as update:
            yield from iter_entries(objects, verifier, since=since, until=until, progress=update)
    except Exception as err:  # a bucket that cannot be listed or read
        if isinstance(err, click.ClickException):
            raise
        click.echo(f"error: cannot read {objects.describe()}: {err}", err=True)
        sys.exit(1)


@click.group("audit")
def audit() -> None:
    """Verify, reconcile and query the audit trail."""


@audit.command("verify")
@source_options
@click.option(
    "--allow-partial",
    is_flag=True,
    help="Accept streams that start after seq 0 (a copy of part of the trail).",
)
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: on a tty).")
def verify(
    *,
    where: Where,
    allow_partial: bool,
    progress: bool | None,
) -> None:
    """Check every object's digest and every hash-chain link; name the first break."""
    objects = where.open()
    verifier = ChainVerifier(allow_partial=allow_partial)
    for _ in _entries(objects, verifier, None, None, progress):
        pass
    report = verifier.report
    for gap in report.gaps:
        click.echo(f"warning: {gap}", err=True)
    summary = (
        f"{report.entries} entries in {report.objects} object(s), "
        f"{len(report.streams)} stream(s), {report.duplicates} duplicate(s) skipped"
    )
    if report.ok:
        click.echo(f"ok: {summary}; every digest and link checks out")
        return
    click.echo(f"FAILED: {len(report.problems)} problem(s) in {objects.describe()} ({summary})")
    click.echo(f"first: {report.problems[0]}")
    for problem in report.problems[1:]:
        click.echo(f"also:  {problem}")
    sys.exit(1)


@audit.command("reconcile")
@source_options
@click.option("--since", default=None, help="Start: a time or a duration ago (2h, 7d).")
@click.option("--until", default=None, help="End: a time or a duration ago.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.option(
    "--grace",
    default="0s",
    show_default=True,
    help="Report unmatched decisions younger than this (e.g. 2m) as pending, not missing: "
    "OPA ships its events a moment after the decision.",
)
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: on a tty).")
def reconcile(
    *,
    where: Where,
    since: str | None,
    until: str | None,
    fmt: str,
    grace: str,
    progress: bool | None,
) -> None:
    """List gateway records with no OPA decision event, and OPA routing decisions
    with no record (events of other queries, such as the guards query of
    `GET /v1/models`, decide no request and are only counted)."""
    start, end = parse_when(since), parse_when(until)
    grace_span = parse_duration(grace)
    if grace_span is None:
        raise click.BadParameter(
            f"{grace!r}: expected a duration such as 90s or 2m", param_hint="--grace"
        )
    settled_before = datetime.now(UTC) - grace_span if grace_span else None
    objects = where.open()
    verifier = ChainVerifier(allow_partial=True)
    records: dict[str, dict[str, Any]] = {}
    events: dict[str, dict[str, Any]] = {}
    other_events: set[str] = set()  # events of other queries: no record expected
    for entry in _entries(objects, verifier, start, end, progress):
        if _outside(entry_time(entry), start, end):
            continue
        if entry["kind"] == KIND_REQUEST:
            decision_id = entry["body"].get("decision_id")
            if decision_id:
                records.setdefault(decision_id, entry["body"])
        elif entry["kind"] == KIND_DECISION:
            if is_route_decision(entry["body"]):
                events.setdefault(entry["id"], entry["body"])
            else:
                other_events.add(entry["id"])
    no_event = sorted(
        ({"decision_id": d, "request_id": r.get("request_id"), "timestamp": r.get("timestamp"),
          "tenant": r.get("tenant"), "status": r.get("status")}
         for d, r in records.items() if d not in events),
        key=lambda row: str(row["timestamp"]),
    )  # fmt: skip
    no_record = sorted(
        ({"decision_id": d, "timestamp": e.get("timestamp"), "path": e.get("path")}
         for d, e in events.items() if d not in records),
        key=lambda row: str(row["timestamp"]),
    )  # fmt: skip
    pending: list[dict[str, Any]] = []
    if settled_before is not None:
        # Too recent to judge: the counterpart may still be on its way.
        def recent(row: dict[str, Any]) -> bool:
            moment = parse_timestamp(row.get("timestamp"))
            return moment is not None and moment >= settled_before

        pending = [row for row in (*no_event, *no_record) if recent(row)]
        no_event = [row for row in no_event if not recent(row)]
        no_record = [row for row in no_record if not recent(row)]
    if fmt == "json":
        click.echo(
            json.dumps(
                {
                    "records": len(records),
                    "events": len(events),
                    "other_events": len(other_events),
                    "records_without_event": no_event,
                    "events_without_record": no_record,
                    "pending": pending,
                },
                indent=2,
            )
        )
    else:
        others = (
            f" ({len(other_events)} event(s) of other queries, e.g. GET /v1/models, not counted)"
            if other_events
            else ""
        )
        click.echo(
            f"{len(records)} decided request record(s), "
            f"{len(events)} OPA route decision event(s){others}"
        )
        click.echo(f"records without an OPA event: {len(no_event)}")
        for row in no_event:
            click.echo(
                f"  {row['timestamp']}  {row['request_id']}  decision {row['decision_id']}"
                f"  tenant={row['tenant']} status={row['status']}"
            )
        click.echo(f"OPA events without a gateway record: {len(no_record)}")
        for row in no_record:
            click.echo(f"  {row['timestamp']}  decision {row['decision_id']}  {row['path']}")
        if pending:
            click.echo(f"pending (younger than --grace {grace}): {len(pending)}")
    if no_event or no_record:
        sys.exit(1)


def _status_filter(spec: str | None) -> Callable[[int], bool]:
    if not spec:
        return lambda status: True
    classes: set[int] = set()
    exact: set[int] = set()
    for raw in spec.split(","):
        part = raw.strip().lower()
        if re.fullmatch(r"[1-5]xx", part):
            classes.add(int(part[0]))
        elif part.isdigit():
            exact.add(int(part))
        else:
            raise click.BadParameter(f"{part!r}: expected a status (200), a class (5xx) or a list")
    return lambda status: status in exact or status // 100 in classes


def _rule_of(record: dict[str, Any]) -> str:
    if record.get("overridden_by"):
        return f"override:{record['overridden_by']}"
    rule = record.get("rule") or {}
    return str(rule.get("name") or "")


COLUMNS = (
    ("timestamp", 24),
    ("request_id", 36),
    ("tenant", 18),
    ("status", 6),
    ("endpoint", 16),
    ("rule", 22),
    ("total_ms", 9),
    ("cost_usd", 11),
)


def _row(record: dict[str, Any]) -> list[str]:
    latency = (record.get("latency_ms") or {}).get("total")
    return [
        str(record.get("timestamp") or ""),
        str(record.get("request_id") or ""),
        str(record.get("tenant") or "-"),
        str(record.get("status") or ""),
        str(record.get("endpoint") or "-"),
        _rule_of(record) or "-",
        f"{latency:.1f}" if isinstance(latency, int | float) else "-",
        f"{record.get('cost_usd') or 0:.6f}",
    ]


@audit.command("query")
@source_options
@click.option("--since", default=None, help="Start: a time or a duration ago (2h, 7d).")
@click.option("--until", default=None, help="End (exclusive): a time or a duration ago.")
@click.option("--tenant", multiple=True, help="Only this tenant (repeatable).")
@click.option("--endpoint", multiple=True, help="Only this endpoint (repeatable).")
@click.option("--rule", multiple=True, help="Only this rule name, or override:<name>.")
@click.option("--status", default=None, help="200, 5xx, or a list: 429,5xx.")
@click.option("--prompt-hash", default=None, help="Only requests with this prompt hash.")
@click.option("--format", "fmt", type=click.Choice(["table", "jsonl"]), default="table")
@click.option("--limit", type=int, default=None, help="At most this many records.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: on a tty).")
def query(
    *,
    where: Where,
    since: str | None,
    until: str | None,
    tenant: tuple[str, ...],
    endpoint: tuple[str, ...],
    rule: tuple[str, ...],
    status: str | None,
    prompt_hash: str | None,
    fmt: str,
    limit: int | None,
    progress: bool | None,
) -> None:
    """Request records matching every filter, as a table or JSON Lines."""
    start, end = parse_when(since), parse_when(until)
    status_ok = _status_filter(status)
    objects = where.open()
    verifier = ChainVerifier(allow_partial=True)
    seen: set[str] = set()
    shown = 0
    if fmt == "table":
        click.echo("  ".join(name.ljust(width) for name, width in COLUMNS).rstrip())
    for entry in _entries(objects, verifier, start, end, progress):
        if entry["kind"] != KIND_REQUEST or entry["id"] in seen:
            continue
        seen.add(entry["id"])
        record: dict[str, Any] = entry["body"]
        if _outside(entry_time(entry), start, end):
            continue
        if (
            (tenant and record.get("tenant") not in tenant)
            or (endpoint and record.get("endpoint") not in endpoint)
            or (rule and _rule_of(record) not in rule)
            or not status_ok(int(record.get("status") or 0))
            or (prompt_hash and record.get("prompt_hash") != prompt_hash)
        ):
            continue
        if fmt == "jsonl":
            click.echo(json.dumps(record, separators=(",", ":"), sort_keys=True))
        else:
            cells = _row(record)
            click.echo(
                "  ".join(
                    cell.ljust(width) for cell, (_, width) in zip(cells, COLUMNS, strict=True)
                ).rstrip()
            )
        shown += 1
        if limit is not None and shown >= limit:
            break
    if verifier.report.problems:
        click.echo(
            f"warning: {len(verifier.report.problems)} integrity problem(s) in the source; "
            "run `kamiwaza audit verify`",
            err=True,
        )


@audit.command("hash-prompt")
@click.argument("messages_file", type=click.File("r"), default="-")
@click.option(
    "--salt-env",
    required=True,
    help="Variable holding the salt (the gateway's audit_prompt_salt_env).",
)
def hash_prompt(messages_file: Any, salt_env: str) -> None:
    """The prompt hash the gateway records for a `messages` JSON array (file or stdin)."""
    import os

    from observability.pipeline import prompt_hmac

    salt = os.environ.get(salt_env, "")
    if not salt:
        raise click.UsageError(f"environment variable {salt_env} is not set")
    try:
        messages = json.load(messages_file)
    except ValueError as err:
        raise click.UsageError(f"not JSON: {err}") from err
    if isinstance(messages, dict) and "messages" in messages:
        messages = messages["messages"]
    click.echo(prompt_hmac(salt.encode(), messages))
