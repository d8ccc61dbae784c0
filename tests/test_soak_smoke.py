"""bench/soak.py must keep running: a few seconds of it, the report's shape and
its audit check (its memory figures are read by people, not asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import soak


@pytest.mark.integration
def test_soak_runs_briefly_with_failovers_streams_and_one_record_each(
    tmp_path: Path, opa_bin: str
) -> None:
    out = tmp_path / "soak.json"
    code = soak.main(
        ["--seconds", "3", "--sample-s", "0.5", "--concurrency", "4", "--batch-interval-s", "0.5",
         "--json", str(out)]
    )  # fmt: skip
    report = json.loads(out.read_text())
    assert code == 0, report
    assert report["errors"] == 0
    assert report["ok"] > 0
    assert 0 < report["streams"] < report["ok"]
    assert 0 < report["failed_over"] < report["ok"]
    assert report["audit"] == {
        "records": report["ok"],
        "one_per_request": True,
        "chain_ok": True,
        "streams": 1,
    }
    assert report["exit_code"] == 0
    for process in ("gateway", "opa"):
        summary = report[process]
        assert 0 < summary["start_mib"] <= summary["max_mib"]
        assert summary["end_mib"] <= summary["max_mib"]
        assert len(report["samples"][f"{process}_kib"]) >= 4


def test_slope_is_least_squares_in_mib_per_minute() -> None:
    samples = [(0.0, 1024), (30.0, 2048), (60.0, 3072), (90.0, 4096)]  # 1 MiB per 30 s
    assert soak.slope_mib_per_min(samples) == pytest.approx(2.0)
    noisy = [(0.0, 1024), (30.0, 2148), (60.0, 2972), (90.0, 4096)]
    assert soak.slope_mib_per_min(noisy) == pytest.approx(1.9609375)
    flat = soak.summarize([(float(t), 50_000) for t in range(10)])
    assert (flat["slope_mib_per_min"], flat["flat"]) == (0.0, True)
    growing = soak.summarize([(float(t), 50_000 + 1000 * t) for t in range(10)])
    assert growing["flat"] is False
    assert growing["second_half_growth_mib"] == pytest.approx(4000 / 1024)
