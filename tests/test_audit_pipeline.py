"""The audit pipeline without a gateway: spooling, shipping, outages, bounds,
the HTTP collector sink, prompt hashes, and `kamiwaza audit verify|query|reconcile`."""

from __future__ import annotations

import asyncio
import gzip
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from click.testing import CliRunner

from gateway.cli import main
from observability.audit_reader import decision_events, request_records
from observability.pipeline import AuditConfig, AuditPipeline, prompt_hmac
from observability.sinks import SinkError
from observability.sinks.http import HttpSink
from tests.audit_helpers import local_pipeline, objects, read_lines, record, rewrite


async def test_records_are_shipped_as_gzip_json_lines_with_digests(tmp_path: Path) -> None:
    pipeline, _ = local_pipeline(tmp_path)
    await pipeline.start()
    for n in range(5):
        pipeline.write(record(n))
    await pipeline.flush()
    for n in range(5, 8):
        pipeline.write(record(n))
    await pipeline.close()
    (path,) = objects(tmp_path / "audit")  # two batches appended to one hourly file
    rel = path.relative_to(tmp_path / "audit").as_posix()
    assert rel.startswith("records/dt=") and "/hour=" in rel
    assert path.name == f"{pipeline.stream}-000000000000.jsonl.gz"
    digest, size, name = (tmp_path / "audit" / (rel + ".sha256")).read_text().split()
    assert name == path.name and int(size) == path.stat().st_size
    import hashlib

    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    entries = [json.loads(line) for line in read_lines(path)]
    assert [e["seq"] for e in entries] == list(range(8))
    assert [e["body"]["request_id"] for e in entries] == [f"req-{n:04d}" for n in range(8)]
    assert pipeline.shipped == 8 and pipeline.objects_shipped == 2
    assert not list((tmp_path / "spool").glob("*.jsonl"))  # everything marked done


async def test_a_sink_outage_never_blocks_and_loses_nothing(tmp_path: Path) -> None:
    pipeline, sink = local_pipeline(tmp_path)
    reads: list[str] = []
    read_sealed = pipeline.spool.read_sealed

    def counted(seg: Any) -> Any:
        reads.append(seg.name)
        return read_sealed(seg)

    pipeline.spool.read_sealed = counted  # type: ignore[method-assign]
    await pipeline.start()
    sink.down = True
    for n in range(20):
        pipeline.write(record(n))
    async with asyncio.timeout(5):
        while pipeline.failures < 2:  # shipping attempts fail meanwhile
            await asyncio.sleep(0.01)
    assert pipeline.spool.depth == 20 and pipeline.admits()
    sink.down = False
    await pipeline.flush(5)
    await pipeline.close()
    got = [r["request_id"] for r in request_records(str(tmp_path / "audit"))]
    assert got == [f"req-{n:04d}" for n in range(20)]
    # Each segment was read (and compressed) once, however often its upload failed.
    assert len(reads) == len(set(reads)) == pipeline.objects_shipped


async def test_unshipped_records_ship_after_a_restart(tmp_path: Path) -> None:
    pipeline, sink = local_pipeline(tmp_path, shutdown_timeout_s=0.1)
    await pipeline.start()
    sink.down = True
    for n in range(4):
        pipeline.write(record(n))
    await pipeline.close()  # the sink is down: the records stay in the spool
    assert objects(tmp_path / "audit") == []
    again, _ = local_pipeline(tmp_path)
    await again.start()
    assert again.stream == pipeline.stream
    again.write(record(4))
    await again.flush()
    await again.close()
    assert [r["request_id"] for r in request_records(str(tmp_path / "audit"))] == [
        f"req-{n:04d}" for n in range(5)
    ]
    result = CliRunner().invoke(main, ["audit", "verify", str(tmp_path / "audit")])
    assert result.exit_code == 0, result.output
    assert "ok: 5 entries in 1 object(s), 1 stream(s)" in result.output


