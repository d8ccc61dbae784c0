"""The endpoint-health benchmark must keep running; its figures are read by people."""

from __future__ import annotations

import pytest

from bench import health_bench


@pytest.mark.integration
def test_health_bench_runs(capsys: pytest.CaptureFixture[str], opa_bin: str) -> None:
    assert health_bench.main(["--requests", "200", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert "endpoints observed: 9; input.health: " in out
    assert "opa bench (in-process, best of 1): without health " in out
    assert "gateway side (snapshot into input.health, report read back, attempt hooks): " in out
    assert "health in the decision: " in out
