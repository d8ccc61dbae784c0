"""`kamiwaza policy diff` and the shadow policy: real traffic recorded through
the gateway, replayed against a candidate in one OPA; the same candidate
shadowing live traffic, its disagreements in audit records, metrics and
`kamiwaza policy shadow-report`; and the engine on generated decisions."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from click.testing import CliRunner
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from gateway.cli import main
from gateway.policy_cli import route_inputs
from gateway.state import OBSERVERS
from observability.metrics import GatewayMetrics
from tests.gateway_harness import ROOT, Gateway, start_gateway
from translator.diff import compare_inputs, compile_pair, render_table, replay, report
from translator.pipeline import check

REGO = str(ROOT / "rego")
MESSAGES = [{"role": "user", "content": "hello"}]

# The example policy changed: cost-capped renamed and widened, confidential data
# kept in the VPC with a SaaS fallback, PII without its second GPU pool.
CANDIDATE = """\
version: v1
rules:
  - name: pii-on-prem
    match:
      data_class: pii-restricted
    route_to: private-gpu
  - name: acme-low-latency
    match:
      tenant: enterprise-acme
      latency_budget_ms: "<400"
    route_to: anthropic
  - name: cheap-to-bedrock
    match:
      cost_cap_per_1k: "<0.005"
    route_to: bedrock
  - name: confidential-on-prem
    match:
      data_class: confidential
    route_to: private-gpu-b
    fallback: [bedrock]
  - default:
      route_to: anthropic
