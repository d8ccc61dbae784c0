"""Shared fixtures: the real OPA binary and servers, and fake upstreams, on loopback."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.audit_servers import aws_env, fake_gcs, moto_s3  # noqa: F401 (fixtures)
from tests.fake_upstream import FakeUpstream
from tests.opa_server import OpaServer
from tests.redis_server import redis_server  # noqa: F401 (fixture)
from translator.opa import find_opa

# Tests send traffic to loopback only: botocore must never probe the EC2
# instance-metadata address while it looks for credentials (subprocesses inherit this).
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")

ROOT = Path(__file__).resolve().parent.parent
REGO_DIR = ROOT / "rego"
POLICIES_DIR = ROOT / "policies"


@pytest.fixture(scope="session")
def opa_bin() -> str:
    """The pinned OPA binary; tests that need it fail loudly when it is missing."""
    return find_opa()


@pytest.fixture
def opa_server(
    opa_bin: str, tmp_path: Path
) -> Iterator[Callable[[Sequence[str | os.PathLike[str]]], OpaServer]]:
    """Factory: start OPA on a free loopback port with the given policy/data paths.

    Waits on /health before returning; every server started is stopped at teardown.
    """
    started: list[OpaServer] = []

    def start(paths: Sequence[str | os.PathLike[str]]) -> OpaServer:
        server = OpaServer(paths, tmp_path)
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def shared_opa(opa_bin: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpaServer]:
    """One OPA server per test module with rego/ loaded; tests upload compiled policies."""
    server = OpaServer([REGO_DIR], tmp_path_factory.mktemp("opa"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def fake_upstream() -> AsyncIterator[Callable[..., Awaitable[FakeUpstream]]]:
    """Factory: start a fake OpenAI-compatible upstream on a free loopback port.

    `await fake_upstream(token=..., model=...)`; every one started is closed at
    teardown. See tests/fake_upstream.py for controlling its behaviour.
    """
    started: list[FakeUpstream] = []

    async def start(**kwargs: Any) -> FakeUpstream:
        upstream = FakeUpstream(**kwargs)
        await upstream.start()
        started.append(upstream)
        return upstream

    yield start
    for upstream in started:
        await upstream.close()
