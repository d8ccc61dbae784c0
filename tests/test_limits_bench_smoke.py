"""The limiter benchmark must keep running; its figures are read by people."""

from __future__ import annotations

import pytest

from bench import limits_bench


@pytest.mark.integration
def test_limits_bench_runs(capsys: pytest.CaptureFixture[str]) -> None:
    assert limits_bench.main(["--requests", "50", "--gateway-requests", "30"]) == 0
    out = capsys.readouterr().out
    for name in ("redis (loopback)", "in-process"):
        assert f"{name}: reserve + settle, 50 sequential requests: p50 " in out
        assert f"{name}: remaining_share + reserve + settle: p50 " in out
        assert f"{name}: the three calls, 16 in flight: p50 " in out
    assert "gateway, no limits: 30 sequential requests: p50 " in out
    for name in ("in-process limits", "redis limits"):
        assert f"gateway, {name}: p50 " in out
        assert "(adds p50 " in out
