"""Storage emulators on loopback for the audit sink tests, and a TCP proxy that
can cut a sink off: moto's S3 server (real SigV4 requests through boto3) and
fake-gcs-server (the GCS JSON API), each started once per test session."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.processes import free_port, start_on_free_port, stop_process

ROOT = Path(__file__).resolve().parent.parent
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing-key-id",
    "AWS_SECRET_ACCESS_KEY": "testing-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="session")
def moto_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto in server mode on 127.0.0.1; yields its endpoint URL."""
    binary = Path(sys.executable).parent / "moto_server"
    proc, port = start_on_free_port(
        lambda port, _attempt: [str(binary), "-H", "127.0.0.1", "-p", str(port)],
        ready_path="/moto-api/",
        log_path=tmp_path_factory.mktemp("moto") / "moto.log",
        failure="moto_server did not come up",
        timeout=30,
        any_answer=True,
        env={**os.environ, **AWS_ENV},
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc)


def find_fake_gcs() -> str:
    """fake-gcs-server: KAMIWAZA_FAKE_GCS_BIN, .tools/bin (scripts/install-tools.sh), PATH."""
    for candidate in (
        os.environ.get("KAMIWAZA_FAKE_GCS_BIN"),
        str(ROOT / ".tools" / "bin" / "fake-gcs-server"),
        shutil.which("fake-gcs-server"),
    ):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError("fake-gcs-server is not installed: run scripts/install-tools.sh")


@pytest.fixture(scope="session")
def fake_gcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """fake-gcs-server (in-memory backend) on 127.0.0.1; yields its endpoint URL."""
    proc, port = start_on_free_port(
        lambda port, _attempt: [
            find_fake_gcs(),
            "-scheme",
            "http",
            "-host",
            "127.0.0.1",
            "-port",
            str(port),
            "-public-host",
            f"127.0.0.1:{port}",
            "-external-url",
            f"http://127.0.0.1:{port}",
            "-backend",
            "memory",
            "-log-level",
            "error",
        ],
        ready_path="/storage/v1/b",
        log_path=tmp_path_factory.mktemp("fake-gcs") / "fake-gcs.log",
        failure="fake-gcs-server did not come up",
        timeout=30,
        any_answer=True,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc)


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(key, raising=False)
    return dict(AWS_ENV)


class TcpProxy:
    """A loopback TCP proxy to `target`; `down()` refuses and cuts connections."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def up(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def down(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(OSError):
                dst.close()

        tasks = [
            asyncio.ensure_future(pipe(reader, up_writer)),
            asyncio.ensure_future(pipe(up_reader, writer)),
        ]
        self._tasks.update(tasks)
        await asyncio.gather(*tasks)
        self._tasks.difference_update(tasks)
        self._writers -= {writer, up_writer}
