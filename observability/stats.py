"""`kamiwaza stats`: latency, errors, cost, tokens and routing from audit records.

What the Grafana dashboards show, computed exactly from the audit records
rather than estimated from histogram buckets, for one time window:

- by endpoint: requests, errors (HTTP status >= 400), error rate and the
  p50/p95/p99 of the total request latency;
- by tenant: requests, input and output tokens and cost in USD;
- by rule: requests and their share (overrides as "override:<name>").

Labels follow the metrics exactly (observability.metrics.label/rule_label), so
the numbers agree with what Prometheus computes for the same traffic: counts,
tokens and costs exactly, quantiles within the histogram's bucket error.
Quantiles interpolate linearly between the two nearest ranks (numpy's default).

Records come from a *source*: a directory (every `*.jsonl` and `*.jsonl.gz`
below it, e.g. the gateway's `audit_dir` or a downloaded bucket prefix) or a
single file, or the audit pipeline's bucket (`s3://bucket/prefix`,
`gs://bucket/prefix`). Delivery is at least once, so records are de-duplicated
by `request_id`.
"""

from __future__ import annotations

import gzip
import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from observability.audit_reader import SourceOptions, open_source, request_records
from observability.metrics import label, rule_label
from observability.times import parse_moment, parse_timestamp

_DAY_IN_PATH = re.compile(r"(\d{4}-\d{2}-\d{2})")
QUANTILES = (0.5, 0.95, 0.99)


class StatsError(Exception):
    """A source cannot be read or an argument is invalid; the message says which."""


# -- time ----------------------------------------------------------------------


def parse_time(text: str, now: datetime) -> datetime:
    """An RFC 3339 time ("2025-06-01T12:00:00Z", a date, naive = UTC) or a
    duration before `now` ("90s", "15m", "2h", "7d", "1w")."""
    try:
        return parse_moment(text, now)
    except ValueError as err:
        raise StatsError(str(err)) from None


def _timestamp(record: Mapping[str, Any]) -> datetime | None:
    return parse_timestamp(record.get("timestamp"))


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# -- reading -------------------------------------------------------------------


@dataclass
class ReadReport:
    files: int = 0
    bad_lines: int = 0
    duplicates: int = 0


