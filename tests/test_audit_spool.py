"""The audit spool and hash chain: append, seal, recover, resume, verify."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import pytest

from observability.chain import GENESIS, ChainVerifier, line_hash
from observability.sinks import make_batch, object_key, parse_key
from observability.sinks.local import LocalSink, read_digest
from observability.spool import Spool, SpoolError


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _append(spool: Spool, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        spool.append("request", f"req-{i}", f"2027-01-15T08:00:{i % 60:02d}.000Z", f'{{"n":{i}}}')


def _lines(spool: Spool) -> list[bytes]:
    out: list[bytes] = []
    for seg in spool.pending():
        out += seg.path.read_bytes().splitlines()
    return out


def test_entries_are_chained_and_survive_a_restart(tmp_path: Path) -> None:
    spool = Spool(tmp_path, "gw-1")
    spool.open()
    _append(spool, 3)
    assert spool.depth == 3
    assert spool.used == sum(len(line) + 1 for line in _lines_active(spool))
    # The next process (the previous one killed: nothing sealed, nothing closed).
    again = Spool(tmp_path, "gw-1")
    with pytest.raises(SpoolError, match="in use by another gateway process"):
        again.open()
    spool.close()
    again.open()
    assert again.stream == spool.stream
    assert again.depth == 3 and len(again.pending()) == 1  # recovered and sealed
    _append(again, 2, start=3)
    again.seal()
    lines = _lines(again)
    entries = [json.loads(line) for line in lines]
    assert [e["seq"] for e in entries] == [0, 1, 2, 3, 4]
    assert entries[0]["prev"] == GENESIS
    for before, after in zip(lines, entries[1:], strict=False):
        assert after["prev"] == line_hash(before)
    assert entries[1] == {
        "kind": "request",
        "id": "req-1",
        "stream": spool.stream,
        "seq": 1,
        "prev": line_hash(lines[0]),
        "ts": "2027-01-15T08:00:01.000Z",
        "body": {"n": 1},
    }
    verifier = ChainVerifier()
    assert len(list(verifier.feed_object("k", lines))) == 5
    assert verifier.report.ok
    again.close()


def _lines_active(spool: Spool) -> list[bytes]:
    return spool._active.path.read_bytes().splitlines() if spool._active else []


def test_a_torn_tail_is_truncated_at_recovery(tmp_path: Path) -> None:
    spool = Spool(tmp_path, "gw")
    spool.open()
    _append(spool, 2)
    path = spool._active.path if spool._active else None
    assert path is not None
    spool.close()
    with open(path, "ab") as fh:
        fh.write(b'{"kind":"request","id":"req-torn","str')  # a machine crash mid-write
    again = Spool(tmp_path, "gw")
    again.open()
    assert path.read_bytes().count(b"\n") == 2
    assert not path.read_bytes().endswith(b"str")
    _append(again, 1, start=2)
    again.seal()
    verifier = ChainVerifier()
    list(verifier.feed_object("k", _lines(again)))
    assert verifier.report.ok and verifier.report.entries == 3
    again.close()


def test_shipping_marks_done_and_the_chain_resumes_from_head(tmp_path: Path) -> None:
    spool = Spool(tmp_path, "gw")
    spool.open()
    _append(spool, 2)
    seg = spool.seal()
    assert seg is not None
    data = spool.read_sealed(seg)
    assert (data.first_seq, data.last_seq, data.count) == (0, 1, 2)
    spool.complete(seg, data)
    spool.forget(seg)
    assert not seg.path.exists() and spool.used == 0 and spool.depth == 0
    spool.close()
    again = Spool(tmp_path, "gw")
    again.open()
    _append(again, 1, start=2)
    again.seal()
    (line,) = _lines(again)
    assert json.loads(line)["seq"] == 2
    assert json.loads(line)["prev"] == data.last_hash
    again.close()


def test_segments_rotate_by_size_and_by_hour(tmp_path: Path) -> None:
    clock = Clock()
    spool = Spool(tmp_path, "gw", segment_max_bytes=300, clock=clock)
    spool.open()
    _append(spool, 4)  # ~170 bytes an entry: a new segment every two
    clock.now += 3600
    _append(spool, 1, start=4)
    spool.seal()
    segments = spool.pending()
    assert [s.count for s in segments] == [2, 2, 1]
    assert segments[2].hour == segments[0].hour + 1
    spool.close()


def test_a_new_host_name_starts_a_new_stream(tmp_path: Path) -> None:
    spool = Spool(tmp_path, "gw-a")
    spool.open()
    _append(spool, 1)
    spool.close()
    other = Spool(tmp_path, "gw-b")
    other.open()
    assert other.stream.startswith("gw-b.") and other.stream != spool.stream
    _append(other, 1, start=1)
    other.seal()
    entries = [json.loads(line) for line in _lines(other)]
    assert [(e["stream"], e["seq"]) for e in entries] == [(spool.stream, 0), (other.stream, 0)]
    other.close()


def test_batches_are_deterministic_and_keyed_by_hour() -> None:
    raw = b'{"a":1}\n'
    one = make_batch("audit/", 491_234, stream="gw.1", first_seq=7, last_seq=7, records=1, raw=raw)
    two = make_batch("audit", 491_234, stream="gw.1", first_seq=7, last_seq=7, records=1, raw=raw)
    assert one.gz == two.gz and one.sha256 == two.sha256  # a re-upload is the same object
    assert one.key == "audit/dt=2026-01-15/hour=02/gw.1-000000000007.jsonl.gz"
    assert gzip.decompress(one.gz) == raw
    assert parse_key(one.key) == ("2026-01-15", "02", "gw.1", 7)
    assert object_key("", 0, "h", 1) == "dt=1970-01-01/hour=00/h-000000000001.jsonl.gz"


def test_local_sink_appends_batches_and_commits_each_digest(tmp_path: Path) -> None:
    def batch(seq: int) -> bytes:
        return f'{{"seq":{seq}}}\n'.encode()

    def put(sink: LocalSink, seq: int) -> None:
        sink.put(
            make_batch("r", 491_234, stream="gw.1", first_seq=seq, last_seq=seq, records=1,
                       raw=batch(seq))
        )  # fmt: skip

    def committed() -> dict[str, tuple[int, list[int]]]:
        found = {}
        for path in sorted((tmp_path / "r").rglob("*.jsonl.gz")):
            data = path.read_bytes()
            assert read_digest(path) == (hashlib.sha256(data).hexdigest(), len(data))
            seqs = [json.loads(line)["seq"] for line in gzip.decompress(data).splitlines()]
            found[path.name] = (len(data), seqs)
        return found

    one_batch = len(make_batch("r", 0, stream="s", first_seq=0, last_seq=0, records=1,
                               raw=batch(0)).gz)  # fmt: skip
    sink = LocalSink(tmp_path, "r", max_file_bytes=3 * one_batch)
    for seq in range(3):
        put(sink, seq)
    first = "gw.1-000000000000.jsonl.gz"
    assert committed() == {first: (3 * one_batch, [0, 1, 2])}
    put(sink, 3)  # the file is full: the next one starts
    second = "gw.1-000000000003.jsonl.gz"
    assert committed() == {first: (3 * one_batch, [0, 1, 2]), second: (one_batch, [3])}
    # A restart, after a crash that interrupted an append: it is dropped.
    path = next((tmp_path / "r").rglob(second))
    with open(path, "ab") as fh:
        fh.write(b"torn")
    sink = LocalSink(tmp_path, "r", max_file_bytes=3 * one_batch)
    put(sink, 4)
    put(sink, 5)
    assert committed() == {
        first: (3 * one_batch, [0, 1, 2]),
        second: (3 * one_batch, [3, 4, 5]),
    }
