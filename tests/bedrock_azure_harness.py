"""A gateway (real OPA sidecar) in front of the fake Bedrock, STS and Azure servers.

Like tests/gateway_harness.py (whose :class:`Gateway` it returns), with real
provider types in the registry. One gateway serves a whole test module (an OPA
sidecar takes seconds to start); :meth:`Providers.reset` clears the fakes'
scripts and records between tests. The policy routes by the request label
`target` (`X-Labels: target=<name>`, see :func:`target`):

| target | route | fallback |
|---|---|---|
| bedrock | bedrock (chain credentials, VPC endpoint URL) | |
| bedrock-role | bedrock-role (assumes a role through STS) | |
| azure | azure (api-key) | |
| azure-entra | azure-entra (Entra ID client credentials) | |
| bedrock-then-azure | bedrock | azure |
| azure-then-bedrock | azure | bedrock |

Provider secrets are canaries: tests assert that none appears in any output.
AWS credentials come from botocore's standard chain, which finds the test key
in the environment and nothing else (no shared files, no SSO, never the
instance metadata service).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest

from gateway.auth import KeyStore
from gateway.state import FORWARDER
from tests.fake_azure import FakeAzure
from tests.fake_bedrock import FakeBedrock, FakeSts
from tests.gateway_harness import Gateway, serve_gateway

BEDROCK_MODEL = "anthropic.claude-3-haiku-20240307-v1:0"
ROLE_ARN = "arn:aws:iam::123456789012:role/kamiwaza-bedrock"
AWS_ACCESS_KEY = "AKIAKAMIWAZATEST0001"
AWS_SECRET = "aws-secret-canary-7f3e9b1c2d"
AZURE_KEY = "azure-key-canary-0a1b2c3d4e"
ENTRA_SECRET = "entra-secret-canary-5e6f7a8b"
ENTRA_TENANT = "00000000-0000-0000-0000-00000000abcd"
ENTRA_CLIENT = "11111111-1111-1111-1111-11111111abcd"
CANARIES = (AWS_SECRET, AZURE_KEY, ENTRA_SECRET)

ROUTES = {
    "bedrock": ("bedrock", []),
    "bedrock-role": ("bedrock-role", []),
    "azure": ("azure", []),
    "azure-entra": ("azure-entra", []),
    "bedrock-then-azure": ("bedrock", ["azure"]),
    "azure-then-bedrock": ("azure", ["bedrock"]),
}

AWS_ENV_CLEARED = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_STS",
    "AWS_ENDPOINT_URL_BEDROCK_RUNTIME",
)


def target(name: str) -> dict[str, str]:
    """Headers that route a request by the harness policy."""
    return {"X-Labels": f"target={name}"}


def policy_yaml() -> str:
    lines = ["version: v1", "rules:"]
    for name, (route, fallback) in ROUTES.items():
        lines += [f"  - name: {name}", f"    match: {{labels.target: {name}}}"]
        lines.append(f"    route_to: {route}")
        if fallback:
            lines.append(f"    fallback: [{', '.join(fallback)}]")
    return "\n".join(lines) + "\n"


def registry_yaml(bedrock: FakeBedrock, sts: FakeSts, azure: FakeAzure) -> str:
    timeouts = "    timeouts: {connect_ms: 1000, first_token_ms: 5000, total_ms: 10000}"
    lines = [
        "endpoints:",
        "  bedrock:",
        "    type: bedrock",
        "    region: us-east-1",
        f"    vpc_endpoint_url: {bedrock.url}",
        f"    model: {BEDROCK_MODEL}",
        "    pricing: {input_per_1k: 0.25, output_per_1k: 1.25}",
        timeouts,
        "  bedrock-role:",
        "    type: bedrock",
        "    region: us-east-1",
        f"    vpc_endpoint_url: {bedrock.url}",
        f"    assume_role_arn: {ROLE_ARN}",
        f"    sts_endpoint_url: {sts.url}",
        f"    model: {BEDROCK_MODEL}",
        timeouts,
        "  azure:",
        "    type: azure-openai",
        f"    base_url: {azure.url}",
        "    deployment: gpt-4o",
        '    api_version: "2024-10-21"',
        "    auth: {api_key_env: AZURE_OPENAI_API_KEY}",
        "    pricing: {input_per_1k: 2.5, output_per_1k: 10}",
        timeouts,
        "  azure-entra:",
        "    type: azure-openai",
        f"    base_url: {azure.url}",
        "    deployment: gpt-4o",
        '    api_version: "2024-10-21"',
        "    auth:",
        f"      entra_tenant_id: {ENTRA_TENANT}",
        f"      entra_client_id: {ENTRA_CLIENT}",
        "      entra_client_secret_env: AZURE_CLIENT_SECRET",
        f"      entra_authority: {azure.url}",
        timeouts,
    ]
    return "\n".join(lines) + "\n"


def use_test_aws_identity(mp: pytest.MonkeyPatch, workdir: Path) -> None:
    for name in AWS_ENV_CLEARED:
        mp.delenv(name, raising=False)
    mp.setenv("AWS_ACCESS_KEY_ID", AWS_ACCESS_KEY)
    mp.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
    mp.setenv("AWS_CONFIG_FILE", str(workdir / "no-aws-config"))
    mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(workdir / "no-aws-credentials"))
    mp.setenv("AWS_EC2_METADATA_DISABLED", "true")


@dataclass
class Providers:
    gateway: Gateway
    bedrock: FakeBedrock
    sts: FakeSts
    azure: FakeAzure
    key: str
    seen_records: int = 0

    def reset(self) -> None:
        """Forget what earlier tests scripted and recorded (credentials stay cached)."""
        self.bedrock.queue.clear()
        self.bedrock.requests.clear()
        self.bedrock.rejected.clear()
        self.bedrock.gate.clear()
        self.bedrock.allow(AWS_ACCESS_KEY, AWS_SECRET)
        self.sts.rejected.clear()
        self.azure.queue.clear()
        self.azure.requests.clear()
        self.azure.rejected.clear()
        self.azure.api_key = AZURE_KEY
        forwarder = self.gateway.app[FORWARDER]
        for endpoint in ("bedrock", "bedrock-role", "azure", "azure-entra"):
            forwarder.breaker(endpoint).success()

    def client(self) -> openai.AsyncOpenAI:
        sdk = openai.AsyncOpenAI(base_url=self.gateway.base_url, api_key=self.key, max_retries=0)
        self.gateway.clients.append(sdk)
        return sdk

    async def new_audit_records(self) -> list[dict[str, Any]]:
        """The audit records written since the last call."""
        records = await self.gateway.audit_records()
        fresh = records[self.seen_records :]
        self.seen_records = len(records)
        return fresh


async def start_providers(workdir: Path) -> Providers:
    """Start the fakes and the gateway; the caller has set the AWS environment."""
    bedrock = await FakeBedrock().start()
    bedrock.allow(AWS_ACCESS_KEY, AWS_SECRET)
    sts = await FakeSts(bedrock).start()
    sts.secrets[AWS_ACCESS_KEY] = (AWS_SECRET, None)
    sts.roles.add(ROLE_ARN)
    azure = await FakeAzure(
        api_key=AZURE_KEY, tenant=ENTRA_TENANT, client_id=ENTRA_CLIENT, client_secret=ENTRA_SECRET
    ).start()
    (workdir / "routing.yaml").write_text(policy_yaml())
    (workdir / "endpoints.yaml").write_text(registry_yaml(bedrock, sts, azure))
    store = KeyStore.load(workdir / "keys.json", missing_ok=True)
    key = store.create(tenant="enterprise-acme", user="u-1", roles=["analyst"])[1]
    gateway = await serve_gateway(
        workdir,
        keys={"acme": key},
        environ={"AZURE_OPENAI_API_KEY": AZURE_KEY, "AZURE_CLIENT_SECRET": ENTRA_SECRET},
    )
    return Providers(gateway, bedrock, sts, azure, key)


async def stop_providers(providers: Providers) -> None:
    await providers.gateway.close()
    await providers.bedrock.close()
    await providers.sts.close()
    await providers.azure.close()


def assert_no_canary(*outputs: Any) -> None:
    """No provider secret in any of `outputs` (strings, bytes or JSON-able values)."""
    for output in outputs:
        if isinstance(output, bytes):
            text = output.decode("utf-8", "replace")
        elif isinstance(output, str):
            text = output
        else:
            text = json.dumps(output, default=str)
        for canary in CANARIES:
            assert canary not in text
