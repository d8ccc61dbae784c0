"""`kamiwaza policy diff` and `kamiwaza policy shadow-report`: a candidate
policy measured against the traffic in the audit trail.

`diff` replays the routing inputs OPA logged (its decision-log events, spooled
beside the request records) against the live policy and a candidate; the
gateway's configuration (`--config`, KAMIWAZA_* variables) supplies the base
policy, registry, Rego directories and audit sink unless flags say otherwise.
`shadow-report` summarises the disagreements the gateway recorded while a
`shadow_policy` ran beside the live one. The engine is :mod:`translator.diff`.

Exit codes: 0 (also when something changes, unless --fail-on-change), 1 a
change with --fail-on-change or a policy with errors, 2 usage errors (an
unreadable source, OPA missing).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

import click

from gateway.settings import Settings, SettingsError, load_settings
from observability.audit_cli import Where
from observability.audit_reader import decision_events, request_records
from observability.times import parse_moment
from translator.diff import (
    ROUTE_DECISION_PATH,
    Compared,
    Outcome,
    compare_inputs,
    compile_pair,
    render_table,
    replay,
    report,
    rule_name,
)
from translator.errors import OpaError, PolicyError

EXIT_CHANGED = 1
EXIT_USAGE = 2
# Request ids of `kamiwaza route --dry-run` and POST /v1/route/explain: their
# decisions are in OPA's log but were never routed, so they are not replayed.
DRY_RUN_PREFIX = "dry-run-"


def _fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _settings(config_file: str | None) -> Settings:
    try:
        return load_settings(config_file)
    except SettingsError as err:
        _fail(f"configuration: {err}")


def _window(since: str, until: str | None) -> tuple[datetime, datetime]:
    now = datetime.now(UTC)
    try:
        start = parse_moment(since, now)
        end = parse_moment(until, now) if until else now
    except ValueError as err:
        raise click.BadParameter(str(err)) from None
    if start >= end:
        raise click.UsageError(f"--since ({since}) must be before --until ({until or 'now'})")
    return start, end


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def route_inputs(events: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The inputs of the routing decisions among OPA's decision-log events, in
    order (guard queries for /v1/models and dry runs left out)."""
    inputs = []
    for event in events:
        doc = event.get("input")
        if event.get("path") != ROUTE_DECISION_PATH or not isinstance(doc, dict):
            continue
        request = doc.get("request")
        rid = request.get("id") if isinstance(request, dict) else None
        if isinstance(rid, str) and rid.startswith(DRY_RUN_PREFIX):
            continue
        inputs.append(doc)
    return inputs


def _emit(doc: dict[str, Any], fmt: str, title: str, verb: str) -> None:
    if fmt == "json":
        click.echo(json.dumps(doc, indent=2))
    else:
        click.echo(render_table(doc, title=title, verb=verb), nl=False)


_audit_options = [
    click.option("--audit", "source", default=None, help="Audit SOURCE (default: the config's)."),
    click.option("--since", default="7d", show_default=True, help="Start: 2h, 7d or a time."),
    click.option("--until", default=None, help="End (exclusive): a duration ago or a time."),
    click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table"),
    click.option("--config", "config_file", default=None, help="Gateway config file."),
    click.option("--endpoints", default=None, help="Endpoint registry (default: the config's)."),
    click.option("--endpoint-url", default=None, help="S3-compatible or GCS emulator URL."),
    click.option("--region", default=None, help="S3 region."),
    click.option("--project", default=None, help="GCP project."),
    click.option("--examples", type=click.IntRange(0, 100), default=3, show_default=True),
]


def _with_audit_options(func: Any) -> Any:
    for option in reversed(_audit_options):
        func = option(func)
    return func