def _day_outside(path: Path, since: datetime, until: datetime) -> bool:
    """Whether a file named for a day (audit-2025-06-01.jsonl, dt=2025-06-01/)
    cannot hold records of the window. A record may be filed up to a day after
    it arrived (it is filed when written), never before."""
    match = _DAY_IN_PATH.search(str(path))
    if match is None:
        return False
    try:
        day = datetime.strptime(match.group(1), "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        return False
    return day + timedelta(days=1) <= since or day > until + timedelta(days=1)


def _local_files(root: Path, since: datetime, until: datetime) -> list[Path]:
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise StatsError(f"{root}: no such file or directory")
    files = [p for p in root.rglob("*") if p.name.endswith((".jsonl", ".jsonl.gz"))]
    return sorted(p for p in files if p.is_file() and not _day_outside(p, since, until))


def _lines(path: Path) -> Iterator[str]:
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rt", encoding="utf-8") as fh:
                yield from fh
        else:
            with open(path, encoding="utf-8") as fh:
                yield from fh
    except (OSError, EOFError, UnicodeDecodeError) as err:
        raise StatsError(f"{path}: {err}") from err


def read_records(
    source: str,
    since: datetime,
    until: datetime,
    report: ReadReport | None = None,
    options: SourceOptions | None = None,
) -> Iterator[Mapping[str, Any]]:
    """Records of `source` that arrived in [since, until), each request once.

    `s3://bucket/prefix` and `gs://bucket/prefix` are read through the audit
    pipeline's bucket reader (digests and chain checked on the way); `options`
    carries its endpoint URL (S3-compatible store, GCS emulator), region, project.
    """
    report = report if report is not None else ReadReport()
    scheme = source.split("://", 1)[0] if "://" in source else None
    if scheme in ("s3", "gs"):
        try:
            raw: Iterable[Mapping[str, Any]] = request_records(
                open_source(source, options),
                since=since - timedelta(hours=1),  # objects are keyed by their first record's hour
                until=until,
            )
        except Exception as err:  # boto3 / google-cloud-storage errors: name the source
            raise StatsError(f"{source}: {err}") from err
        report.files += 1
    elif scheme is not None and scheme != "file":
        raise StatsError(
            f"{source}: no reader for {scheme}:// sources in this build "
            "(read a local directory or a downloaded copy of the bucket prefix)"
        )
    else:
        path = Path(source.removeprefix("file://"))
        raw = _parse_files(_local_files(path, since, until), report)
    seen: set[str] = set()
    for record in raw:
        moment = _timestamp(record)
        if moment is None or not since <= moment < until:
            continue
        request_id = record.get("request_id")
        if isinstance(request_id, str):
            if request_id in seen:
                report.duplicates += 1
                continue
            seen.add(request_id)
        yield record


def _parse_files(files: list[Path], report: ReadReport) -> Iterator[Mapping[str, Any]]:
    for path in files:
        report.files += 1
        for line in _lines(path):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                report.bad_lines += 1
                continue
            if not isinstance(record, dict):
                report.bad_lines += 1
            elif "kind" in record and "seq" in record:
                # An audit pipeline entry (observability/chain.py): its record.
                if record["kind"] == "request" and isinstance(record.get("body"), dict):
                    yield record["body"]
            else:
                yield record


# -- computing -----------------------------------------------------------------


def quantile(values: list[float], q: float) -> float | None:
    """Linear interpolation between the closest ranks of sorted `values`."""
    if not values:
        return None
    position = (len(values) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (position - low)


@dataclass
class _Endpoint:
    requests: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)


@dataclass
class _Tenant:
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def compute(
    records: Iterable[Mapping[str, Any]], since: datetime, until: datetime
) -> dict[str, Any]:
    """The summary as plain data (what `--format json` prints)."""
    endpoints: dict[str, _Endpoint] = {}
    tenants: dict[str, _Tenant] = {}
    rules: dict[str, int] = {}
    operations: dict[str, _Tenant] = {}
    total = 0
    for record in records:
        total += 1
        status = record.get("status")
        failed = not isinstance(status, int) or status >= 400
        latency = record.get("latency_ms")
        total_ms = _number(latency.get("total")) if isinstance(latency, Mapping) else None

        ep = endpoints.setdefault(label(record.get("endpoint")), _Endpoint())
        ep.requests += 1
        ep.errors += failed
        if total_ms is not None:
            ep.latencies.append(total_ms)

        tenant = tenants.setdefault(label(record.get("tenant")), _Tenant())
        tenant.requests += 1
        tokens = record.get("tokens")
        if isinstance(tokens, Mapping):
            tenant.input_tokens += int(_number(tokens.get("input")) or 0)
            tenant.output_tokens += int(_number(tokens.get("output")) or 0)
        tenant.cost_usd += _number(record.get("cost_usd")) or 0.0
        operation = operations.setdefault(label(record.get("operation")), _Tenant())
        operation.requests += 1
        if isinstance(tokens, Mapping):
            operation.input_tokens += int(_number(tokens.get("input")) or 0)
            operation.output_tokens += int(_number(tokens.get("output")) or 0)
        operation.cost_usd += _number(record.get("cost_usd")) or 0.0

        rule = record.get("rule")
        name = rule_label(rule if isinstance(rule, Mapping) else None, record.get("overridden_by"))
        rules[name] = rules.get(name, 0) + 1

    endpoint_rows = []
    for name, ep in sorted(endpoints.items()):
        ep.latencies.sort()
        row: dict[str, Any] = {
            "endpoint": name,
            "requests": ep.requests,
            "errors": ep.errors,
            "error_rate": ep.errors / ep.requests,
        }
        for q in QUANTILES:
            value = quantile(ep.latencies, q)
            row[f"p{round(q * 100)}_ms"] = None if value is None else round(value, 3)
        endpoint_rows.append(row)
    return {
        "window": {"since": _iso(since), "until": _iso(until)},
        "requests": total,
        "endpoints": endpoint_rows,
        "tenants": [
            {
                "tenant": name,
                "requests": t.requests,
                "input_tokens": t.input_tokens,
                "output_tokens": t.output_tokens,
                "cost_usd": round(t.cost_usd, 9),
            }
            for name, t in sorted(tenants.items(), key=lambda kv: (-kv[1].cost_usd, kv[0]))
        ],
        "rules": [
            {"rule": name, "requests": count, "share": count / total}
            for name, count in sorted(rules.items(), key=lambda kv: (-kv[1], kv[0]))
        ],
        "operations": [
            {
                "operation": name,
                "requests": o.requests,
                "input_tokens": o.input_tokens,
                "output_tokens": o.output_tokens,
                "cost_usd": round(o.cost_usd, 9),
            }
            for name, o in sorted(operations.items(), key=lambda kv: (-kv[1].requests, kv[0]))
        ],
    }


# -- rendering -----------------------------------------------------------------


def _table(headers: list[str], rows: list[list[str]], numeric_from: int = 1) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            cell.rjust(widths[i]) if i >= numeric_from else cell.ljust(widths[i])
            for i, cell in enumerate(cells)
        ).rstrip()

    return [line(headers), *(line(r) for r in rows)]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def render_table(summary: Mapping[str, Any]) -> str:
    window = summary["window"]
    out = [f"{summary['requests']} requests from {window['since']} to {window['until']}"]
    if not summary["requests"]:
        return out[0] + "\n"
    out += ["", "Latency and errors by endpoint (ms)"]
    out += _table(
        ["endpoint", "requests", "errors", "error rate", "p50", "p95", "p99"],
        [
            [
                r["endpoint"],
                str(r["requests"]),
                str(r["errors"]),
                f"{r['error_rate']:.1%}",
                _ms(r["p50_ms"]),
                _ms(r["p95_ms"]),
                _ms(r["p99_ms"]),
            ]
            for r in summary["endpoints"]
        ],
    )
    out += ["", "Cost and tokens by tenant"]
    out += _table(
        ["tenant", "requests", "input tokens", "output tokens", "cost (USD)"],
        [
            [
                r["tenant"],
                str(r["requests"]),
                str(r["input_tokens"]),
                str(r["output_tokens"]),
                f"{r['cost_usd']:.6f}",
            ]
            for r in summary["tenants"]
        ],
    )
    out += ["", "Requests by rule"]
    out += _table(
        ["rule", "requests", "share"],
        [[r["rule"], str(r["requests"]), f"{r['share']:.1%}"] for r in summary["rules"]],
    )
    out += ["", "Requests by operation"]
    out += _table(
        ["operation", "requests", "input tokens", "output tokens", "cost (USD)"],
        [
            [
                r["operation"],
                str(r["requests"]),
                str(r["input_tokens"]),
                str(r["output_tokens"]),
                f"{r['cost_usd']:.6f}",
            ]
            for r in summary["operations"]
        ],
    )
    return "\n".join(out) + "\n"


def render_json(summary: Mapping[str, Any]) -> str:
    return json.dumps(summary, indent=2) + "\n"
