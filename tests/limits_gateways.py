"""Gateway replicas sharing one real redis-server and one real OPA, for
tests/test_limits_gateway.py: in-process apps (each its own aiohttp server,
Redis client, audit directory) and `kamiwaza serve` in its own process (to be
SIGKILLed), all in front of the same fake upstreams."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import openai

from gateway.auth import KeyStore
from gateway.limits.config import load_limits
from gateway.limits.model import LimitState, Subject
from gateway.limits.redis_backend import RedisLimits, redis_client
from gateway.settings import load_settings
from tests.fake_upstream import FakeUpstream
from tests.gateway_harness import (
    ENDPOINT_NAMES,
    ROOT,
    Gateway,
    registry_yaml,
    serve_gateway,
    token_env,
    token_of,
)
from tests.opa_server import OpaServer
from tests.processes import free_port
from tests.redis_server import RedisServer
from translator.pipeline import compile_policy, write_output

ADMINS = {"nearcap": ("admin",)}
TENANTS = ("burst", "rpm", "tpm", "nousage", "nearcap", "killed", "outage", "shape")


@dataclass
class Cluster:
    """The shared parts: upstreams, keys (tenant -> API key), files, OPA, Redis."""

    workdir: Path
    upstreams: dict[str, FakeUpstream]
    keys: dict[str, str]
    opa: OpaServer
    redis: RedisServer
    limits_file: Path
    replicas: list[Gateway] = field(default_factory=list)

    def environ(self) -> dict[str, str]:
        return {token_env(name): token_of(name) for name in ENDPOINT_NAMES}

    async def replica(self, **overrides: Any) -> Gateway:
        """One more in-process gateway on the shared Redis and OPA."""
        workdir = self.workdir / f"replica-{len(self.replicas)}"
        workdir.mkdir()
        for name in ("routing.yaml", "endpoints.yaml", "keys.json"):
            (workdir / name).write_bytes((self.workdir / name).read_bytes())
        (workdir / "keys.json").chmod(0o600)
        gw = await serve_gateway(
            workdir,
            keys=self.keys,
            environ=self.environ(),
            overrides={
                "opa_url": self.opa.url,
                "limits": str(self.limits_file),
                "limits_redis_url": self.redis.url,
                "audit_batch_interval_s": 0.05,
                "opa_timeout_ms": 5000,  # a loaded machine is not what is tested
                **overrides,
            },
            upstreams=self.upstreams,
        )
        self.replicas.append(gw)
        return gw

    def sdk(self, gw: Gateway, tenant: str) -> openai.AsyncOpenAI:
        client = openai.AsyncOpenAI(
            api_key=self.keys[tenant], base_url=gw.base_url, max_retries=0, timeout=30
        )
        gw.clients.append(client)
        return client

    async def records(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for gw in self.replicas:
            out += await gw.audit_records()
        return out

    def upstream_requests(self) -> int:
        return sum(len(up.requests) for up in self.upstreams.values())

    async def status(self, tenant: str) -> dict[str, LimitState]:
        """Every limit of `tenant` with its use, read from Redis by a fresh client."""
        limiter = RedisLimits(load_limits(str(self.limits_file)), redis_client(self.redis.url))
        try:
            return {s.limit.limit_id: s for s in await limiter.status(Subject(tenant))}
        finally:
            await limiter.close()

    async def in_flight(self, tenant: str) -> int:
        """Reservations of `tenant` held in Redis (not yet settled or expired)."""
        from redis.asyncio import Redis

        from gateway.limits.keys import TenantKeys

        client = Redis.from_url(self.redis.url)
        try:
            return int(await client.zcard(TenantKeys.of(tenant).expiry))
        finally:
            await client.aclose()

    def serve_process(self, port: int, **settings: Any) -> subprocess.Popen[bytes]:
        """`kamiwaza serve` on `port` with this cluster's files, in its own process."""
        workdir = self.workdir / f"process-{port}"
        workdir.mkdir()
        lines = {
            "policy": self.workdir / "routing.yaml",
            "endpoints": self.workdir / "endpoints.yaml",
            "keys": self.workdir / "keys.json",
            "audit_dir": workdir / "audit",
            "rego_dir": ROOT / "rego",
            "opa_url": self.opa.url,
            "limits": self.limits_file,
            "limits_redis_url": self.redis.url,
            "opa_timeout_ms": 5000,
            **settings,
        }
        config = workdir / "gateway.yaml"
        config.write_text("".join(f"{key}: {value}\n" for key, value in lines.items()))
        with open(workdir / "serve.log", "ab") as out:
            return subprocess.Popen(
                [str(Path(sys.executable).parent / "kamiwaza"), "serve", "--config",
                 str(config), "--port", str(port)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.environ()},
            )  # fmt: skip

    async def close(self) -> None:
        for gw in self.replicas:
            await gw.close()


async def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    async with aiohttp.ClientSession() as http, asyncio.timeout(30):
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                async with http.get(f"{url}/readyz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)  # readiness poll interval


async def start_cluster(
    tmp_path: Path, fake_upstream: Any, redis: RedisServer, limits: str
) -> AsyncIterator[Cluster]:
    """Upstreams, keys, the compiled example policy in one OPA; no replica yet."""
    workdir = tmp_path / "cluster"
    workdir.mkdir()
    upstreams = {
        name: await fake_upstream(token=token_of(name), model=f"model-of-{name}")
        for name in ENDPOINT_NAMES
    }
    (workdir / "routing.yaml").write_text((ROOT / "policies" / "routing.yaml").read_text())
    (workdir / "endpoints.yaml").write_text(registry_yaml(upstreams))
    store = KeyStore.load(workdir / "keys.json", missing_ok=True)
    keys = {
        # nearcap may ask POST /v1/route/explain (an admin key).
        tenant: store.create(tenant=tenant, user="u-1", roles=ADMINS.get(tenant, ()))[1]
        for tenant in TENANTS
    }
    settings = load_settings(overrides={"policy": str(workdir / "routing.yaml")}, environ={})
    _, files = compile_policy(
        str(workdir / "routing.yaml"),
        str(workdir / "endpoints.yaml"),
        classes=settings.classes_data(),
    )
    compiled = workdir / "compiled"
    compiled.mkdir()
    write_output(files, str(compiled))
    opa = OpaServer([compiled, ROOT / "rego"], workdir)
    opa.start()
    limits_file = workdir / "limits.yaml"
    limits_file.write_text(limits)
    cluster = Cluster(workdir, upstreams, keys, opa, redis, limits_file)
    try:
        yield cluster
    finally:
        await cluster.close()
        opa.stop()


__all__ = ["Cluster", "free_port", "start_cluster", "wait_ready"]
