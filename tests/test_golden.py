"""Golden tests for the translator: one folder per case under tests/golden/.

A case holds `policy.yaml` (and `endpoints.yaml`, else the shared
`golden/endpoints.yaml`), and any of:

- `expected.rego`: the exact emitted policy (absent: the policy must not compile);
- `expected_test.rego`: the exact emitted tests of the policy's `tests:` section;
- `expected_diagnostics.txt`: every error and warning, rendered (absent: none);
- `decisions.yaml`: inputs and the whole decision OPA must return for each,
  evaluated by a real OPA server with the emitted Rego and rego/ loaded;
- `overrides_dirs.txt`: override directories (relative to the project root, one
  a line) loaded beside rego/ for this case, as the `overrides_dirs` setting
  does (e.g. the opt-in example, policies/examples/overrides).

The expected files were written by an earlier process, so `test_compile` also
shows that output does not depend on hash seeds or set order.

Set KAMIWAZA_UPDATE_GOLDEN=1 to rewrite the expected_* files from the current
output (then review the diff: it is the test).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.opa_server import OpaServer
from translator.classes import classes_data
from translator.emit import POLICY_FILE, TEST_FILE, emit
from translator.opa import run_tests
from translator.pipeline import CheckResult, check, compile_policy, write_output

GOLDEN = Path(__file__).parent / "golden"
ROOT = Path(__file__).resolve().parent.parent
REGO_DIR = ROOT / "rego"
CASES = sorted(p for p in GOLDEN.iterdir() if p.is_dir())
UPDATE = os.environ.get("KAMIWAZA_UPDATE_GOLDEN") == "1"


def _overrides(case: Path) -> list[Path]:
    listed = case / "overrides_dirs.txt"
    if not listed.exists():
        return []
    return [ROOT / line.strip() for line in listed.read_text().splitlines() if line.strip()]


def _registry(case: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The case's registry, relative to the case folder, now the working directory."""
    monkeypatch.chdir(case)
    return "endpoints.yaml" if (case / "endpoints.yaml").exists() else "../endpoints.yaml"


def _check_case(case: Path, monkeypatch: pytest.MonkeyPatch) -> CheckResult:
    return check("policy.yaml", _registry(case, monkeypatch))


def _compile_case(
    case: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[CheckResult, dict[str, str]]:
    return compile_policy("policy.yaml", _registry(case, monkeypatch))


def _compare(path: Path, actual: str | None) -> None:
    if UPDATE:
        if actual is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(actual, encoding="utf-8")
        return
    expected = path.read_text(encoding="utf-8") if path.exists() else None
    assert actual == expected, f"{path.relative_to(GOLDEN)} differs from the translator's output"


def test_there_are_enough_cases() -> None:
    assert len(CASES) >= 30


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.name)
def test_compile(case: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = _check_case(case, monkeypatch)
    rendered = result.render_diagnostics() + "\n" if result.diagnostics else None
    _compare(case / "expected_diagnostics.txt", rendered)
    files = emit(result.ir, result.registry.opa_data()) if result.ir is not None else {}
    _compare(case / "expected.rego", files.get(POLICY_FILE))
    _compare(case / "expected_test.rego", files.get(TEST_FILE))


VALID = [c for c in CASES if (c / "expected.rego").exists()]


@pytest.mark.integration
@pytest.mark.parametrize("case", VALID, ids=lambda p: p.name)
def test_emitted_rego_passes_opa_fmt_check_and_its_tests(
    case: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, opa_bin: str
) -> None:
    result, files = _compile_case(case, monkeypatch)
    assert result.ir is not None
    out = tmp_path / "out"
    write_output(files, str(out))
    fmt = subprocess.run(
        [opa_bin, "fmt", "--fail", "--list", str(out)], capture_output=True, text=True, check=False
    )
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr
    rego = [str(REGO_DIR), *map(str, _overrides(case))]
    strict = subprocess.run(
        [opa_bin, "check", "--strict", str(out), *rego],
        capture_output=True,
        text=True,
        check=False,
    )
    assert strict.returncode == 0, strict.stdout + strict.stderr
    if result.ir.tests:
        outcomes = run_tests([str(out), *rego])
        ours = [o for o in outcomes if o.package == "data.kamiwaza.policy_test"]
        assert len(ours) == len(result.ir.tests)
        assert [o for o in ours if not o.passed] == []


DECIDED = [c for c in VALID if (c / "decisions.yaml").exists()]


@pytest.mark.integration
@pytest.mark.parametrize("case", DECIDED, ids=lambda p: p.name)
def test_decisions_in_real_opa(
    case: Path, monkeypatch: pytest.MonkeyPatch, shared_opa: OpaServer
) -> None:
    result, files = _compile_case(case, monkeypatch)
    assert result.ir is not None
    shared_opa.put_policy("golden-compiled", files[POLICY_FILE])
    shared_opa.put_data("kamiwaza/endpoints", result.registry.opa_data())
    shared_opa.put_data("kamiwaza/classes", classes_data())
    modules = [
        path
        for directory in _overrides(case)
        for path in sorted(directory.rglob("*.rego"))
        if not path.name.endswith("_test.rego")
    ]
    for n, path in enumerate(modules):
        shared_opa.put_policy(f"golden-override-{n}", path.read_text(encoding="utf-8"))
    try:
        examples: list[dict[str, Any]] = yaml.safe_load(
            (case / "decisions.yaml").read_text(encoding="utf-8")
        )
        assert examples, "decisions.yaml is empty"
        for example in examples:
            want = {**example["decision"], "revision": result.ir.revision}
            got = shared_opa.decide(example["input"])
            assert got == want, f"input {example['input']}"
    finally:
        shared_opa.delete_policy("golden-compiled")
        for n in range(len(modules)):
            shared_opa.delete_policy(f"golden-override-{n}")
