"""The durable audit spool: append-only segment files on local disk.

Layout of the spool directory::

    lock                      flock'd while a gateway owns the spool
    stream.json               this spool's stream name: "<host>.<epoch>"
    head.json                 seq and hash of the last entry shipped
    00000041-0000491234.jsonl   segments: <number>-<hour since the epoch, UTC>

`append()` runs on the request path (the event loop thread): it builds one
hash-chained entry line and `os.write`s it to the active segment, so that the
entry is in the kernel's page cache, and survives the process being killed,
before the response completes. It never fsyncs: `sync()`, called from a
worker thread at the configured interval, does (group commit), so that a machine
crash loses at most that interval. A segment is sealed when it reaches its size,
when the hour changes (objects are keyed by hour) or when the shipper asks; sealed
segments are read, uploaded and only then deleted (`complete()`), in order.

After a restart `open()` truncates a torn or garbled tail (a machine crash),
seals whatever the previous process left, and continues the hash chain from the
last entry on disk (or from head.json when everything had been shipped).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from observability.chain import GENESIS, entry_line, line_hash

log = logging.getLogger(__name__)

_SEGMENT = re.compile(r"^(\d{8,})-(\d{10})\.jsonl$")
_HOST_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


class SpoolError(Exception):
    """The spool cannot be opened (locked by another process, unreadable state)."""


def safe_host(host: str) -> str:
    """A host name usable in object keys."""
    return _HOST_SAFE.sub("-", host).strip("-.") or "gateway"


@dataclass(slots=True)
class Segment:
    path: Path
    number: int  # segments are numbered in the order they were opened
    hour: int  # hours since the Unix epoch (UTC) when its first entry was written
    size: int = 0
    count: int = 0
    created: float = 0.0  # wall-clock time of its first entry

    @property
    def name(self) -> str:
        return self.path.name


@dataclass(frozen=True, slots=True)
class SealedData:
    """What the shipper reads back from a sealed segment."""

    raw: bytes  # the segment's lines, each ending in a newline
    stream: str
    first_seq: int
    last_seq: int
    last_hash: str
    count: int


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (files created, renamed, deleted) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` durably: an fsynced temporary file renamed over it,
    then its directory fsynced (which also makes other new entries there durable)."""
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _valid_prefix(data: bytes) -> tuple[int, bytes | None]:
    """Length of the longest prefix of whole, well-formed entry lines, and its last line."""
    end = 0
    last: bytes | None = None
    while True:
        nl = data.find(b"\n", end)
        if nl < 0:
            return end, last
        line = data[end:nl]
        try:
            entry = json.loads(line)
            ok = isinstance(entry, dict) and isinstance(entry.get("seq"), int)
        except ValueError:
            ok = False
        if not ok:
            return end, last
        last = line
        end = nl + 1


