"""`kamiwaza serve --workers N`: N worker processes on one port, supervised.

The supervisor is a small single-threaded process without an event loop:

- it binds the port first (SO_REUSEPORT, not listening: the kernel hands
  connections only to listening sockets), so that a taken port fails at once
  and port 0 picks one port for every worker;
- it forks worker 0 and waits until it listens (a start-up error is then
  reported once, by that worker, and the supervisor exits 1), then the others;
  each worker builds its own application (`create_app`), with its own OPA
  sidecar, audit spool and stream (gateway/worker.py), and listens on the port
  with SO_REUSEPORT, so that the kernel spreads new connections over them;
- a worker that exits when it was not asked to (killed, crashed) is forked
  again after a backoff (0.5 s, doubling to 10 s, back to 0.5 s once a worker
  has run for a minute); the others keep serving meanwhile;
- SIGHUP is forwarded to every worker (each reloads its keys and policy);
  SIGTERM and SIGINT too: each worker drains (gateway/drain.py) and exits; a
  second one cuts the drains short; the supervisor exits once all have, with
  status 0 if every worker did.

Workers run in their own process group (a terminal's Ctrl-C reaches the
supervisor only, which forwards it once) and get SIGTERM from the kernel if
the supervisor dies (Linux), so that no orphan keeps serving the port.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import selectors
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from gateway.worker import WorkerIdentity

log = logging.getLogger("kamiwaza.supervisor")

BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 10.0
STABLE_AFTER_S = 60.0  # a worker that ran this long restarts after the shortest backoff
PR_SET_PDEATHSIG = 1  # prctl(2) option, from <linux/prctl.h>
READY = b"r"

# Runs a worker: its identity, the port, and a callable to call once it
# listens. Returns the process's exit status.
RunWorker = Callable[[WorkerIdentity, int, Callable[[], None]], int]


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port) with SO_REUSEPORT, not listening.

    It holds the port for the workers (a process without SO_REUSEPORT cannot
    take it) and fails now if the port is taken; with port 0, the port it got
    is the one every worker binds."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


@dataclass(slots=True)
class _Worker:
    identity: WorkerIdentity
    pid: int
    ready_fd: int  # read end of the pipe the worker writes READY to
    started: float
    ready: bool = False


class Supervisor:
    """Forks and supervises the workers (module docstring); `run()` until all stopped."""

    def __init__(self, count: int, run_worker: RunWorker, *, host: str, port: int) -> None:
        self.count = count
        self.run_worker = run_worker
        self.host = host
        self.port = port
        self.restarts = 0
        self._workers: dict[int, _Worker] = {}  # pid -> worker
        self._due: dict[int, float] = {}  # index -> when to fork it again
        self._backoff = dict.fromkeys(range(count), BACKOFF_MIN_S)
        self._stopping = False
        self._failed = False  # a worker failed to start at first
        self._served: set[int] = set()  # indexes that listened at least once
        self._others_forked = False
        self._status = 0
        self._selector = selectors.DefaultSelector()
        self._wake_r = self._wake_w = -1
        self._placeholder: socket.socket | None = None

    # -- the supervisor's loop -------------------------------------------------

    def run(self, on_serving: Callable[[int], None] | None = None) -> int:
        """Start the workers and supervise them until they all stopped; the exit status.

        OSError if the port cannot be bound. `on_serving(port)` is called once
        every worker listens."""
        self._placeholder = reserve_port(self.host, self.port)
        self.port = int(self._placeholder.getsockname()[1])
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        previous = signal.set_wakeup_fd(self._wake_w)
        handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)
        saved = {signum: signal.signal(signum, _noop) for signum in handled}
        announced = False
        try:
            self._fork(0)
            while self._workers or (self._due and not self._stopping):
                if not announced and self._all_ready():
                    announced = True
                    if on_serving is not None:
                        on_serving(self.port)
                self._wait(self._timeout())
                self._fork_due()
        finally:
            signal.set_wakeup_fd(previous)
            for signum, handler in saved.items():
                signal.signal(signum, handler)
            self._selector.close()
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._placeholder.close()
        return 1 if self._failed else self._status

    def _all_ready(self) -> bool:
        return len(self._workers) == self.count and all(w.ready for w in self._workers.values())

    def _timeout(self) -> float | None:
        if not self._due or self._stopping:
            return None
        return max(0.0, min(self._due.values()) - time.monotonic())

    def _wait(self, timeout: float | None) -> None:
        for key, _ in self._selector.select(timeout):
            fd = int(key.fd)
            if fd == self._wake_r:
                self._on_signals()
            else:
                self._on_ready(fd)

    def _on_signals(self) -> None:
        try:
            data = os.read(self._wake_r, 256)
        except BlockingIOError:
            return
        for signum in data:
            if signum == signal.SIGCHLD:
                self._reap()
            elif signum == signal.SIGHUP:
                log.info("SIGHUP: forwarded to %d worker(s)", len(self._workers))
                self._forward(signal.SIGHUP)
            elif signum in (signal.SIGTERM, signal.SIGINT):
                if not self._stopping:
                    log.info(
                        "%s: stopping %d worker(s)", signal.Signals(signum).name, len(self._workers)
                    )
                self._stopping = True
                self._due.clear()
                self._forward(signal.Signals(signum))
        self._reap()  # SIGCHLDs coalesce; a stray check costs one waitpid

    def _on_ready(self, fd: int) -> None:
        worker = next((w for w in self._workers.values() if w.ready_fd == fd), None)
        if worker is None:  # reaped in this same wake-up: its pipe is closed already
            return
        try:
            data = os.read(fd, 16)
        except OSError:
            data = b""
        if data.startswith(READY):
            worker.ready = True
            self._served.add(worker.identity.index)
            log.info("worker %s (pid %d) serving", worker.identity.name, worker.pid)
            if worker.identity.index == 0 and not self._others_forked and not self._stopping:
                self._others_forked = True
                for index in range(1, self.count):  # worker 0 started: the others now
                    self._fork(index)
        # Readiness is said once; EOF (the worker exited) is the reaper's business.
        self._selector.unregister(fd)
        os.close(fd)
        worker.ready_fd = -1

    def _forward(self, signum: signal.Signals) -> None:
        for pid in self._workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def _reap(self) -> None:
        while self._workers:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self._workers.pop(pid, None)
            if worker is None:
                continue
            if worker.ready_fd >= 0:
                self._selector.unregister(worker.ready_fd)
                os.close(worker.ready_fd)
            self._exited(worker, status)

    def _exited(self, worker: _Worker, status: int) -> None:
        code = os.waitstatus_to_exitcode(status)
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"status {code}"
        name = worker.identity.name
        if self._stopping:
            log.info("worker %s (pid %d) stopped (%s)", name, worker.pid, how)
            if code != 0:
                self._status = 1
            return
        if not worker.ready and worker.identity.index not in self._served:
            # Its first start failed: a start-up error (reported by the worker itself).
            log.error("worker %s (pid %d) failed to start (%s); stopping", name, worker.pid, how)
            self._failed = True
            self._stopping = True
            self._due.clear()
            self._forward(signal.SIGTERM)
            return
        index = worker.identity.index
        if time.monotonic() - worker.started >= STABLE_AFTER_S:
            self._backoff[index] = BACKOFF_MIN_S
        delay = self._backoff[index]
        self._backoff[index] = min(delay * 2, BACKOFF_MAX_S)
        log.error(
            "worker %s (pid %d) exited with %s; restarting it in %.1fs",
            name,
            worker.pid,
            how,
            delay,
        )
        self._due[index] = time.monotonic() + delay

    def _fork_due(self) -> None:
        now = time.monotonic()
        for index, due in sorted(self._due.items()):
            if due <= now:
                del self._due[index]
                self.restarts += 1
                self._fork(index)

    # -- forking a worker --------------------------------------------------------

    def _fork(self, index: int) -> None:
        ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
        identity = WorkerIdentity(index, self.count)
        supervisor = os.getpid()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the worker
            os.close(ready_r)
            os._exit(self._child(identity, ready_w, supervisor))
        os.close(ready_w)
        self._workers[pid] = _Worker(identity, pid, ready_r, time.monotonic())
        self._selector.register(ready_r, selectors.EVENT_READ)

    def _child(self, identity: WorkerIdentity, ready_w: int, supervisor: int) -> int:
        code = 1
        try:
            self._become_worker(supervisor)

            def listening() -> None:
                with contextlib.suppress(OSError):
                    os.write(ready_w, READY)
                    os.close(ready_w)

            code = self.run_worker(identity, self.port, listening)
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
        return code

    def _become_worker(self, supervisor: int) -> None:
        """Undo what the supervisor set up for itself; tie the worker's life to it."""
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        # Until the worker's reload handler is installed, a SIGHUP must not kill it.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        self._selector.close()
        for fd in (self._wake_r, self._wake_w, *(w.ready_fd for w in self._workers.values())):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._workers.clear()
        if self._placeholder is not None:
            self._placeholder.close()
        os.setpgid(0, 0)
        _parent_death_signal(signal.SIGTERM)
        if os.getppid() != supervisor:  # the supervisor died before the prctl
            raise SystemExit(0)


def _parent_death_signal(signum: int) -> None:
    """Have Linux send `signum` to this process when its parent dies."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        log.warning("prctl(PR_SET_PDEATHSIG) failed: %s", os.strerror(err or errno.EINVAL))


def _noop(signum: int, frame: object) -> None:
    """The supervisor's signal handler: the wake-up fd carries the signal."""
