"""Hash-chained audit entries and their verification.

Every line the spool writes is one *entry*: a small JSON envelope around a
request's audit record, an OPA decision-log event, or a gap marker (records
dropped while the spool was full, in drop mode)::

    {"kind":"request","id":"req-…","stream":"gw-1.3f9a0c21","seq":41,
     "prev":"<sha256 hex of entry 40's line>","ts":"2026-11-25T10:00:00.000Z",
     "body":{…the AuditRecord…}}

`seq` counts the entries of one *stream* (one gateway's spool) from 0 and
`prev` is the SHA-256 of the previous entry's line, exactly as written
(without its newline), or 64 zeros for entry 0. So removing, altering or
reordering an entry breaks the link to the entry after it; the digest that
accompanies every uploaded object covers the last entry of the stream too.

The envelope is built by string concatenation around the record's JSON (which
the record serialises once): on the request path that is cheaper than a second
`json.dumps`. Readers parse it with `json.loads` like any JSON line.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

GENESIS = "0" * 64

KIND_REQUEST = "request"
KIND_DECISION = "opa_decision"
KIND_GAP = "gap"
KINDS = frozenset({KIND_REQUEST, KIND_DECISION, KIND_GAP})


def entry_line(kind: str, id_: str, *, stream: str, seq: int, prev: str, ts: str, body: str) -> str:
    """One entry's line (without the newline). `body` is already JSON."""
    # json.dumps for the strings that come from outside (ids, timestamps).
    return (
        f'{{"kind":"{kind}","id":{json.dumps(id_)},"stream":{json.dumps(stream)},'
        f'"seq":{seq},"prev":"{prev}","ts":{json.dumps(ts)},"body":{body}}}'
    )


def line_hash(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


@dataclass(frozen=True, slots=True)
class Problem:
    """One failed check: where it is and what is wrong."""

    where: str  # "<object key>" or "<object key> line N"
    message: str
    stream: str | None = None

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass(slots=True)
class _StreamState:
    last_seq: int
    last_hash: str
    last_where: str
    seen: dict[int, str] = field(default_factory=dict)  # seq -> hash, to recognise duplicates


@dataclass
class VerifyReport:
    objects: int = 0
    entries: int = 0  # distinct entries (duplicates from at-least-once delivery excluded)
    duplicates: int = 0
    streams: dict[str, int] = field(default_factory=dict)  # stream -> last seq seen
    problems: list[Problem] = field(default_factory=list)
    gaps: list[str] = field(default_factory=list)  # declared losses (drop mode), not failures

    @property
    def ok(self) -> bool:
        return not self.problems


class ChainVerifier:
    """Feed objects in key order (and their lines in file order); collects problems.

    Checks, per object: the accompanying digest. Per entry: valid JSON with the
    envelope's fields; per stream: the first entry is seq 0 (unless
    `allow_partial`), each next entry is seq+1 and its `prev` is the hash of the
    entry before it. An entry seen again with the same hash is a duplicate from
    at-least-once delivery and is skipped; with another hash it was altered.
    """

    def __init__(self, *, allow_partial: bool = False) -> None:
        self.allow_partial = allow_partial
        self.report = VerifyReport()
        self._streams: dict[str, _StreamState] = {}

    def _problem(self, where: str, message: str, stream: str | None = None) -> None:
        self.report.problems.append(Problem(where, message, stream))

    def check_digest(self, key: str, body: bytes, digest: str | None) -> None:
        if digest is None:
            self._problem(key, "no digest accompanies this object")
        elif hashlib.sha256(body).hexdigest() != digest.lower():
            self._problem(key, "content does not match its SHA-256 digest (object altered)")

    def feed_object(self, key: str, lines: Iterable[bytes]) -> Iterator[dict[str, Any]]:
        """Check an object's entries; yields each distinct, well-formed entry."""
        self.report.objects += 1
        for number, raw in enumerate(lines, start=1):
            line = raw.rstrip(b"\r\n")
            if not line:
                continue
            where = f"{key} line {number}"
            entry = self._parse(where, line)
            if entry is None:
                continue
            if self._link(where, entry, line_hash(line)):
                yield entry

    def _parse(self, where: str, line: bytes) -> dict[str, Any] | None:
        try:
            entry = json.loads(line)
        except ValueError:
            self._problem(where, "not a JSON line (corrupted or truncated)")
            return None
        if (
            not isinstance(entry, dict)
            or entry.get("kind") not in KINDS
            or not isinstance(entry.get("stream"), str)
            or not isinstance(entry.get("seq"), int)
            or not isinstance(entry.get("prev"), str)
        ):
            self._problem(where, "not an audit entry (missing kind, stream, seq or prev)")
            return None
        return entry

    def _link(self, where: str, entry: dict[str, Any], digest: str) -> bool:
        stream: str = entry["stream"]
        seq: int = entry["seq"]
        state = self._streams.get(stream)
        if state is None:
            if seq != 0 and not self.allow_partial:
                self._problem(
                    where,
                    f"stream {stream} starts at seq {seq}: entries 0..{seq - 1} are missing",
                    stream,
                )
            elif seq == 0 and entry["prev"] != GENESIS:
                self._problem(where, f"stream {stream} seq 0 does not start a chain", stream)
            self._accept(stream, None, where, entry, digest)
            return True
        if seq <= state.last_seq:
            earlier = state.seen.get(seq)
            if earlier == digest:
                self.report.duplicates += 1
                return False
            if earlier is None:
                self._problem(
                    where,
                    f"stream {stream} seq {seq} is out of order (after seq {state.last_seq})",
                    stream,
                )
            else:
                self._problem(
                    where,
                    f"stream {stream} seq {seq} differs from an earlier copy of it (altered)",
                    stream,
                )
            return False
        if seq != state.last_seq + 1:
            missing = (
                f"seq {state.last_seq + 1}"
                if seq == state.last_seq + 2
                else f"seqs {state.last_seq + 1}..{seq - 1}"
            )
            self._problem(
                where,
                f"stream {stream}: {missing} missing between {state.last_where} and here "
                "(deleted or reordered)",
                stream,
            )
        elif entry["prev"] != state.last_hash:
            self._problem(
                where,
                f"stream {stream} seq {seq}: prev does not match the hash of seq {state.last_seq}"
                f" at {state.last_where} (that entry was altered or replaced)",
                stream,
            )
        self._accept(stream, state, where, entry, digest)
        return True

    def _accept(
        self,
        stream: str,
        state: _StreamState | None,
        where: str,
        entry: dict[str, Any],
        digest: str,
    ) -> None:
        seq: int = entry["seq"]
        if state is None:
            state = self._streams[stream] = _StreamState(seq, digest, where)
        else:
            state.last_seq, state.last_hash, state.last_where = seq, digest, where
        state.seen[seq] = digest
        self.report.entries += 1
        self.report.streams[stream] = seq
        if entry["kind"] == KIND_GAP:
            body = entry.get("body") or {}
            self.report.gaps.append(
                f"{where}: {body.get('dropped', '?')} record(s) dropped by stream {stream} "
                f"between {body.get('first', '?')} and {body.get('last', '?')} (spool full)"
            )
