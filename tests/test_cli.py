"""`kamiwaza policy ...` end to end: outputs and exit codes (0 ok, 1 policy, 2 usage)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from gateway.cli import main
from translator.pipeline import check

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "policies" / "routing.yaml"
EXAMPLE_OVERRIDES = ROOT / "policies" / "examples" / "overrides"


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the example policy and registry, as the working directory."""
    shutil.copy(EXAMPLE, tmp_path / "routing.yaml")
    shutil.copy(ROOT / "policies" / "endpoints.yaml", tmp_path / "endpoints.yaml")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def explain(*args: str) -> tuple[int, str, str]:
    """`kamiwaza policy explain routing.yaml` with the project's rego/."""
    return run("policy", "explain", "routing.yaml", "--rego", str(ROOT / "rego"), *args)


def example_revision() -> str:
    ir = check("routing.yaml").ir
    assert ir is not None
    return ir.revision


def test_check_ok_summarises_the_policy(workdir: Path) -> None:
    code, out, err = run("policy", "check", "routing.yaml")
    assert (code, err) == (0, "")
    assert out == (
        "ok: routing.yaml: 6 rule(s), default -> anthropic, 12 test(s), 0 warning(s); "
        f"revision {example_revision()}\n"
    )


def test_check_reports_every_error_and_exits_1(workdir: Path) -> None:
    (workdir / "bad.yaml").write_text(
        "version: v2\n"
        "rules:\n"
        "  - match: {tenat: acme}\n"
        "    route_to: antropic\n"
        "  - match: {latency_budget_ms: '<<4'}\n"
        "    route_to: bedrock\n"
    )
    code, out, err = run("policy", "check", "bad.yaml", "--endpoints", "endpoints.yaml")
    assert code == 1
    assert out == ""
    headlines = [line for line in err.splitlines() if line.startswith("bad.yaml:")]
    assert headlines == [
        "bad.yaml:1:10: error[E002]: unsupported policy version 'v2'; this translator supports v1",
        "bad.yaml:3:13: error[E003]: unknown match key 'tenat'",
        "bad.yaml:4:15: error[E010]: 'route_to' names unknown endpoint 'antropic' "
        "(registry: endpoints.yaml)",
        "bad.yaml:5:32: error[E005]: bad comparison '<<4' for match key 'latency_budget_ms'",
    ]
    assert "  = help: did you mean 'tenant'?" in err
    assert "  = help: did you mean 'anthropic'?" in err
    assert err.rstrip().endswith("4 error(s), 0 warning(s)")


def test_check_strict_fails_on_warnings(workdir: Path) -> None:
    (workdir / "shadow.yaml").write_text(
        "version: v1\n"
        "rules:\n"
        "  - {name: broad, match: {tenant: [a, b]}, route_to: bedrock}\n"
        "  - {name: narrow, match: {tenant: a, model: m}, route_to: openai}\n"
    )
    code, _, err = run("policy", "check", "shadow.yaml")
    assert code == 0
    assert "shadow.yaml:4:5: warning[W001]: rule 'narrow' can never match" in err
    code, _, err = run("policy", "check", "--strict", "shadow.yaml")
    assert code == 1
    assert err.rstrip().endswith("0 error(s), 1 warning(s)")


def test_missing_policy_file_is_a_policy_error(workdir: Path) -> None:
    code, out, err = run("policy", "check", "nope.yaml")
    assert (code, out) == (1, "")
    assert err == (
        "nope.yaml:1:1: error[E011]: file not found: nope.yaml\n\n1 error(s), 0 warning(s)\n"
    )


def test_usage_error_exits_2(workdir: Path) -> None:
    code, _, _ = run("policy", "compile", "routing.yaml")  # -o is required
    assert code == 2
    code, _, _ = run("policy", "frobnicate")
    assert code == 2


