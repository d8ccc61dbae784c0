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

from gateway.app import create_app
from gateway.auth import KeyStore
from gateway.errors import StartupError
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


def _serve(workdir: Path, port: int, opa_bin: str) -> subprocess.Popen[bytes]:
    """`kamiwaza serve` on the example in `workdir`, ready (readyz 200) when returned."""
    with (workdir / "serve.log").open("ab") as log:
        proc = subprocess.Popen(
            [KAMIWAZA, "serve", "--policy", "routing.yaml", "--keys", "keys.json",
             "--port", str(port), "--audit-dir", "audit", "--rego", str(ROOT / "rego"),
             "--allow-unconfigured-endpoints"],
            cwd=workdir, stdout=log, stderr=subprocess.STDOUT,
            env={
                **os.environ,
                "KAMIWAZA_OPA_BIN": opa_bin,
                # The example override, enabled as an operator would.
                "KAMIWAZA_OVERRIDES_DIRS": str(ROOT / "policies" / "examples" / "overrides"),
            },
        )  # fmt: skip
    deadline = time.monotonic() + 30
    status = 0
    while time.monotonic() < deadline and status != 200:
        if proc.poll() is not None:
            raise AssertionError((workdir / "serve.log").read_text())
        try:
            status, _ = _get(f"http://127.0.0.1:{port}/readyz")
        except OSError:
            time.sleep(0.05)  # readiness poll interval
    if status != 200:
        proc.kill()
        raise AssertionError("kamiwaza serve did not become ready")
    return proc


def _embargoed(port: int, key: str) -> tuple[int, Any]:
    """A request the example's override denies: authenticated → 403, never forwarded."""
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    return _get(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        data=body.encode(),
        headers={"Authorization": f"Bearer {key}", "X-Labels": "export_control=embargoed"},
        method="POST",
    )


@pytest.mark.integration
def test_serve_supervises_its_opa_sidecar_and_stops_it(tmp_path: Path, opa_bin: str) -> None:
    workdir, key = _example(tmp_path)
    port = free_port()
    proc = _serve(workdir, port, opa_bin)
    try:
        status, answer = _embargoed(port, key)
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
        with open(f"/proc/{opa_pid}/environ", "rb") as fh:
            environ = dict(v.split(b"=", 1) for v in fh.read().split(b"\0") if b"=" in v)
        assert (environ[b"GOMAXPROCS"], environ[b"GOGC"]) == (b"1", b"400")  # the defaults
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
    assert proc.returncode == 0
    assert not Path(f"/proc/{opa_pid}").exists()  # the sidecar went with it
    records = request_records(str(workdir / "audit"))  # shipped at shutdown
    assert [(r["status"], r["tenant"]) for r in records] == [(403, "demo")]
    served = (workdir / "serve.log").read_text()
    # gateway/server.py logs the kind of error only, never the request's bytes.
    assert "malformed HTTP request from 127.0.0.1: bad_header" in served
    assert key not in served
    assert key.split("_")[2] not in served  # not even the secret part


@pytest.mark.integration
def test_sidecar_dies_with_a_killed_gateway(tmp_path: Path, opa_bin: str) -> None:
    workdir, _ = _example(tmp_path)
    proc = _serve(workdir, free_port(), opa_bin)
    try:
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
            env={
                **os.environ,
                "KAMIWAZA_OPA_BIN": opa_bin,
                # The example override, enabled as an operator would.
                "KAMIWAZA_OVERRIDES_DIRS": str(ROOT / "policies" / "examples" / "overrides"),
            },
        )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-1] == (
        f"error: cannot listen on 127.0.0.1:{port}: "
        f"error while attempting to bind on address ('127.0.0.1', {port}): address already in use"
    )
    assert "Traceback" not in proc.stderr


@pytest.mark.integration
def test_sighup_reloads_the_keys_file(tmp_path: Path, opa_bin: str) -> None:
    workdir, old_key = _example(tmp_path)
    port = free_port()
    proc = _serve(workdir, port, opa_bin)
    try:
        store = KeyStore.load(workdir / "keys.json")
        _, new_key = store.create(tenant="late")
        assert _embargoed(port, new_key)[0] == 401  # not loaded yet
        old_id = old_key.split("_")[1]
        store.revoke(old_id)
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while _embargoed(port, new_key)[0] != 403 and time.monotonic() < deadline:
            time.sleep(0.05)  # the reload runs in the background
        assert _embargoed(port, new_key)[0] == 403  # authenticated (then denied by policy)
        status, answer = _embargoed(port, old_key)
        assert status == 401  # revoked
        assert old_key not in json.dumps(answer)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert proc.returncode == 0
    assert "keys file reloaded (2 keys)" in (workdir / "serve.log").read_text()


@pytest.mark.integration
def test_a_sidecar_that_will_not_start_is_a_clear_error(tmp_path: Path) -> None:
    """A failure inside a cleanup_ctx (here: OPA exits at once) ends as one
    line naming the component, never a traceback."""
    workdir, _ = _example(tmp_path)
    broken = workdir / "opa"
    broken.write_text("#!/bin/sh\necho 'opa: cannot open the bundle' >&2\nexit 3\n")
    broken.chmod(0o755)
    proc = subprocess.run(
        [KAMIWAZA, "serve", "--policy", "routing.yaml", "--keys", "keys.json",
         "--port", str(free_port()), "--audit-dir", "audit", "--rego", str(ROOT / "rego"),
         "--allow-unconfigured-endpoints"],
        cwd=workdir, capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "KAMIWAZA_OPA_BIN": str(broken)},
    )  # fmt: skip
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1
    assert errors[0].startswith("error: OPA: ")
