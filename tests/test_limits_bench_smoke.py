"""The limiter benchmark must keep running; its figures are read by people."""

from __future__ import annotations

import pytest

from bench import limits_bench


@pytest.mark.integration
def test_limits_bench_runs(capsys: pytest.CaptureFixture[str]) -> None:
    assert limits_bench.main(["--requests", "50"]) == 0
    out = capsys.readouterr().out
    for name in ("redis (loopback)", "in-process"):
        assert f"{name}: reserve + settle, 50 sequential requests: p50 " in out
        assert f"{name}: remaining_share + reserve + settle: p50 " in out
        assert f"{name}: the three calls, 16 in flight: p50 " in out
