"""The benchmarks must keep running; their figures are read by people, not asserted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import diff_bench, gateway_bench, policy_bench


@pytest.mark.integration
def test_policy_bench_runs_on_a_small_policy(capsys: pytest.CaptureFixture[str]) -> None:
    assert policy_bench.main(["--rules", "20", "--compiles", "1", "--requests", "120"]) == 0
    out = capsys.readouterr().out
    assert "policy: 20 rules + default" in out
    assert "opa bench (in-process)" in out
    assert "OPA server over HTTP" in out


@pytest.mark.integration
def test_gateway_bench_runs_briefly(tmp_path: Path, opa_bin: str) -> None:
    out = tmp_path / "results.json"
    assert gateway_bench.main(["--seconds", "0.5", "--concurrency", "2", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    assert sorted(results) == sorted(
        f"{prefix}{kind}-{path}"
        for prefix in ("", "serial-")
        for kind in ("json", "stream")
        for path in ("direct", "floor", "gateway")
    )
    for name, run in results.items():
        assert run["requests"] > 0, name
        assert run["errors"] == 0, name
        # CPU per request is measured for the two proxies and their OPAs.
        assert ("cpu_proxy_ms" in run) == (not name.endswith("-direct")), name


@pytest.mark.integration
def test_diff_bench_runs_on_a_small_trail(capsys: pytest.CaptureFixture[str], opa_bin: str) -> None:
    assert diff_bench.main(["--decisions", "60", "--single", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("policy diff: 60 decisions, ")
    assert "replay alone (one opa eval, base and candidate)" in out
