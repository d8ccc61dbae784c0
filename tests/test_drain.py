"""Graceful drain of `kamiwaza serve` (a subprocess with its own OPA sidecar):
SIGTERM refuses new connections at once, lets the streams in flight finish,
flushes the audit spool and exits 0; past drain_timeout_s, or at a second
SIGTERM, what is left is ended, each request with its audit record."""

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
from observability.audit_reader import request_records
from tests.bundle_helpers import policy_routing_to
from tests.fake_upstream import DEFAULT_REPLY, Behavior
from tests.gateway_harness import ROOT, token_env, token_of
from tests.processes import free_port

KAMIWAZA = str(Path(sys.executable).parent / "kamiwaza")
STREAMS = 4

pytestmark = pytest.mark.integration


async def _serve(tmp_path: Path, fake_upstream: Any, opa_bin: str, drain_s: float) -> Any:
    """`kamiwaza serve` routing every request to one fake upstream; ready on return."""
    up = await fake_upstream(token=token_of("private-gpu"), model="m")
    (tmp_path / "routing.yaml").write_text(policy_routing_to("private-gpu"))
    (tmp_path / "endpoints.yaml").write_text(
        "endpoints:\n  private-gpu:\n    type: openai-compatible\n"
        f"    base_url: {up.url}\n    model: m\n    in_vpc: true\n"
        f"    auth: {{bearer_token_env: {token_env('private-gpu')}}}\n"
    )
    _, key = KeyStore.load(tmp_path / "keys.json", missing_ok=True).create(tenant="demo")
    port = free_port()
    with (tmp_path / "serve.log").open("ab") as log:
        proc = subprocess.Popen(
            [KAMIWAZA, "serve", "--policy", "routing.yaml", "--keys", "keys.json",
             "--port", str(port), "--audit-dir", "audit", "--rego", str(ROOT / "rego")],
            cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "KAMIWAZA_OPA_BIN": opa_bin,
                 "KAMIWAZA_DRAIN_TIMEOUT_S": str(drain_s),
                 token_env("private-gpu"): token_of("private-gpu")},
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                async with http.get(f"{url}/readyz") as resp:
                    if resp.status == 200:
                        return proc, url, key, up
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)  # readiness poll interval
    proc.kill()
    raise AssertionError("kamiwaza serve did not become ready")


async def _stream(http: aiohttp.ClientSession, url: str, key: str) -> tuple[int, str]:
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    async with http.post(
        f"{url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
    ) as resp:
        return resp.status, (await resp.read()).decode()


def _content(sse: str) -> str:
    chunks = [json.loads(line[6:]) for line in sse.splitlines() if line.startswith("data: {")]
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


async def _wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.05)  # waiting for the process to exit
    if proc.poll() is None:
        proc.kill()
        raise AssertionError("kamiwaza serve did not exit")
    return proc.returncode


async def _refused(url: str) -> bool:
    try:
        async with aiohttp.ClientSession() as http, http.get(f"{url}/healthz"):
            return False
    except aiohttp.ClientConnectorError:
        return True


async def test_sigterm_lets_streams_finish_and_accepts_nothing_new(
    tmp_path: Path, fake_upstream: Any, opa_bin: str
) -> None:
    proc, url, key, up = await _serve(tmp_path, fake_upstream, opa_bin, drain_s=30)
    up.behavior = Behavior(gate_after_chunks=2)
    async with aiohttp.ClientSession() as http:
        streams = [asyncio.ensure_future(_stream(http, url, key)) for _ in range(STREAMS)]
        while up.active_streams < STREAMS:
            await asyncio.sleep(0.01)  # until every stream is mid-way at the upstream
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while not await _refused(url) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)  # the signal is handled on the gateway's loop
        assert await _refused(url)  # no new connection once draining
        assert proc.poll() is None  # still serving the streams in flight
        up.gate.set()
        answers = await asyncio.gather(*streams)
    assert await _wait_exit(proc, 30) == 0
    for status, text in answers:
        assert status == 200
        assert text.rstrip().endswith("data: [DONE]")
        assert _content(text) == DEFAULT_REPLY  # every chunk, none lost in the drain
    records = request_records(str(tmp_path / "audit"))  # flushed before the exit
    assert sorted((r["status"], r["stream"]) for r in records) == [(200, True)] * STREAMS
    log = (tmp_path / "serve.log").read_text()
    assert "SIGTERM: draining" in log
    assert "drain: every request finished" in log


@pytest.mark.parametrize("how", ["deadline", "second SIGTERM"])
async def test_what_outlives_the_drain_is_ended_with_its_audit_record(
    tmp_path: Path, fake_upstream: Any, opa_bin: str, how: str
) -> None:
    proc, url, key, up = await _serve(
        tmp_path, fake_upstream, opa_bin, drain_s=1.0 if how == "deadline" else 60
    )
    up.behavior = Behavior(gate_after_chunks=2)  # the gate never opens
    started = time.monotonic()
    async with aiohttp.ClientSession() as http:
        streams = [asyncio.ensure_future(_stream(http, url, key)) for _ in range(STREAMS)]
        while up.active_streams < STREAMS:
            await asyncio.sleep(0.01)  # until every stream is mid-way at the upstream
        proc.send_signal(signal.SIGTERM)
        if how == "second SIGTERM":
            deadline = time.monotonic() + 10
            while "SIGTERM: draining" not in (tmp_path / "serve.log").read_text():
                assert time.monotonic() < deadline, "the first SIGTERM was not handled"
                await asyncio.sleep(0.01)  # the gateway logs the first signal
            proc.send_signal(signal.SIGTERM)
        answers = await asyncio.gather(*streams, return_exceptions=True)
    assert await _wait_exit(proc, 30) == 0
    log = (tmp_path / "serve.log").read_text()
    assert time.monotonic() - started < 20, log  # not the 60 s drain
    for answer in answers:  # cut short: the stream ends early or breaks
        assert isinstance(answer, aiohttp.ClientError) or not answer[1].rstrip().endswith(
            "data: [DONE]"
        )
    records = request_records(str(tmp_path / "audit"))
    assert [(r["status"], r["error"]["code"]) for r in records] == [
        (503, "gateway_shutdown")
    ] * STREAMS
    assert "cancelling 4 requests still in flight" in log


async def test_readiness_fails_once_draining(aiohttp_client: Any) -> None:
    from aiohttp import web

    from gateway.drain import DRAIN, Drain
    from gateway.routes import health

    app = web.Application()
    drain = Drain(30)
    app[DRAIN] = drain
    health.add_routes(app)
    client = await aiohttp_client(app)
    drain.signal(signal.SIGTERM)
    async with client.get("/readyz") as resp:
        assert (resp.status, await resp.json()) == (503, {"status": "draining"})
    async with client.get("/healthz") as resp:  # alive: the drain is not a failure
        assert resp.status == 200
