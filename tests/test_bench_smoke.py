"""The benchmarks must keep running; their figures are read by people, not asserted."""

from __future__ import annotations

import pytest

from bench import policy_bench


@pytest.mark.integration
def test_policy_bench_runs_on_a_small_policy(capsys: pytest.CaptureFixture[str]) -> None:
    assert policy_bench.main(["--rules", "20", "--compiles", "1", "--requests", "120"]) == 0
    out = capsys.readouterr().out
    assert "policy: 20 rules + default" in out
    assert "opa bench (in-process)" in out
    assert "OPA server over HTTP" in out
