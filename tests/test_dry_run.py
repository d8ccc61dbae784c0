"""`kamiwaza route --dry-run` and `POST /v1/route/explain`: the gateway's own
authenticator, metadata reader, OPA decision, guards and forwarder state for one
request, nothing forwarded. Full outputs for a routed request, one an override
denies and one the guards refuse."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from click.testing import CliRunner

from gateway.auth import KeyStore
from gateway.cli import main
from gateway.state import FORWARDER
from tests.gateway_harness import EXAMPLE_OVERRIDES, ROOT, Gateway, serve_gateway

POLICY = """\
version: v1
rules:
  - name: acme-pii-to-saas
    match:
      tenant: enterprise-acme
      data_class: pii-restricted
    route_to: anthropic
  - name: acme-low-latency
    match:
      tenant: enterprise-acme
      latency_budget_ms: "<400"
    route_to: anthropic
    fallback: [bedrock, private-gpu]
  - default:
      route_to: private-gpu
"""
REGISTRY = """\
endpoints:
  private-gpu: {type: openai-compatible, base_url: "http://127.0.0.1:9/v1", in_vpc: true,
                auth: {bearer_token_env: GPU_TOKEN}}
  anthropic: {type: openai-compatible, base_url: "http://127.0.0.1:9/v1",
              auth: {bearer_token_env: SAAS_TOKEN}}
  bedrock: {type: openai-compatible, base_url: "http://127.0.0.1:9/v1",
            auth: {bearer_token_env: BEDROCK_TOKEN}}
"""
# BEDROCK_TOKEN is not set: that endpoint is unavailable.
ENVIRON = {"GPU_TOKEN": "gpu-secret", "SAAS_TOKEN": "saas-secret"}
BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello"}]}


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict[str, str]]:
    """Policy, registry, keys and a config enabling the example override; the cwd."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "routing.yaml").write_text(POLICY)
    (tmp_path / "endpoints.yaml").write_text(REGISTRY)
    store = KeyStore.load(tmp_path / "keys.json", missing_ok=True)
    keys = {
        "acme": store.create(tenant="enterprise-acme", user="u-17", roles=["analyst"])[1],
        "globex": store.create(tenant="globex", user="u-2", roles=["dev"])[1],
        "admin": store.create(tenant="platform", user="ops", roles=["admin"])[1],
    }
    (tmp_path / "config.yaml").write_text(
        "policy: routing.yaml\nkeys: keys.json\n"
        f"rego_dir: {ROOT / 'rego'}\noverrides_dirs: [{EXAMPLE_OVERRIDES}]\n"
    )
    return tmp_path, keys


def key_id(key: str) -> str:
    return key.split("_")[1]


def dry_run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(
        main,
        ["route", "--dry-run", "--config", "config.yaml", "--data", json.dumps(BODY), *args],
        env={**ENVIRON, "KAMIWAZA_CONFIG": None},
    )
    return result.exit_code, result.stdout, result.stderr


def revision() -> str:
    from translator.pipeline import check

    ir = check("routing.yaml").ir
    assert ir is not None
    return ir.revision


def opa_input_lines(out: str) -> tuple[list[str], str]:
    """The table with the random dry-run request id replaced, and that id."""
    (rid,) = [w.strip('",') for w in out.split() if w.startswith('"dry-run-')]
    return out.replace(rid, "dry-run-ID").splitlines(), rid


@pytest.mark.integration
def test_dry_run_of_a_routed_request(workdir: tuple[Path, dict[str, str]], opa_bin: str) -> None:
    _, keys = workdir
    code, out, err = dry_run("--key", keys["acme"], "-H", "X-Latency-Budget-Ms: 300")
    assert (code, err) == (0, "")
    lines, rid = opa_input_lines(out)
    assert rid.startswith("dry-run-") and len(rid) == len("dry-run-") + 32
    assert lines == [
        "dry run of POST /v1/chat/completions (nothing is forwarded)",
        "",
        "identity: tenant enterprise-acme, user u-17, roles analyst, api_key "
        + key_id(keys["acme"]),
        "  may send: any data class; key default: (none)",
        "metadata: data class internal, latency budget 300, cost cap (absent), labels (none)",
        "",
        "OPA input:",
        "  {",
        '    "tenant": "enterprise-acme",',
        '    "user": {',
        '      "roles": [',
        '        "analyst"',
        "      ],",
        '      "id": "u-17"',
        "    },",
        '    "data_class": "internal",',
        '    "operation": "chat",',
        '    "request": {',
        '      "id": "dry-run-ID",',
        '      "path": "/v1/chat/completions",',
        '      "stream": false',
        "    },",
        '    "latency_budget_ms": 300,',
        '    "model": "gpt-4o"',
        "  }",
        "",
        "decision: route to anthropic (fallback: bedrock, private-gpu)",
        "  rule: #1 acme-low-latency (routing.yaml:8)",
        '    ok   tenant == "enterprise-acme"   actual: "enterprise-acme"',
        "    ok   latency_budget_ms < 400   actual: 300",
        f"  policy revision: {revision()}",
        "guards refuse: nothing",
        "",
        "endpoints, in the order they would be tried:",
        "  1. anthropic: try",
        "  2. bedrock: skip (unavailable: endpoint 'bedrock': environment variable "
        "BEDROCK_TOKEN (auth.bearer_token_env) is not set)",
        "  3. private-gpu: try",
        "",
        "outcome: forwarded to anthropic",
    ]