def test_compile_writes_policy_tests_and_data(workdir: Path) -> None:
    code, out, _ = run("policy", "compile", "routing.yaml", "-o", "out")
    assert code == 0
    written = sorted(
        p.relative_to(workdir / "out").as_posix()
        for p in (workdir / "out").rglob("*")
        if p.is_file()
    )
    assert written == [
        "data.json",
        "kamiwaza/policy/policy.rego",
        "kamiwaza/policy/policy_test.rego",
    ]
    data = json.loads((workdir / "out" / "data.json").read_text())
    assert set(data["kamiwaza"]["endpoints"]) == {
        "private-gpu",
        "private-gpu-b",
        "private-embeddings",
        "openai-embeddings",
        "anthropic",
        "bedrock",
        "openai",
        "vertex",
        "azure",
    }
    assert data["kamiwaza"]["endpoints"]["private-gpu"] == {
        "type": "openai-compatible",
        "in_vpc": True,
        "operations": ["chat", "messages", "responses"],
        "model": "meta-llama/Llama-3.1-70B-Instruct",
        "pricing": {"input_per_1k": 0.0002, "output_per_1k": 0.0002},
    }
    assert data["kamiwaza"]["classes"] == {
        "order": ["public", "internal", "confidential", "pii-restricted"],
        "in_vpc_only": ["pii-restricted"],
    }
    # No credential reference reaches OPA's data (OPA logs and serves it).
    assert "_env" not in (workdir / "out" / "data.json").read_text()
    assert "wrote out/kamiwaza/policy/policy.rego" in out
    # Recompiling is byte-identical.
    before = (workdir / "out" / "kamiwaza/policy/policy.rego").read_bytes()
    run("policy", "compile", "routing.yaml", "-o", "out")
    assert (workdir / "out" / "kamiwaza/policy/policy.rego").read_bytes() == before


def test_compile_of_a_bad_policy_writes_nothing(workdir: Path) -> None:
    (workdir / "bad.yaml").write_text("version: v1\nrules: {}\n")
    code, _, err = run("policy", "compile", "bad.yaml", "-o", "out")
    assert code == 1
    assert "bad.yaml:2:8: error[E004]: 'rules' must be a list, got a mapping" in err
    assert not (workdir / "out").exists()


@pytest.mark.integration
def test_policy_test_passes_on_the_example(workdir: Path, opa_bin: str) -> None:
    code, out, _ = run("policy", "test", "-v", "routing.yaml", "--rego", str(ROOT / "rego"))
    assert code == 0
    lines = out.splitlines()
    # opa test does not promise an order.
    ours = sorted(line for line in lines if ".policy_test." in line)
    assert ours == sorted(
        f"PASS data.kamiwaza.policy_test.{name}"
        for name in (
            "test_confidential_embeddings_stay_in_the_vpc",
            "test_pii_embeddings_stay_in_the_vpc_too",
            "test_other_embeddings_go_to_openai_with_the_private_endpoint_as_fallback",
            "test_pii_never_leaves_the_vpc",
            "test_pii_stays_on_prem_even_for_a_latency_sensitive_acme_request",
            "test_acme_with_a_tight_latency_budget_goes_to_anthropic",
            "test_acme_with_a_relaxed_budget_falls_through_to_the_default",
            "test_a_low_cost_cap_goes_to_bedrock",
            "test_a_cost_cap_at_the_threshold_does_not",
            "test_a_request_with_no_metadata_takes_the_default",
            "test_a_tenant_near_its_budget_cap_goes_to_the_cheaper_bedrock_model",
            "test_a_tenant_with_budget_left_takes_the_default",
        )
    )
    # Only the policy's own tests: the example override is not in use, and the
    # entry point's and guards' tests are the project's (scripts/test.sh).
    assert lines == [*lines[:12], "12 passed, 0 failed"]


@pytest.mark.integration
def test_policy_test_counts_the_tests_of_the_overrides_in_use(workdir: Path, opa_bin: str) -> None:
    code, out, _ = run(
        "policy", "test", "-v", "routing.yaml",
        "--rego", str(ROOT / "rego"), "--overrides", str(EXAMPLE_OVERRIDES),
    )  # fmt: skip
    assert code == 0
    lines = out.splitlines()
    assert sorted(line for line in lines if ".overrides." in line) == [
        f"PASS data.overrides.legal_hold_test.{name}"
        for name in (
            "test_a_legal_hold_forces_the_private_gpu_whatever_the_rules_say",
            "test_embargoed_requests_are_denied",
            "test_legal_hold_forces_private_gpu",
            "test_no_route_without_legal_hold",
            "test_other_export_labels_pass",
        )
    ]
    assert lines[-1] == "17 passed, 0 failed"


