"""The README's quick start, run from a clean clone as a new user would: `make
run`, then the README's own Python snippet and curl line get routed 200s (a
`pii-restricted` request on the in-VPC demo endpoint, the other on the other),
its printed output is what the README says it prints, a later `make run` says
how to get a new key, and the demo endpoints stop with the gateway.

The clone reuses this checkout's `.venv`, `.tools` and `node_modules` (symlinks,
with the set-up's inputs dated before its stamps so that make installs nothing
again) and runs its own code (PYTHONPATH: the clone first). The only change to
the README's commands is the ports (free ones, so that the test never collides
with anything listening on 8080), also written into the clone's demo registry.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from gateway.demo.server import reply_text
from tests.processes import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
STAMPS = (ROOT / ".venv" / ".installed-stamp", ROOT / "node_modules" / ".installed-stamp")


def _quick_start() -> str:
    return README[README.index("## Quick start") : README.index("## What is here")]


def _block(text: str, fence: str, after: int = 0) -> tuple[str, int]:
    """The body of the first ``` block with this fence line from `after`, and its end."""
    start = text.index(fence + "\n", after) + len(fence) + 1
    end = text.index("\n```\n", start)
    return text[start:end] + "\n", end + 5


def readme_snippets() -> tuple[str, str, str]:
    """The quick start's Python snippet, what it prints, and the curl command."""
    section = _quick_start()
    python, end = _block(section, "```python")
    printed, _ = _block(section, "```", section.index("prints", end))
    curl, _ = _block(section, "```sh", end)
    assert curl.startswith("curl "), curl
    return python, printed, curl


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        for child in _children(todo.pop()):
            out.append(child)
            todo.append(child)
    return out


def _cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _wait(predicate: object, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)  # polling a log file and ports
    raise AssertionError(f"timed out waiting for {what}; make's output:\n{log.read_text()}")


class Clone:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.port, self.vpc_port, self.saas_port = free_port(), free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("KAMIWAZA_")}
        env.pop("VIRTUAL_ENV", None)
        self.env = {**env, "PYTHONPATH": str(root)}

    def make_run(self, log: Path) -> subprocess.Popen[bytes]:
        with open(log, "wb") as out:
            return subprocess.Popen(
                ["make", "run", f"PORT={self.port}", f"DEMO_VPC_PORT={self.vpc_port}",
                 f"DEMO_SAAS_PORT={self.saas_port}"],
                cwd=self.root,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group, as a terminal would give it
            )  # fmt: skip

    def readme(self, text: str) -> str:
        return text.replace("127.0.0.1:8080", f"127.0.0.1:{self.port}")


