"""`kamiwaza stats` on a known set of audit records: exact table and JSON."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from gateway.cli import main
from observability.stats import StatsError, parse_time, quantile


def record(
    request_id: str,
    timestamp: str,
    *,
    tenant: str | None = "acme",
    endpoint: str | None = "anthropic",
    rule: str | None = "default",
    overridden_by: str | None = None,
    status: int = 200,
    total_ms: float | None = 100.0,
    tokens: tuple[int, int] = (0, 0),
    cost: float = 0.0,
    operation: str = "chat",
) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "timestamp": timestamp,
        "path": "/v1/route",
        "operation": operation,
        "status": status,
        "tenant": tenant,
        "user": "someone",
        "endpoint": endpoint,
        "model": "m",
        "rule": {"index": 1, "name": rule, "source": "p.yaml:3"} if rule else None,
        "overridden_by": overridden_by,
        "latency_ms": {"total": total_ms, "policy": 0.4, "upstream": None, "ttft": None},
        "tokens": {"input": tokens[0], "output": tokens[1]},
        "cost_usd": cost,
    }


DAY = "2025-06-01T10:"
RECORDS = [
    # anthropic: 4 requests, latencies 100..400 ms, one 502.
    record("r1", DAY + "00:00Z", total_ms=100.0, tokens=(10, 20), cost=0.00033),
    record("r2", DAY + "01:00Z", total_ms=200.0, tokens=(5, 5), cost=0.0001),
    record("r3", DAY + "02:00Z", tenant="globex", total_ms=300.0, tokens=(1, 2), cost=0.000033),
    record("r4", DAY + "03:00.500Z", tenant="globex", total_ms=400.0, status=502),
    # private-gpu: one request routed by a rule, one by an override.
    record("r5", DAY + "04:00Z", endpoint="private-gpu", rule="pii-on-prem", total_ms=50.0,
           tokens=(100, 100), cost=0.04, operation="embeddings"),
    record("r6", DAY + "05:00Z", endpoint="private-gpu", rule=None, overridden_by="legal_hold",
           total_ms=60.0, tokens=(3, 4), cost=0.0014),
    # Refused before routing: no endpoint, no rule.
    record("r7", DAY + "06:00Z", tenant="limited", endpoint=None, rule=None, status=403,
           total_ms=1.5),
]  # fmt: skip
OUTSIDE = [
    record("early", "2025-06-01T09:59:59.999Z"),
    record("late", "2025-06-01T11:00:00Z"),
]


@pytest.fixture
def audit_dir(tmp_path: Path) -> Path:
    """Records spread over a plain file and a gzipped one, with one duplicate
    (at-least-once delivery), a corrupt line, and files of other days."""
    root = tmp_path / "audit"
    day = root / "records" / "dt=2025-06-01" / "hour=10"
    day.mkdir(parents=True)
    lines = [json.dumps(r) for r in RECORDS[:4] + OUTSIDE]
    (root / "audit-2025-06-01.jsonl").write_text("\n".join([*lines, "{not json", ""]))
    with gzip.open(day / "host-000001.jsonl.gz", "wt") as fh:
        fh.write("\n".join(json.dumps(r) for r in [RECORDS[3], *RECORDS[4:]]) + "\n")
    # A day far outside the window: never opened (it is not even valid gzip).
    other = root / "records" / "dt=2025-05-01"
    other.mkdir(parents=True)
    (other / "host-000000.jsonl.gz").write_bytes(b"not gzip")
    return root


def run(*args: str) -> Any:
    return CliRunner().invoke(main, ["stats", *args])


WINDOW = ["--since", "2025-06-01T10:00:00Z", "--until", "2025-06-01T11:00:00Z"]

TABLE = """\
7 requests from 2025-06-01T10:00:00Z to 2025-06-01T11:00:00Z

Latency and errors by endpoint (ms)
endpoint     requests  errors  error rate    p50    p95    p99
anthropic           4       1       25.0%  250.0  385.0  397.0
none                1       1      100.0%    1.5    1.5    1.5
private-gpu         2       0        0.0%   55.0   59.5   59.9

Cost and tokens by tenant
tenant   requests  input tokens  output tokens  cost (USD)
acme            4           118            129    0.041830
globex          2             1              2    0.000033
limited         1             0              0    0.000000

Requests by rule
rule                 requests  share
default                     4  57.1%
none                        1  14.3%
override:legal_hold         1  14.3%
pii-on-prem                 1  14.3%

