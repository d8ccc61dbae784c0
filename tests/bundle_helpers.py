"""Helpers for the bundle tests: signing keys, bundles of small policies, traffic."""

from __future__ import annotations

import asyncio
import subprocess
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.gateway_harness import ROOT
from translator.bundle import Signing, archive, build_bundle, bundle_files, manifest
from translator.opa import find_opa
from translator.pipeline import compile_policy


def policy_routing_to(endpoint: str) -> str:
    return f"version: v1\nrules:\n  - default:\n      route_to: {endpoint}\n"


@dataclass(frozen=True)
class KeyPair:
    private: Path
    public: Path


def rsa_key_pair(directory: Path, name: str) -> KeyPair:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = directory / f"{name}.pem"
    public = directory / f"{name}.pub.pem"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return KeyPair(private, public)


def make_bundle(workdir: Path, policy: str, name: str, signing: KeyPair | None) -> tuple[Path, str]:
    """A bundle of `policy` against workdir's endpoints.yaml: (path, revision)."""
    source = workdir / f"{name}.yaml"
    source.write_text(policy)
    result, files = compile_policy(str(source), str(workdir / "endpoints.yaml"))
    assert result.ir is not None
    built = build_bundle(
        bundle_files(files, ROOT / "rego"),
        revision=result.ir.revision,
        policy_source=result.policy_path,
        out=workdir / f"{name}.tar.gz",
        signing=Signing(str(signing.private)) if signing else None,
    )
    return built.path, built.revision


def broken_bundle(workdir: Path, good: Path, revision: str, signing: KeyPair | None = None) -> Path:
    """`good` with a policy that does not parse, signed when `good` was (as if
    built by hand, unchecked)."""
    stage = workdir / "broken-stage"
    with tarfile.open(good, "r:gz") as tar:
        tar.extractall(stage, filter="data")
    (stage / ".signatures.json").unlink(missing_ok=True)
    with (stage / "kamiwaza/policy/policy.rego").open("a") as fh:
        fh.write("\nbroken := \n")
    (stage / ".manifest").write_text(manifest(revision, "broken.yaml"))
    if signing is not None:
        subprocess.run(
            [find_opa(), "sign", "--bundle", ".", "--signing-key", str(signing.private),
             "--output-file-path", "."],
            cwd=stage, check=True, capture_output=True, timeout=60,
        )  # fmt: skip
    members = {
        p.relative_to(stage).as_posix(): p.read_text() for p in stage.rglob("*") if p.is_file()
    }
    path = workdir / "broken.tar.gz"
    path.write_bytes(archive(members))
    return path


async def wait_ready(
    url: str, predicate: Callable[[int, dict[str, Any]], bool], timeout: float = 30.0
) -> dict[str, Any]:
    """Poll `/readyz` until `predicate(status, body)`; returns the body."""
    deadline = time.monotonic() + timeout
    last: tuple[int, Any] = (0, None)
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            try:
                async with http.get(f"{url}/readyz") as resp:
                    last = (resp.status, await resp.json())
                    if predicate(*last):
                        return last[1]
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)  # readiness poll interval
    raise AssertionError(f"/readyz never satisfied the condition; last answer {last}")


@dataclass
class Traffic:
    """Workers sending chat requests one after another until stopped."""

    url: str
    key: str
    workers: int = 4
    max_requests: int = 10000  # bounded, whatever happens
    pause_s: float = 0.02  # between one worker's requests: a steady, modest load
    statuses: list[int] = field(default_factory=list)
    per_worker: list[list[str]] = field(default_factory=list)  # request ids in order
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        self.per_worker = [[] for _ in range(self.workers)]
        self._tasks = [asyncio.create_task(self._run(n)) for n in range(self.workers)]

    async def _run(self, n: int) -> None:
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        headers = {"Authorization": f"Bearer {self.key}"}
        async with aiohttp.ClientSession() as http:
            while not self._stop.is_set() and len(self.statuses) < self.max_requests:
                try:
                    async with http.post(
                        f"{self.url}/v1/chat/completions", json=body, headers=headers
                    ) as resp:
                        await resp.read()
                        self.statuses.append(resp.status)
                        self.per_worker[n].append(resp.headers.get("X-Request-Id", ""))
                except aiohttp.ClientError:
                    self.statuses.append(0)  # a failed request (the test asserts none)
                    return
                await asyncio.sleep(self.pause_s)

    async def count(self, more: int) -> None:
        """Until `more` further requests were answered."""
        target = len(self.statuses) + more
        deadline = time.monotonic() + 30
        while len(self.statuses) < target and time.monotonic() < deadline:
            await asyncio.sleep(0.01)  # waiting for the workers' progress
        assert len(self.statuses) >= target, f"traffic stalled: {sorted(set(self.statuses))}"

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


def revisions_in_order(records: list[dict[str, Any]], traffic: Traffic) -> list[list[str]]:
    """Each worker's audit records' policy revisions, in the order it sent them."""
    by_id = {r["request_id"]: r for r in records}
    return [[by_id[rid]["policy_revision"] for rid in ids] for ids in traffic.per_worker]


def switches_once(sequence: list[str], old: str, new: str) -> bool:
    """`sequence` is some `old`s then only `new`s (at least one of each)."""
    if old not in sequence or new not in sequence:
        return False
    first_new = sequence.index(new)
    return set(sequence[:first_new]) == {old} and set(sequence[first_new:]) == {new}