"""

# The base: the example policy without its cost-cap enforcement (health.cost_cap),
# which would refuse the capped requests below that its default cannot meet.
EXAMPLE_BASE = (
    (ROOT / "policies" / "routing.yaml").read_text().replace("cost_cap: enforce", "cost_cap: off")
)

# (tenant key, headers) sent in this order; what the base and candidate decide.
TRAFFIC: list[tuple[str, dict[str, str]]] = [
    ("globex", {}),  # 0: default -> anthropic, both
    ("globex", {"X-Cost-Cap-Per-1k": "0.001"}),  # 1: cost-capped -> cheap-to-bedrock
    ("globex", {"X-Cost-Cap-Per-1k": "0.003"}),  # 2: default/anthropic -> cheap-to-bedrock/bedrock
    ("acme", {"X-Data-Class": "confidential"}),  # 3: default -> confidential-on-prem (+bedrock)
    ("hospital", {}),  # 4: PII by the tenant's floor: loses its fallback
    ("acme", {"X-Latency-Budget-Ms": "300"}),  # 5: acme-low-latency, both
    ("globex", {"X-Cost-Cap-Per-1k": "0.004"}),  # 6: as 2
]


async def send(gw: Gateway, http: aiohttp.ClientSession) -> list[str]:
    """TRAFFIC through the gateway; the request ids, in order."""
    ids = []
    for tenant, headers in TRAFFIC:
        async with http.post(
            gw.url("/v1/route"),
            json={"model": "gpt-4o", "messages": MESSAGES},
            headers={"Authorization": f"Bearer {gw.keys[tenant]}", **headers},
        ) as resp:
            assert resp.status == 200, await resp.text()
            ids.append(resp.headers["X-Request-Id"])
    return ids


def expected_changes(r: list[str]) -> dict[str, Any]:
    """The groups the candidate changes for TRAFFIC sent with request ids `r`."""
    return {
        "decisions": 7,
        "changed": 5,
        "changes": {"endpoint": 3, "rule": 4, "fallback": 2, "deny": 0},
        "rule_changes": [
            {"from": "default", "to": "cheap-to-bedrock", "requests": 2, "examples": [r[2], r[6]]},
            {"from": "cost-capped", "to": "cheap-to-bedrock", "requests": 1, "examples": [r[1]]},
            {"from": "default", "to": "confidential-on-prem", "requests": 1, "examples": [r[3]]},
        ],
        "endpoint_changes": [
            {"from": "anthropic", "to": "bedrock", "requests": 2, "examples": [r[2], r[6]]},
            {"from": "anthropic", "to": "private-gpu-b", "requests": 1, "examples": [r[3]]},
        ],
        "by_tenant": [
            {"tenant": "globex", "requests": 3, "examples": [r[1], r[2], r[6]]},
            {"tenant": "enterprise-acme", "requests": 1, "examples": [r[3]]},
            {"tenant": "hospital", "requests": 1, "examples": [r[4]]},
        ],
        "by_data_class": [
            {"data_class": "internal", "requests": 3, "examples": [r[1], r[2], r[6]]},
            {"data_class": "confidential", "requests": 1, "examples": [r[3]]},
            {"data_class": "pii-restricted", "requests": 1, "examples": [r[4]]},
        ],
        "newly_outside_vpc": [
            {"endpoint": "bedrock", "requests": 3, "examples": [r[2], r[3], r[6]]},
        ],
    }


def revision(policy: str, registry: str) -> str:
    ir = check(policy, registry).ir
    assert ir is not None
    return ir.revision


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def recorded(
    tmp_path: Path, fake_upstream: Any, opa_bin: str, http: aiohttp.ClientSession
) -> tuple[Gateway, list[str]]:
    """Real traffic through a gateway on the example policy, its OPA stopped (so
    every decision-log event is shipped) when the fixture returns."""
    gw = await start_gateway(tmp_path, fake_upstream, policy=EXAMPLE_BASE)
    try:
        ids = await send(gw, http)
    finally:
        await gw.close()
    (gw.workdir / "candidate.yaml").write_text(CANDIDATE)
    return gw, ids


def diff(gw: Gateway, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(
        main,
        [
            "policy", "diff", str(gw.workdir / "candidate.yaml"),
            "--base", str(gw.workdir / "routing.yaml"),
            "--endpoints", str(gw.workdir / "endpoints.yaml"),
            "--rego", REGO, "--audit", str(gw.audit_dir), *args,
        ],
        env={"KAMIWAZA_CONFIG": None},
    )  # fmt: skip
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.integration
async def test_diff_replays_recorded_traffic_against_the_candidate(
    recorded: tuple[Gateway, list[str]],
) -> None:
    gw, r = recorded
    registry = str(gw.workdir / "endpoints.yaml")
    code, out, err = diff(gw, "--format", "json", "--since", "1h")
    assert (code, err) == (0, "")
    doc = json.loads(out)
    window = doc.pop("window")
    assert set(window) == {"since", "until"}
    assert doc == {
        "base": {
            "policy": str(gw.workdir / "routing.yaml"),
            "revision": revision(str(gw.workdir / "routing.yaml"), registry),
        },
        "candidate": {
            "policy": str(gw.workdir / "candidate.yaml"),
            "revision": revision(str(gw.workdir / "candidate.yaml"), registry),
        },
        "source": str(gw.audit_dir),
        **expected_changes(r),
    }

    code, out, err = diff(gw, "--since", "2020-01-01", "--until", "2100-01-01T00:00:00Z")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[:4] == [
        "policy diff: 5 of 7 request(s) would change",
        f"  base:      {gw.workdir / 'routing.yaml'} ({doc['base']['revision']})",
        f"  candidate: {gw.workdir / 'candidate.yaml'} ({doc['candidate']['revision']})",
        f"  source:    {gw.audit_dir} from 2020-01-01T00:00:00Z to 2100-01-01T00:00:00Z",
    ]
    assert lines[4:] == [
        "  endpoint 3, rule 4, fallback 2",
        "",
        "rule -> rule",
        "  rule                             requests  examples",
        f"  default -> cheap-to-bedrock             2  {r[2]}, {r[6]}",
        f"  cost-capped -> cheap-to-bedrock         1  {r[1]}",
        f"  default -> confidential-on-prem         1  {r[3]}",
        "",
        "endpoint -> endpoint",
        "  endpoint                    requests  examples",
        f"  anthropic -> bedrock               2  {r[2]}, {r[6]}",
        f"  anthropic -> private-gpu-b         1  {r[3]}",
        "",
        "by tenant",
        "  tenant           requests  examples",
        f"  globex                  3  {r[1]}, {r[2]}, {r[6]}",
        f"  enterprise-acme         1  {r[3]}",
        f"  hospital                1  {r[4]}",
        "",
        "by data class",
        "  data class      requests  examples",
        f"  internal               3  {r[1]}, {r[2]}, {r[6]}",
        f"  confidential           1  {r[3]}",
        f"  pii-restricted         1  {r[4]}",
        "",
        "NEWLY OUTSIDE THE VPC",
        "  endpoint  requests  examples",
        f"  bedrock          3  {r[2]}, {r[3]}, {r[6]}",
    ]

    # CI: exit 1 when something changes, 0 when nothing does.
    code, _, _ = diff(gw, "--fail-on-change", "--format", "json")
    assert code == 1
    shutil.copy(gw.workdir / "routing.yaml", gw.workdir / "candidate.yaml")
    code, out, err = diff(gw, "--fail-on-change")
    assert (code, err) == (0, "")
    assert out.splitlines()[0] == "policy diff: 0 of 7 request(s) would change"
    # A window with no traffic replays nothing.
    code, out, _ = diff(gw, "--since", "30d", "--until", "7d", "--format", "json")
    assert code == 0
    assert json.loads(out)["decisions"] == 0


@pytest.mark.integration
async def test_diff_refuses_a_candidate_with_errors(recorded: tuple[Gateway, list[str]]) -> None:
    gw, _ = recorded
    (gw.workdir / "candidate.yaml").write_text(
        "version: v1\nrules:\n  - default:\n      route_to: nowhere\n"
    )
    code, out, err = diff(gw)
    assert code == 1
    assert out == ""
    assert "candidate.yaml:4:17: error[E010]: 'route_to' names unknown endpoint 'nowhere'" in err
    assert err.endswith("error: the policies must compile before they can be compared\n")


@pytest.mark.integration
async def test_shadow_policy_disagreements_reach_audit_metrics_and_the_report(
    tmp_path: Path, fake_upstream: Any, opa_bin: str, http: aiohttp.ClientSession
) -> None:
    candidate = tmp_path / "candidate.yaml"
    candidate.write_text(CANDIDATE)
    gw = await start_gateway(
        tmp_path,
        fake_upstream,
        policy=EXAMPLE_BASE,
        settings_overrides={"shadow_policy": str(candidate)},
    )
    reader = InMemoryMetricReader()
    metrics = GatewayMetrics([reader])
    gw.app[OBSERVERS].append(metrics.observe)  # beside the app's own (disabled) metrics
    try:
        r = await send(gw, http)
        records = await gw.audit_records()
    finally:
        await gw.close()
    registry = str(gw.workdir / "endpoints.yaml")
    shadow_rev = revision(str(candidate), registry)
    # Routing is the live policy's.
    assert [rec["endpoint"] for rec in records] == [
        "anthropic", "bedrock", "anthropic", "anthropic", "private-gpu", "anthropic", "anthropic",
    ]  # fmt: skip

    def rule(index: int, name: str, line: int) -> dict[str, Any]:
        return {"index": index, "name": name, "source": f"{candidate}:{line}"}

    assert {rec["request_id"]: rec.get("shadow") for rec in records} == {
        r[0]: None,
        r[1]: {
            "revision": shadow_rev,
            "route_to": "bedrock",
            "rule": rule(2, "cheap-to-bedrock", 12),
        },
        r[2]: {
            "revision": shadow_rev,
            "route_to": "bedrock",
            "rule": rule(2, "cheap-to-bedrock", 12),
        },
        r[3]: {
            "revision": shadow_rev,
            "route_to": "private-gpu-b",
            "rule": rule(3, "confidential-on-prem", 16),
        },
        r[4]: None,  # the same endpoint and rule: only the fallback differs
        r[5]: None,
        r[6]: {
            "revision": shadow_rev,
            "route_to": "bedrock",
            "rule": rule(2, "cheap-to-bedrock", 12),
        },
    }
    assert "shadow" not in records[0]  # agreeing records carry no shadow field at all

    data = reader.get_metrics_data()
    assert data is not None
    points = [
        (dict(p.attributes or {}), p.value)
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == "kamiwaza.gateway.shadow.disagreements"
        for p in m.data.data_points
    ]
    metrics.shutdown()
    assert sorted(points, key=lambda p: sorted(p[0].items())) == [
        ({"live_rule": "cost-capped", "shadow_rule": "cheap-to-bedrock"}, 1),
        ({"live_rule": "default", "shadow_rule": "cheap-to-bedrock"}, 2),
        ({"live_rule": "default", "shadow_rule": "confidential-on-prem"}, 1),
    ]

    result = CliRunner().invoke(
        main,
        [
            "policy", "shadow-report", "--audit", str(gw.audit_dir), "--format", "json",
            "--config", str(write_config(gw)),
        ],
    )  # fmt: skip
    assert (result.exit_code, result.stderr) == (0, "")
    doc = json.loads(result.stdout)
    doc.pop("window")
    expected = expected_changes(r)
    # Records keep the shadow's endpoint and rule, not its fallbacks: the PII
    # request (a fallback change only) is not a disagreement.
    assert doc == {
        "source": str(gw.audit_dir),
        "shadow_revisions": [{"revision": shadow_rev, "disagreements": 4}],
        "decisions": 7,
        "changed": 4,
        "changes": {"endpoint": 3, "rule": 4, "fallback": 0, "deny": 0},
        "rule_changes": expected["rule_changes"],
        "endpoint_changes": expected["endpoint_changes"],
        "by_tenant": [
            {"tenant": "globex", "requests": 3, "examples": [r[1], r[2], r[6]]},
            {"tenant": "enterprise-acme", "requests": 1, "examples": [r[3]]},
        ],
        "by_data_class": [
            {"data_class": "internal", "requests": 3, "examples": [r[1], r[2], r[6]]},
            {"data_class": "confidential", "requests": 1, "examples": [r[3]]},
        ],
        "newly_outside_vpc": [
            {"endpoint": "bedrock", "requests": 2, "examples": [r[2], r[6]]},
        ],
    }


def write_config(gw: Gateway) -> Path:
    path = gw.workdir / "config.yaml"
    path.write_text(
        f"policy: {gw.workdir / 'routing.yaml'}\nendpoints: {gw.workdir / 'endpoints.yaml'}\n"
    )
    return path


# -- the engine on generated decisions ---------------------------------------------

REGISTRY = """\
endpoints:
  gpu: {type: openai-compatible, base_url: "http://127.0.0.1:9001/v1", in_vpc: true}
  gpu-b: {type: openai-compatible, base_url: "http://127.0.0.1:9002/v1", in_vpc: true}
  saas: {type: anthropic}
  cheap: {type: bedrock, region: us-east-1}
