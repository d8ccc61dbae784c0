"""The local files sink (the embedded default) and its reader.

Batches are appended, as gzip members, to
`<root>/<prefix>/dt=YYYY-MM-DD/hour=HH/<stream>-<seq>.jsonl.gz`; a file takes
batches until it reaches `max_file_bytes` or the hour changes (the key's hour),
then the next file starts, named after its first entry's seq. A concatenation of
gzip members is itself a gzip file: `zcat` and `gzip.open` read it whole.

Beside each file, `<name>.sha256` holds `<sha256 hex>  <size>  <name>`: the
digest of the file and the size it had when that digest was written. It is
written (atomically) after each append has been fsynced, so it is the commit
record: bytes past the recorded size are an append that a crash interrupted,
truncated before the next one (its batch is shipped again after the restart).
"""

from __future__ import annotations

import hashlib
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from observability.sinks import Batch, in_range, parse_key
from observability.spool import write_atomic


def digest_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def read_digest(path: Path) -> tuple[str, int] | None:
    """`(sha256, size)` recorded for a local object, or None."""
    try:
        parts = digest_path(path).read_text().split()
    except FileNotFoundError:
        return None
    if len(parts) < 2 or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1])


def write_digest(path: Path) -> None:
    """Record the digest of a local object as it is now."""
    data = path.read_bytes()
    _commit_digest(path, hashlib.sha256(data).hexdigest(), len(data))


def _commit_digest(path: Path, sha256: str, size: int) -> None:
    write_atomic(digest_path(path), f"{sha256}  {size}  {path.name}\n")


class LocalSink:
    name = "local"

    def __init__(
        self, root: str | os.PathLike[str], prefix: str, *, max_file_bytes: int = 32 << 20
    ) -> None:
        self.root = Path(root)
        self.prefix = prefix
        self.max_file_bytes = max_file_bytes
        # The file last appended to, its size and the SHA-256 state of those
        # bytes: the next append to it hashes only the new batch, not the file.
        self._running: tuple[Path, int, Any] | None = None

    def describe(self) -> str:
        return f"local files under {self.root / self.prefix}"

    def put(self, batch: Batch) -> None:
        target = self.root / batch.key
        directory = target.parent
        directory.mkdir(parents=True, exist_ok=True)
        current = self._current_file(directory, batch.stream)
        if current is not None:
            committed = read_digest(current)
            size = committed[1] if committed else 0
            if current.stat().st_size != size:
                # An append that a crash interrupted: never committed, so drop it.
                os.truncate(current, size)
            if size == 0 or size + len(batch.gz) <= self.max_file_bytes:
                target = current
        with open(target, "ab") as fh:
            before = os.fstat(fh.fileno()).st_size
            fh.write(batch.gz)
            fh.flush()
            os.fsync(fh.fileno())
        # Its directory is fsynced too: a new object's name is durable with it.
        _commit_digest(target, *self._digest(target, before, batch.gz))

    def _digest(self, path: Path, before: int, appended: bytes) -> tuple[str, int]:
        """SHA-256 and size of `path` once `appended` went in at offset `before`."""
        running = self._running
        if running is not None and running[0] == path and running[1] == before:
            sha = running[2]
            sha.update(appended)
            size = before + len(appended)
        else:  # another file, or a restart: hash the file once
            data = path.read_bytes()
            sha = hashlib.sha256(data)
            size = len(data)
        self._running = (path, size, sha)
        return sha.hexdigest(), size

    @staticmethod
    def _current_file(directory: Path, stream: str) -> Path | None:
        files = sorted(directory.glob(f"{stream}-*.jsonl.gz"))
        return files[-1] if files else None

    def close(self) -> None:
        pass


class LocalSource:
    """Reads the objects under a directory (a local sink's root or any part of it)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def describe(self) -> str:
        return str(self.root)

    def keys(self, since: datetime | None = None, until: datetime | None = None) -> list[str]:
        if not self.root.is_dir():
            return []
        found = []
        for path in self.root.rglob("*.jsonl.gz"):
            key = path.relative_to(self.root).as_posix()
            if parse_key(key) is not None and in_range(key, since, until):
                found.append(key)
        return sorted(found)

    def read(self, key: str) -> tuple[bytes, str | None]:
        path = self.root / key
        digest = read_digest(path)
        return path.read_bytes(), digest[0] if digest else None