@click.command("diff")
@click.argument("candidate", type=click.Path(dir_okay=False))
@click.option("--base", default=None, help="Current policy (default: the config's `policy`).")
@click.option("--rego", "rego_dir", default=None, help="Entry point and guards (default: config).")
@click.option(
    "--overrides",
    "overrides_dirs",
    multiple=True,
    help="Override directory in use (repeatable; default: the config's overrides_dirs).",
)
@click.option("--fail-on-change", is_flag=True, help="Exit 1 when any request would change.")
@_with_audit_options
def diff_cmd(
    *,
    candidate: str,
    base: str | None,
    rego_dir: str | None,
    overrides_dirs: tuple[str, ...],
    fail_on_change: bool,
    source: str | None,
    since: str,
    until: str | None,
    fmt: str,
    config_file: str | None,
    endpoints: str | None,
    endpoint_url: str | None,
    region: str | None,
    project: str | None,
    examples: int,
) -> None:
    """Replay recorded requests against the live policy and CANDIDATE; report what changes."""
    settings = _settings(config_file)
    base = base or settings.policy
    start, end = _window(since, until)
    try:
        pair = compile_pair(
            base, candidate, endpoints or settings.endpoints, classes=settings.classes_data()
        )
    except PolicyError as err:
        click.echo(err.report, err=True)
        _fail("the policies must compile before they can be compared", 1)
    where = Where(source, config_file, endpoint_url, region, project)
    try:
        events = decision_events(where.open(), since=start, until=end)
    except click.ClickException:
        raise
    except Exception as err:  # a bucket or directory that cannot be read
        _fail(f"cannot read the audit trail: {err}")
    inputs = route_inputs(events)
    paths = [rego_dir or settings.rego_dir, *(overrides_dirs or settings.overrides_dirs)]
    try:
        decisions = replay(pair, paths, inputs)
    except OpaError as err:
        _fail(str(err))
    assert pair.base.ir is not None
    assert pair.candidate.ir is not None
    doc: dict[str, Any] = {
        "base": {"policy": pair.base.policy_path, "revision": pair.base.ir.revision},
        "candidate": {"policy": pair.candidate.policy_path, "revision": pair.candidate.ir.revision},
        "source": where.source or "(configured audit sink)",
        "window": {"since": _iso(start), "until": _iso(end)},
        **report(compare_inputs(inputs, decisions), pair.in_vpc, examples=examples),
    }
    _emit(doc, fmt, "policy diff", "would change")
    if fail_on_change and doc["changed"]:
        sys.exit(EXIT_CHANGED)


def shadow_rows(records: Sequence[Mapping[str, Any]]) -> tuple[list[Compared], dict[str, int]]:
    """Each decided request as live vs shadow, and the shadow revisions seen.

    A record carries `shadow` only when the shadow disagreed; without it, the
    shadow decided the same route and rule."""
    rows = []
    revisions: dict[str, int] = {}
    for record in records:
        if not record.get("policy_revision"):
            continue  # refused before a decision (auth, bad metadata, OPA down)
        live = Outcome(
            route_to=record.get("route_to"),
            rule=rule_name(record.get("rule"), record.get("overridden_by")),
            fallback=tuple(record.get("fallback") or ()),
        )
        shadow = record.get("shadow")
        if isinstance(shadow, dict):
            revision = str(shadow.get("revision"))
            revisions[revision] = revisions.get(revision, 0) + 1
            candidate = Outcome(route_to=shadow.get("route_to"), rule=rule_name(shadow.get("rule")))
        else:
            candidate = live
        rows.append(
            Compared(
                request_id=str(record.get("request_id")),
                tenant=str(record.get("tenant") or "none"),
                data_class=str(record.get("data_class") or "none"),
                base=live,
                candidate=candidate,
            )
        )
    return rows, revisions


@click.command("shadow-report")
@_with_audit_options
def shadow_report_cmd(
    *,
    source: str | None,
    since: str,
    until: str | None,
    fmt: str,
    config_file: str | None,
    endpoints: str | None,
    endpoint_url: str | None,
    region: str | None,
    project: str | None,
    examples: int,
) -> None:
    """Where the shadow policy disagreed with the live one, from the audit records."""
    from translator.pipeline import check

    settings = _settings(config_file)
    start, end = _window(since, until)
    where = Where(source, config_file, endpoint_url, region, project)
    try:
        # Objects are keyed by their first record's hour: list from an hour earlier.
        records = request_records(where.open(), since=start - timedelta(hours=1), until=end)
    except click.ClickException:
        raise
    except Exception as err:
        _fail(f"cannot read the audit trail: {err}")
    records = [r for r in records if _in_window(r, start, end)]
    rows, revisions = shadow_rows(records)
    registry = check(settings.policy, endpoints or settings.endpoints).registry
    in_vpc = {name: bool(e.get("in_vpc")) for name, e in registry.opa_data().items()}
    doc: dict[str, Any] = {
        "source": where.source or "(configured audit sink)",
        "window": {"since": _iso(start), "until": _iso(end)},
        "shadow_revisions": [
            {"revision": rev, "disagreements": n} for rev, n in sorted(revisions.items())
        ],
        **report(rows, in_vpc, examples=examples),
    }
    _emit(doc, fmt, "shadow report", "disagreed")


def _in_window(record: Mapping[str, Any], start: datetime, end: datetime) -> bool:
    from observability.times import parse_timestamp

    moment = parse_timestamp(record.get("timestamp"))
    return moment is not None and start <= moment < end
