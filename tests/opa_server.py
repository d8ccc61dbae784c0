"""A real OPA server on a free loopback port, for integration tests."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.processes import start_on_free_port, stop_process
from translator.opa import find_opa


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
        self.proc, self.port = start_on_free_port(
            lambda port, _attempt: [
                find_opa(),
                "run",
                "--server",
                "--addr",
                f"127.0.0.1:{port}",
                "--log-level",
                "error",
                *self.paths,
            ],
            ready_path="/health",
            log_path=self.log_path,
            failure="OPA did not become healthy",
            timeout=timeout,
            poll_interval=0.02,
        )

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
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
