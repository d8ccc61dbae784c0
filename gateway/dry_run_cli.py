"""`kamiwaza route --dry-run`: one request through the gateway's own steps, not forwarded.

The gateway is built from its configuration (`--config`, KAMIWAZA_* variables)
as `kamiwaza serve` builds it, with its OPA sidecar, but without a listener,
decision logging or metrics; the request is given as the client would send it
(`--header`, `--key`, `--data`, `--path`) and :func:`gateway.dry_run.dry_run`
says what would happen. Endpoints whose credential is missing here are shown
as unavailable rather than stopping start-up.

Exit codes: 0 the request would be forwarded, 1 it would be refused (the
outcome says how), 2 usage errors (a bad flag, the gateway cannot start).
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from pathlib import Path
from typing import Any, NoReturn

import click

from gateway.dry_run import DEFAULT_PATH, dry_run

EXIT_REFUSED = 1
EXIT_USAGE = 2


def _fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(EXIT_USAGE)


def _show(value: Any) -> str:
    return "(absent)" if value is None else json.dumps(value)


def render(doc: dict[str, Any]) -> str:
    """The dry run for a person, in the order the gateway works."""
    out = [f"dry run of POST {doc['path']} (nothing is forwarded)"]
    identity = doc.get("identity")
    if identity is not None:
        out.append("")
        out.append(
            f"identity: tenant {identity['tenant']}, user {identity['user'] or '(none)'}, "
            f"roles {', '.join(identity['roles']) or '(none)'}, "
            f"{identity['method']} {identity['key_id'] or ''}".rstrip()
        )
        allowed = identity["allowed_data_classes"]
        out.append(
            f"  may send: {', '.join(allowed) if allowed is not None else 'any data class'}; "
            f"key default: {identity['default_data_class'] or '(none)'}"
        )
    meta = doc.get("metadata")
    if meta is not None:
        labels = ", ".join(f"{k}={v}" for k, v in sorted(meta["labels"].items())) or "(none)"
        out.append(
            f"metadata: data class {meta['data_class']}, latency budget "
            f"{_show(meta['latency_budget_ms'])}, cost cap {_show(meta['cost_cap_per_1k'])}, "
            f"labels {labels}"
        )
    if "input" in doc:
        out += ["", "OPA input:"]
        out += ["  " + line for line in json.dumps(doc["input"], indent=2).splitlines()]
    decision = doc.get("decision")
    if decision is not None:
        out += ["", *_decision_lines(decision)]
        refusals = doc["guard_refusals"]
        out.append("guards refuse: nothing" if not refusals else "guards refuse:")
        for name, reasons in refusals.items():
            out += [f"  {name}: {reason}" for reason in reasons]
    if doc.get("endpoints"):
        out += ["", "endpoints, in the order they would be tried:"]
        for n, entry in enumerate(doc["endpoints"], start=1):
            why = f" ({entry['reason']})" if entry["reason"] else ""
            out.append(f"  {n}. {entry['endpoint']}: {entry['state']}{why}")
    outcome = doc["outcome"]
    out.append("")
    if outcome["status"] == 200:
        out.append(f"outcome: forwarded to {outcome['endpoint']}")
    else:
        error = outcome["error"]
        out.append(f"outcome: {outcome['status']} {error['code']}: {error['message']}")
    return "\n".join(out) + "\n"


def _decision_lines(decision: dict[str, Any]) -> list[str]:
    lines = []
    if decision["deny"]:
        lines.append("decision: DENY")
        lines += [f"  - {reason}" for reason in decision["deny"]]
    else:
        fallback = ", ".join(decision["fallback"]) or "none"
        lines.append(f"decision: route to {decision['route_to']} (fallback: {fallback})")
    rule = decision["rule"]
    if decision["overridden_by"]:
        lines.append(f"  override: {decision['overridden_by']} (compiled rules not used)")
    elif rule:
        lines.append(f"  rule: #{rule['index']} {rule['name']} ({rule['source']})")
    else:
        lines.append("  rule: none matched")
    for c in decision["conditions"]:
        mark = "ok  " if c["result"] else "FAIL"
        expected, actual = _show(c["expected"]), _show(c["actual"])
        lines.append(f"    {mark} {c['field']} {c['op']} {expected}   actual: {actual}")
    lines.append(f"  policy revision: {decision['revision']}")
    shadow = decision.get("shadow")
    if shadow is not None:
        target = shadow["route_to"] or "DENY"
        name = shadow["rule"]["name"] if shadow["rule"] else "none"
        lines.append(f"  shadow ({shadow['revision']}): {target} by rule {name}")
    return lines


def _headers(raw: tuple[str, ...], key: str | None) -> dict[str, str]:
    headers: dict[str, str] = {}
    for item in raw:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            raise click.BadParameter(f"{item!r}: expected 'Name: value'", param_hint="--header")
        headers[name.strip()] = value.strip()
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return headers


def _body(data: str) -> Any:
    text = data
    if data == "-":
        text = sys.stdin.read()
    elif data.startswith("@"):
        try:
            text = Path(data[1:]).read_text(encoding="utf-8")
        except OSError as err:
            raise click.BadParameter(f"cannot read {data[1:]}: {err.strerror}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise click.BadParameter(f"not valid JSON: {err}", param_hint="--data") from None


async def _run(settings: Any, headers: dict[str, str], body: Any, path: str) -> dict[str, Any]:
    from aiohttp import web

    from gateway.app import create_app

    app = create_app(settings)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()  # the OPA sidecar, the forwarder's sessions
    try:
        return await dry_run(app, headers=headers, body=body, path=path)
    finally:
        await runner.cleanup()


@click.command("route")
@click.option("--dry-run", is_flag=True, required=True, help="Show, do not forward (required).")
@click.option("-H", "--header", "header", multiple=True, help="'Name: value' (repeatable).")
@click.option("--key", default=None, help="The client's API key (sets Authorization).")
@click.option("-d", "--data", required=True, help="The JSON body: inline, @file, or - (stdin).")
@click.option(
    "--path",
    type=click.Choice(["/v1/chat/completions", "/v1/route", "/v1/embeddings"]),
    default=DEFAULT_PATH,
    show_default=True,
)
@click.option("--config", "config_file", default=None, help="Gateway config file.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
def route(
    *,
    dry_run: bool,
    header: tuple[str, ...],
    key: str | None,
    data: str,
    path: str,
    config_file: str | None,
    fmt: str,
) -> None:
    """What the gateway would do with one request: identity, metadata, OPA input,
    decision, guards' refusals and the endpoints it would try."""
    from gateway.errors import ConfigError
    from gateway.logs import configure_logging
    from gateway.settings import load_settings

    configure_logging("error")  # what the dry run finds is in its output

    headers, body = _headers(header, key), _body(data)
    with tempfile.TemporaryDirectory(prefix="kamiwaza-dry-run-") as tmp:
        try:
            settings = load_settings(
                config_file,
                overrides={
                    # No listener and nothing to audit: a private spool, no
                    # decision log shipped, no metrics or traces exported.
                    "audit_sink": "local",
                    "audit_dir": tmp,
                    "audit_decision_logs": False,
                    "metrics": False,
                    "traces": False,
                    "allow_unconfigured_endpoints": True,
                },
            )
            doc = asyncio.run(_run(settings, headers, body, path))
        except ConfigError as err:
            _fail(str(err))
    click.echo(json.dumps(doc, indent=2) if fmt == "json" else render(doc), nl=False)
    if fmt == "json":
        click.echo()
    if doc["outcome"]["status"] != 200:
        sys.exit(EXIT_REFUSED)
