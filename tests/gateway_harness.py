"""A running gateway for integration tests: real OPA sidecar, fake upstreams on
loopback, a keys file with one key per test tenant, and an audit directory."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

from gateway.app import create_app
from gateway.auth import KeyStore
from gateway.server import GatewayRunner, ServerLimits
from gateway.settings import load_settings
from gateway.state import AUDIT
from observability.audit_reader import request_records
from observability.tracing import GatewayTracing
from tests.fake_upstream import FakeUpstream

ROOT = Path(__file__).resolve().parent.parent
# The opt-in example override (legal_hold), for the `overrides_dirs` setting.
EXAMPLE_OVERRIDES = str(ROOT / "policies" / "examples" / "overrides")

# The example policy's endpoints, all speaking the OpenAI-compatible protocol
# here so that every rule can be exercised before the other adapters exist.
ENDPOINT_NAMES = (
    "private-gpu",
    "private-gpu-b",
    "anthropic",
    "bedrock",
    "private-embeddings",
    "openai-embeddings",
)
IN_VPC = {
    "private-gpu": True,
    "private-gpu-b": True,
    "anthropic": False,
    "bedrock": False,
    "private-embeddings": True,
    "openai-embeddings": False,
}
PRICING = {
    "private-gpu": (0.0002, 0.0002),
    "private-gpu-b": (0.0002, 0.0002),
    "anthropic": (0.003, 0.015),
    "bedrock": (0.00025, 0.00125),
    "private-embeddings": (0.00001, 0.0),
    "openai-embeddings": (0.00002, 0.0),
}
EMBEDDINGS = frozenset({"private-embeddings", "openai-embeddings"})
GENERATION = "chat, messages, responses"


def registry_yaml(
    upstreams: dict[str, FakeUpstream],
    *,
    first_token_ms: int = 2000,
    scraped: frozenset[str] = frozenset(),
) -> str:
    """`scraped`: endpoints whose fake's GET /metrics is their `metrics_url`."""
    lines = ["endpoints:"]
    for name in ENDPOINT_NAMES:
        up = upstreams[name]
        price_in, price_out = PRICING[name]
        lines += [
            f"  {name}:",
            "    type: openai-compatible",
            f"    base_url: {up.url}",
            f"    model: model-of-{name}",
            f"    in_vpc: {'true' if IN_VPC[name] else 'false'}",
            *(
                [f"    metrics_url: {up.url.removesuffix('/v1')}/metrics"]
                if name in scraped
                else []
            ),
            f"    operations: [{'embeddings' if name in EMBEDDINGS else GENERATION}]",
            f"    auth: {{bearer_token_env: {token_env(name)}}}",
            f"    pricing: {{input_per_1k: {price_in:.6f}, output_per_1k: {price_out:.6f}}}",
            "    timeouts:",
            f"      {{connect_ms: 1000, first_token_ms: {first_token_ms}, total_ms: 10000}}",
        ]
    return "\n".join(lines) + "\n"


def token_env(name: str) -> str:
    """The variable holding the gateway's credential for endpoint `name`."""
    return name.upper().replace("-", "_") + "_TOKEN"


def token_of(name: str) -> str:
    return f"token-for-{name}"


class GuardedTestServer:
    """The app on kamiwaza serve's guarded server (gateway/server.py), on a port the
    OS picks: TestServer's `make_url`/`close`, with the real protocol limits."""

    def __init__(self, app: web.Application, limits: ServerLimits) -> None:
        self.runner = GatewayRunner(app, limits=limits, shutdown_timeout=1.0)
        self.port = 0

    async def start_server(self) -> None:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]

    def make_url(self, path: str) -> URL:
        return URL(f"http://127.0.0.1:{self.port}{path}")

    async def close(self) -> None:
        await self.runner.cleanup()


@dataclass
class Gateway:
    app: web.Application
    server: TestServer | GuardedTestServer
    upstreams: dict[str, FakeUpstream]
    keys: dict[str, str]  # tenant label -> API key
    audit_dir: Path
    workdir: Path
    clients: list[Any] = field(default_factory=list)  # SDK clients to close at teardown

    @property
    def base_url(self) -> str:
        return str(self.server.make_url("/v1"))

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))

    async def audit_records(self) -> list[dict[str, Any]]:
        await self.app[AUDIT].flush()
        return request_records(str(self.audit_dir))

    async def close(self) -> None:
        for sdk in self.clients:
            await sdk.close()
        await self.server.close()

    def upstream_requests(self) -> dict[str, int]:
        return {name: len(up.requests) for name, up in self.upstreams.items()}


async def start_gateway(
    tmp_path: Path,
    fake_upstream: Any,
    *,
    policy: str | None = None,
    opa_url: str | None = None,
    settings_overrides: dict[str, Any] | None = None,
    first_token_ms: int = 2000,
    tracing: GatewayTracing | None = None,
    limits: ServerLimits | None = None,
    environ: dict[str, str] | None = None,
    scraped: frozenset[str] = frozenset(),
) -> Gateway:
    upstreams = {}
    for name in ENDPOINT_NAMES:
        upstreams[name] = await fake_upstream(token=token_of(name), model=f"model-of-{name}")
    workdir = tmp_path / "gw"
    workdir.mkdir(parents=True)
    if policy is None:
        shutil.copy(ROOT / "policies" / "routing.yaml", workdir / "routing.yaml")
    else:
        (workdir / "routing.yaml").write_text(policy)
    (workdir / "endpoints.yaml").write_text(
        registry_yaml(upstreams, first_token_ms=first_token_ms, scraped=scraped)
    )
    store = KeyStore.load(workdir / "keys.json", missing_ok=True)
    keys = {
        "acme": store.create(tenant="enterprise-acme", user="u-17", roles=["analyst"])[1],
        "globex": store.create(tenant="globex", user="u-2", roles=["dev", "admin"])[1],
        "limited": store.create(
            tenant="limited",
            allowed_data_classes=["public", "internal"],
            default_data_class="public",
        )[1],
        "hospital": store.create(tenant="hospital", user="dr-who")[1],
    }
    return await serve_gateway(
        workdir,
        keys=keys,
        environ={token_env(name): token_of(name) for name in ENDPOINT_NAMES} | (environ or {}),
        overrides={
            "opa_url": opa_url,
            "tenant_floors": {"hospital": "pii-restricted"},
            **(settings_overrides or {}),
        },
        upstreams=upstreams,
        tracing=tracing,
        limits=limits,
    )


async def serve_gateway(
    workdir: Path,
    *,
    keys: dict[str, str],
    environ: dict[str, str],
    overrides: dict[str, Any] | None = None,
    upstreams: dict[str, Any] | None = None,
    tracing: GatewayTracing | None = None,
    limits: ServerLimits | None = None,
) -> Gateway:
    """The gateway on `workdir`'s routing.yaml, endpoints.yaml and keys.json (which
    holds `keys`), auditing to `workdir/audit`, on a loopback test server (with
    `limits`: on kamiwaza serve's guarded server)."""
    audit_dir = workdir / "audit"
    settings = load_settings(
        overrides={
            "policy": str(workdir / "routing.yaml"),
            "keys": str(workdir / "keys.json"),
            "audit_dir": str(audit_dir),
            "rego_dir": str(ROOT / "rego"),
            **(overrides or {}),
        },
        environ={},
    )
    app = create_app(settings, environ=environ, tracing=tracing)
    server: TestServer | GuardedTestServer = (
        TestServer(app, host="127.0.0.1") if limits is None else GuardedTestServer(app, limits)
    )
    await server.start_server()
    return Gateway(app, server, upstreams or {}, keys, audit_dir, workdir)
