"""The OPA sidecar that `kamiwaza serve` starts and supervises by default.

OPA listens on loopback only, loads the compiled policy, the endpoint registry
(as data) and the hand-written Rego, and logs every decision. If it exits, it is
restarted with backoff; meanwhile the gateway fails closed (503).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import aiohttp

log = logging.getLogger(__name__)


def _with_parent_death_signal(args: list[str]) -> list[str]:
    """`args` wrapped so that Linux SIGKILLs the sidecar when the gateway dies.

    A gateway killed hard (SIGKILL, OOM) cannot stop its sidecar, and an orphaned
    OPA would keep its port and answer nobody. util-linux's `setpriv` sets the
    parent-death signal and execs OPA (the setting survives exec); a
    `preexec_fn` would do the same but can deadlock the fork in a process that
    already runs threads. The signal is tied to the forking thread: spawns
    happen on the event loop's thread, which lives as long as the process.

    KILL, not TERM: on TERM OPA shuts down gracefully, trying for up to its
    10 s grace period to flush its decision log to the gateway that just died,
    so the orphan lingered that long. A normal stop still TERMs it (`stop()`).
    """
    setpriv = shutil.which("setpriv") if sys.platform == "linux" else None
    return [setpriv, "--pdeathsig", "KILL", "--", *args] if setpriv else args


def go_runtime_env(gomaxprocs: int, gogc: int) -> dict[str, str]:
    """Go runtime variables for the sidecar; 0 leaves a setting to Go (or the environment)."""
    env = {}
    if gomaxprocs:
        env["GOMAXPROCS"] = str(gomaxprocs)
    if gogc:
        env["GOGC"] = str(gogc)
    return env


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class OpaSidecar:
    """`opa run --server` on 127.0.0.1 with the given policy/data paths."""

    def __init__(
        self,
        opa_bin: str,
        paths: Sequence[str],
        log_path: Path,
        *,
        port: int | None = None,
        startup_timeout: float = 30.0,
        config_file: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.opa_bin = opa_bin
        self.paths = list(paths)
        self.log_path = log_path
        self.port = port or free_loopback_port()
        self.startup_timeout = startup_timeout
        # OPA config (e.g. the decision_logs service that ships to the audit pipeline).
        self.config_file = config_file
        # Added to the gateway's environment (e.g. Go runtime settings).
        self.env = dict(env or {})
        # A plain Popen: spawning happens once at startup, and asyncio's subprocess
        # transport hangs under uvloop when stdout goes to a file.
        self._proc: subprocess.Popen[bytes] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False
        self.restarts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _args(self) -> list[str]:
        return [
            self.opa_bin,
            "run",
            "--server",
            "--addr",
            f"127.0.0.1:{self.port}",
            "--log-level",
            "error",
            # Every decision is logged with its decision_id (joined with audit
            # records): shipped to the gateway's ingestion service when the config
            # file names it, else to the console (the sidecar's log). Not both: the
            # console copy would grow the log by ~1 KB a decision, forever.
            *(
                ["--config-file", str(self.config_file)]
                if self.config_file
                else ["--set", "decision_logs.console=true"]
            ),
            *self.paths,
        ]

    async def _spawn(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            self._proc = subprocess.Popen(
                _with_parent_death_signal(self._args()),
                stdout=out,
                stderr=out,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **self.env},
            )

    async def wait_healthy(self, timeout: float) -> bool:
        deadline = asyncio.get_running_loop().time() + timeout
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session:
            while asyncio.get_running_loop().time() < deadline:
                if self._proc is None or self._proc.poll() is not None:
                    return False
                with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                    async with session.get(f"{self.url}/health") as resp:
                        if resp.status == 200:
                            return True
                await asyncio.sleep(0.02)  # readiness poll interval
        return False

    async def start(self) -> None:
        await self._spawn()
        if not await self.wait_healthy(self.startup_timeout):
            await self._terminate()
            tail = self._log_tail()
            raise RuntimeError(f"OPA sidecar did not become healthy on {self.url}:\n{tail}")
        self._supervisor = asyncio.create_task(self._supervise(), name="opa-supervisor")
        log.info("OPA sidecar ready on %s", self.url)

    async def _supervise(self) -> None:
        backoff = 0.5
        while not self._stopping:
            assert self._proc is not None
            code = await asyncio.to_thread(self._proc.wait)
            if self._stopping:
                return
            self.restarts += 1
            log.error(
                "OPA sidecar exited with %s; restarting (requests fail closed meanwhile)", code
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)
            await self._spawn()
            if await self.wait_healthy(self.startup_timeout):
                backoff = 0.5

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    async def _terminate(self) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            await asyncio.to_thread(proc.wait, 10)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait)

    async def stop(self) -> None:
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        await self._terminate()
