"""Audit sinks: where sealed spool segments go, and how to read them back.

A sink receives one :class:`Batch` at a time (a sealed spool segment, gzip
compressed, with its SHA-256 digest) and must either store it durably or raise;
the spool deletes the segment only after `put()` returned. Delivery is at least
once: after a crash the same batch (same key, same bytes) may be put again.

Objects are gzip JSON Lines keyed
`<prefix>/dt=YYYY-MM-DD/hour=HH/<stream>-<seq>.jsonl.gz`, where `<stream>` is
the gateway's host name plus its spool's epoch and `<seq>` the sequence number
of the object's first entry (12 digits), so keys sort in time order and a
bucket lifecycle rule can manage them by date.

Every sink but the HTTP collector can also be read (:class:`ObjectSource`), for
`kamiwaza audit verify|query|reconcile`.
"""

from __future__ import annotations

import gzip
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

_KEY = re.compile(r"dt=(\d{4}-\d{2}-\d{2})/hour=(\d{2})/([^/]+)-(\d{12})\.jsonl\.gz$")


class SinkError(Exception):
    """A sink is misconfigured (raised at startup) or an upload failed."""


@dataclass(frozen=True, slots=True)
class Batch:
    key: str
    stream: str
    first_seq: int
    last_seq: int
    records: int  # entries in the batch
    gz: bytes  # gzip of the JSON lines
    sha256: str  # hex digest of gz

    def metadata(self) -> dict[str, str]:
        return {
            "sha256": self.sha256,
            "stream": self.stream,
            "first-seq": str(self.first_seq),
            "last-seq": str(self.last_seq),
            "records": str(self.records),
        }


def partition(hour: int) -> tuple[str, str]:
    """`(YYYY-MM-DD, HH)` of an hour counted from the Unix epoch (UTC)."""
    moment = datetime.fromtimestamp(hour * 3600, UTC)
    return moment.strftime("%Y-%m-%d"), moment.strftime("%H")


def object_key(prefix: str, hour: int, stream: str, first_seq: int) -> str:
    dt, hh = partition(hour)
    path = f"dt={dt}/hour={hh}/{stream}-{first_seq:012d}.jsonl.gz"
    return f"{prefix.strip('/')}/{path}" if prefix.strip("/") else path


def parse_key(key: str) -> tuple[str, str, str, int] | None:
    """`(date, hour, stream, first seq)` of an object key, or None if it is not one."""
    match = _KEY.search(key)
    if match is None:
        return None
    return match.group(1), match.group(2), match.group(3), int(match.group(4))


def make_batch(
    prefix: str, hour: int, *, stream: str, first_seq: int, last_seq: int, records: int, raw: bytes
) -> Batch:
    # mtime=0: the same lines always compress to the same bytes, so a batch
    # shipped twice (at-least-once) is the same object with the same digest.
    gz = gzip.compress(raw, compresslevel=6, mtime=0)
    return Batch(
        key=object_key(prefix, hour, stream, first_seq),
        stream=stream,
        first_seq=first_seq,
        last_seq=last_seq,
        records=records,
        gz=gz,
        sha256=hashlib.sha256(gz).hexdigest(),
    )


class Sink(Protocol):
    name: str

    def put(self, batch: Batch) -> None:
        """Store the batch durably or raise (called from a worker thread)."""

    def describe(self) -> str:
        """Where batches go, for logs (no credentials)."""

    def close(self) -> None: ...


class ObjectSource(Protocol):
    """Read access to a sink's objects, for the audit CLI."""

    def describe(self) -> str: ...

    def keys(self, since: datetime | None = None, until: datetime | None = None) -> list[str]:
        """Object keys in key (time) order; `since`/`until` prune by their dt/hour."""

    def read(self, key: str) -> tuple[bytes, str | None]:
        """An object's bytes and the SHA-256 digest that accompanies it (None: missing)."""


def in_range(key: str, since: datetime | None, until: datetime | None) -> bool:
    """Whether an object's hour can hold entries between `since` and `until`."""
    parsed = parse_key(key)
    if parsed is None:
        return False
    if since is None and until is None:
        return True
    start = datetime.strptime(f"{parsed[0]} {parsed[1]}", "%Y-%m-%d %H").replace(tzinfo=UTC)
    # An object holds the entries of the hour it was opened in; a request that
    # finished just after the hour may be in the next one, hence the margin.
    if until is not None and start > until:
        return False
    return not (since is not None and start.timestamp() + 2 * 3600 <= since.timestamp())


def iter_lines(gz: bytes) -> Iterator[bytes]:
    """The lines of a gzip object (one or more members)."""
    yield from gzip.decompress(gz).splitlines()
