"""Reading shipped audit objects back: sources, entries, records.

A *source* is where a sink put its objects: a local directory (the local sink's
root, or any directory below it), `s3://bucket/prefix` or `gs://bucket/prefix`.
Entries come out in key order, each once: duplicates from at-least-once
delivery are dropped by the chain verifier, which checks every object's digest
and every link on the way (see :mod:`observability.chain`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from observability.chain import KIND_DECISION, KIND_REQUEST, ChainVerifier, Problem
from observability.sinks import ObjectSource, iter_lines
from observability.times import parse_timestamp


@dataclass(frozen=True, slots=True)
class SourceOptions:
    endpoint_url: str | None = None  # S3-compatible store or GCS emulator
    region: str | None = None  # S3
    project: str | None = None  # GCS


def open_source(spec: str, options: SourceOptions | None = None) -> ObjectSource:
    """`s3://bucket/prefix`, `gs://bucket/prefix` or a local directory."""
    options = options or SourceOptions()
    if spec.startswith("s3://"):
        from observability.sinks.s3 import S3Source

        bucket, _, prefix = spec[5:].partition("/")
        return S3Source(bucket, prefix, region=options.region, endpoint_url=options.endpoint_url)
    if spec.startswith("gs://"):
        from observability.sinks.gcs import GcsSource

        bucket, _, prefix = spec[5:].partition("/")
        return GcsSource(bucket, prefix, project=options.project, endpoint_url=options.endpoint_url)
    from observability.sinks.local import LocalSource

    return LocalSource(Path(spec.removeprefix("file://")))


def iter_entries(
    source: ObjectSource,
    verifier: ChainVerifier,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Iterator[dict[str, Any]]:
    """Every distinct entry of the source's objects (in key order), checked on the way."""
    keys = source.keys(since, until)
    for done, key in enumerate(keys, start=1):
        body, digest = source.read(key)
        verifier.check_digest(key, body, digest)
        try:
            lines = list(iter_lines(body))
        except (OSError, EOFError, ValueError) as err:
            verifier.report.objects += 1
            verifier.report.problems.append(Problem(key, f"not a readable gzip object ({err})"))
            continue
        yield from verifier.feed_object(key, lines)
        if progress is not None:
            progress(done, len(keys))


def entry_time(entry: dict[str, Any]) -> datetime | None:
    return parse_timestamp(entry.get("ts"))


def request_records(
    source: ObjectSource | str,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[dict[str, Any]]:
    """The request records of a source, each once, in the order they were written."""
    return _bodies(source, KIND_REQUEST, since, until)


def decision_events(
    source: ObjectSource | str,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[dict[str, Any]]:
    """The OPA decision-log events of a source, each decision once; with `since`
    or `until`, only the decisions OPA made in [since, until)."""
    if since is None and until is None:
        return _bodies(source, KIND_DECISION, None, None)
    # Objects are keyed by the hour of their first entry: list from an hour earlier.
    listed = since - timedelta(hours=1) if since is not None else None
    return [
        event
        for event in _bodies(source, KIND_DECISION, listed, until)
        if _within(parse_timestamp(event.get("timestamp")), since, until)
    ]


def _within(moment: datetime | None, since: datetime | None, until: datetime | None) -> bool:
    return (
        moment is not None
        and (since is None or moment >= since)
        and (until is None or moment < until)
    )


def _bodies(
    source: ObjectSource | str, kind: str, since: datetime | None, until: datetime | None
) -> list[dict[str, Any]]:
    """The bodies of a source's entries of one kind, each id once, in order."""
    if isinstance(source, str):
        source = open_source(source)
    verifier = ChainVerifier(allow_partial=True)
    seen: set[str] = set()
    bodies = []
    for entry in iter_entries(source, verifier, since=since, until=until):
        if entry["kind"] != kind or entry.get("id") in seen:
            continue
        seen.add(entry["id"])
        bodies.append(entry["body"])
    return bodies