"""
BASE = """\
version: v1
rules:
  - name: pii
    match: {data_class: pii-restricted}
    route_to: gpu
    fallback: [gpu-b]
  - name: analysts
    match: {user_role: analyst}
    route_to: saas
  - default:
      route_to: gpu
"""
# pii to SaaS (the guard refuses it: a deny), analysts to the cheap endpoint,
# other confidential requests to the second GPU pool by a new rule.
GENERATED_CANDIDATE = """\
version: v1
rules:
  - name: pii
    match: {data_class: pii-restricted}
    route_to: saas
  - name: analysts
    match: {user_role: analyst}
    route_to: cheap
    fallback: [gpu]
  - name: confidential-stays
    match: {data_class: confidential}
    route_to: gpu-b
  - default:
      route_to: gpu
"""


def generated_inputs(n: int) -> Iterator[dict[str, Any]]:
    """Inputs as the gateway builds them, cycling tenants, classes and roles."""
    tenants = ("acme", "globex", "initech")
    classes = ("internal", "pii-restricted", "confidential", "public")
    roles = (["analyst"], ["dev"], [])
    for i in range(n):
        yield {
            "tenant": tenants[i // 2 % 3],
            "user": {"roles": roles[i % 3 if i % 4 else 2]},
            "data_class": classes[i % 4],
            "request": {"id": f"req-{i:05d}", "path": "/v1/route", "stream": False},
        }


@pytest.mark.integration
def test_report_on_generated_decisions(
    tmp_path: Path, opa_bin: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("endpoints.yaml").write_text(REGISTRY)
    Path("base.yaml").write_text(BASE)
    Path("candidate.yaml").write_text(GENERATED_CANDIDATE)
    pair = compile_pair("base.yaml", "candidate.yaml")
    inputs = list(generated_inputs(24))
    decisions = replay(pair, [REGO], inputs)
    # Whole decisions: the base's with its override field, the candidate's.
    assert decisions[1] == (
        {
            "route_to": "gpu",
            "fallback": ["gpu-b"],
            "rule": {"index": 0, "name": "pii", "source": "base.yaml:3"},
            "overridden_by": None,
            "deny": [],
            "revision": pair.base.ir.revision if pair.base.ir else None,
        },
        {
            "route_to": None,
            "fallback": [],
            "rule": {"index": 0, "name": "pii", "source": "candidate.yaml:3"},
            "overridden_by": None,
            "deny": [
                "guard in-vpc: pii-restricted data may only reach an endpoint with "
                'in_vpc: true; "saas" is outside the VPC'
            ],
            "revision": pair.candidate.ir.revision if pair.candidate.ir else None,
        },
    )
    doc = report(compare_inputs(inputs, decisions), pair.in_vpc, examples=2)
    # Input i has class i%4 (1: pii), tenant i//2%3, the analyst role when
    # i%3 == 0 and i%4 != 0. pii (1, 5, 9, 13, 17, 21): gpu -> denied, fallback
    # [gpu-b] -> [], a deny; analysts not pii (3, 6, 15, 18): saas -> cheap,
    # fallback [] -> [gpu]; other confidential (2, 10, 14, 22): default/gpu ->
    # confidential-stays/gpu-b.
    assert doc == {
        "decisions": 24,
        "changed": 14,
        "changes": {"endpoint": 14, "rule": 4, "fallback": 10, "deny": 6},
        "rule_changes": [
            {
                "from": "default",
                "to": "confidential-stays",
                "requests": 4,
                "examples": ["req-00002", "req-00010"],
            },
        ],
        "endpoint_changes": [
            {"from": "gpu", "to": None, "requests": 6, "examples": ["req-00001", "req-00005"]},
            {"from": "gpu", "to": "gpu-b", "requests": 4, "examples": ["req-00002", "req-00010"]},
            {"from": "saas", "to": "cheap", "requests": 4, "examples": ["req-00003", "req-00006"]},
        ],
        "by_tenant": [
            {"tenant": "globex", "requests": 6, "examples": ["req-00002", "req-00003"]},
            {"tenant": "acme", "requests": 4, "examples": ["req-00001", "req-00006"]},
            {"tenant": "initech", "requests": 4, "examples": ["req-00005", "req-00010"]},
        ],
        "by_data_class": [
            {"data_class": "confidential", "requests": 6, "examples": ["req-00002", "req-00006"]},
            {"data_class": "pii-restricted", "requests": 6, "examples": ["req-00001", "req-00005"]},
            {"data_class": "public", "requests": 2, "examples": ["req-00003", "req-00015"]},
        ],
        "newly_outside_vpc": [
            {"endpoint": "cheap", "requests": 4, "examples": ["req-00003", "req-00006"]},
        ],
    }
    table = render_table(doc).splitlines()
    assert table[:2] == [
        "policy diff: 14 of 24 request(s) would change",
        "  endpoint 14, rule 4, fallback 10, deny 6",
    ]
    assert table[table.index("endpoint -> endpoint") :][:5] == [
        "endpoint -> endpoint",
        "  endpoint         requests  examples",
        "  gpu -> (denied)         6  req-00001, req-00005",
        "  gpu -> gpu-b            4  req-00002, req-00010",
        "  saas -> cheap           4  req-00003, req-00006",
    ]


def test_only_routing_decisions_of_real_requests_are_replayed() -> None:
    routed = {"tenant": "a", "request": {"id": "req-1"}}
    events = [
        {"path": "kamiwaza/route/decision", "input": routed},
        {"path": "kamiwaza/guards/refusals", "input": {"tenant": "a"}},  # GET /v1/models
        {"path": "kamiwaza/route/decision", "input": {"request": {"id": "dry-run-0a"}}},
        {"path": "kamiwaza/route/decision"},  # no input logged
    ]
    assert route_inputs(events) == [routed]


def test_the_shadow_field_is_parsed_and_a_malformed_one_never_fails_a_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from gateway.policy import ShadowDecision, parse_decision

    caplog.set_level(logging.WARNING)
    live = {
        "route_to": "gpu",
        "fallback": [],
        "rule": {"index": 0, "name": "a", "source": "p.yaml:3"},
        "deny": [],
        "revision": "sha256:live",
    }
    shadow = {
        "revision": "sha256:cand",
        "route_to": None,
        "fallback": [],
        "rule": {"index": 1, "name": "b", "source": "c.yaml:7"},
        "deny": ["no route: ..."],
    }
    decision = parse_decision({**live, "shadow": shadow}, "d-1", 0.5)
    assert decision.shadow == ShadowDecision(
        "sha256:cand", None, (), {"index": 1, "name": "b", "source": "c.yaml:7"}, ("no route: ...",)
    )
    assert decision.shadow_disagreement() == {
        "revision": "sha256:cand",
        "route_to": None,
        "rule": {"index": 1, "name": "b", "source": "c.yaml:7"},
    }
    same = parse_decision(
        {**live, "shadow": {**shadow, "route_to": "gpu", "rule": live["rule"]}}, None, 0
    )
    assert same.shadow is not None
    assert same.shadow_disagreement() is None
    assert parse_decision(live, None, 0).shadow is None
    for bad in (
        {**shadow, "route_to": 7},
        {**shadow, "fallback": "gpu"},
        {**shadow, "rule": "b"},
        [],
    ):
        decision = parse_decision({**live, "shadow": bad}, None, 0)
        assert (decision.route_to, decision.shadow) == ("gpu", None)
    assert caplog.text.count("OPA returned a malformed shadow decision") == 4
