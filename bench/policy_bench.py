"""Translator and OPA evaluation benchmark on a generated 1,000-rule policy.

Measures:
- compile time (load → check → lower → emit) of the generated policy;
- OPA's evaluation of `data.kamiwaza.route.decision` with the matching rule
  last, with `opa bench` (in-process evaluation) and over a running OPA
  server's HTTP API on loopback (what the gateway pays per request).

Targets (issue 2): compile under 1 s; evaluation p99 under 1 ms.

    .venv/bin/python bench/policy_bench.py [--rules 1000] [--requests 2000]
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.opa_server import OpaServer  # noqa: E402
from translator.emit import POLICY_FILE  # noqa: E402
from translator.opa import find_opa  # noqa: E402
from translator.pipeline import compile_policy, write_output  # noqa: E402

ENDPOINTS = """\
endpoints:
  gpu-a: {type: openai-compatible, base_url: "http://127.0.0.1:9001/v1", in_vpc: true}
  gpu-b: {type: openai-compatible, base_url: "http://127.0.0.1:9002/v1", in_vpc: true}
  saas: {type: anthropic}
  cheap: {type: bedrock, region: us-east-1}
"""
TARGETS = ("gpu-a", "gpu-b", "saas", "cheap")


def generate_policy(n: int) -> str:
    """`n` rules of realistic shape; only the last one matches the benchmark input."""
    lines = ["version: v1", "rules:"]
    for i in range(n):
        kind = i % 4
        lines.append(f"  - name: r{i:05d}")
        lines.append("    match:")
        lines.append(f"      tenant: tenant-{i:05d}")
        if kind == 1:
            lines.append(f'      latency_budget_ms: "<{100 + i}"')
        elif kind == 2:
            lines.append("      data_class: [internal, confidential]")
            lines.append(f'      cost_cap_per_1k: "<=0.{i:04d}"')
        elif kind == 3:
            lines.append(f'      labels.team: "team-{i}-*"')
            lines.append("      user_role: [analyst, admin]")
        lines.append(f"    route_to: {TARGETS[i % len(TARGETS)]}")
        lines.append(f"    fallback: [{TARGETS[(i + 1) % len(TARGETS)]}]")
    lines += ["  - default:", "      route_to: saas"]
    return "\n".join(lines) + "\n"


def input_for_last(n: int) -> dict[str, object]:
    i = n - 1
    doc: dict[str, object] = {
        "tenant": f"tenant-{i:05d}",
        "user": {"id": "u-1", "roles": ["analyst"]},
        "data_class": "internal",
        "latency_budget_ms": 50,
        "cost_cap_per_1k": 0.0,
        "labels": {"team": f"team-{i}-x"},
        "request": {"id": "req-1", "path": "/v1/route", "stream": False},
    }
    return doc


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rules", type=int, default=1000)
    parser.add_argument("--compiles", type=int, default=5)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="kamiwaza-bench-"))
    try:
        (work / "policy.yaml").write_text(generate_policy(args.rules))
        (work / "endpoints.yaml").write_text(ENDPOINTS)

        compile_times = []
        for _ in range(args.compiles):
            start = time.perf_counter()
            _, files = compile_policy(str(work / "policy.yaml"))
            compile_times.append(time.perf_counter() - start)
        out = work / "out"
        write_output(files, str(out))
        size = len(files[POLICY_FILE])
        print(f"policy: {args.rules} rules + default, {size} bytes of Rego")
        print(
            f"compile (load+check+lower+emit): min {min(compile_times) * 1000:.0f} ms, "
            f"median {statistics.median(compile_times) * 1000:.0f} ms over {args.compiles} runs"
        )

        doc = input_for_last(args.rules)
        (work / "input.json").write_text(json.dumps(doc))
        proc = subprocess.run(
            [
                find_opa(),
                "bench",
                "--format",
                "json",
                "-d",
                str(out),
                "-d",
                str(ROOT / "rego"),
                "-i",
                str(work / "input.json"),
                "data.kamiwaza.route.decision",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        bench = json.loads(proc.stdout)
        extra = bench["Extra"]
        per_op_us = bench["T"] / bench["N"] / 1000
        p50 = extra["histogram_timer_rego_query_eval_ns_median"] / 1000
        p99 = extra["histogram_timer_rego_query_eval_ns_99%"] / 1000
        print(
            f"opa bench (in-process): {per_op_us:.1f} us/op over {bench['N']} ops; "
            f"query eval p50 {p50:.1f} us, p99 {p99:.1f} us"
        )

        server = OpaServer([out, ROOT / "rego"], work)
        server.start()
        try:
            body = json.dumps({"input": doc}).encode()
            # One kept-alive connection, as the gateway's long-lived client session.
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
            headers = {"Content-Type": "application/json"}
            samples = []
            for i in range(args.requests):
                start = time.perf_counter()
                conn.request("POST", "/v1/data/kamiwaza/route/decision", body, headers)
                resp = conn.getresponse()
                result_doc = json.loads(resp.read())
                elapsed = time.perf_counter() - start
                if i == 0:
                    decision = result_doc["result"]
                    assert decision["rule"]["name"] == f"r{args.rules - 1:05d}", decision
                if i >= 100:  # warm-up excluded
                    samples.append(elapsed * 1000)
            conn.close()
        finally:
            server.stop()
        print(
            "OPA server over HTTP (one keep-alive connection): "
            f"p50 {percentile(samples, 50):.3f} ms, p99 {percentile(samples, 99):.3f} ms "
            f"over {len(samples)} requests"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
