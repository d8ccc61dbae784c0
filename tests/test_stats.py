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
    ttft_ms: float | None = None,
    attempts: tuple[tuple[str, str | None], ...] | None = None,
    operation: str = "chat",
    data_class: str = "internal",
) -> dict[str, Any]:
    if attempts is None:
        attempts = ((endpoint, None if status < 400 else f"http_{status}"),) if endpoint else ()
    return {
        "request_id": request_id,
        "timestamp": timestamp,
        "path": "/v1/route",
        "operation": operation,
        "status": status,
        "stream": ttft_ms is not None,
        "tenant": tenant,
        "user": "someone",
        "data_class": data_class,
        "endpoint": endpoint,
        "model": "m",
        "rule": {"index": 1, "name": rule, "source": "p.yaml:3"} if rule else None,
        "overridden_by": overridden_by,
        "attempts": [
            {"endpoint": name, "status": None, "error": error, "latency_ms": 1.0}
            for name, error in attempts
        ],
        "latency_ms": {"total": total_ms, "policy": 0.4, "upstream": None, "ttft": ttft_ms},
        "tokens": {"input": tokens[0], "output": tokens[1]},
        "cost_usd": cost,
    }


DAY = "2025-06-01T10:"
RECORDS = [
    # anthropic: 4 requests, latencies 100..400 ms, one 502.
    # Two streams (times to first token 40 and 60 ms) and one embeddings request.
    record("r1", DAY + "00:00Z", total_ms=100.0, tokens=(10, 20), cost=0.00033, ttft_ms=40.0),
    record("r2", DAY + "01:00Z", total_ms=200.0, tokens=(5, 5), cost=0.0001, ttft_ms=60.0),
    record("r3", DAY + "02:00Z", tenant="globex", total_ms=300.0, tokens=(1, 2), cost=0.000033,
           operation="embeddings"),
    record("r4", DAY + "03:00.500Z", tenant="globex", total_ms=400.0, status=502),
    # private-gpu: one request routed by a rule, one by an override after
    # private-gpu-b refused the connection (a failover away from it).
    record("r5", DAY + "04:00Z", endpoint="private-gpu", rule="pii-on-prem", total_ms=50.0,
           tokens=(100, 100), cost=0.04, data_class="pii-restricted"),
    record("r6", DAY + "05:00Z", endpoint="private-gpu", rule=None, overridden_by="legal_hold",
           total_ms=60.0, tokens=(3, 4), cost=0.0014,
           attempts=(("private-gpu-b", "connect_error"), ("private-gpu", None))),
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
7 requests from 2025-06-01T10:00:00Z to 2025-06-01T11:00:00Z, 2 errors (28.6%)

Latency and errors by endpoint (ms)
endpoint       requests  errors  error rate    p50    p95    p99  failovers
anthropic             4       1       25.0%  250.0  385.0  397.0          0
none                  1       1      100.0%    1.5    1.5    1.5          0
private-gpu           2       0        0.0%   55.0   59.5   59.9          0
private-gpu-b         0       0        0.0%      -      -      -          1

Time to first token by endpoint (streams, ms)
endpoint    p50   p95   p99
anthropic  50.0  59.0  59.8

Usage by endpoint and model
endpoint     model  requests  input tokens  output tokens  cost (USD)
anthropic    m             4            16             27    0.000463
none         m             1             0              0    0.000000
private-gpu  m             2           103            104    0.041400

Cost and tokens by tenant
tenant   requests  input tokens  output tokens  cost (USD)
acme            4           118            129    0.041830
globex          2             1              2    0.000033
limited         1             0              0    0.000000

Requests by rule
rule                 requests  share  input tokens  output tokens  cost (USD)
default                     4  57.1%            16             27    0.000463
none                        1  14.3%             0              0    0.000000
override:legal_hold         1  14.3%             3              4    0.001400
pii-on-prem                 1  14.3%           100            100    0.040000

Requests by operation
operation   requests  input tokens  output tokens  cost (USD)
chat               6           118            129    0.041830
embeddings         1             1              2    0.000033

Failovers (the endpoint left, and why)
endpoint       reason         count
private-gpu-b  connect_error      1
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
        "errors": 2,
        "error_rate": 2 / 7,
        "endpoints": [
            {"endpoint": "anthropic", "requests": 4, "errors": 1, "error_rate": 0.25,
             "p50_ms": 250.0, "p95_ms": 385.0, "p99_ms": 397.0,
             "ttft_p50_ms": 50.0, "ttft_p95_ms": 59.0, "ttft_p99_ms": 59.8,
             "input_tokens": 16, "output_tokens": 27, "cost_usd": 0.000463, "failovers": 0},
            {"endpoint": "none", "requests": 1, "errors": 1, "error_rate": 1.0,
             "p50_ms": 1.5, "p95_ms": 1.5, "p99_ms": 1.5,
             "ttft_p50_ms": None, "ttft_p95_ms": None, "ttft_p99_ms": None,
             "input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0, "failovers": 0},
            {"endpoint": "private-gpu", "requests": 2, "errors": 0, "error_rate": 0.0,
             "p50_ms": 55.0, "p95_ms": 59.5, "p99_ms": 59.9,
             "ttft_p50_ms": None, "ttft_p95_ms": None, "ttft_p99_ms": None,
             "input_tokens": 103, "output_tokens": 104, "cost_usd": 0.0414, "failovers": 0},
            # Never the last one tried, but left once for the next endpoint.
            {"endpoint": "private-gpu-b", "requests": 0, "errors": 0, "error_rate": 0.0,
             "p50_ms": None, "p95_ms": None, "p99_ms": None,
             "ttft_p50_ms": None, "ttft_p95_ms": None, "ttft_p99_ms": None,
             "input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0, "failovers": 1},
        ],
        "models": [
            {"endpoint": "anthropic", "model": "m", "requests": 4, "input_tokens": 16,
             "output_tokens": 27, "cost_usd": 0.000463},
            {"endpoint": "none", "model": "m", "requests": 1, "input_tokens": 0,
             "output_tokens": 0, "cost_usd": 0.0},
            {"endpoint": "private-gpu", "model": "m", "requests": 2, "input_tokens": 103,
             "output_tokens": 104, "cost_usd": 0.0414},
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
            {"rule": "default", "requests": 4, "share": 4 / 7, "input_tokens": 16,
             "output_tokens": 27, "cost_usd": 0.000463},
            {"rule": "none", "requests": 1, "share": 1 / 7, "input_tokens": 0,
             "output_tokens": 0, "cost_usd": 0.0},
            {"rule": "override:legal_hold", "requests": 1, "share": 1 / 7, "input_tokens": 3,
             "output_tokens": 4, "cost_usd": 0.0014},
            {"rule": "pii-on-prem", "requests": 1, "share": 1 / 7, "input_tokens": 100,
             "output_tokens": 100, "cost_usd": 0.04},
        ],
        "operations": [
            {"operation": "chat", "requests": 6, "input_tokens": 118, "output_tokens": 129,
             "cost_usd": 0.04183},
            {"operation": "embeddings", "requests": 1, "input_tokens": 1, "output_tokens": 2,
             "cost_usd": 3.3e-05},
        ],
        "failovers": [{"endpoint": "private-gpu-b", "reason": "connect_error", "count": 1}],
        "health": [],
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


def _requests(*args: str) -> tuple[list[str], dict[str, Any]]:
    result = run(*args, *WINDOW, "--format", "json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    return [r["endpoint"] for r in summary["endpoints"] if r["requests"]], summary


@pytest.mark.parametrize(
    ("filters", "requests", "endpoints"),
    [
        (["--tenant", "globex"], 2, ["anthropic"]),
        (["--tenant", "globex", "--tenant", "limited"], 3, ["anthropic", "none"]),
        (["--rule", "override:legal_hold"], 1, ["private-gpu"]),
        (["--rule", "none"], 1, ["none"]),
        (["--endpoint", "private-gpu"], 2, ["private-gpu"]),
        (["--endpoint", "none"], 1, ["none"]),
        (["--status", "5xx"], 1, ["anthropic"]),
        (["--status", "403,502"], 2, ["anthropic", "none"]),
        (["--status", "200"], 5, ["anthropic", "private-gpu"]),
        (["--operation", "embeddings"], 1, ["anthropic"]),
        (["--data-class", "pii-restricted"], 1, ["private-gpu"]),
        (["--tenant", "acme", "--endpoint", "anthropic", "--status", "2xx"], 2, ["anthropic"]),
        (["--tenant", "nobody"], 0, []),
    ],
)
def test_filters(audit_dir: Path, filters: list[str], requests: int, endpoints: list[str]) -> None:
    served, summary = _requests(str(audit_dir), *filters)
    assert (summary["requests"], served) == (requests, endpoints)
    assert summary["filter"]


def test_a_filtered_table_names_its_filter(audit_dir: Path) -> None:
    result = run(str(audit_dir), *WINDOW, "--tenant", "globex", "--status", "5xx")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == (
        "1 requests from 2025-06-01T10:00:00Z to 2025-06-01T11:00:00Z, 1 errors (100.0%)"
    )
    _, summary = _requests(str(audit_dir), "--tenant", "globex", "--status", "5xx")
    assert summary["filter"] == "tenant=globex status=5xx"


def test_a_bad_status_filter_is_a_usage_error(audit_dir: Path) -> None:
    result = run(str(audit_dir), "--status", "oops")
    assert result.exit_code == 2
    assert "'oops': expected a status (200), a class (5xx) or a list" in result.stderr


def test_config_names_the_records_to_read(
    audit_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--config (or KAMIWAZA_CONFIG): the gateway's audit_dir, and its spool
    wherever audit_spool_dir puts it, each request counted once."""
    monkeypatch.delenv("KAMIWAZA_AUDIT_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    spool = tmp_path / "elsewhere" / "spool"
    spool.mkdir(parents=True)
    # A record not shipped yet, and one both shipped and still spooled.
    entries = [
        {"kind": "request", "id": r["request_id"], "stream": "h.1", "seq": n, "prev": "x",
         "ts": r["timestamp"], "body": r}
        for n, r in enumerate([record("r8", DAY + "07:00Z", tenant="initech"), RECORDS[0]])
    ]  # fmt: skip
    (spool / "00000001-0000486226.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
    config = tmp_path / "gateway.yaml"
    config.write_text(f"audit_dir: {audit_dir}\naudit_spool_dir: {spool}\n")
    for args, env in (
        (["--config", str(config)], None),
        ([], {"KAMIWAZA_CONFIG": str(config)}),
    ):
        result = CliRunner().invoke(main, ["stats", *args, *WINDOW, "--format", "json"], env=env)
        assert result.exit_code == 0, result.output
        summary = json.loads(result.stdout)
        assert summary["requests"] == 8
        assert [t["tenant"] for t in summary["tenants"]] == ["acme", "globex", "initech", "limited"]
    result = run("--config", str(tmp_path / "missing.yaml"))
    assert result.exit_code == 1
    assert result.stderr.startswith("error: config file")