async def test_refuse_mode_closes_admission_at_the_bound(tmp_path: Path) -> None:
    pipeline, sink = local_pipeline(tmp_path, spool_max_bytes=20_000)
    await pipeline.start()
    sink.down = True
    written = 0
    while pipeline.admits():
        pipeline.write(record(written))
        written += 1
    reserve = pipeline.config.reserve_bytes
    assert 20_000 - reserve <= pipeline.spool.used < 20_000
    refused = record(
        999, status=503, error={"code": "audit_unavailable", "type": "x", "message": "m"}
    )
    pipeline.write(refused)  # the refusal itself is recorded, within the reserve
    assert pipeline.written == written + 1 and pipeline.dropped == 0
    assert not pipeline.write_event({"decision_id": "d-1", "timestamp": "t"})
    sink.down = False
    await pipeline.flush(5)
    assert pipeline.admits()
    await pipeline.close()
    ids = {r["request_id"] for r in request_records(str(tmp_path / "audit"))}
    assert ids == {f"req-{n:04d}" for n in range(written)} | {"req-0999"}


async def test_drop_mode_counts_logs_and_records_a_gap(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pipeline, sink = local_pipeline(tmp_path, spool_max_bytes=65_536, spool_full="drop")
    await pipeline.start()
    sink.down = True
    n = 0
    while pipeline.dropped < 5:
        assert pipeline.admits()  # drop mode never refuses
        pipeline.write(record(n))
        n += 1
    assert "AUDIT RECORDS DROPPED" in caplog.text
    sink.down = False
    await pipeline.flush(5)
    pipeline.write(record(n))  # room again: a gap entry first, then this record
    await pipeline.close()
    ids = [r["request_id"] for r in request_records(str(tmp_path / "audit"))]
    # The last 5 written while the spool was at its bound are the ones dropped.
    assert ids == [f"req-{i:04d}" for i in (*range(n - 5), n)]
    result = CliRunner().invoke(main, ["audit", "verify", str(tmp_path / "audit")])
    assert result.exit_code == 0, result.output
    assert "5 record(s) dropped by stream" in result.output


async def test_decision_events_are_spooled_beside_records(tmp_path: Path) -> None:
    pipeline, _ = local_pipeline(tmp_path, decision_logs=True)
    await pipeline.start()
    ingest = pipeline.ingest
    assert ingest is not None and ingest.url.startswith("http://127.0.0.1:")
    config = json.loads(pipeline.write_opa_config(tmp_path).read_text())  # type: ignore[union-attr]
    assert config["decision_logs"]["reporting"]["trigger"] == "immediate"
    assert config["services"]["kamiwaza-audit"]["url"] == ingest.url
    assert (tmp_path / "opa-decision-logs.json").stat().st_mode & 0o077 == 0
    import aiohttp

    events = [{"decision_id": f"dec-000{n}", "timestamp": "2027-01-01T00:00:00Z"} for n in (1, 2)]
    async with aiohttp.ClientSession() as http:
        url = f"{ingest.url}/logs"
        body = gzip.compress(json.dumps(events).encode())
        async with http.post(url, data=body) as resp:
            assert resp.status == 401  # no token
        headers = {"Authorization": f"Bearer {ingest.token}", "Content-Encoding": "gzip"}
        async with http.post(url, data=body, headers=headers) as resp:
            assert resp.status == 200
    pipeline.write(record(1))
    pipeline.write(record(3))
    await pipeline.flush()
    await pipeline.close()
    assert [e["decision_id"] for e in decision_events(str(tmp_path / "audit"))] == [
        "dec-0001",
        "dec-0002",
    ]
    result = CliRunner().invoke(
        main, ["audit", "reconcile", str(tmp_path / "audit"), "--format", "json"]
    )
    assert result.exit_code == 1
    report = json.loads(result.output)
    assert [r["decision_id"] for r in report["records_without_event"]] == ["dec-0003"]
    assert [e["decision_id"] for e in report["events_without_record"]] == ["dec-0002"]
    assert report["pending"] == []
    # Both are recent: with a grace period they are pending, not missing.
    result = CliRunner().invoke(
        main,
        ["audit", "reconcile", str(tmp_path / "audit"), "--format", "json", "--grace", "1h"],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["records_without_event"] == report["events_without_record"] == []
    assert sorted(row["decision_id"] for row in report["pending"]) == ["dec-0002", "dec-0003"]
    result = CliRunner().invoke(
        main, ["audit", "reconcile", str(tmp_path / "audit"), "--grace", "soon"]
    )
    assert result.exit_code == 2
    assert "expected a duration such as 90s or 2m" in result.output


def test_prompt_hash_is_a_salted_hmac_of_canonical_messages(tmp_path: Path) -> None:
    salted = AuditPipeline(
        AuditConfig(spool_dir=tmp_path, host="h", prompt_salt=b"pepper"),
        local_pipeline(tmp_path)[1],
    )
    messages = [{"role": "user", "content": "héllo"}]
    same = [{"content": "héllo", "role": "user"}]
    assert salted.prompt_hash(messages) == salted.prompt_hash(same) == prompt_hmac(b"pepper", same)
    assert salted.prompt_hash(messages) != prompt_hmac(b"salt", messages)
    assert local_pipeline(tmp_path)[0].prompt_hash(messages) is None
    messages_file = tmp_path / "m.json"
    messages_file.write_text(json.dumps({"messages": messages}))
    result = CliRunner().invoke(
        main,
        ["audit", "hash-prompt", "--salt-env", "SALT", str(messages_file)],
        env={"SALT": "pepper"},
    )
    assert result.output.strip() == prompt_hmac(b"pepper", messages)


# -- tamper evidence -------------------------------------------------------------


async def _trail(tmp_path: Path, count: int = 6) -> Path:
    pipeline, _ = local_pipeline(tmp_path)
    await pipeline.start()
    for n in range(count):
        pipeline.write(record(n))
        if n % 2:
            await pipeline.flush()  # three batches, appended to one file
    await pipeline.close()
    return tmp_path / "audit"


def _verify(root: Path) -> Any:
    return CliRunner().invoke(main, ["audit", "verify", str(root)])


async def test_verify_detects_a_deleted_record(tmp_path: Path) -> None:
    root = await _trail(tmp_path)
    (path,) = objects(root)
    lines = read_lines(path)
    rewrite(path, lines[:2] + lines[3:])
    result = _verify(root)
    assert result.exit_code == 1
    assert "first: " in result.output
    assert "line 3: stream" in result.output and "seq 2 missing" in result.output


async def test_verify_detects_an_edited_record(tmp_path: Path) -> None:
    root = await _trail(tmp_path)
    (path,) = objects(root)
    lines = read_lines(path)
    entry = json.loads(lines[3])
    entry["body"]["cost_usd"] = 0.0001
    edited = [*lines[:3], json.dumps(entry, separators=(",", ":")).encode(), *lines[4:]]
    rewrite(path, edited, fix_digest=False)
    result = _verify(root)
    assert result.exit_code == 1
    assert "content does not match its SHA-256 digest" in result.output
    rewrite(path, edited)  # the attacker fixes the digest too: the chain still breaks
    result = _verify(root)
    assert result.exit_code == 1
    assert "line 5: stream" in result.output
    assert "seq 4: prev does not match the hash of seq 3" in result.output
    assert "line 4 (that entry was altered or replaced)" in result.output


async def test_verify_detects_a_reordered_pair(tmp_path: Path) -> None:
    root = await _trail(tmp_path)
    (path,) = objects(root)
    lines = read_lines(path)
    lines[1], lines[2] = lines[2], lines[1]
    rewrite(path, lines)
    result = _verify(root)
    assert result.exit_code == 1
    first = next(line for line in result.output.splitlines() if line.startswith("first: "))
    assert "line 2: stream" in first and "seq 1 missing" in first


async def test_verify_accepts_duplicates_from_at_least_once_delivery(tmp_path: Path) -> None:
    root = await _trail(tmp_path)
    (path,) = objects(root)
    lines = read_lines(path)
    rewrite(path, lines[:4] + lines[2:4] + lines[4:])  # a batch shipped twice
    result = _verify(root)
    assert result.exit_code == 0, result.output
    assert "2 duplicate(s) skipped" in result.output
    assert [r["request_id"] for r in request_records(str(root))] == [
        f"req-{n:04d}" for n in range(6)
    ]


async def test_query_filters_and_formats(tmp_path: Path) -> None:
    root = await _trail(tmp_path, count=9)
    result = CliRunner().invoke(
        main, ["audit", "query", str(root), "--tenant", "acme", "--rule", "default"]
    )
    assert result.exit_code == 0, result.output
    header, *rows = result.output.splitlines()
    assert header.split() == [
        "timestamp", "request_id", "tenant", "status", "endpoint", "rule", "total_ms", "cost_usd"
    ]  # fmt: skip
    assert [row.split()[1] for row in rows] == ["req-0003"]
    result = CliRunner().invoke(
        main,
        ["audit", "query", str(root), "--format", "jsonl", "--status", "2xx", "--limit", "4",
         "--endpoint", "private-gpu", "--since", "1h", "--progress"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["request_id"] for r in lines] == ["req-0001", "req-0002", "req-0004", "req-0005"]
    result = CliRunner().invoke(main, ["audit", "query", str(root), "--status", "5xx"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [header]
    result = CliRunner().invoke(main, ["audit", "query", str(root), "--since", "yesterday"])
    assert result.exit_code == 2


# -- the HTTP collector sink -----------------------------------------------------


async def test_http_collector_sink_posts_batches_with_a_bearer_token(tmp_path: Path) -> None:
    received: list[tuple[dict[str, str], bytes]] = []
    fail = [True]

    async def collect(request: web.Request) -> web.Response:
        if fail[0]:
            fail[0] = False
            return web.Response(status=503)
        received.append((dict(request.headers), await request.content.read()))
        return web.Response(status=202)

    app = web.Application()
    app.router.add_post("/ingest", collect)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        sink = HttpSink(str(server.make_url("/ingest")), "s3cret-token")
        pipeline, _ = local_pipeline(tmp_path)
        pipeline.sink = sink
        await pipeline.start()
        for n in range(3):
            pipeline.write(record(n))
        await pipeline.flush(5)
        await pipeline.close()
    finally:
        await server.close()
    assert pipeline.failures == 1  # the 503, then the retry succeeded
    ((headers, body),) = received
    assert headers["Authorization"] == "Bearer s3cret-token"
    assert headers["Content-Encoding"] == "gzip"
    import hashlib

    # aiohttp undid the Content-Encoding: the digest is that of the gzip bytes sent.
    sent = gzip.compress(body, compresslevel=6, mtime=0)
    assert headers["X-Kamiwaza-Sha256"] == hashlib.sha256(sent).hexdigest()
    assert headers["Idempotency-Key"].endswith(f"{pipeline.stream}-000000000000.jsonl.gz")
    assert headers["X-Kamiwaza-Records"] == "3"
    entries = [json.loads(line) for line in body.splitlines()]
    assert [e["id"] for e in entries] == ["req-0000", "req-0001", "req-0002"]


def test_http_collector_refuses_plain_http_off_loopback() -> None:
    with pytest.raises(SinkError, match="plain http only to a loopback address"):
        HttpSink("http://collector.example.com/ingest", "t")
    with pytest.raises(SinkError, match="token is empty"):
        HttpSink("https://collector.example.com/ingest", "")


async def test_kamiwaza_stats_reads_the_shipped_records(tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    from observability.stats import read_records

    root = await _trail(tmp_path, count=4)
    now = datetime.now(UTC)
    records = list(read_records(str(root), now - timedelta(hours=1), now + timedelta(hours=1)))
    assert [r["request_id"] for r in records] == [f"req-{n:04d}" for n in range(4)]
