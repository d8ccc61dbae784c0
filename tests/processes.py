"""Test servers on loopback: a binary started on a free port and polled over
HTTP until it answers, and an aiohttp app served on a port the OS picks."""

from __future__ import annotations

import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from aiohttp import web

from gateway.sidecar import free_loopback_port

# The gateway's own helper (it picks the sidecar's port the same way).
free_port = free_loopback_port


def wait_http(
    url: str,
    proc: subprocess.Popen[bytes],
    timeout: float,
    *,
    poll_interval: float = 0.05,
    any_answer: bool = False,
) -> bool:
    """Poll `url` until it answers 200 (any HTTP answer with `any_answer`).

    False when `proc` exits first or `timeout` seconds pass.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if any_answer or resp.status == 200:
                    return True
        except urllib.error.HTTPError:
            if any_answer:
                return True
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(poll_interval)
    return False


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """Terminate `proc` (kill it when it does not exit within 10 s)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_on_free_port(
    command: Callable[[int, int], Sequence[str]],
    *,
    ready_path: str,
    log_path: Path,
    failure: str,
    timeout: float,
    poll_interval: float = 0.05,
    any_answer: bool = False,
    env: Mapping[str, str] | None = None,
    attempts: int = 3,
) -> tuple[subprocess.Popen[bytes], int]:
    """Start `command(port, attempt)` on a free loopback port; wait until
    `http://127.0.0.1:<port><ready_path>` answers; return the process and port.

    A port picked free can be taken before the binary binds it, so a start that
    does not become ready is retried on another port. After `attempts` starts,
    RuntimeError with `failure` and the log (stdout and stderr of every start).
    """
    for attempt in range(attempts):
        port = free_port()
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                list(command(port, attempt)),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=None if env is None else dict(env),
            )
        url = f"http://127.0.0.1:{port}{ready_path}"
        if wait_http(url, proc, timeout, poll_interval=poll_interval, any_answer=any_answer):
            return proc, port
        stop_process(proc)
    raise RuntimeError(f"{failure}; log:\n{log_path.read_text()}")


async def serve_app(
    app: web.Application, host: str = "127.0.0.1", *, handler_cancellation: bool = False
) -> tuple[web.AppRunner, int]:
    """Serve `app` on `host` at a port the OS picks: the runner (for `cleanup()`) and the port."""
    runner = web.AppRunner(
        app, handler_cancellation=handler_cancellation, access_log=None, shutdown_timeout=0.5
    )
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    server = site._server
    assert server is not None
    port: int = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    return runner, port
