"""A real OPA server on a free loopback port, for integration tests."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from translator.opa import find_opa


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class OpaServer:
    """`opa run --server` on 127.0.0.1 with the given policy and data paths."""

    def __init__(self, paths: Sequence[str | os.PathLike[str]], log_dir: Path) -> None:
        self.paths = [str(p) for p in paths]
        self.log_path = log_dir / "opa.log"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        # A port picked free can be taken before OPA binds it; try a few.
        for _ in range(3):
            self.port = free_port()
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    [
                        find_opa(),
                        "run",
                        "--server",
                        "--addr",
                        f"127.0.0.1:{self.port}",
                        "--log-level",
                        "error",
                        *self.paths,
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            if self._wait_healthy(timeout):
                return
            self.stop()
        raise RuntimeError(f"OPA did not become healthy; log:\n{self.log_path.read_text()}")

    def _wait_healthy(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1) as resp:
                    if resp.status == 200:
                        return True
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.02)  # poll interval of the readiness check
        return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def request(self, method: str, path: str, body: Any = None, *, raw: str | None = None) -> Any:
        data = (
            raw.encode()
            if raw is not None
            else (json.dumps(body).encode() if body is not None else None)
        )
        req = urllib.request.Request(f"{self.url}{path}", data=data, method=method)
        req.add_header("Content-Type", "text/plain" if raw is not None else "application/json")
        with urllib.request.urlopen(req, timeout=10) as resp:
            text = resp.read()
        return json.loads(text) if text else None

    def put_policy(self, module_id: str, source: str) -> None:
        self.request("PUT", f"/v1/policies/{module_id}", raw=source)

    def delete_policy(self, module_id: str) -> None:
        self.request("DELETE", f"/v1/policies/{module_id}")

    def put_data(self, path: str, value: Any) -> None:
        self.request("PUT", f"/v1/data/{path}", value)

    def decide(self, input_doc: dict[str, Any]) -> Any:
        """The routing decision for `input_doc`, or None when undefined."""
        out = self.request("POST", "/v1/data/kamiwaza/route/decision", {"input": input_doc})
        return out.get("result")
