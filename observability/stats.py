"""`kamiwaza stats`: latency, errors, cost, tokens and routing from audit records.

What the Grafana dashboards show, computed exactly from the audit records
rather than estimated from histogram buckets, for one time window:

- in all: requests, errors (HTTP status >= 400) and the error rate;
- by endpoint: requests, errors, error rate, the p50/p95/p99 of the total
  request latency and of the time to first token (streams), tokens, cost, and
  failovers away from it;
- by endpoint and model: requests, tokens and cost;
- by tenant: requests, input and output tokens and cost in USD;
- by rule: requests, their share (overrides as "override:<name>"), tokens, cost;
- failovers: moves from one endpoint of a route to the next, by the endpoint
  left and its error;
- endpoint health: requests whose route health changed (the record's `health`),
  by the endpoint skipped or moved behind its fallbacks and the reason
  (`lagging`, `latency_budget`, `cost_cap`).

Labels follow the metrics exactly (observability.metrics.label/rule_label), so
the numbers agree with what Prometheus computes for the same traffic: counts,
tokens and costs exactly, quantiles within the histogram's bucket error.
Quantiles interpolate linearly between the two nearest ranks (numpy's default).

Records come from a *source*: a directory (every `*.jsonl` and `*.jsonl.gz`
below it, e.g. the gateway's `audit_dir` or a downloaded bucket prefix) or a
single file, or the audit pipeline's bucket (`s3://bucket/prefix`,
`gs://bucket/prefix`). Delivery is at least once, so records are de-duplicated
by `request_id`, also across several sources (:func:`read_many`: a sink's
records and the spool's, not yet shipped). :class:`~observability.record_filter.RecordFilter`
narrows them (tenant, rule, endpoint, status, operation, data class). The text
and JSON renderings are in :mod:`observability.stats_render`.
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


def read_many(
    sources: Iterable[str],
    since: datetime,
    until: datetime,
    report: ReadReport | None = None,
    options: SourceOptions | None = None,
) -> Iterator[Mapping[str, Any]]:
    """:func:`read_records` of each source in turn, each request once over all."""
    report = report if report is not None else ReadReport()
    seen: set[str] = set()
    for source in sources:
        for record in read_records(source, since, until, report, options):
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
class _Usage:
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0

    def add(self, record: Mapping[str, Any]) -> None:
        self.requests += 1
        tokens = record.get("tokens")
        if isinstance(tokens, Mapping):
            self.input_tokens += int(_number(tokens.get("input")) or 0)
            self.output_tokens += int(_number(tokens.get("output")) or 0)
        self.cost_usd += _number(record.get("cost_usd")) or 0.0

    def row(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": round(self.cost_usd, 9),
        }


@dataclass
class _Endpoint:
    usage: _Usage = field(default_factory=_Usage)
    errors: int = 0
    failovers: int = 0
    latencies: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _quantiles(values: list[float], prefix: str) -> dict[str, float | None]:
    values.sort()
    out: dict[str, float | None] = {}
    for q in QUANTILES:
        value = quantile(values, q)
        out[f"{prefix}p{round(q * 100)}_ms"] = None if value is None else round(value, 3)
    return out


def compute(
    records: Iterable[Mapping[str, Any]], since: datetime, until: datetime
) -> dict[str, Any]:
    """The summary as plain data (what `--format json` prints)."""
    endpoints: dict[str, _Endpoint] = {}
    models: dict[tuple[str, str], _Usage] = {}
    tenants: dict[str, _Usage] = {}
    rules: dict[str, _Usage] = {}
    operations: dict[str, _Usage] = {}
    failovers: dict[tuple[str, str], int] = {}
    health: dict[tuple[str, str], int] = {}
    total = errors = 0
    for record in records:
        total += 1
        status = record.get("status")
        failed = not isinstance(status, int) or status >= 400
        errors += failed
        latency = record.get("latency_ms")
        latency = latency if isinstance(latency, Mapping) else {}

        name = label(record.get("endpoint"))
        ep = endpoints.setdefault(name, _Endpoint())
        ep.usage.add(record)
        ep.errors += failed
        if (total_ms := _number(latency.get("total"))) is not None:
            ep.latencies.append(total_ms)
        if (ttft_ms := _number(latency.get("ttft"))) is not None:
            ep.ttfts.append(ttft_ms)
        models.setdefault((name, label(record.get("model"))), _Usage()).add(record)
        tenants.setdefault(label(record.get("tenant")), _Usage()).add(record)
        rule = record.get("rule")
        rule_name = rule_label(
            rule if isinstance(rule, Mapping) else None, record.get("overridden_by")
        )
        rules.setdefault(rule_name, _Usage()).add(record)
        operations.setdefault(label(record.get("operation")), _Usage()).add(record)
        # As the metrics count them: each attempt after the first is a move
        # away from the attempt before it.
        attempts = record.get("attempts")
        previous: Mapping[str, Any] | None = None
        for attempt in attempts if isinstance(attempts, list) else ():
            if not isinstance(attempt, Mapping):
                continue
            if previous is not None:
                left = label(previous.get("endpoint"))
                key = (left, label(previous.get("error")))
                failovers[key] = failovers.get(key, 0) + 1
                endpoints.setdefault(left, _Endpoint()).failovers += 1
            previous = attempt
        _count_health(record.get("health"), health)

    endpoint_rows = []
    for name, ep in sorted(endpoints.items()):
        requests = ep.usage.requests
        endpoint_rows.append(
            {
                "endpoint": name,
                "requests": requests,
                "errors": ep.errors,
                "error_rate": ep.errors / requests if requests else 0.0,
                **_quantiles(ep.latencies, ""),
                **_quantiles(ep.ttfts, "ttft_"),
                "input_tokens": ep.usage.input_tokens,
                "output_tokens": ep.usage.output_tokens,
                "cost_usd": round(ep.usage.cost_usd, 9),
                "failovers": ep.failovers,
            }
        )
    return {
        "window": {"since": _iso(since), "until": _iso(until)},
        "requests": total,
        "errors": errors,
        "error_rate": errors / total if total else 0.0,
        "endpoints": endpoint_rows,
        "models": [
            {"endpoint": endpoint, "model": model, **usage.row()}
            for (endpoint, model), usage in sorted(models.items())
        ],
        "tenants": [
            {"tenant": name, **t.row()}
            for name, t in sorted(tenants.items(), key=lambda kv: (-kv[1].cost_usd, kv[0]))
        ],
        "rules": [
            {"rule": name, **r.row(), "share": r.requests / total}
            for name, r in sorted(rules.items(), key=lambda kv: (-kv[1].requests, kv[0]))
        ],
        "operations": [
            {"operation": name, **o.row()}
            for name, o in sorted(operations.items(), key=lambda kv: (-kv[1].requests, kv[0]))
        ],
        "failovers": [
            {"endpoint": endpoint, "reason": reason, "count": count}
            for (endpoint, reason), count in sorted(
                failovers.items(), key=lambda kv: (-kv[1], kv[0])
            )
        ],
        "health": [
            {"endpoint": endpoint, "reason": reason, "requests": count}
            for (endpoint, reason), count in sorted(health.items(), key=lambda kv: (-kv[1], kv[0]))
        ],
    }


def _count_health(report: Any, counts: dict[tuple[str, str], int]) -> None:
    """A record's `health`: each endpoint it skipped or moved, with the reason."""
    if not isinstance(report, Mapping):
        return
    for key in ("skipped", "moved"):
        entries = report.get(key)
        for entry in entries if isinstance(entries, list) else ():
            if isinstance(entry, Mapping):
                pair = (label(entry.get("endpoint")), label(entry.get("reason")))
                counts[pair] = counts.get(pair, 0) + 1
