"""The supervisor of `serve --workers` on its own, with stand-in workers (no
gateway, no OPA): restart backoff, signals forwarded, exit statuses. A real
process, since the supervisor forks and owns the process's signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# A stand-in worker: says it listens, then waits for SIGHUP (logged) or SIGTERM
# (exit 0). Worker 1 exits with status 3 right after listening as many times
# as the file "crashes" says.
SCRIPT = """
import logging, os, signal, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
from gateway.supervisor import Supervisor

def run(worker, port, listening):
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGHUP})
    listening()
    if worker.index == 1 and os.path.exists("crashes"):
        left = int(open("crashes").read())
        if left:
            open("crashes", "w").write(str(left - 1))
            return 3
    while signal.sigwait({signal.SIGTERM, signal.SIGHUP}) == signal.SIGHUP:
        print(f"{worker.name} {os.getpid()} got SIGHUP", file=sys.stderr, flush=True)
    return 0

status = Supervisor(2, run, host="127.0.0.1", port=0).run(
    on_serving=lambda port: print(f"serving on {port}", file=sys.stderr, flush=True)
)
sys.exit(status)
"""


def _start(tmp_path: Path) -> subprocess.Popen[bytes]:
    with (tmp_path / "log").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-c", SCRIPT],
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )


def _wait_for(tmp_path: Path, text: str, count: int = 1, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while True:
        log = (tmp_path / "log").read_text()
        if log.count(text) >= count:
            return log
        assert time.monotonic() < deadline, f"{text!r} x{count} not in:\n{log}"
        time.sleep(0.02)  # the log is the supervisor's only output


def test_a_crashing_worker_is_restarted_with_doubling_backoff_until_it_stays(
    tmp_path: Path,
) -> None:
    (tmp_path / "crashes").write_text("3")
    proc = _start(tmp_path)
    try:
        log = _wait_for(tmp_path, "worker w1 (pid", count=7)  # 4 starts, 3 exits
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    delays = [line.rsplit(" ", 1)[1] for line in log.splitlines() if "restarting it in" in line]
    assert delays == ["0.5s", "1.0s", "2.0s"]
    log = (tmp_path / "log").read_text()
    assert log.count("worker w0 (pid") == 2  # serving, stopped: never restarted
    assert "serving on " in log


def test_sighup_reaches_every_worker_and_sigterm_stops_them_all(tmp_path: Path) -> None:
    proc = _start(tmp_path)
    try:
        _wait_for(tmp_path, "serving on ")
        proc.send_signal(signal.SIGHUP)
        log = _wait_for(tmp_path, "got SIGHUP", count=2)
        assert {line.split()[0] for line in log.splitlines() if "got SIGHUP" in line} == {
            "w0",
            "w1",
        }
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=20)
    log = (tmp_path / "log").read_text()
    assert code == 0, log
    assert "SIGTERM: stopping 2 worker(s)" in log
    assert log.count("stopped (status 0)") == 2