@pytest.mark.integration
def test_dry_run_of_a_request_an_override_denies(
    workdir: tuple[Path, dict[str, str]], opa_bin: str
) -> None:
    _, keys = workdir
    code, out, err = dry_run(
        "-H", f"Authorization: Bearer {keys['globex']}", "-H", "X-Labels: export_control=embargoed"
    )
    assert (code, err) == (1, "")
    lines, _ = opa_input_lines(out)
    reason = (
        "override legal_hold: export-controlled request: data labelled "
        "export_control=embargoed may not be processed"
    )
    assert lines == [
        "dry run of POST /v1/chat/completions (nothing is forwarded)",
        "",
        f"identity: tenant globex, user u-2, roles dev, api_key {key_id(keys['globex'])}",
        "  may send: any data class; key default: (none)",
        "metadata: data class internal, latency budget (absent), cost cap (absent), "
        "labels export_control=embargoed",
        "",
        "OPA input:",
        "  {",
        '    "tenant": "globex",',
        '    "user": {',
        '      "roles": [',
        '        "dev"',
        "      ],",
        '      "id": "u-2"',
        "    },",
        '    "data_class": "internal",',
        '    "operation": "chat",',
        '    "request": {',
        '      "id": "dry-run-ID",',
        '      "path": "/v1/chat/completions",',
        '      "stream": false',
        "    },",
        '    "model": "gpt-4o",',
        '    "labels": {',
        '      "export_control": "embargoed"',
        "    }",
        "  }",
        "",
        "decision: DENY",
        f"  - {reason}",
        "  rule: #2 default (routing.yaml:14)",
        f"  policy revision: {revision()}",
        "guards refuse: nothing",
        "",
        f"outcome: 403 policy_denied: request denied by policy: {reason}",
    ]


@pytest.mark.integration
def test_dry_run_of_a_request_the_guards_refuse(
    workdir: tuple[Path, dict[str, str]], opa_bin: str
) -> None:
    _, keys = workdir
    code, out, err = dry_run("--key", keys["acme"], "-H", "X-Data-Class: pii-restricted")
    assert (code, err) == (1, "")
    lines, _ = opa_input_lines(out)
    refused = (
        "guard in-vpc: pii-restricted data may only reach an endpoint with in_vpc: true; "
        '"{}" is outside the VPC'
    )
    assert lines == [
        "dry run of POST /v1/chat/completions (nothing is forwarded)",
        "",
        "identity: tenant enterprise-acme, user u-17, roles analyst, api_key "
        + key_id(keys["acme"]),
        "  may send: any data class; key default: (none)",
        "metadata: data class pii-restricted, latency budget (absent), cost cap (absent), "
        "labels (none)",
        "",
        "OPA input:",
        "  {",
        '    "tenant": "enterprise-acme",',
        '    "user": {',
        '      "roles": [',
        '        "analyst"',
        "      ],",
        '      "id": "u-17"',
        "    },",
        '    "data_class": "pii-restricted",',
        '    "operation": "chat",',
        '    "request": {',
        '      "id": "dry-run-ID",',
        '      "path": "/v1/chat/completions",',
        '      "stream": false',
        "    },",
        '    "model": "gpt-4o"',
        "  }",
        "",
        "decision: DENY",
        f"  - {refused.format('anthropic')}",
        "  rule: #0 acme-pii-to-saas (routing.yaml:3)",
        '    ok   tenant == "enterprise-acme"   actual: "enterprise-acme"',
        '    ok   data_class == "pii-restricted"   actual: "pii-restricted"',
        f"  policy revision: {revision()}",
        "guards refuse:",
        f"  anthropic: {refused.format('anthropic')}",
        f"  bedrock: {refused.format('bedrock')}",
        "",
        f"outcome: 403 policy_denied: request denied by policy: {refused.format('anthropic')}",
    ]


@pytest.mark.integration
def test_dry_run_usage_errors(workdir: tuple[Path, dict[str, str]]) -> None:
    result = CliRunner().invoke(main, ["route", "--data", "{}"])
    assert result.exit_code == 2
    assert "Missing option '--dry-run'" in result.output
    result = CliRunner().invoke(main, ["route", "--dry-run", "--data", "{nope"])
    assert result.exit_code == 2
    assert "Invalid value for --data: not valid JSON" in result.output
    result = CliRunner().invoke(main, ["route", "--dry-run", "--data", "{}", "-H", "nocolon"])
    assert result.exit_code == 2
    assert "'nocolon': expected 'Name: value'" in result.output


# -- POST /v1/route/explain --------------------------------------------------------


