"""`kamiwaza serve` as operators run it: a subprocess with its own OPA sidecar."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from gateway.app import StartupError, create_app
from gateway.auth import KeyStore
from gateway.settings import load_settings
from observability.audit_reader import request_records
from tests.processes import free_port

ROOT = Path(__file__).resolve().parent.parent
KAMIWAZA = str(Path(sys.executable).parent / "kamiwaza")


def _example(tmp_path: Path) -> tuple[Path, str]:
    shutil.copy(ROOT / "policies" / "routing.yaml", tmp_path / "routing.yaml")
    shutil.copy(ROOT / "policies" / "endpoints.yaml", tmp_path / "endpoints.yaml")
    store = KeyStore.load(tmp_path / "keys.json", missing_ok=True)
    _, key = store.create(tenant="demo", roles=["analyst"])
    return tmp_path, key


def test_missing_credential_stops_startup_naming_the_variable(tmp_path: Path) -> None:
    workdir, _ = _example(tmp_path)
    settings = load_settings(
        overrides={
            "policy": str(workdir / "routing.yaml"),
            "keys": str(workdir / "keys.json"),
            "audit_dir": str(workdir / "audit"),
        },
        environ={},
    )
    with pytest.raises(StartupError) as info:
        create_app(settings, environ={})
    assert str(info.value) == (
        "endpoint registry: endpoint 'private-gpu': environment variable PRIVATE_GPU_TOKEN "
        "(auth.bearer_token_env) is not set"
    )


def test_bad_policy_stops_serve_with_every_error(tmp_path: Path) -> None:
    workdir, _ = _example(tmp_path)
    (workdir / "routing.yaml").write_text("version: v1\nrules:\n  - match: {tenat: x}\n")
    proc = subprocess.run(
        [
            KAMIWAZA,
            "serve",
            "--policy",
            str(workdir / "routing.yaml"),
            "--keys",
            str(workdir / "keys.json"),
            "--port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=workdir,
        check=False,
    )
    assert proc.returncode == 1
    assert "error: the routing policy has errors:" in proc.stderr
    assert "routing.yaml:3:13: error[E003]: unknown match key 'tenat'" in proc.stderr
    assert "routing.yaml:3:5: error[E011]: rule 0 is missing required key 'route_to'" in proc.stderr


def test_bad_setting_names_the_variable(tmp_path: Path) -> None:
    proc = subprocess.run(
        [KAMIWAZA, "serve"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
        env={**os.environ, "KAMIWAZA_OPA_TIMEOUT_MS": "soon"},
    )
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        "error: KAMIWAZA_OPA_TIMEOUT_MS: expected an integer, got 'soon'"
    )


def _get(url: str, **kwargs: Any) -> tuple[int, Any]:
    req = urllib.request.Request(url, **kwargs)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.mark.integration
def test_serve_supervises_its_opa_sidecar_and_stops_it(tmp_path: Path, opa_bin: str) -> None:
    workdir, key = _example(tmp_path)
    port = free_port()
    log = (workdir / "serve.log").open("wb")
    proc = subprocess.Popen(
        [
            KAMIWAZA,
            "serve",
            "--policy",
            "routing.yaml",
            "--keys",
            "keys.json",
            "--port",
            str(port),
            "--audit-dir",
            "audit",
            "--rego",
            str(ROOT / "rego"),
            "--allow-unconfigured-endpoints",
        ],
        cwd=workdir,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "KAMIWAZA_OPA_BIN": opa_bin},
    )
    try:
        deadline = time.monotonic() + 30
        status = 0
        while time.monotonic() < deadline and status != 200:
            assert proc.poll() is None, (workdir / "serve.log").read_text()
            try:
                status, _ = _get(f"http://127.0.0.1:{port}/readyz")
            except OSError:
                time.sleep(0.05)  # readiness poll interval
        assert status == 200
        body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        status, answer = _get(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            data=body.encode(),
            headers={"Authorization": f"Bearer {key}", "X-Labels": "export_control=embargoed"},
            method="POST",
        )
        assert status == 403
        assert answer["error"]["code"] == "policy_denied"
        children = subprocess.run(
            ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True, check=False
        ).stdout.split()
        assert len(children) == 1  # the OPA sidecar
        opa_pid = int(children[0])
        with open(f"/proc/{opa_pid}/cmdline", "rb") as fh:
            cmdline = fh.read().split(b"\0")
        assert cmdline[1:3] == [b"run", b"--server"]
        assert cmdline[4].startswith(b"127.0.0.1:")  # loopback only
        # A malformed request: aiohttp would log its raw header bytes, key included.
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            raw.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                + f"Authorization: Bearer {key}\nbroken\r\n\r\n".encode()
            )
            assert raw.recv(100).startswith(b"HTTP/1.0 400 Bad Request")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()
    assert proc.returncode == 0
    assert not Path(f"/proc/{opa_pid}").exists()  # the sidecar went with it
    records = request_records(str(workdir / "audit"))  # shipped at shutdown
    assert [(r["status"], r["tenant"]) for r in records] == [(403, "demo")]
    served = (workdir / "serve.log").read_text()
    assert "malformed HTTP request (BadHttpMessage 400)" in served
    assert key not in served
    assert key.split("_")[2] not in served  # not even the secret part


@pytest.mark.integration
def test_sidecar_dies_with_a_killed_gateway(tmp_path: Path, opa_bin: str) -> None:
    workdir, _ = _example(tmp_path)
    port = free_port()
    with (workdir / "serve.log").open("wb") as log:
        proc = subprocess.Popen(
            [KAMIWAZA, "serve", "--policy", "routing.yaml", "--keys", "keys.json",
             "--port", str(port), "--audit-dir", "audit", "--rego", str(ROOT / "rego"),
             "--allow-unconfigured-endpoints"],
            cwd=workdir, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "KAMIWAZA_OPA_BIN": opa_bin},
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        status = 0
        while time.monotonic() < deadline and status != 200:
            assert proc.poll() is None, (workdir / "serve.log").read_text()
            try:
                status, _ = _get(f"http://127.0.0.1:{port}/readyz")
            except OSError:
                time.sleep(0.05)  # readiness poll interval
        assert status == 200
        (opa_pid,) = subprocess.run(
            ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True, check=False
        ).stdout.split()
    finally:
        proc.kill()  # no chance to stop the sidecar itself
        proc.wait(timeout=30)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{opa_pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # waiting for the kernel's parent-death signal to land
    state = Path(f"/proc/{opa_pid}/stat")
    assert not state.exists() or state.read_text().split()[2] == "Z"


@pytest.mark.integration
def test_a_taken_port_is_a_clear_error(tmp_path: Path, opa_bin: str) -> None:
    workdir, _ = _example(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [KAMIWAZA, "serve", "--policy", "routing.yaml", "--keys", "keys.json",
             "--port", str(port), "--audit-dir", "audit", "--rego", str(ROOT / "rego"),
             "--allow-unconfigured-endpoints"],
            cwd=workdir, capture_output=True, text=True, timeout=60, check=False,
            env={**os.environ, "KAMIWAZA_OPA_BIN": opa_bin},
        )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-1] == (
        f"error: cannot listen on 127.0.0.1:{port}: "
        f"error while attempting to bind on address ('127.0.0.1', {port}): address already in use"
    )
    assert "Traceback" not in proc.stderr
