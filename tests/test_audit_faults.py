"""Fault tests of the audit pipeline, each asserting that the records delivered
to the sink are exactly the requests answered: the sink down for a while then
back, the gateway SIGKILLed under load and restarted, OPA restarted, and the
spool at its bound (refuse and drop modes)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from click.testing import CliRunner

from gateway.cli import main
from gateway.state import AUDIT
from observability.audit_reader import SourceOptions, decision_events, open_source, request_records
from observability.sinks.s3 import s3_client
from tests.audit_servers import TcpProxy
from tests.gateway_harness import (
    ENDPOINT_NAMES,
    ROOT,
    Gateway,
    registry_yaml,
    start_gateway,
    token_of,
)
from tests.processes import free_port

pytestmark = pytest.mark.integration

BODY = {"model": "m", "messages": [{"role": "user", "content": "audit me"}]}
FAST = {"audit_batch_interval_s": 0.05, "audit_retry_max_s": 0.2, "audit_fsync_interval_ms": 20}


async def send(http: aiohttp.ClientSession, gw: Gateway, n: int = 1) -> list[tuple[int, str, Any]]:
    """`n` requests one after another: (status, request id, body) of each answer."""
    answers = []
    for _ in range(n):
        async with http.post(
            gw.url("/v1/chat/completions"),
            json=BODY,
            headers={"Authorization": f"Bearer {gw.keys['acme']}"},
        ) as resp:
            answers.append((resp.status, resp.headers["X-Request-Id"], await resp.json()))
    return answers


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def s3_records(bucket: str, endpoint: str, prefix: str = "records") -> list[dict[str, Any]]:
    return request_records(open_source(f"s3://{bucket}/{prefix}", SourceOptions(endpoint)))


async def s3_gateway(
    tmp_path: Path, fake_upstream: Any, moto_s3: str, **overrides: Any
) -> tuple[Gateway, TcpProxy, str]:
    bucket = f"audit-{uuid.uuid4().hex[:8]}"
    s3_client("us-east-1", moto_s3).create_bucket(Bucket=bucket)
    host, port = moto_s3.removeprefix("http://").split(":")
    proxy = TcpProxy(host, int(port))
    await proxy.up()
    gw = await start_gateway(
        tmp_path,
        fake_upstream,
        settings_overrides={
            "audit_sink": "s3",
            "audit_s3_bucket": bucket,
            "audit_s3_region": "us-east-1",
            "audit_s3_endpoint_url": proxy.url,
            **FAST,
            **overrides,
        },
    )
    return gw, proxy, bucket


async def test_sink_down_for_a_while_then_back(
    tmp_path: Path, fake_upstream: Any, opa_bin: str, moto_s3: str, aws_env: Any, http: Any
) -> None:
    gw, proxy, bucket = await s3_gateway(tmp_path, fake_upstream, moto_s3)
    pipeline = gw.app[AUDIT]
    try:
        answered = await send(http, gw, 5)
        await pipeline.flush(10)
        await proxy.down()
        started = time.perf_counter()
        answered += await send(http, gw, 20)
        elapsed = time.perf_counter() - started
        async with asyncio.timeout(10):
            while not pipeline.failures:  # the shipper tried and failed
                await asyncio.sleep(0.02)
        assert pipeline.spool.depth >= 20
        await proxy.up()
        await pipeline.flush(15)
    finally:
        await gw.close()
        await proxy.down()
    assert [status for status, _, _ in answered] == [200] * 25
    assert elapsed < 5  # the outage never held a request up
    delivered = [r["request_id"] for r in s3_records(bucket, moto_s3)]
    assert sorted(delivered) == sorted(rid for _, rid, _ in answered)
    result = CliRunner().invoke(
        main, ["audit", "verify", f"s3://{bucket}/records", "--endpoint-url", moto_s3]
    )
    assert result.exit_code == 0, result.output


async def test_spool_at_its_bound_refuses_with_503_then_recovers(
    tmp_path: Path, fake_upstream: Any, opa_bin: str, moto_s3: str, aws_env: Any, http: Any
) -> None:
    gw, proxy, bucket = await s3_gateway(
        tmp_path, fake_upstream, moto_s3, audit_spool_max_bytes=65536
    )
    pipeline = gw.app[AUDIT]
    try:
        await proxy.down()
        answered: list[tuple[int, str, Any]] = []
        while not answered or answered[-1][0] == 200:
            answered += await send(http, gw)
            assert len(answered) < 200
        answered += await send(http, gw, 2)
        status, _, body = answered[-1]
        assert status == 503
        assert body == {
            "error": {
                "message": "audit spool full: requests are refused until the audit sink catches up",
                "type": "server_error",
                "code": "audit_unavailable",
            }
        }
        assert pipeline.spool.used < 65536  # the bound holds, refusals included
        await proxy.up()
        async with asyncio.timeout(15):
            while not pipeline.admits():
                await asyncio.sleep(0.02)  # wait for the shipper to drain the spool
        answered += await send(http, gw, 3)
        await pipeline.flush(15)
    finally:
        await gw.close()
        await proxy.down()
    statuses = [status for status, _, _ in answered]
    assert statuses[-3:] == [200] * 3 and statuses.count(503) == 3
    delivered = [r["request_id"] for r in s3_records(bucket, moto_s3)]
    assert sorted(delivered) == sorted(rid for _, rid, _ in answered)


async def test_spool_at_its_bound_in_drop_mode_counts_what_it_drops(
    tmp_path: Path, fake_upstream: Any, opa_bin: str, http: Any
) -> None:
    gw = await start_gateway(
        tmp_path,
        fake_upstream,
        settings_overrides={
            **FAST,
            "audit_spool_max_bytes": 65536,
            "audit_spool_full": "drop",
            "audit_decision_logs": False,
        },
    )
    pipeline = gw.app[AUDIT]
    inner = pipeline.sink
    pipeline.sink = _Down(inner)
    try:
        answered = []
        while pipeline.dropped < 4:
            answered += await send(http, gw)
        pipeline.sink = inner
        await pipeline.flush(10)
        answered += await send(http, gw, 2)
        await pipeline.flush(10)
    finally:
        await gw.close()
    assert {status for status, _, _ in answered} == {200}  # drop mode never refuses
    ids = [rid for _, rid, _ in answered]
    delivered = [r["request_id"] for r in request_records(str(gw.audit_dir))]
    # The last 4 answered while the spool was at its bound are the ones dropped.
    assert pipeline.dropped == 4
    assert delivered == ids[:-6] + ids[-2:]
    result = CliRunner().invoke(main, ["audit", "verify", str(gw.audit_dir)])
    assert result.exit_code == 0, result.output
    assert "4 record(s) dropped by stream" in result.output


class _Down:
    def __init__(self, inner: Any) -> None:
        self.name = inner.name
        self.describe = inner.describe

    def put(self, batch: Any) -> None:
        raise ConnectionError("down (test)")

    def close(self) -> None:
        pass


def _opa_children(config_dir: str | None = None) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if (
            ppid == os.getpid()
            and b"--config-file" in cmdline
            and cmdline[1:3] == [b"run", b"--server"]
        ):
            pids.append(int(entry.name))
    return pids


async def test_opa_restarted(tmp_path: Path, fake_upstream: Any, opa_bin: str, http: Any) -> None:
    gw = await start_gateway(tmp_path, fake_upstream, settings_overrides=FAST)
    try:
        before = await send(http, gw, 5)
        (opa_pid,) = _opa_children()
        os.kill(opa_pid, signal.SIGKILL)
        during: list[tuple[int, str, Any]] = []
        async with asyncio.timeout(30):
            while not during or during[-1][0] != 200:
                during += await send(http, gw)
                await asyncio.sleep(0.02)
        after = await send(http, gw, 5)
    finally:
        await gw.close()  # OPA stops first and flushes its decision log to the gateway
    answered = before + during + after
    assert 503 in [status for status, _, _ in during]  # failed closed while OPA was down
    records = request_records(str(gw.audit_dir))
    assert sorted(r["request_id"] for r in records) == sorted(rid for _, rid, _ in answered)
    for record in records:
        if record["status"] == 503:
            assert record["error"]["code"].startswith("policy_")
            assert record["decision_id"] is None
    events = {e["decision_id"] for e in decision_events(str(gw.audit_dir))}
    decided = {r["request_id"]: r["decision_id"] for r in records if r["decision_id"]}
    # Every decision of the restarted OPA reached the gateway; the killed one's
    # in-memory buffer may be lost, and reconcile names those decisions.
    after_ids = {rid for _, rid, _ in after}
    assert {d for rid, d in decided.items() if rid in after_ids} <= events
    assert events <= set(decided.values())
    result = CliRunner().invoke(main, ["audit", "reconcile", str(gw.audit_dir), "--format", "json"])
    report = json.loads(result.output)
    missing = {row["decision_id"] for row in report["records_without_event"]}
    assert missing == set(decided.values()) - events
    assert report["events_without_record"] == []
    assert result.exit_code == (1 if missing else 0)


# -- kamiwaza serve, SIGKILLed under load -----------------------------------------


def _serve(workdir: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        **{n.upper().replace("-", "_") + "_TOKEN": token_of(n) for n in ENDPOINT_NAMES},
    }
    with open(log, "ab") as out:
        return subprocess.Popen(
            [str(Path(sys.executable).parent / "kamiwaza"), "serve", "--config", "gateway.yaml",
             "--port", str(port)],
            cwd=workdir,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its process group: the gateway and its OPA sidecar
        )  # fmt: skip


async def _ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    async with aiohttp.ClientSession() as http, asyncio.timeout(30):
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                async with http.get(f"{url}/readyz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)  # readiness poll interval


async def test_gateway_sigkilled_under_load_and_restarted(
    tmp_path: Path, fake_upstream: Any, opa_bin: str
) -> None:
    from gateway.auth import KeyStore

    upstreams = {}
    for name in ENDPOINT_NAMES:
        upstreams[name] = await fake_upstream(token=token_of(name), model=f"model-of-{name}")
    workdir = tmp_path / "gw"
    workdir.mkdir()
    (workdir / "routing.yaml").write_text((ROOT / "policies" / "routing.yaml").read_text())
    (workdir / "endpoints.yaml").write_text(registry_yaml(upstreams))
    _, key = KeyStore.load(workdir / "keys.json", missing_ok=True).create(tenant="acme")
    (workdir / "gateway.yaml").write_text(
        "policy: routing.yaml\nkeys: keys.json\naudit_dir: audit\n"
        f"rego_dir: {ROOT / 'rego'}\nopa_bin: {opa_bin}\n"
        "audit_batch_interval_s: 0.2\naudit_fsync_interval_ms: 50\n"
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = workdir / "serve.log"
    proc = _serve(workdir, port, log)
    answered: list[str] = []
    failed = 0
    stop = asyncio.Event()

    async def client(http: aiohttp.ClientSession) -> None:
        nonlocal failed
        while not stop.is_set():
            try:
                async with http.post(
                    f"{url}/v1/chat/completions",
                    json=BODY,
                    headers={"Authorization": f"Bearer {key}"},
                ) as resp:
                    await resp.read()
                    answered.append(resp.headers["X-Request-Id"])
            except aiohttp.ClientError:
                failed += 1
                return  # the gateway is gone

    try:
        await _ready(url, proc, log)
        async with aiohttp.ClientSession() as http:
            workers = [asyncio.ensure_future(client(http)) for _ in range(8)]
            async with asyncio.timeout(30):
                while len(answered) < 150:
                    await asyncio.sleep(0.005)
            os.killpg(proc.pid, signal.SIGKILL)  # the gateway and its sidecar, mid-flight
            proc.wait(timeout=10)
            async with asyncio.timeout(10):
                await asyncio.gather(*workers)
        killed_answered = list(answered)
        # Restart on the same spool; what was not shipped is shipped now.
        proc = _serve(workdir, port, log)
        await _ready(url, proc, log)
        async with aiohttp.ClientSession() as http:
            stop.set()
            for _ in range(3):
                async with http.post(
                    f"{url}/v1/chat/completions",
                    json=BODY,
                    headers={"Authorization": f"Bearer {key}"},
                ) as resp:
                    answered.append(resp.headers["X-Request-Id"])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert len(killed_answered) >= 150 and failed >= 1
    delivered = [r["request_id"] for r in request_records(str(workdir / "audit"))]
    assert len(delivered) == len(set(delivered))
    # Every answered request is delivered; a request cut off mid-answer may be
    # delivered too (its record is written before its response is sent).
    assert set(answered) <= set(delivered)
    assert len(set(delivered) - set(answered)) <= failed
    result = CliRunner().invoke(main, ["audit", "verify", str(workdir / "audit")])
    assert result.exit_code == 0, result.output  # the chain continues across the crash