@pytest.mark.integration
def test_failing_policy_test_shows_expected_and_actual(workdir: Path, opa_bin: str) -> None:
    text = (workdir / "routing.yaml").read_text()
    text = text.replace(
        "expect: {route_to: bedrock, rule: cost-capped}",
        "expect: {route_to: openai, rule: cost-capped}",
    )
    (workdir / "routing.yaml").write_text(text)
    code, out, _ = run("policy", "test", "routing.yaml", "--rego", str(ROOT / "rego"))
    assert code == 1
    lines = out.splitlines()
    fail = lines.index("FAIL data.kamiwaza.policy_test.test_a_low_cost_cap_goes_to_bedrock")
    assert lines[fail + 1] == (
        "  test 'a low cost cap goes to Bedrock' (routing.yaml:61) expected: "
        '{"route_to": "openai", "rule": "cost-capped"} actual: '
        '{"route_to": "bedrock", "rule": "cost-capped"}'
    )
    assert lines[-1].endswith(", 1 failed")


# The example's first two rules, for a request that is not an embeddings request.
EMBEDDING_RULES_NO_MATCH = (
    "  #0 confidential-embeddings -> private-embeddings: no match  (routing.yaml:6)",
    '      FAIL operation == "embeddings"   actual: (absent)',
    '      FAIL data_class in ["confidential", "pii-restricted"]   actual: (absent)',
    "  #1 embeddings -> openai-embeddings: no match  (routing.yaml:12)",
    '      FAIL operation == "embeddings"   actual: (absent)',
)


@pytest.mark.integration
def test_explain_names_rule_conditions_and_values(workdir: Path, opa_bin: str) -> None:
    code, out, err = explain(
        "--input",
        '{"tenant": "enterprise-acme", "latency_budget_ms": 500, "cost_cap_per_1k": 0.0015}',
    )
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "decision: route to bedrock (fallback: none)",
        "matched rule: #4 cost-capped (routing.yaml:28)",
        f"policy revision: {example_revision()}",
        "",
        "rules in order:",
        *EMBEDDING_RULES_NO_MATCH,
        "  #2 pii-on-prem -> private-gpu: no match  (routing.yaml:17)",
        '      FAIL data_class == "pii-restricted"   actual: (absent)',
        "  #3 acme-low-latency -> anthropic: no match  (routing.yaml:23)",
        '      ok   tenant == "enterprise-acme"   actual: "enterprise-acme"',
        "      FAIL latency_budget_ms < 400   actual: 500",
        "  #4 cost-capped -> bedrock: MATCH  (routing.yaml:28)",
        "      ok   cost_cap_per_1k < 0.002   actual: 0.0015",
        "  (1 later rule(s) not reached: first match wins)",
    ]


@pytest.mark.integration
def test_explain_shows_overrides_and_denies(workdir: Path, opa_bin: str) -> None:
    (workdir / "in.json").write_text(
        json.dumps({"tenant": "globex", "labels": {"legal_hold": "true"}})
    )
    code, out, err = explain("--input", "in.json")
    # Not loaded by default: the rules decide, and nothing reads the label.
    assert (code, err) == (
        0,
        "in.json:1:33: warning[W005]: input field 'labels.legal_hold' is never read by the "
        "policy, its overrides or guards\n"
        '   1 | {"tenant": "globex", "labels": {"legal_hold": "true"}}\n' + " " * 39 + "^\n",
    )
    assert out.splitlines()[:2] == [
        "decision: route to anthropic (fallback: none)",
        "matched rule: #6 default (routing.yaml:37)",
    ]
    code, out, err = explain("--input", "in.json", "--overrides", str(EXAMPLE_OVERRIDES))
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "decision: route to private-gpu (fallback: none)",
        "override applied: legal_hold (compiled rules not used)",
        f"policy revision: {example_revision()}",
        "",
        "rules in order:",
        *EMBEDDING_RULES_NO_MATCH,
        "  #2 pii-on-prem -> private-gpu: no match  (routing.yaml:17)",
        '      FAIL data_class == "pii-restricted"   actual: (absent)',
        "  #3 acme-low-latency -> anthropic: no match  (routing.yaml:23)",
        '      FAIL tenant == "enterprise-acme"   actual: "globex"',
        "      FAIL latency_budget_ms < 400   actual: (absent)",
        "  #4 cost-capped -> bedrock: no match  (routing.yaml:28)",
        "      FAIL cost_cap_per_1k < 0.002   actual: (absent)",
        "  #5 near-budget-cap -> bedrock: no match  (routing.yaml:32)",
        "      FAIL budget_remaining_share < 0.1   actual: (absent)",
    ]
    code, out, err = explain(
        "--json",
        "--overrides",
        str(EXAMPLE_OVERRIDES),
        "--input",
        '{"data_class": "pii-restricted", "labels": {"legal_hold": "true"}, "tenant": "t"}',
    )
    assert (code, err) == (0, "")
    assert json.loads(out) == {
        "route_to": "private-gpu",
        "fallback": [],
        "rule": None,
        "conditions": [],
        "overridden_by": "legal_hold",
        "deny": [],
        "revision": example_revision(),
    }