@pytest.fixture
def clone(tmp_path: Path) -> Clone:
    for stamp in STAMPS:
        if not stamp.exists():
            pytest.fail(f"{stamp} is missing: run `make setup` first (make test does)")
    root = tmp_path / "kamiwaza"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(root)], check=True)
    for name in (".venv", ".tools", "node_modules"):
        (root / name).symlink_to((ROOT / name).resolve())
    # The set-up's inputs, older than the stamps the shared set-up left: make
    # must not install again (into the shared .venv, pointing at the clone).
    for name in ("pyproject.toml", "package.json", "package-lock.json"):
        os.utime(root / name, (0, 0))
    setup = Clone(root)
    registry = root / "policies" / "demo" / "endpoints.yaml"
    text = registry.read_text()
    assert "127.0.0.1:8101/v1" in text and "127.0.0.1:8102/v1" in text
    registry.write_text(
        text.replace("127.0.0.1:8101/", f"127.0.0.1:{setup.vpc_port}/").replace(
            "127.0.0.1:8102/", f"127.0.0.1:{setup.saas_port}/"
        )
    )
    return setup


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Kill what is left of the process group this test started (e.g. an OPA
    sidecar still flushing its decision log after its gateway was killed)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_the_quick_start_answers_from_a_clean_clone(clone: Clone, tmp_path: Path) -> None:
    python_snippet, printed, curl = readme_snippets()
    imported = subprocess.run(
        [str(clone.root / ".venv/bin/python"), "-c", "import gateway; print(gateway.__file__)"],
        cwd=clone.root, env=clone.env, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert imported == str(clone.root / "gateway" / "__init__.py")  # the clone's own code

    log = tmp_path / "make-run.log"
    make = clone.make_run(log)
    try:
        _wait(lambda: "api_key: kw_" in log.read_text(), 60, "the demo key", log)
        key = re.search(r"^api_key: (kw_\S+)$", log.read_text(), re.MULTILINE)
        assert key is not None
        ready = f"http://127.0.0.1:{clone.port}/readyz"

        def answers() -> bool:
            try:
                with urllib.request.urlopen(ready, timeout=1) as resp:
                    return resp.status == 200
            except OSError:
                return False

        _wait(answers, 60, "the gateway to be ready", log)
        assert "==> creating the demo API key in keys.json" in log.read_text()

        # The README's Python snippet, with the key it printed.
        snippet = clone.readme(python_snippet).replace('api_key="kw_..."', f'api_key="{key[1]}"')
        ran = subprocess.run(
            [str(clone.root / ".venv/bin/python"), "-c", snippet],
            cwd=clone.root, env=clone.env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert ran.returncode == 0, ran.stderr
        assert ran.stdout == printed
        messages = [{"role": "user", "content": "Summarise this contract"}]
        assert printed.splitlines()[1].strip() == reply_text("demo-saas", messages)

        # The README's curl line.
        answer = subprocess.run(
            ["bash", "-c", clone.readme(curl)],
            env={**clone.env, "KEY": key[1]}, capture_output=True, text=True, timeout=30,
            check=False,
        )  # fmt: skip
        assert answer.returncode == 0, answer.stderr
        head, _, body = answer.stdout.partition("\n\n")  # text mode: \r\n read as \n
        assert head.startswith("HTTP/1.1 200 OK")
        headers = dict(line.split(": ", 1) for line in head.splitlines()[1:] if ": " in line)
        assert (headers["X-Kamiwaza-Endpoint"], headers["X-Kamiwaza-Rule"]) == (
            "demo-in-vpc",
            "pii-in-vpc",
        )
        assert '"content": "Hello from the demo endpoint demo-in-vpc.' in body

        # A stream through the same path.
        request = urllib.request.Request(
            f"http://127.0.0.1:{clone.port}/v1/chat/completions",
            data=b'{"model": "demo-model", "stream": true,'
            b' "messages": [{"role": "user", "content": "Hello"}]}',
            headers={"Authorization": f"Bearer {key[1]}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as resp:
            assert resp.headers["X-Kamiwaza-Endpoint"] == "demo-saas"
            frames = resp.read().decode().split("\n\n")
        assert frames[-2] == "data: [DONE]"
        assert '"content":"Hello"' in frames[1]

        # The demo endpoints stop with the gateway, however it ends.
        (gateway,) = [p for p in _descendants(make.pid) if " serve " in _cmdline(p)]
        demos = [p for p in _descendants(make.pid) if "demo-upstream" in _cmdline(p)]
        assert len(demos) == 2
        os.kill(gateway, signal.SIGKILL)  # no chance to clean up
        _wait(
            lambda: not _listening(clone.vpc_port) and not _listening(clone.saas_port),
            10,
            "the demo endpoints to stop",
            log,
        )
        _wait(
            lambda: all(_cmdline(pid) == "" for pid in demos),  # gone (or a zombie being reaped)
            10,
            "the demo endpoints to exit",
            log,
        )
        assert make.wait(timeout=10) != 0  # make saw its gateway killed
    finally:
        _stop(make)

    # A later `make run` says how to get a new key; Ctrl-C stops everything.
    log = tmp_path / "make-run-again.log"
    again = clone.make_run(log)
    try:
        _wait(lambda: _listening(clone.saas_port), 60, "the demo endpoints", log)
        text = log.read_text()
        assert "==> the demo API key is in keys.json (printed once, when it was created). " in text
        assert (
            "Lost it? A new one:\n      .venv/bin/kamiwaza keys create --keys-file keys.json "
            "--tenant demo --user demo --roles analyst,admin\n" in text
        )
        assert "api_key:" not in text
        _wait(lambda: _listening(clone.port), 60, "the gateway", log)
        os.killpg(again.pid, signal.SIGINT)  # Ctrl-C in the terminal
        again.wait(timeout=20)
        _wait(
            lambda: not any(_listening(p) for p in (clone.port, clone.vpc_port, clone.saas_port)),
            10,
            "every port to close",
            log,
        )
    finally:
        _stop(again)