class Spool:
    """Append-only, hash-chained, size-bounded segment files (see the module doc)."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        host: str,
        *,
        segment_max_bytes: int = 8 * 1024 * 1024,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = Path(directory)
        self.host = safe_host(host)
        self.segment_max_bytes = segment_max_bytes
        self.clock = clock
        self.stream = ""
        self.used = 0  # bytes in segment files (sealed and active)
        self.depth = 0  # entries in segment files
        self._seq = 0
        self._prev = GENESIS
        self._active: Segment | None = None
        self._fd = -1
        self._sealed: list[Segment] = []
        self._retired: list[int] = []  # fds of sealed segments, fsynced and closed by sync()
        self._lock = threading.Lock()
        self._dirty = False
        self._dir_dirty = False
        self._lock_fd = -1
        self._next_segment = 0

    # -- lifecycle -------------------------------------------------------------

    def open(self) -> None:
        """Lock the spool, recover what a previous process left, resume the chain."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = -1
            raise SpoolError(
                f"audit spool {self.directory} is in use by another gateway process"
            ) from None
        self.stream = self._load_stream()
        segments = sorted(
            (int(m.group(1)), m, p)
            for p in self.directory.iterdir()
            if (m := _SEGMENT.match(p.name))
        )
        head: tuple[int, str] | None = None
        for number, match, path in segments:
            self._next_segment = number + 1
            data = path.read_bytes()
            valid, last = _valid_prefix(data)
            if valid < len(data):
                log.warning(
                    "audit spool: %s ends in %d byte(s) of torn or garbled data (a crash); "
                    "truncated",
                    path.name,
                    len(data) - valid,
                )
                with open(path, "r+b") as fh:
                    fh.truncate(valid)
                    os.fsync(fh.fileno())
            if valid == 0:
                path.unlink()
                continue
            assert last is not None
            count = data.count(b"\n", 0, valid)
            seg = Segment(path, number, int(match.group(2)), valid, count, path.stat().st_mtime)
            self._sealed.append(seg)
            self.used += valid
            self.depth += count
            entry = json.loads(last)
            head = (
                (int(entry["seq"]), line_hash(last)) if entry.get("stream") == self.stream else None
            )
        if head is None:
            head = self._load_head()
        if head is not None:
            self._seq, self._prev = head[0] + 1, head[1]
        if self._sealed:
            log.info(
                "audit spool: %d unshipped segment(s) (%d entries) from a previous run",
                len(self._sealed),
                self.depth,
            )

    def _load_stream(self) -> str:
        path = self.directory / "stream.json"
        try:
            doc = json.loads(path.read_text())
            if doc.get("host") == self.host and isinstance(doc.get("stream"), str):
                return str(doc["stream"])
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as err:
            raise SpoolError(f"audit spool {path}: unreadable ({err})") from err
        # A new spool (or a new host name): a new stream, whose chain starts at 0.
        stream = f"{self.host}.{secrets.token_hex(4)}"
        write_atomic(path, json.dumps({"host": self.host, "stream": stream}))
        with contextlib.suppress(FileNotFoundError):
            (self.directory / "head.json").unlink()
        return stream

    def _load_head(self) -> tuple[int, str] | None:
        try:
            doc = json.loads((self.directory / "head.json").read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            raise SpoolError(f"audit spool head.json: unreadable ({err})") from err
        if doc.get("stream") != self.stream:
            return None
        return int(doc["seq"]), str(doc["hash"])

    def close(self) -> None:
        """Seal, fsync and close everything; release the lock."""
        self.seal()
        self.sync()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    # -- the request path ----------------------------------------------------

    def append(self, kind: str, id_: str, ts: str, body: str) -> None:
        """Write one entry to the active segment (page cache; fsync comes later)."""
        now = self.clock()
        hour = int(now // 3600)
        seg = self._active
        if seg is not None and (seg.hour != hour or seg.size >= self.segment_max_bytes):
            self.seal()
            seg = None
        line = entry_line(
            kind, id_, stream=self.stream, seq=self._seq, prev=self._prev, ts=ts, body=body
        ).encode()
        if seg is None:
            seg = self._open_segment(now, hour)
        data = line + b"\n"
        view = memoryview(data)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError:
            # Never leave half a line: the next entry would be glued to it.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, seg.size)
            raise
        self._prev = line_hash(line)
        self._seq += 1
        seg.size += len(data)
        seg.count += 1
        self.used += len(data)
        self.depth += 1
        self._dirty = True

    def _open_segment(self, now: float, hour: int) -> Segment:
        number = self._next_segment
        self._next_segment += 1
        path = self.directory / f"{number:08d}-{hour:010d}.jsonl"
        self._fd = os.open(
            path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600
        )
        self._active = Segment(path, number, hour, created=now)
        self._dir_dirty = True
        return self._active

    # -- sealing and syncing -------------------------------------------------

    @property
    def active_age(self) -> float:
        """Seconds since the active segment's first entry (0 when there is none)."""
        return 0.0 if self._active is None else self.clock() - self._active.created

    @property
    def oldest_age(self) -> float:
        """Seconds since the oldest unshipped entry was written (0 when empty)."""
        # Also read from the metrics exporter's thread: tolerate a concurrent change.
        try:
            oldest = self._sealed[0] if self._sealed else self._active
        except IndexError:
            oldest = self._active
        return 0.0 if oldest is None else max(0.0, self.clock() - oldest.created)

    def seal(self) -> Segment | None:
        """Close the active segment for writing; it becomes the last pending one."""
        seg = self._active
        if seg is None:
            return None
        with self._lock:
            self._retired.append(self._fd)
            self._fd = -1
            self._active = None
            self._dirty = False
        self._sealed.append(seg)
        return seg

    def sync(self) -> None:
        """fsync what was appended since the last call (a worker thread calls this)."""
        with self._lock:
            fd = self._fd if self._dirty else -1
            self._dirty = False
            retired, self._retired = self._retired, []
            dir_dirty, self._dir_dirty = self._dir_dirty, False
        for old in retired:
            try:
                os.fsync(old)
            finally:
                os.close(old)
        if fd >= 0:
            try:
                os.fsync(fd)
            except OSError as err:  # closed under us at shutdown, or an I/O error
                log.error("audit spool: fsync failed: %s", err)
        if dir_dirty:
            fsync_dir(self.directory)

    # -- shipping --------------------------------------------------------------

    def pending(self) -> list[Segment]:
        """Sealed segments not yet shipped, oldest first."""
        return list(self._sealed)

    def read_sealed(self, seg: Segment) -> SealedData:
        """A sealed segment's bytes, made durable first (worker thread)."""
        with open(seg.path, "rb") as fh:
            os.fsync(fh.fileno())
            raw = fh.read()
        end = raw.rstrip(b"\n").rfind(b"\n") + 1
        first_line = raw[: raw.index(b"\n")]
        last_line = raw[end:].rstrip(b"\n")
        first, last = json.loads(first_line), json.loads(last_line)
        return SealedData(
            raw=raw,
            stream=str(first["stream"]),
            first_seq=int(first["seq"]),
            last_seq=int(last["seq"]),
            last_hash=line_hash(last_line),
            count=raw.count(b"\n"),
        )

    def complete(self, seg: Segment, data: SealedData) -> None:
        """Mark a shipped segment done: remember the chain head, delete the file
        (worker thread; call `forget()` on the event loop afterwards)."""
        head = {"stream": data.stream, "seq": data.last_seq, "hash": data.last_hash}
        write_atomic(self.directory / "head.json", json.dumps(head))
        seg.path.unlink()
        fsync_dir(self.directory)

    def forget(self, seg: Segment) -> None:
        """Drop a completed segment from the accounting (event loop thread)."""
        self._sealed.remove(seg)
        self.used -= seg.size
        self.depth -= seg.count
