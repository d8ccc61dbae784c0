"""What endpoint health costs a routing decision (docs/health.md).

Measures, on the example policy (policies/routing.yaml and its registry):

- OPA's in-process evaluation (`opa bench`) of `data.kamiwaza.route.decision`
  for the same request without the policy's `health:` section and without
  `input.health`, and with both (every registry endpoint observed, the primary
  lagging, so that the route is rearranged and the report filled): the
  difference is what health adds to each decision in OPA;
- the gateway's side, per request: the monitor's `opa_input()` (the snapshot
  of every endpoint), reading the decision's report back (`note_verdicts`), and
  the forwarder's two attempt hooks, in Python, with as many endpoints.

Target (issue 12): under 0.1 ms per decision for both together.

    .venv/bin/python bench/health_bench.py [--requests 20000]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.forwarding.attempts import Attempt  # noqa: E402
from gateway.health import HealthMonitor, HealthSettings  # noqa: E402
from translator.opa import find_opa  # noqa: E402
from translator.pipeline import compile_policy, write_output  # noqa: E402

TARGET_US = 100.0
POLICY = ROOT / "policies" / "routing.yaml"
REGISTRY = ROOT / "policies" / "endpoints.yaml"
REQUEST = {
    "tenant": "globex",
    "user": {"id": "u-1", "roles": ["dev"]},
    "data_class": "pii-restricted",  # rule pii-on-prem: private-gpu, then private-gpu-b
    "operation": "chat",
    "latency_budget_ms": 5000,  # evaluated, and met
    "cost_cap_per_1k": 0.05,
    "request": {"id": "req-1", "path": "/v1/chat/completions", "stream": False},
}


def _observed(names: list[str], lagging: str) -> dict[str, Any]:
    endpoints = {}
    for name in names:
        slow = name == lagging
        endpoints[name] = {
            "state": "healthy",
            "samples": 240,
            "p50_ttft_ms": 900.0 if slow else 180.0,
            "p95_ttft_ms": 2400.0 if slow else 420.0,
            "p50_latency_ms": 1200.0 if slow else 250.0,
            "p95_latency_ms": 2900.0 if slow else 610.0,
            "error_rate": 0.02,
            "timeout_rate": 0.0,
            "in_flight": 3,
        }
    return {"endpoints": endpoints}


def _opa_bench(
    policy_dir: Path, doc: dict[str, Any], work: Path, name: str
) -> tuple[float, dict[str, Any]]:
    """Microseconds per evaluation, and the decision."""
    (work / f"{name}.json").write_text(json.dumps(doc))
    base = [find_opa()]
    args = ["-d", str(policy_dir), "-d", str(ROOT / "rego"), "-i", str(work / f"{name}.json")]
    query = "data.kamiwaza.route.decision"
    proc = subprocess.run(
        [*base, "bench", "--format", "json", *args, query],
        capture_output=True,
        text=True,
        check=True,
    )
    bench = json.loads(proc.stdout)
    evaluated = subprocess.run(
        [*base, "eval", "--format", "json", *args, query],
        capture_output=True,
        text=True,
        check=True,
    )
    decision = json.loads(evaluated.stdout)["result"][0]["expressions"][0]["value"]
    return bench["T"] / bench["N"] / 1000, decision


def _gateway_side(names: list[str], requests: int) -> float:
    """Microseconds per request of the monitor's work around one decision."""
    monitor = HealthMonitor(names, HealthSettings(), breaker_state=lambda name: "closed")
    primary = names[0]
    report = {"skipped": [], "moved": [], "verdicts": dict.fromkeys(names[:3], "healthy")}
    for name in names:  # every endpoint has a window with data in it
        for _ in range(50):
            monitor.attempt_started(name)
            monitor.attempt_finished(name, Attempt(name, 200, None, 250.0), None, 180.0)
    start = time.perf_counter()
    for _ in range(requests):
        doc = monitor.opa_input()
        assert doc is not None
        monitor.note_verdicts(report)
        monitor.attempt_started(primary)
        monitor.attempt_finished(primary, Attempt(primary, 200, None, 250.0), None, 180.0)
    return (time.perf_counter() - start) / requests * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument(
        "--rounds", type=int, default=5, help="opa bench runs of each, interleaved (best kept)"
    )
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="kamiwaza-health-bench-"))
    try:
        with_health = POLICY.read_text()
        head, sep, _ = with_health.partition("\nhealth:\n")
        assert sep, "the example policy has no health section"
        (work / "plain.yaml").write_text(head + "\n")
        (work / "health.yaml").write_text(with_health)
        outs = {}
        for name in ("plain", "health"):
            _, files = compile_policy(str(work / f"{name}.yaml"), str(REGISTRY))
            outs[name] = work / f"out-{name}"
            write_output(files, str(outs[name]))
        names = sorted(
            json.loads((outs["health"] / "data.json").read_text())["kamiwaza"]["endpoints"]
        )

        doc = {**REQUEST, "health": _observed(names, lagging="private-gpu")}
        # Interleaved, the best of each: the machine's other load falls on both alike.
        plain_runs, health_runs = [], []
        for _ in range(args.rounds):
            plain_us, plain = _opa_bench(outs["plain"], REQUEST, work, "plain")
            health_us, decided = _opa_bench(outs["health"], doc, work, "health")
            plain_runs.append(plain_us)
            health_runs.append(health_us)
        plain_us, health_us = min(plain_runs), min(health_runs)
        assert plain["route_to"] == "private-gpu", plain
        assert decided["route_to"] == "private-gpu-b", decided
        assert [m["endpoint"] for m in decided["health"]["moved"]] == ["private-gpu"], decided
        added_opa = health_us - plain_us
        size = len(json.dumps(doc["health"]))
        print(f"endpoints observed: {len(names)}; input.health: {size} bytes")
        print(
            f"opa bench (in-process, best of {args.rounds}): without health "
            f"{plain_us:.1f} us/decision, with health {health_us:.1f} us/decision: "
            f"+{added_opa:.1f} us (x{health_us / plain_us:.2f})"
        )
        gateway_us = _gateway_side(names, args.requests)
        print(
            f"gateway side (snapshot into input.health, report read back, attempt hooks): "
            f"{gateway_us:.1f} us/request over {args.requests} requests"
        )
        total = max(added_opa, 0.0) + gateway_us
        verdict = "meets" if total < TARGET_US else "MISSES"
        print(
            f"health in the decision: {total:.1f} us per decision "
            f"({verdict} the {TARGET_US:.0f} us target)"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
