"""`kamiwaza policy diff` on 10,000 recorded decisions.

Writes N OPA decision-log events (inputs as the gateway builds them, tenants,
classes, roles and metadata varied) through the real audit pipeline into a
local audit trail, then times `kamiwaza policy diff` against a candidate that
changes about half of the decisions, end to end in one process: reading and
verifying the trail, compiling both policies, one `opa eval` of every input
against both, grouping and rendering. Also reported: the replay alone, and one
input per `opa eval` process (what replaying by hand costs) extrapolated.

Target (issue 15): 10,000 decisions in under 10 s.

    .venv/bin/python bench/diff_bench.py [--decisions 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from click.testing import CliRunner  # noqa: E402

from gateway.cli import main as kamiwaza  # noqa: E402
from observability.audit import utc_now  # noqa: E402
from observability.pipeline import AuditConfig, AuditPipeline  # noqa: E402
from observability.sinks.local import LocalSink  # noqa: E402
from translator.diff import compile_pair, replay  # noqa: E402
from translator.opa import evaluate  # noqa: E402

TARGET_S = 10.0
POLICY = ROOT / "policies" / "routing.yaml"
ENDPOINTS = ROOT / "policies" / "endpoints.yaml"
REGO = ROOT / "rego"
CANDIDATE = """\
version: v1
rules:
  - name: pii-on-prem
    match: {data_class: pii-restricted}
    route_to: private-gpu
  - name: acme-low-latency
    match: {tenant: enterprise-acme, latency_budget_ms: "<400"}
    route_to: anthropic
  - name: cheap-to-openai
    match: {cost_cap_per_1k: "<0.005"}
    route_to: openai
  - name: analysts-on-vertex
    match: {user_role: analyst, data_class: [public, internal]}
    route_to: vertex
    fallback: [anthropic]
  - default:
      route_to: anthropic
"""


def event(i: int) -> dict[str, Any]:
    """One decision-log event as OPA ships it for the gateway's query."""
    doc: dict[str, Any] = {
        "tenant": ("enterprise-acme", "globex", "initech", "hospital")[i % 4],
        "user": {"id": f"u-{i % 50}", "roles": (["analyst"], ["dev"], [])[i % 3]},
        "data_class": ("public", "internal", "confidential", "pii-restricted")[i // 4 % 4],
        "request": {"id": f"req-{i:08d}", "path": "/v1/route", "stream": i % 2 == 0},
        "model": "gpt-4o",
    }
    if i % 5 == 0:
        doc["latency_budget_ms"] = (300, 800)[i // 5 % 2]
    if i % 7 == 0:
        doc["cost_cap_per_1k"] = (0.001, 0.003, 0.01)[i // 7 % 3]
    return {
        "decision_id": f"dec-{i:08d}",
        "path": "kamiwaza/route/decision",
        "input": doc,
        "result": {"route_to": "anthropic"},
        "timestamp": utc_now(),
        "labels": {"id": "bench", "version": "1.22.2"},
    }


async def record_trail(root: Path, n: int) -> None:
    pipeline = AuditPipeline(
        AuditConfig(spool_dir=root / "spool", host="bench", decision_logs=False),
        LocalSink(root / "audit", "records"),
    )
    await pipeline.start()
    for i in range(n):
        assert pipeline.write_event(event(i))
    await pipeline.flush(60)
    await pipeline.close()


def cpu_s() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--decisions", type=int, default=10_000)
    parser.add_argument("--single", type=int, default=5, help="opa eval processes to time")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="kamiwaza-diff-bench-") as tmp:
        root = Path(tmp)
        (root / "candidate.yaml").write_text(CANDIDATE)
        asyncio.run(record_trail(root, args.decisions))
        cpu0, t0 = cpu_s(), time.perf_counter()
        result = CliRunner().invoke(
            kamiwaza,
            [
                "policy", "diff", str(root / "candidate.yaml"),
                "--base", str(POLICY), "--endpoints", str(ENDPOINTS), "--rego", str(REGO),
                "--audit", str(root / "audit"), "--since", "1h", "--format", "json",
            ],
            env={"KAMIWAZA_CONFIG": None},
        )  # fmt: skip
        wall, cpu = time.perf_counter() - t0, cpu_s() - cpu0
        if result.exit_code != 0:
            print(result.output, file=sys.stderr)
            return 1
        doc = json.loads(result.stdout)
        print(
            f"policy diff: {doc['decisions']} decisions, {doc['changed']} changed, "
            f"{len(doc['rule_changes'])} rule and {len(doc['endpoint_changes'])} endpoint groups"
        )
        verdict = "ok" if wall < TARGET_S else "OVER TARGET"
        print(
            f"  end to end: {wall:.2f} s wall, {cpu:.2f} s CPU (target < {TARGET_S:g} s: {verdict})"
        )

        pair = compile_pair(str(POLICY), str(root / "candidate.yaml"), str(ENDPOINTS))
        inputs = [event(i)["input"] for i in range(args.decisions)]
        t0 = time.perf_counter()
        replay(pair, [str(REGO)], inputs)
        replay_s = time.perf_counter() - t0
        print(
            f"  replay alone (one opa eval, base and candidate): {replay_s:.2f} s, "
            f"{replay_s / args.decisions * 1000:.3f} ms a decision"
        )
        out = root / "compiled"
        from translator.pipeline import write_output

        write_output(pair.files, str(out))
        t0 = time.perf_counter()
        for i in range(args.single):
            evaluate([str(out), str(REGO)], "data.kamiwaza.route.decision", inputs[i])
        single = (time.perf_counter() - t0) / max(args.single, 1)
        print(
            f"  one opa eval process per input: {single * 1000:.0f} ms each, "
            f"{single * args.decisions:.0f} s for {args.decisions}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
