"""`kamiwaza serve` SIGKILLed again and again under mixed JSON and streamed load:
every request whose answer the client received in full (a JSON 200, or a stream
through `data: [DONE]` and its chunked end) has its audit record, and the hash
chain verifies across every crash (README "Reliability")."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from click.testing import CliRunner

from gateway.auth import KeyStore
from gateway.cli import main
from observability.audit_reader import request_records
from tests.fake_upstream import Behavior
from tests.gateway_harness import ENDPOINT_NAMES, ROOT, registry_yaml, token_env, token_of
from tests.processes import free_port

pytestmark = pytest.mark.integration

KILLS = 4
ANSWERED_PER_RUN = 30
JSON_BODY = {"model": "m", "messages": [{"role": "user", "content": "crash me"}]}
STREAM_BODY = {**JSON_BODY, "stream": True}


def serve(workdir: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, **{token_env(n): token_of(n) for n in ENDPOINT_NAMES}}
    with open(workdir / "serve.log", "ab") as out:
        return subprocess.Popen(
            [str(Path(sys.executable).parent / "kamiwaza"), "serve", "--config",
             str(workdir / "gateway.yaml"), "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group: the gateway and its sidecar
        )  # fmt: skip


async def ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
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


async def test_sigkill_under_mixed_load_loses_no_answered_record(
    tmp_path: Path, fake_upstream: Any, opa_bin: str
) -> None:
    upstreams = {}
    for name in ENDPOINT_NAMES:
        up = await fake_upstream(token=token_of(name), model=f"model-of-{name}")
        up.behavior = Behavior(chunk_delay=0.002)  # streams take a while: kills land inside
        upstreams[name] = up
    workdir = tmp_path / "gw"
    workdir.mkdir()
    (workdir / "endpoints.yaml").write_text(registry_yaml(upstreams))
    (workdir / "routing.yaml").write_text((ROOT / "policies" / "routing.yaml").read_text())
    _, key = KeyStore.load(workdir / "keys.json", missing_ok=True).create(tenant="acme")
    (workdir / "gateway.yaml").write_text(
        f"policy: {workdir / 'routing.yaml'}\nkeys: {workdir / 'keys.json'}\n"
        f"audit_dir: {workdir / 'audit'}\nrego_dir: {ROOT / 'rego'}\nopa_bin: {opa_bin}\n"
        "audit_batch_interval_s: 0.2\naudit_fsync_interval_ms: 20\nopa_timeout_ms: 5000\n"
    )
    log = workdir / "serve.log"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {key}"}
    answered: list[str] = []  # request ids of answers received in full
    cut = 0  # requests cut off by a kill

    async def client(http: aiohttp.ClientSession, streamed: bool) -> None:
        nonlocal cut
        while True:
            try:
                async with http.post(
                    f"{url}/v1/chat/completions",
                    json=STREAM_BODY if streamed else JSON_BODY,
                    headers=headers,
                ) as resp:
                    body = await resp.read()  # to the chunked terminator for a stream
                    if resp.status != 200:
                        raise AssertionError(f"{resp.status}: {body[:300]!r}")
                    if streamed:
                        assert body.endswith(b"data: [DONE]\n\n"), body[-200:]
                    answered.append(resp.headers["X-Request-Id"])
            except (TimeoutError, aiohttp.ClientError):
                cut += 1
                return  # the gateway is gone

    proc = serve(workdir, port)
    runs = 0
    try:
        for _ in range(KILLS):
            await ready(url, proc, log)
            runs += 1
            target = len(answered) + ANSWERED_PER_RUN
            async with aiohttp.ClientSession() as http:
                workers = [asyncio.ensure_future(client(http, i % 2 == 1)) for i in range(6)]
                async with asyncio.timeout(30):
                    while len(answered) < target:
                        await asyncio.sleep(0.002)
                os.killpg(proc.pid, signal.SIGKILL)  # mid-flight: JSON answers and streams
                proc.wait(timeout=10)
                async with asyncio.timeout(10):
                    await asyncio.gather(*workers)
            proc = serve(workdir, port)  # the same spool: what was not shipped ships now
        await ready(url, proc, log)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert runs == KILLS and len(answered) >= KILLS * ANSWERED_PER_RUN and cut >= KILLS
    delivered = [r["request_id"] for r in request_records(str(workdir / "audit"))]
    assert len(delivered) == len(set(delivered))
    missing = set(answered) - set(delivered)
    assert missing == set(), f"{len(missing)} answered requests have no record"
    # A request cut off mid-answer may have its record too (written before the end).
    assert len(set(delivered) - set(answered)) <= cut
    result = CliRunner().invoke(main, ["audit", "verify", str(workdir / "audit")])
    assert result.exit_code == 0, result.output