Requests by operation
operation   requests  input tokens  output tokens  cost (USD)
chat               6            19             31    0.001863
embeddings         1           100            100    0.040000
"""


def test_table(audit_dir: Path) -> None:
    result = run(str(audit_dir), *WINDOW)
    assert result.exit_code == 0, result.output
    assert result.stdout == TABLE
    assert result.stderr == "warning: skipped 1 unreadable line(s)\n"


def test_json(audit_dir: Path) -> None:
    result = run(str(audit_dir), *WINDOW, "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "window": {"since": "2025-06-01T10:00:00Z", "until": "2025-06-01T11:00:00Z"},
        "requests": 7,
        "endpoints": [
            {"endpoint": "anthropic", "requests": 4, "errors": 1, "error_rate": 0.25,
             "p50_ms": 250.0, "p95_ms": 385.0, "p99_ms": 397.0},
            {"endpoint": "none", "requests": 1, "errors": 1, "error_rate": 1.0,
             "p50_ms": 1.5, "p95_ms": 1.5, "p99_ms": 1.5},
            {"endpoint": "private-gpu", "requests": 2, "errors": 0, "error_rate": 0.0,
             "p50_ms": 55.0, "p95_ms": 59.5, "p99_ms": 59.9},
        ],
        "tenants": [
            {"tenant": "acme", "requests": 4, "input_tokens": 118, "output_tokens": 129,
             "cost_usd": 0.04183},
            {"tenant": "globex", "requests": 2, "input_tokens": 1, "output_tokens": 2,
             "cost_usd": 3.3e-05},
            {"tenant": "limited", "requests": 1, "input_tokens": 0, "output_tokens": 0,
             "cost_usd": 0.0},
        ],
        "rules": [
            {"rule": "default", "requests": 4, "share": 4 / 7},
            {"rule": "none", "requests": 1, "share": 1 / 7},
            {"rule": "override:legal_hold", "requests": 1, "share": 1 / 7},
            {"rule": "pii-on-prem", "requests": 1, "share": 1 / 7},
        ],
        "operations": [
            {"operation": "chat", "requests": 6, "input_tokens": 19, "output_tokens": 31,
             "cost_usd": 0.001863},
            {"operation": "embeddings", "requests": 1, "input_tokens": 100,
             "output_tokens": 100, "cost_usd": 0.04},
        ],
    }  # fmt: skip


def test_a_narrower_window_and_a_single_file(audit_dir: Path) -> None:
    result = run(
        str(audit_dir / "audit-2025-06-01.jsonl"),
        "--since", "2025-06-01T10:01:00Z", "--until", "2025-06-01T10:03:00Z", "--format", "json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["requests"] == 2
    assert summary["endpoints"][0]["p50_ms"] == 250.0


def test_an_empty_window(audit_dir: Path) -> None:
    result = run(str(audit_dir), "--since", "2030-01-01", "--until", "2030-01-02")
    assert result.exit_code == 0, result.output
    assert result.stdout == "0 requests from 2030-01-01T00:00:00Z to 2030-01-02T00:00:00Z\n"


def test_the_source_defaults_to_the_audit_dir_variable(
    audit_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAMIWAZA_AUDIT_DIR", str(audit_dir))
    result = run(*WINDOW)
    assert result.exit_code == 0, result.output
    assert result.stdout == TABLE


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["/no/such/dir"], "error: /no/such/dir: no such file or directory\n"),
        (["az://bucket/prefix"], "error: az://bucket/prefix: no reader for az:// sources"),
        (["--since", "yesterday"], "error: 'yesterday' is neither a time"),
    ],
)
def test_errors(args: list[str], message: str) -> None:
    result = run(*args)
    assert result.exit_code == 1
    assert result.stderr.startswith(message)


def test_since_after_until_is_a_usage_error(audit_dir: Path) -> None:
    result = run(str(audit_dir), "--since", "1h", "--until", "2h")
    assert result.exit_code == 2
    assert "must be before" in result.stderr


def test_parse_time() -> None:
    now = datetime(2025, 6, 1, 12, tzinfo=UTC)
    assert parse_time("90s", now) == datetime(2025, 6, 1, 11, 58, 30, tzinfo=UTC)
    assert parse_time("2h", now) == datetime(2025, 6, 1, 10, tzinfo=UTC)
    assert parse_time("1w", now) == datetime(2025, 5, 25, 12, tzinfo=UTC)
    assert parse_time("2025-06-01", now) == datetime(2025, 6, 1, tzinfo=UTC)
    assert parse_time("2025-06-01T12:00:00+02:00", now) == datetime(2025, 6, 1, 10, tzinfo=UTC)
    with pytest.raises(StatsError):
        parse_time("soon", now)


def test_quantile_interpolates_between_ranks() -> None:
    assert quantile([], 0.5) is None
    assert quantile([7.0], 0.99) == 7.0
    assert quantile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert quantile([1.0, 2.0, 3.0, 4.0], 0.0) == 1.0
    assert quantile([1.0, 2.0, 3.0, 4.0], 1.0) == 4.0
