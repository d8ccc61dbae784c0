"""A real redis-server (Debian's, installed by scripts/install-redis.sh) on a
free loopback port, with its own temporary directory and no persistence."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.processes import free_port, stop_process


def find_redis_server() -> str:
    """KAMIWAZA_REDIS_BIN, else `redis-server` on PATH."""
    candidate = os.environ.get("KAMIWAZA_REDIS_BIN")
    if candidate and os.access(candidate, os.X_OK):
        return candidate
    found = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.access("/usr/bin/redis-server", os.X_OK) else None
    )
    if found:
        return found
    raise RuntimeError("redis-server is not installed: run scripts/install-redis.sh (make test)")


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """redis-server on 127.0.0.1; `stop()` terminates it by PID, `start()` again
    reuses the same port (a restart, as after a crash)."""

    def __init__(self, workdir: Path, *, cluster: bool = False) -> None:
        self.workdir = workdir
        self.cluster = cluster
        self.log_path = workdir / "redis.log"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _command(self, port: int) -> list[str]:
        command = [
            find_redis_server(),
            "--bind", "127.0.0.1",
            "--port", str(port),
            "--dir", str(self.workdir),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--logfile", "",
        ]  # fmt: skip
        if self.cluster:
            # The bus port is named: by default it is port + 10000, which a free
            # port above 55535 cannot have.
            command += [
                "--cluster-enabled", "yes",
                "--cluster-config-file", f"nodes-{port}.conf",
                "--cluster-port", str(free_port()),
            ]  # fmt: skip
        return command

    def start(self, timeout: float = 15.0) -> None:
        ports = [self.port] if self.port else [free_port() for _ in range(3)]
        for port in ports:
            with open(self.log_path, "ab") as log:
                proc = subprocess.Popen(self._command(port), stdout=log, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and proc.poll() is None:
                if _answers_ping(port):
                    self.proc, self.port = proc, port
                    if self.cluster:
                        self._own_every_slot()
                    return
                time.sleep(0.02)
            stop_process(proc)
        raise RuntimeError(f"redis-server did not start; log:\n{self.log_path.read_text()}")

    def _own_every_slot(self) -> None:
        """A one-node cluster: this node serves all 16384 slots."""
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port)
        try:
            client.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
            deadline = time.monotonic() + 10
            while client.execute_command("CLUSTER", "INFO").decode().find("cluster_state:ok") < 0:
                if time.monotonic() > deadline:
                    raise RuntimeError("the one-node cluster did not become ready")
                time.sleep(0.02)
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server for one test, stopped at teardown."""
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(directory)
    server.start()
    yield server
    server.stop()
