"""The per-request audit record and the local JSON Lines sink.

One :class:`AuditRecord` is written for every request the gateway answers,
successful or not. It says who asked, what the policy decided and why, where the
request went (every attempt), and what it cost. Prompts and completions are
never part of it.

:class:`JsonlAuditLog` appends records to daily files without blocking the
event loop: `write()` only queues, and a background task hands batches to a
worker thread. A failed write is retried, never dropped silently.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Attempt:
    endpoint: str
    status: int | None  # upstream HTTP status; None when no response arrived
    error: str | None  # short code, e.g. "timeout", "connect_error", "http_503", "circuit_open"
    latency_ms: float


@dataclass(slots=True)
class AuditRecord:
    request_id: str
    timestamp: str  # RFC 3339, UTC, when the request arrived
    path: str
    status: int = 0  # HTTP status returned to the client
    stream: bool = False
    # Who.
    tenant: str | None = None
    user: str | None = None
    roles: list[str] = field(default_factory=list)
    key_id: str | None = None
    auth_method: str | None = None
    # What the request declared and what the gateway used.
    data_class: str | None = None
    latency_budget_ms: float | None = None
    cost_cap_per_1k: float | None = None
    labels: dict[str, str] = field(default_factory=dict)
    requested_model: str | None = None
    # What the policy decided.
    decision_id: str | None = None
    policy_revision: str | None = None
    rule: dict[str, Any] | None = None
    conditions: list[dict[str, Any]] = field(default_factory=list)
    overridden_by: str | None = None
    deny: list[str] = field(default_factory=list)
    route_to: str | None = None
    fallback: list[str] = field(default_factory=list)
    # Where it went.
    endpoint: str | None = None
    model: str | None = None
    attempts: list[Attempt] = field(default_factory=list)
    # How long and how much.
    latency_ms: dict[str, float | None] = field(
        default_factory=lambda: {"total": None, "policy": None, "upstream": None, "ttft": None}
    )
    tokens: dict[str, int] = field(default_factory=lambda: {"input": 0, "output": 0})
    cost_usd: float = 0.0
    error: dict[str, str] | None = None  # {"type", "code", "message"} when status >= 400

    def to_dict(self) -> dict[str, Any]:
        # dataclasses.asdict deep-copies every value (~0.25 ms a record); the
        # record is written once and never mutated after, so a shallow view will do.
        doc = {f.name: getattr(self, f.name) for f in fields(self)}
        doc["attempts"] = [
            {
                "endpoint": a.endpoint,
                "status": a.status,
                "error": a.error,
                "latency_ms": a.latency_ms,
            }
            for a in self.attempts
        ]
        return doc

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True)


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def cost_usd(
    input_tokens: int, output_tokens: int, input_per_1k: float, output_per_1k: float
) -> float:
    """Cost from the registry's per-1k-token prices, rounded to a nano-dollar."""
    return round(input_tokens / 1000 * input_per_1k + output_tokens / 1000 * output_per_1k, 9)


class JsonlAuditLog:
    """Appends records to `<dir>/audit-YYYY-MM-DD.jsonl` from a worker thread."""

    def __init__(self, directory: str | os.PathLike[str], *, flush_interval: float = 0.05) -> None:
        self.directory = Path(directory)
        self.flush_interval = flush_interval
        self._pending: list[tuple[str, str]] = []  # (file name, JSON line)
        self._wakeup = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.written = 0

    async def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._task = asyncio.create_task(self._run(), name="audit-writer")

    def write(self, record: AuditRecord) -> None:
        """Queue a record; never blocks and never raises on the request path."""
        day = record.timestamp[:10]
        self._pending.append((f"audit-{day}.jsonl", record.to_json()))
        self._wakeup.set()

    async def flush(self) -> None:
        """Write everything queued so far; when it returns, those records are on disk."""
        # The lock makes a caller wait for a batch the writer task has in flight.
        async with self._lock:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    await asyncio.to_thread(self._append, batch)
                except OSError:
                    # Keep the batch, in order, ahead of anything queued since.
                    self._pending[:0] = batch
                    raise
                self.written += len(batch)

    def _append(self, batch: list[tuple[str, str]]) -> None:
        by_file: dict[str, list[str]] = {}
        for name, line in batch:
            by_file.setdefault(name, []).append(line)
        for name, lines in by_file.items():
            with open(self.directory / name, "a", encoding="utf-8") as fh:
                fh.write("\n".join(lines) + "\n")

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            try:
                await self.flush()
            except OSError as err:
                log.error(
                    "audit write to %s failed (%s); %d record(s) kept for retry",
                    self.directory,
                    err.strerror,
                    len(self._pending),
                )
                if self._closing:
                    return
                await asyncio.sleep(1.0)
                self._wakeup.set()
                continue
            if self._closing:
                return
            # Group records arriving close together into one write.
            await asyncio.sleep(self.flush_interval)

    async def close(self) -> None:
        """Stop the writer after it has written everything queued."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
            self._task = None
        await self.flush()
