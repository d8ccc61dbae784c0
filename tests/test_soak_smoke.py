"""bench/soak.py and bench/workers_bench.py must keep running: a few seconds of
each, the reports' shape and the soak's audit check (their figures are read by
people, not asserted)."""

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
    assert report["error_kinds"] == {}
    assert report["audit"] == {
        "records": report["ok"],
        "requests": report["ok"],
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


@pytest.mark.integration
def test_workers_bench_runs_briefly(tmp_path: Path, opa_bin: str) -> None:
    from bench import workers_bench

    out = tmp_path / "results.json"
    args = ["--seconds", "0.3", "--concurrency", "2", "--warmup-s", "0", "--rounds", "1"]
    args += ["--json", str(out)]
    assert workers_bench.main(args) == 0
    results = json.loads(out.read_text())
    assert sorted(results) == sorted(
        f"{label}/{kind}" for label, *_ in workers_bench.CONFIGS for kind in ("json", "stream")
    )
    for name, run in results.items():
        assert run["requests"] > 0, name
        assert run["errors"] == 0, name
        assert run["cpu_ms"] > 0, name
        # Every OPA is counted: one per worker, or the one shared.
        opas = 1 if name.startswith(("1 worker", "2 workers, OPA shared")) else 2
        assert run["rss_opa_mib"] > opas * 10, name
