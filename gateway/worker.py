"""A worker process's identity under `kamiwaza serve --workers N`, and what the
composition root derives from it.

Worker 0 is the gateway exactly as it runs alone: its audit spool is the
configured one and its stream is named after the host, so going from one
worker to several continues the same chain. Worker *i* > 0 has its own spool,
`<spool>/w<i>`, and its own stream, `<host>-w<i>.<epoch>`: a spool is written
by one process only (it is flock'd), and each stream's hash chain verifies on
its own (`kamiwaza audit verify` reports every stream). A worker restarted by
the supervisor reopens its spool and continues its chain.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_WORKER_DIR = re.compile(r"^w(\d+)$")
_SEGMENT = re.compile(r"^\d{8,}-\d{10}\.jsonl$")


@dataclass(frozen=True, slots=True)
class WorkerIdentity:
    index: int  # 0 .. count-1; a restarted worker keeps its index
    count: int

    @property
    def name(self) -> str:
        return f"w{self.index}"


def worker_spool_dir(spool: Path, worker: WorkerIdentity | None) -> Path:
    """Where a worker's audit spool lives (worker 0 and a lone gateway: `spool`)."""
    if worker is None or worker.index == 0:
        return spool
    return spool / worker.name


def worker_host(host: str, worker: WorkerIdentity | None) -> str:
    """The host part of a worker's audit stream name."""
    if worker is None or worker.index == 0:
        return host
    return f"{host}-{worker.name}"


def orphan_spools(spool: Path, workers: int) -> list[tuple[Path, int]]:
    """Spools of workers beyond `workers` that still hold unshipped segments
    (left by an earlier run with more workers), with their segment counts."""
    found = []
    try:
        children = sorted(spool.iterdir())
    except OSError:
        return []
    for child in children:
        match = _WORKER_DIR.match(child.name)
        if match is None or int(match.group(1)) < workers or not child.is_dir():
            continue
        segments = sum(1 for p in child.iterdir() if _SEGMENT.match(p.name))
        if segments:
            found.append((child, segments))
    return found


def warn_orphan_spools(spool: Path, workers: int) -> None:
    """Log loudly about spools no worker of this run will ship."""
    for path, segments in orphan_spools(spool, workers):
        log.error(
            "audit spool %s holds %d unshipped segment(s) of a worker this run does not "
            "start; run with --workers %d or more once to ship them",
            path,
            segments,
            int(path.name[1:]) + 1,
        )
