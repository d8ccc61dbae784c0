"""A running gateway in front of the fake Anthropic and Vertex AI servers.

Like tests/gateway_harness.py (whose :class:`Gateway` it returns): a real OPA
sidecar, the policy and registry written to a work directory, a keys file, an
audit directory. Here the registry holds real provider types (`anthropic`,
`vertex`) pointed at the fakes, and the policy routes by the client's model so
that each test picks its provider, or a failover pair, by naming it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gateway.auth import KeyStore
from tests.fake_anthropic import FakeAnthropic
from tests.fake_vertex import FakeVertex, ServiceAccount
from tests.gateway_harness import Gateway, serve_gateway

ANTHROPIC_KEY = "sk-ant-canary-9f8e7d6c5b4a"  # planted: must never reach a log or a client
PROJECT = "test-project"
LOCATION = "us-central1"
ANTHROPIC_MODEL = "claude-sonnet-4-5"
LEGACY_MODEL = "claude-3-5-haiku"
GEMINI_MODEL = "gemini-2.5-flash"
VERTEX_CLAUDE_MODEL = "claude-sonnet-4-5@20250929"

# The client's model names the endpoint (or the failover pair) to use.
POLICY = """\
version: v1
rules:
  - name: anthropic
    match: {model: anthropic}
    route_to: anthropic
  - name: anthropic-legacy
    match: {model: anthropic-legacy}
    route_to: anthropic-legacy
  - name: vertex-gemini
    match: {model: vertex-gemini}
    route_to: vertex-gemini
  - name: vertex-claude
    match: {model: vertex-claude}
    route_to: vertex-claude
  - name: anthropic-then-gemini
    match: {model: anthropic-then-gemini}
    route_to: anthropic
    fallback: [vertex-gemini]
  - name: gemini-then-anthropic
    match: {model: gemini-then-anthropic}
    route_to: vertex-gemini
    fallback: [anthropic]
  - name: vertex-claude-then-anthropic
    match: {model: vertex-claude-then-anthropic}
    route_to: vertex-claude
    fallback: [anthropic]
  - name: untrusted-then-anthropic
    match: {model: untrusted-then-anthropic}
    route_to: vertex-untrusted
    fallback: [anthropic]
  - default:
      route_to: anthropic
"""


@dataclass(frozen=True)
class Providers:
    anthropic: FakeAnthropic
    vertex: FakeVertex
    account: ServiceAccount  # trusted by the fake token endpoint
    untrusted: ServiceAccount  # a key the fake token endpoint does not know


def registry_yaml(providers: Providers, key_file: Path) -> str:
    anthropic, vertex = providers.anthropic, providers.vertex
    timeouts = "{connect_ms: 1000, first_token_ms: 5000, total_ms: 10000}"
    return f"""\
endpoints:
  anthropic:
    type: anthropic
    base_url: {anthropic.url}
    model: {ANTHROPIC_MODEL}
    max_tokens_default: 1000
    auth: {{api_key_env: ANTHROPIC_API_KEY}}
    pricing: {{input_per_1k: 3.0, output_per_1k: 15.0}}
    timeouts: {timeouts}
  anthropic-legacy:
    type: anthropic
    anthropic_version: "2023-06-01"
    base_url: {anthropic.url}/v1
    model: {LEGACY_MODEL}
    auth: {{api_key_file: {key_file}}}
    timeouts: {timeouts}
  vertex-gemini:
    type: vertex
    project: {PROJECT}
    location: {LOCATION}
    publisher: google
    base_url: {vertex.url}
    model: {GEMINI_MODEL}
    auth: {{service_account_file: {providers.account.path}}}
    pricing: {{input_per_1k: 1.0, output_per_1k: 2.0}}
    timeouts: {timeouts}
  vertex-claude:
    type: vertex
    project: {PROJECT}
    location: {LOCATION}
    base_url: {vertex.url}/v1
    model: {VERTEX_CLAUDE_MODEL}
    auth: {{service_account_env: VERTEX_SERVICE_ACCOUNT}}
    timeouts: {timeouts}
  vertex-untrusted:
    type: vertex
    project: {PROJECT}
    location: {LOCATION}
    base_url: {vertex.url}
    model: {GEMINI_MODEL}
    auth: {{service_account_file: {providers.untrusted.path}}}
    timeouts: {timeouts}
"""


async def start_provider_gateway(tmp_path: Path, providers: Providers) -> Gateway:
    workdir = tmp_path / "gw"
    workdir.mkdir()
    key_file = workdir / "anthropic-key"
    key_file.write_text(ANTHROPIC_KEY + "\n")
    (workdir / "routing.yaml").write_text(POLICY)
    (workdir / "endpoints.yaml").write_text(registry_yaml(providers, key_file))
    store = KeyStore.load(workdir / "keys.json", missing_ok=True)
    keys = {"acme": store.create(tenant="enterprise-acme", user="u-17", roles=["analyst"])[1]}
    return await serve_gateway(
        workdir,
        keys=keys,
        environ={
            "ANTHROPIC_API_KEY": ANTHROPIC_KEY,
            "VERTEX_SERVICE_ACCOUNT": providers.account.path.read_text(),
        },
        overrides={
            # Error tests fail endpoints on purpose, many times in a row.
            "breaker_failures": 1000,
            # Generous: these tests are about providers, not OPA under a busy machine.
            "opa_timeout_ms": 2000,
        },
    )
