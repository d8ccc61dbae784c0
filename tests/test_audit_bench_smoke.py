"""The audit benchmark must keep running; its figures are read by people."""

from __future__ import annotations

import pytest

from bench import audit_bench


@pytest.mark.integration
def test_audit_bench_runs(capsys: pytest.CaptureFixture[str]) -> None:
    assert audit_bench.main(["--records", "300", "--requests", "20"]) == 0
    out = capsys.readouterr().out
    assert "AuditPipeline.write(), 300 records" in out
    assert "audit write in the gateway, 20 requests" in out
    assert "target: audit write p50 < 0.2 ms" in out
