"""`kamiwaza serve --workers 2` as operators run it: real processes on loopback,
each worker with its own real OPA sidecar, a fake upstream.

Which worker serves a connection is told by `GET /healthz` on that connection
(it names the worker); the requests sent on it afterwards are that worker's,
and their audit records must be in that worker's stream.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.auth import KeyStore
from observability.audit_reader import iter_entries, open_source
from observability.chain import ChainVerifier
from tests.bundle_helpers import policy_routing_to
from tests.fake_upstream import DEFAULT_REPLY, Behavior
from tests.gateway_harness import ROOT, token_env, token_of
from tests.processes import free_port

KAMIWAZA = str(Path(sys.executable).parent / "kamiwaza")
HOST = "gw"  # audit_host: streams are gw.<epoch> (worker 0) and gw-w1.<epoch>

pytestmark = pytest.mark.integration


def _workdir(tmp_path: Path, upstream_url: str) -> str:
    (tmp_path / "routing.yaml").write_text(policy_routing_to("private-gpu"))
    (tmp_path / "endpoints.yaml").write_text(
        "endpoints:\n  private-gpu:\n    type: openai-compatible\n"
        f"    base_url: {upstream_url}\n    model: m\n    in_vpc: true\n"
        f"    auth: {{bearer_token_env: {token_env('private-gpu')}}}\n"
    )
    _, key = KeyStore.load(tmp_path / "keys.json", missing_ok=True).create(tenant="demo")
    return key


def _start(tmp_path: Path, opa_bin: str, port: int, *extra: str) -> subprocess.Popen[bytes]:
    with (tmp_path / "serve.log").open("ab") as log:
        return subprocess.Popen(
            [KAMIWAZA, "serve", "--policy", "routing.yaml", "--keys", "keys.json",
             "--port", str(port), "--audit-dir", "audit", "--rego", str(ROOT / "rego"),
             "--workers", "2", *extra],
            cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "KAMIWAZA_OPA_BIN": opa_bin, "KAMIWAZA_AUDIT_HOST": HOST,
                 "KAMIWAZA_DRAIN_TIMEOUT_S": "30",
                 token_env("private-gpu"): token_of("private-gpu")},
        )  # fmt: skip


def _log(tmp_path: Path) -> str:
    return (tmp_path / "serve.log").read_text()


async def _serve(tmp_path: Path, fake_upstream: Any, opa_bin: str) -> Any:
    """Two workers routing every request to one fake upstream; both serving on return."""
    up = await fake_upstream(token=token_of("private-gpu"), model="m")
    key = _workdir(tmp_path, up.url)
    port = free_port()
    proc = _start(tmp_path, opa_bin, port)
    deadline = time.monotonic() + 60
    while "(2 workers)" not in _log(tmp_path):
        assert proc.poll() is None, _log(tmp_path)
        assert time.monotonic() < deadline, "the workers did not start"
        await asyncio.sleep(0.05)  # start-up poll interval
    return proc, f"http://127.0.0.1:{port}", key, up


async def _healthz(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with http.get(f"{url}/healthz") as resp:
        assert resp.status == 200
        body: dict[str, Any] = await resp.json()
        return body


async def _sessions(url: str, per_worker: int) -> dict[str, list[aiohttp.ClientSession]]:
    """Kept-alive single-connection sessions, `per_worker` on each worker (by healthz)."""
    found: dict[str, list[aiohttp.ClientSession]] = {"w0": [], "w1": []}
    for _ in range(200):
        if all(len(s) >= per_worker for s in found.values()):
            return found
        http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1))
        name = (await _healthz(http, url))["worker"]
        if len(found[name]) < per_worker:
            found[name].append(http)
        else:
            await http.close()
    raise AssertionError(f"connections did not reach both workers: {found}")


async def _chat(http: aiohttp.ClientSession, url: str, key: str, *, stream: bool = False) -> Any:
    body = {"model": "m", "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
    async with http.post(
        f"{url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
    ) as resp:
        return resp.status, resp.headers["X-Request-Id"], (await resp.read()).decode()


async def _wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.05)  # waiting for the process to exit
    if proc.poll() is None:
        proc.kill()
        raise AssertionError("kamiwaza serve did not exit")
    return proc.returncode


def _entries(audit: Path) -> tuple[ChainVerifier, list[dict[str, Any]]]:
    verifier = ChainVerifier()  # every stream must start at seq 0 and link up
    entries = list(iter_entries(open_source(str(audit / "records")), verifier))
    return verifier, entries


def _worker_of(stream: str) -> str:
    host = stream.rsplit(".", 1)[0]
    return {HOST: "w0", f"{HOST}-w1": "w1"}[host]


async def test_every_worker_serves_a_killed_one_is_restarted_and_each_stream_verifies(
    tmp_path: Path, fake_upstream: Any, opa_bin: str
) -> None:
    proc, url, key, _ = await _serve(tmp_path, fake_upstream, opa_bin)
    served: dict[str, str] = {}  # request id -> the worker whose connection carried it
    try:
        sessions = await _sessions(url, per_worker=2)
        for name, group in sessions.items():
            for http in group:
                for _ in range(3):
                    status, request_id, _ = await _chat(http, url, key)
                    assert status == 200
                    served[request_id] = name
        before_kill = {n: [i for i, w in served.items() if w == n] for n in ("w0", "w1")}
        for group in sessions.values():
            for http in group:
                await http.close()
        victim = "w0"  # the first forked: its restart must not fork the others again
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as h:
            pids: dict[str, int] = {}
            while len(pids) < 2:
                body = await _healthz(h, url)
                pids[body["worker"]] = body["pid"]
        killed = pids[victim]
        os.kill(killed, signal.SIGKILL)
        # The supervisor forks it again; meanwhile the other worker takes every connection.
        deadline = time.monotonic() + 30
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as h:
            while True:
                assert time.monotonic() < deadline, _log(tmp_path)
                body = await _healthz(h, url)
                if body["worker"] == victim and body["pid"] != killed:
                    break
                await asyncio.sleep(0.02)  # until the restarted worker answers
        assert f"worker {victim} (pid {killed}) exited with signal SIGKILL; restarting" in (
            _log(tmp_path)
        )
        sessions = await _sessions(url, per_worker=1)
        for name, group in sessions.items():
            for http in group:
                status, request_id, _ = await _chat(http, url, key)
                assert status == 200
                served[request_id] = name
                await http.close()
        # SIGHUP reaches every worker: a key added to the file works on both.
        _, new_key = KeyStore.load(tmp_path / "keys.json").create(tenant="later")
        reloads = _log(tmp_path).count("keys file reloaded")
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while _log(tmp_path).count("keys file reloaded") < reloads + 2:
            assert time.monotonic() < deadline, _log(tmp_path)
            await asyncio.sleep(0.02)  # each worker logs its reload
        sessions = await _sessions(url, per_worker=1)
        for name, group in sessions.items():
            for http in group:
                status, request_id, _ = await _chat(http, url, new_key)
                assert status == 200
                served[request_id] = name
                await http.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await _wait_exit(proc, 60)
    assert code == 0, _log(tmp_path)
    verifier, entries = _entries(tmp_path / "audit")
    assert verifier.report.ok, [str(p) for p in verifier.report.problems]
    # Two streams, each verified on its own: the restarted worker continued its chain.
    assert sorted(_worker_of(s) for s in verifier.report.streams) == ["w0", "w1"]
    requests = [e for e in entries if e["kind"] == "request"]
    assert sorted(e["id"] for e in requests) == sorted(served)  # exactly one record each
    assert {e["id"]: _worker_of(e["stream"]) for e in requests} == served
    tenants = sorted((served[e["id"]], e["body"]["tenant"]) for e in requests)
    assert tenants.count(("w0", "later")) == tenants.count(("w1", "later")) == 1
    result = subprocess.run(
        [KAMIWAZA, "audit", "verify", str(tmp_path / "audit" / "records")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 stream(s)" in result.stdout
    # Reconcile pairs records with decisions across the streams: each worker's
    # OPA ships its decision log to that worker.
    result = subprocess.run(
        [KAMIWAZA, "audit", "reconcile", str(tmp_path / "audit" / "records"), "--format", "json"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    reconciled = json.loads(result.stdout)
    # Except for the requests the killed worker served: its OPA went with it
    # (parent-death SIGKILL) before it shipped their decisions.
    unmatched = sorted(row["request_id"] for row in reconciled["records_without_event"])
    assert unmatched == sorted(before_kill[victim])
    assert result.returncode == 1
    assert reconciled["events_without_record"] == []
    assert reconciled["records"] - reconciled["events"] == len(before_kill[victim])
    # Stats read every worker's records (the shipped ones; the spools are empty).
    result = subprocess.run(
        [KAMIWAZA, "stats", str(tmp_path / "audit"), "--format", "json"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["requests"] == len(served)
    # The restart forked w0 alone: three workers ever started, and w1 once.
    assert _log(tmp_path).count("worker w1 (pid") == 2  # serving, stopped


async def test_sigterm_drains_every_worker_with_its_streams_in_flight(
    tmp_path: Path, fake_upstream: Any, opa_bin: str
) -> None:
    proc, url, key, up = await _serve(tmp_path, fake_upstream, opa_bin)
    up.behavior = Behavior(gate_after_chunks=2)
    sessions = await _sessions(url, per_worker=2)
    try:
        streams = [
            asyncio.ensure_future(_chat(http, url, key, stream=True))
            for group in sessions.values()
            for http in group
        ]
        deadline = time.monotonic() + 10
        while up.active_streams < 4:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)  # until every stream is mid-way at the upstream
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while _log(tmp_path).count("SIGTERM: draining") < 2:
            assert time.monotonic() < deadline, _log(tmp_path)
            await asyncio.sleep(0.01)  # both workers start draining
        assert proc.poll() is None  # still serving the streams in flight
        up.gate.set()
        answers = await asyncio.gather(*streams)
    finally:
        for group in sessions.values():
            for http in group:
                await http.close()
    assert await _wait_exit(proc, 60) == 0
    for status, _, text in answers:
        assert status == 200
        assert text.rstrip().endswith("data: [DONE]")
        chunks = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
        content = "".join(
            c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]
        )
        assert content == DEFAULT_REPLY
    verifier, entries = _entries(tmp_path / "audit")
    assert verifier.report.ok
    records = sorted(
        (_worker_of(e["stream"]), e["body"]["status"]) for e in entries if e["kind"] == "request"
    )
    assert records == [("w0", 200), ("w0", 200), ("w1", 200), ("w1", 200)]
    log = _log(tmp_path)
    assert log.count("drain: every request finished") == 2
    assert "worker w0 (pid" in log and "stopped (status 0)" in log


def test_a_start_up_error_is_reported_once_and_stops_the_supervisor(tmp_path: Path) -> None:
    (tmp_path / "routing.yaml").write_text("version: v1\nrules:\n  - match: {tenat: x}\n")
    proc = subprocess.run(
        [KAMIWAZA, "serve", "--policy", "routing.yaml", "--keys", "keys.json",
         "--port", "0", "--workers", "2"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.count("error: the routing policy has errors:") == 1
    assert "worker w0" in proc.stderr and "failed to start (status 1); stopping" in proc.stderr


def test_a_taken_port_fails_before_any_worker_starts(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [KAMIWAZA, "serve", "--port", str(port), "--workers", "2"],
            capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False,
        )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.strip().endswith(
        f"error: cannot listen on 127.0.0.1:{port}: Address already in use"
    )
