"""The audit pipeline: request records and OPA events → durable spool → sink.

:class:`AuditPipeline` is what the gateway holds under `app[AUDIT]`:

- `write(record)` is a request observer. It appends the record, hash-chained,
  to the spool's active segment with one `os.write` (tens of microseconds), on
  the request path, before the response completes; it never blocks on the sink
  and never raises.
- A task fsyncs the spool every `fsync_interval_s` (group commit), from a
  worker thread.
- The shipper task seals the active segment every `batch_interval_s` (or at
  `batch_max_bytes`, or when the hour changes), uploads sealed segments in order
  from a worker thread, and deletes each only after its upload succeeded;
  failures are retried with exponential backoff up to `retry_max_s`.
- The spool is bounded by `spool_max_bytes`. In `refuse` mode (the default)
  `admits()` turns false once the spool is within a reserve (10%, at most
  64 MiB) of the bound, and the gateway answers new requests 503; the reserve
  holds the records of requests in flight and of the refusals. In `drop` mode
  records past the bound are dropped, counted, logged loudly, and a `gap` entry
  in the chain records how many and when. Refusals whose own record finds no
  room either (refuse mode, spool at its very bound) are counted in a gap entry
  the same way (`refused` in its body).
- With decision logs on, a loopback-only server receives OPA's decision log
  (:mod:`observability.decision_log`) and spools each event.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from observability.audit import AuditRecord
from observability.audit_reader import SourceOptions
from observability.chain import KIND_DECISION, KIND_GAP, KIND_REQUEST
from observability.decision_log import DecisionLogIngest
from observability.sinks import Batch, Sink, SinkError, make_batch
from observability.spool import SealedData, Segment, Spool, SpoolError

log = logging.getLogger(__name__)

REFUSE = "refuse"
DROP = "drop"
# The error code of a request refused because the spool is full.
REFUSAL_CODE = "audit_unavailable"
# How long admission stays closed after the spool failed to write (disk error).
IO_ERROR_HOLD_S = 1.0
LOUD_LOG_EVERY_S = 10.0


class AuditConfigError(Exception):
    """The audit configuration cannot work (e.g. a token variable is not set)."""


@dataclass(frozen=True, slots=True)
class AuditConfig:
    spool_dir: Path
    host: str
    prefix: str = "records"
    spool_max_bytes: int = 1 << 30
    spool_full: str = REFUSE
    fsync_interval_s: float = 0.2
    batch_interval_s: float = 10.0
    batch_max_bytes: int = 8 << 20
    retry_max_s: float = 30.0
    shutdown_timeout_s: float = 5.0
    decision_logs: bool = True
    decision_logs_port: int = 0  # 0: any free loopback port
    decision_logs_token_file: Path | None = None  # an OPA apart reads the token here
    prompt_salt: bytes | None = None

    @property
    def reserve_bytes(self) -> int:
        return min(self.spool_max_bytes // 10, 64 << 20)


@dataclass(frozen=True, slots=True)
class SinkConfig:
    """Where shipped records go; the composition root builds it from its settings."""

    kind: str = "local"  # local | s3 | gcs | http
    prefix: str = "records"
    local_dir: str = "audit"  # local: records under <local_dir>/<prefix>
    local_max_file_bytes: int = 32 << 20
    s3_bucket: str | None = None
    s3_region: str | None = None
    s3_kms_key_id: str | None = None
    s3_endpoint_url: str | None = None
    gcs_bucket: str | None = None
    gcs_project: str | None = None
    gcs_endpoint_url: str | None = None
    http_url: str | None = None
    http_token_env: str = "KAMIWAZA_AUDIT_HTTP_TOKEN"
    http_ca_file: str | None = None

    def read_back(self) -> tuple[str, SourceOptions]:
        """Where `kamiwaza audit` and `stats` read the shipped records back."""
        if self.kind == "s3":
            return f"s3://{self.s3_bucket}/{self.prefix}", SourceOptions(
                endpoint_url=self.s3_endpoint_url, region=self.s3_region
            )
        if self.kind == "gcs":
            return f"gs://{self.gcs_bucket}/{self.prefix}", SourceOptions(
                endpoint_url=self.gcs_endpoint_url, project=self.gcs_project
            )
        if self.kind == "http":
            raise AuditConfigError("the HTTP collector cannot be read back: give a SOURCE")
        return str(Path(self.local_dir) / self.prefix), SourceOptions()


def build_sink(config: SinkConfig, environ: Mapping[str, str]) -> Sink:
    """The sink `config` describes."""
    kind = config.kind
    if kind == "local":
        from observability.sinks.local import LocalSink

        return LocalSink(
            config.local_dir, config.prefix, max_file_bytes=config.local_max_file_bytes
        )
    if kind == "s3":
        from observability.sinks.s3 import S3Sink

        return S3Sink(
            str(config.s3_bucket),
            region=config.s3_region,
            kms_key_id=config.s3_kms_key_id,
            endpoint_url=config.s3_endpoint_url,
        )
    if kind == "gcs":
        from observability.sinks.gcs import GcsSink

        return GcsSink(
            str(config.gcs_bucket),
            project=config.gcs_project,
            endpoint_url=config.gcs_endpoint_url,
        )
    if kind == "http":
        from observability.sinks.http import HttpSink

        variable = config.http_token_env
        token = environ.get(variable, "")
        if not token:
            raise AuditConfigError(
                f"audit_http_token_env: environment variable {variable} is not set"
            )
        return HttpSink(str(config.http_url), token, ca_file=config.http_ca_file)
    raise AuditConfigError(f"audit_sink: unknown sink {kind!r}")


class AuditPipeline:
    """Spool, fsync, ship; see the module docstring."""

    def __init__(
        self, config: AuditConfig, sink: Sink, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.config = config
        self.sink = sink
        self.clock = clock
        self._spool = Spool(
            config.spool_dir, config.host, segment_max_bytes=config.batch_max_bytes, clock=clock
        )
        self._ingest = (
            DecisionLogIngest(
                self.write_event,
                port=config.decision_logs_port,
                token_file=config.decision_logs_token_file,
            )
            if config.decision_logs
            else None
        )
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        # The batch of the segment being shipped, kept while its upload is retried
        # (the shipper's thread only): a retry does not read and compress it again.
        self._batch: tuple[Segment, SealedData, Batch] | None = None
        self._closing = False
        self._started = False
        self._io_error_at = -1e9
        self._refusing = False
        self._last_loud_log = -1e9
        # Records dropped since the last gap entry (drop mode, or refusals
        # past the bound), how many of them were refusals, and when.
        self._gap_count = 0
        self._gap_refused = 0
        self._gap_first = ""
        self._gap_last = ""
        # Counters (plain numbers: the metrics exporter thread reads them).
        self.written = 0  # request records spooled
        self.events = 0  # OPA decision events spooled
        self.dropped = 0  # records dropped (drop mode), or refusals past the bound
        self.events_dropped = 0
        self.lost = 0  # records that failed to write (disk errors)
        self.shipped = 0  # entries shipped
        self.objects_shipped = 0
        self.failures = 0  # failed uploads
        self.last_error: str | None = None

    @classmethod
    def build(
        cls, config: AuditConfig, sink: SinkConfig, *, environ: Mapping[str, str] | None = None
    ) -> AuditPipeline:
        """The pipeline shipping to the sink `sink` describes."""
        try:
            built = build_sink(sink, os.environ if environ is None else environ)
        except SinkError as err:
            raise AuditConfigError(f"audit sink: {err}") from err
        return cls(config, built)

    # -- lifecycle -------------------------------------------------------------

    @property
    def spool(self) -> Spool:
        return self._spool

    @property
    def stream(self) -> str:
        return self._spool.stream

    async def start(self) -> None:
        try:
            await asyncio.to_thread(self._spool.open)
        except (SpoolError, OSError) as err:
            raise AuditConfigError(str(err)) from err
        if self._ingest is not None:
            await self._ingest.start()
        self._started = True
        self._tasks = [
            asyncio.create_task(self._sync_loop(), name="audit-fsync"),
            asyncio.create_task(self._ship_loop(), name="audit-shipper"),
        ]
        log.info(
            "audit: spool %s (stream %s), shipping to %s",
            self.config.spool_dir,
            self.stream,
            self.sink.describe(),
        )

    async def close(self) -> None:
        """Stop taking OPA events, ship what can be shipped in time, fsync the rest."""
        if self._ingest is not None:
            await self._ingest.close()
        if not self._started:
            return
        if self._gap_count:
            # Drops since the last record: the gap entry goes in before the end.
            with contextlib.suppress(OSError, SpoolError):
                self._write_gap()
        self._spool.seal()
        with contextlib.suppress(TimeoutError):
            await self.flush(self.config.shutdown_timeout_s)
        self._closing = True
        self._wake.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.to_thread(self._spool.close)
        await asyncio.to_thread(self.sink.close)
        self._started = False
        if self._spool.depth:
            log.warning(
                "audit: %d entries not shipped yet; they stay in %s and ship at the next start",
                self._spool.depth,
                self.config.spool_dir,
            )

    async def flush(self, timeout: float = 30.0) -> None:
        """Seal the active segment and wait until everything spooled is shipped."""
        self._spool.seal()
        self._wake.set()
        async with asyncio.timeout(timeout):
            while self._spool.pending():
                await asyncio.sleep(0.005)  # poll the shipper's progress

    def write_opa_config(self, directory: str | Path) -> Path | None:
        """The OPA config file that ships decision logs to this gateway (None: off)."""
        if self._ingest is None:
            return None
        return self._ingest.write_opa_config(directory)

    @property
    def ingest(self) -> DecisionLogIngest | None:
        return self._ingest

    # -- the request path ------------------------------------------------------

    def admits(self) -> bool:
        """Whether a new request may be served (False only in refuse mode)."""
        if self.config.spool_full != REFUSE:
            return True
        if self.clock() - self._io_error_at < IO_ERROR_HOLD_S:
            return False
        full = self._spool.used >= self.config.spool_max_bytes - self.config.reserve_bytes
        if full != self._refusing:
            self._refusing = full
            if full:
                log.error(
                    "AUDIT SPOOL FULL (%d bytes, bound %d): refusing new requests with 503 "
                    "until the sink (%s) catches up",
                    self._spool.used,
                    self.config.spool_max_bytes,
                    self.sink.describe(),
                )
            else:
                log.warning("audit spool has room again: accepting requests")
        return not full

    def prompt_hash(self, messages: Any) -> str | None:
        """HMAC-SHA256 of the messages under the configured salt (None: not configured).

        The messages are canonical JSON (sorted keys, no spaces, UTF-8), so the
        same prompt always gives the same hash: `kamiwaza audit hash-prompt`.
        """
        if self.config.prompt_salt is None:
            return None
        return prompt_hmac(self.config.prompt_salt, messages)

    def write(self, record: AuditRecord) -> None:
        """Spool one request's record (an observer: never blocks on I/O, never raises)."""
        try:
            error = record.error
            refusal = error is not None and error.get("code") == REFUSAL_CODE
            if not self._room(refusal):
                self._drop(record.timestamp, refusal=refusal)
                return
            if self._gap_count:
                self._write_gap()
            self._spool.append(KIND_REQUEST, record.request_id, record.timestamp, record.to_json())
            self.written += 1
        except Exception as err:
            self.lost += 1
            self._io_error_at = self.clock()
            log.error(
                "AUDIT RECORD LOST: request %s could not be spooled: %s", record.request_id, err
            )

    def _room(self, refusal: bool) -> bool:
        used, bound = self._spool.used, self.config.spool_max_bytes
        if self.config.spool_full == DROP or refusal:
            return used < bound
        return True  # an admitted request's record is always written (the reserve)

    def _drop(self, timestamp: str, *, refusal: bool) -> None:
        self.dropped += 1
        if not self._gap_count:
            self._gap_first = timestamp
        self._gap_count += 1
        self._gap_refused += refusal
        self._gap_last = timestamp
        now = self.clock()
        if now - self._last_loud_log >= LOUD_LOG_EVERY_S:
            self._last_loud_log = now
            log.error(
                "AUDIT RECORDS DROPPED: the spool is at its bound (%d bytes) and the sink "
                "(%s) is not keeping up; %d dropped so far",
                self.config.spool_max_bytes,
                self.sink.describe(),
                self.dropped,
            )

    def _write_gap(self) -> None:
        gap: dict[str, Any] = {
            "dropped": self._gap_count,
            "first": self._gap_first,
            "last": self._gap_last,
        }
        if self._gap_refused:
            gap["refused"] = self._gap_refused  # requests answered 503 audit_unavailable
        body = json.dumps(gap, separators=(",", ":"))
        self._spool.append(KIND_GAP, f"gap-{self._spool.stream}", self._gap_last, body)
        log.error(
            "audit: %d record(s) were dropped between %s and %s (recorded as a gap)",
            self._gap_count,
            self._gap_first,
            self._gap_last,
        )
        self._gap_count = 0
        self._gap_refused = 0

    def write_event(self, event: dict[str, Any]) -> bool:
        """Spool one OPA decision-log event; False: refused (spool full, refuse mode)."""
        used, bound = self._spool.used, self.config.spool_max_bytes
        if self.config.spool_full == REFUSE:
            if used >= bound - self.config.reserve_bytes:
                return False
        elif used >= bound:
            self.events_dropped += 1
            return True
        try:
            self._spool.append(
                KIND_DECISION,
                str(event["decision_id"]),
                str(event.get("timestamp", "")),
                json.dumps(event, separators=(",", ":"), sort_keys=True),
            )
        except OSError as err:
            log.error("audit: OPA decision event could not be spooled: %s", err)
            return False
        self.events += 1
        return True

    # -- background tasks ------------------------------------------------------

    async def _sync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.fsync_interval_s)
            try:
                await asyncio.to_thread(self._spool.sync)
            except OSError as err:
                log.error("audit spool fsync failed: %s", err)

    async def _ship_loop(self) -> None:
        tick = min(max(self.config.batch_interval_s / 4, 0.02), 1.0)
        backoff = 0.0
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), backoff or tick)
            self._wake.clear()
            if self._spool.active_age >= self.config.batch_interval_s:
                self._spool.seal()
            while pending := self._spool.pending():
                seg = pending[0]
                try:
                    data = await asyncio.to_thread(self._ship, seg)
                except Exception as err:
                    self.failures += 1
                    self.last_error = f"{type(err).__name__}: {err}"
                    backoff = min(max(backoff * 2, 0.1), self.config.retry_max_s)
                    log.warning(
                        "audit: shipping %s to %s failed (%s); %d entries wait in the spool, "
                        "retrying in %.1fs",
                        seg.name,
                        self.sink.describe(),
                        self.last_error,
                        self._spool.depth,
                        backoff,
                    )
                    break
                self._spool.forget(seg)
                self.shipped += data.count
                self.objects_shipped += 1
                if backoff:
                    log.warning("audit: shipping to %s works again", self.sink.describe())
                backoff = 0.0
                self.last_error = None

    def _ship(self, seg: Segment) -> SealedData:
        if self._batch is None or self._batch[0] is not seg:
            data = self._spool.read_sealed(seg)
            batch = make_batch(
                self.config.prefix,
                seg.hour,
                stream=data.stream,
                first_seq=data.first_seq,
                last_seq=data.last_seq,
                records=data.count,
                raw=data.raw,
            )
            self._batch = (seg, data, batch)
        _, data, batch = self._batch
        self.sink.put(batch)
        self._spool.complete(seg, data)
        self._batch = None
        return data

    # -- reporting -------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return {
            "sink": self.sink.name,
            "stream": self.stream,
            "spool_bytes": self._spool.used,
            "depth": self._spool.depth,
            "lag_s": round(self._spool.oldest_age, 3),
            "written": self.written,
            "events": self.events,
            "dropped": self.dropped,
            "events_dropped": self.events_dropped,
            "lost": self.lost,
            "shipped": self.shipped,
            "objects_shipped": self.objects_shipped,
            "ship_failures": self.failures,
            "last_error": self.last_error,
        }


def prompt_hmac(salt: bytes, messages: Any) -> str:
    canonical = json.dumps(messages, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hmac.new(salt, canonical.encode(), hashlib.sha256).hexdigest()
