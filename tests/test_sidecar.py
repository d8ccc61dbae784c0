"""The OPA sidecar: loopback only, health-checked, restarted when it dies."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import aiohttp
import pytest

from gateway.sidecar import OpaSidecar, go_runtime_env

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.integration


async def _decision(url: str) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{url}/v1/data/kamiwaza/route/decision", json={"input": {}}) as resp,
    ):
        return resp.status


async def test_sidecar_restarts_after_a_crash(tmp_path: Path, opa_bin: str) -> None:
    sidecar = OpaSidecar(opa_bin, [str(ROOT / "rego")], tmp_path / "opa.log")
    await sidecar.start()
    try:
        assert await _decision(sidecar.url) == 200
        proc = sidecar._proc
        assert proc is not None
        os.kill(proc.pid, signal.SIGKILL)
        await asyncio.to_thread(proc.wait)
        with pytest.raises(aiohttp.ClientConnectionError):
            await _decision(sidecar.url)
        async with asyncio.timeout(30):
            while sidecar.restarts == 0 or not await sidecar.wait_healthy(1):
                await asyncio.sleep(0.05)  # poll for the supervisor's restart
        assert sidecar._proc is not proc
        assert await _decision(sidecar.url) == 200
    finally:
        await sidecar.stop()
    assert sidecar._proc is not None
    assert sidecar._proc.poll() is not None


async def test_sidecar_that_cannot_start_names_the_problem(tmp_path: Path, opa_bin: str) -> None:
    (tmp_path / "bad.rego").write_text("package broken\n\nthis is not rego\n")
    sidecar = OpaSidecar(
        opa_bin, [str(tmp_path / "bad.rego")], tmp_path / "opa.log", startup_timeout=10
    )
    with pytest.raises(RuntimeError) as info:
        await sidecar.start()
    assert "OPA sidecar did not become healthy" in str(info.value)
    assert "bad.rego" in str(info.value)  # the log tail says which file is broken


@pytest.mark.parametrize(
    ("gomaxprocs", "gogc", "expected"),
    [
        (1, 400, {"GOMAXPROCS": "1", "GOGC": "400"}),
        (0, 100, {"GOGC": "100"}),
        (2, 0, {"GOMAXPROCS": "2"}),
        (0, 0, {}),
    ],
)
def test_go_runtime_env_leaves_zero_to_go(
    gomaxprocs: int, gogc: int, expected: dict[str, str]
) -> None:
    assert go_runtime_env(gomaxprocs, gogc) == expected


async def test_sidecar_env_is_added_to_the_gateways(
    tmp_path: Path, opa_bin: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GOGC", "50")  # inherited unless the sidecar's env replaces it
    monkeypatch.setenv("KAMIWAZA_TEST_MARKER", "kept")
    sidecar = OpaSidecar(
        opa_bin, [str(ROOT / "rego")], tmp_path / "opa.log", env={"GOMAXPROCS": "1"}
    )
    await sidecar.start()
    try:
        assert sidecar._proc is not None
        raw = Path(f"/proc/{sidecar._proc.pid}/environ").read_bytes()
        environ = dict(v.split(b"=", 1) for v in raw.split(b"\0") if b"=" in v)
        assert (environ[b"GOMAXPROCS"], environ[b"GOGC"], environ[b"KAMIWAZA_TEST_MARKER"]) == (
            b"1",
            b"50",
            b"kept",
        )
    finally:
        await sidecar.stop()