@pytest.fixture
async def gateway(
    workdir: tuple[Path, dict[str, str]], opa_bin: str
) -> AsyncIterator[tuple[Gateway, dict[str, str]]]:
    path, keys = workdir
    gw = await serve_gateway(
        path,
        keys=keys,
        environ=ENVIRON,
        overrides={
            "policy": "routing.yaml",
            "overrides_dirs": [EXAMPLE_OVERRIDES],
            "allow_unconfigured_endpoints": True,
        },
    )
    yield gw, keys
    await gw.close()


async def explain(gw: Gateway, key: str, spec: Any) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            gw.url("/v1/route/explain"), json=spec, headers={"Authorization": f"Bearer {key}"}
        ) as resp,
    ):
        return resp.status, await resp.json()


@pytest.mark.integration
async def test_route_explain_returns_the_dry_run_as_json(
    gateway: tuple[Gateway, dict[str, str]],
) -> None:
    gw, keys = gateway
    breaker = gw.app[FORWARDER].breaker("private-gpu")
    for _ in range(5):
        breaker.failure()  # as five failed requests would
    status, doc = await explain(
        gw,
        keys["admin"],
        {
            "headers": {"authorization": f"Bearer {keys['acme']}", "x-latency-budget-ms": "300"},
            "body": BODY,
            "path": "/v1/route",
        },
    )
    assert status == 200
    rid = doc["input"]["request"]["id"]
    assert rid.startswith("dry-run-")
    rule = {"index": 1, "name": "acme-low-latency", "source": "routing.yaml:8"}
    assert doc == {
        "dry_run": True,
        "path": "/v1/route",
        "identity": {
            "tenant": "enterprise-acme",
            "user": "u-17",
            "roles": ["analyst"],
            "key_id": key_id(keys["acme"]),
            "method": "api_key",
            "allowed_data_classes": None,
            "default_data_class": None,
        },
        "metadata": {
            "data_class": "internal",
            "latency_budget_ms": 300,
            "cost_cap_per_1k": None,
            "labels": {},
        },
        "input": {
            "tenant": "enterprise-acme",
            "user": {"roles": ["analyst"], "id": "u-17"},
            "data_class": "internal",
            "operation": "chat",
            "request": {"id": rid, "path": "/v1/route", "stream": False},
            "latency_budget_ms": 300,
            "model": "gpt-4o",
        },
        "decision": {
            "route_to": "anthropic",
            "fallback": ["bedrock", "private-gpu"],
            "rule": rule,
            "conditions": [
                {
                    "field": "tenant",
                    "op": "==",
                    "expected": "enterprise-acme",
                    "actual": "enterprise-acme",
                    "result": True,
                },
                {
                    "field": "latency_budget_ms",
                    "op": "<",
                    "expected": 400,
                    "actual": 300,
                    "result": True,
                },
            ],
            "overridden_by": None,
            "deny": [],
            "revision": revision(),
        },
        "guard_refusals": {},
        "endpoints": [
            {"endpoint": "anthropic", "state": "try", "reason": None},
            {
                "endpoint": "bedrock",
                "state": "skip",
                "reason": "unavailable: endpoint 'bedrock': environment variable "
                "BEDROCK_TOKEN (auth.bearer_token_env) is not set",
            },
            {"endpoint": "private-gpu", "state": "skip", "reason": "circuit open (trial in 30 s)"},
        ],
        "outcome": {"status": 200, "endpoint": "anthropic", "error": None},
    }
    # Nothing was forwarded, and a dry run is no model request: no audit record.
    assert await gw.audit_records() == []

    # The explained request's own credential decides who it is.
    status, doc = await explain(gw, keys["admin"], {"headers": {}, "body": BODY})
    assert status == 200
    assert doc == {
        "dry_run": True,
        "path": "/v1/chat/completions",
        "outcome": {
            "status": 401,
            "endpoint": None,
            "error": {
                "message": "missing credential; send 'Authorization: Bearer <API key or JWT>'",
                "type": "authentication_error",
                "code": "missing_credential",
            },
        },
    }


@pytest.mark.integration
async def test_route_explain_needs_an_admin_and_a_well_formed_body(
    gateway: tuple[Gateway, dict[str, str]],
) -> None:
    gw, keys = gateway
    status, doc = await explain(gw, keys["acme"], {"headers": {}, "body": BODY})
    assert (status, doc) == (
        403,
        {
            "error": {
                "message": "explaining a route needs a credential with the role 'admin'",
                "type": "permission_error",
                "code": "admin_required",
            }
        },
    )
    for spec, message in [
        ([1], 'expected {"headers": {...}, "body": {...}, "path": ...}: the request to explain, '
         "as the client would send it"),
        ({"body": BODY, "extra": 1}, "unknown field(s): extra"),
        ({"body": BODY, "headers": {"a": 1}}, "'headers' must be an object of strings"),
        ({"body": BODY, "path": "/v1/models"},
         "'path' must be one of /v1/chat/completions, /v1/embeddings, /v1/messages, "
         "/v1/messages/count_tokens, /v1/responses, /v1/route"),
    ]:  # fmt: skip
        status, doc = await explain(gw, keys["admin"], spec)
        assert (status, doc) == (
            400,
            {
                "error": {
                    "message": message,
                    "type": "invalid_request_error",
                    "code": "invalid_body",
                }
            },
        ), spec