def test_explain_rejects_bad_input_with_exit_2(workdir: Path) -> None:
    code, _, err = explain("--input", "{not json")
    assert code == 2
    assert err.startswith("error: --input is not valid JSON: ")
    code, _, err = explain("--input", "missing.json")
    assert code == 2
    assert err == "error: --input: cannot read missing.json: No such file or directory\n"
    code, _, err = explain("--input", "[1]")
    assert code == 2
    assert err == "error: --input must be a JSON object (the request input document)\n"


def test_missing_opa_binary_is_a_usage_error(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAMIWAZA_OPA_BIN", str(workdir / "no-opa"))
    code, _, err = run("policy", "test", "routing.yaml", "--rego", str(ROOT / "rego"))
    assert code == 2
    assert f"KAMIWAZA_OPA_BIN={workdir / 'no-opa'} is not an executable file" in err


def test_check_takes_the_data_classes_from_the_flag_or_the_gateway_config(workdir: Path) -> None:
    (workdir / "classes.yaml").write_text(
        "version: v1\nrules:\n  - name: secret\n    match:\n      data_class: 'secret-*'\n"
        "    route_to: private-gpu\n"
    )
    code, out, err = run("policy", "check", "classes.yaml")
    assert code == 0
    assert err.splitlines()[0] == (
        "classes.yaml:5:19: warning[W002]: rule 'secret': glob 'secret-*' is not among the "
        "configured data classes (public, internal, confidential, pii-restricted): the rule "
        "can never match"
    )
    code, out, err = run("policy", "check", "classes.yaml", "--data-classes", "public,secret-eu")
    assert (code, err) == (0, "")
    (workdir / "gateway.yaml").write_text("data_classes: [public, secret-us]\nport: 9000\n")
    code, out, err = run("policy", "check", "classes.yaml", "--config", "gateway.yaml", "--strict")
    assert (code, err) == (0, "")
    assert out.startswith("ok: classes.yaml: 1 rule(s), no default, 0 test(s), 0 warning(s)")
    (workdir / "broken.yaml").write_text("data_classes: 7\n")
    code, _, err = run("policy", "check", "classes.yaml", "--config", "broken.yaml")
    assert (code, err) == (
        2,
        "error: config file broken.yaml: data_classes: expected a list of names\n",
    )


def test_check_reads_the_overrides_in_use(workdir: Path) -> None:
    # The example override forces private-gpu, which the registry has: no warning.
    code, _, err = run("policy", "check", "routing.yaml", "--overrides", str(EXAMPLE_OVERRIDES))
    assert (code, err) == (0, "")
    (workdir / "endpoints.yaml").write_text(
        "endpoints:\n  anthropic: {type: anthropic}\n  bedrock: {type: bedrock, region: x}\n"
    )
    (workdir / "small.yaml").write_text(
        "version: v1\nrules:\n  - default:\n      route_to: anthropic\n"
    )
    code, _, err = run("policy", "check", "small.yaml", "--overrides", str(EXAMPLE_OVERRIDES))
    assert code == 0
    shown = EXAMPLE_OVERRIDES / "legal_hold" / "legal_hold.rego"
    assert err.splitlines()[0] == (
        f"{shown}:26:23: warning[W004]: override legal_hold forces a route to 'private-gpu', "
        "which is not in the registry (endpoints.yaml): the requests it forces are denied"
    )
