"""Helpers for the audit tests: records, a sink that can be taken down, tampering."""

from __future__ import annotations

import gzip
from pathlib import Path

from observability.audit import AuditRecord, utc_now
from observability.pipeline import AuditConfig, AuditPipeline
from observability.sinks import Batch, Sink
from observability.sinks.local import LocalSink, write_digest


def record(n: int, **fields: object) -> AuditRecord:
    rec = AuditRecord(request_id=f"req-{n:04d}", timestamp=utc_now(), path="/v1/route")
    rec.status = 200
    rec.tenant = "acme" if n % 2 else "globex"
    rec.endpoint = "private-gpu" if n % 3 else "anthropic"
    rec.rule = {"index": 0, "name": "pii-on-prem" if n % 3 else "default", "source": "x:1"}
    rec.decision_id = f"dec-{n:04d}"
    for key, value in fields.items():
        setattr(rec, key, value)
    return rec


class SwitchableSink:
    """Wraps a sink; while `down`, every put fails like an unreachable store."""

    def __init__(self, inner: Sink) -> None:
        self.inner = inner
        self.name = inner.name
        self.down = False
        self.puts = 0

    def describe(self) -> str:
        return self.inner.describe()

    def put(self, batch: Batch) -> None:
        if self.down:
            raise ConnectionError("sink unreachable (test)")
        self.puts += 1
        self.inner.put(batch)

    def close(self) -> None:
        self.inner.close()


def local_pipeline(
    tmp_path: Path, *, decision_logs: bool = False, **config: object
) -> tuple[AuditPipeline, SwitchableSink]:
    sink = SwitchableSink(LocalSink(tmp_path / "audit", "records"))
    options: dict[str, object] = {
        "batch_interval_s": 0.05,
        "fsync_interval_s": 0.01,
        "retry_max_s": 0.05,
        "shutdown_timeout_s": 1.0,
        **config,
    }
    pipeline = AuditPipeline(
        AuditConfig(
            spool_dir=tmp_path / "spool",
            host="gw-test",
            decision_logs=decision_logs,
            **options,  # type: ignore[arg-type]
        ),
        sink,
    )
    return pipeline, sink


def objects(root: Path) -> list[Path]:
    return sorted(root.rglob("*.jsonl.gz"))


def rewrite(path: Path, lines: list[bytes], *, fix_digest: bool = True) -> None:
    """Replace a local object's lines (as an attacker would), digest updated or not."""
    path.write_bytes(gzip.compress(b"".join(line + b"\n" for line in lines)))
    if fix_digest:
        write_digest(path)


def read_lines(path: Path) -> list[bytes]:
    return gzip.decompress(path.read_bytes()).splitlines()
