"""Throughput of `kamiwaza serve --workers N`, and one OPA per worker vs one shared.

The traffic of bench/gateway_bench.py (chat completions to a fast local
upstream, closed loop at `--concurrency`, JSON and streamed), through:

- `1 worker`: `kamiwaza serve` alone, with its own OPA sidecar;
- `2 workers`: `--workers 2`, each with its own sidecar (what `serve` does);
- and, with decision logs off in both (a shared OPA has no one worker to ship
  its decision log to), `2 workers, OPA each` against `2 workers, OPA shared`:
  the workers given `--opa-url` of one OPA the bench starts, with the same Go
  runtime settings the gateway gives its sidecars.

All the gateways are started first and then measured in rounds, each round
running every configuration in turn (`--rounds`, the median reported), so
that other load on the machine weighs on all alike. Reports req/s and p50/p99,
CPU per request (gateway processes and
OPAs together), and the RSS of the gateway processes and of the OPAs. The load
generator runs on the same machine and takes CPU from the workers: on a small
machine the ratio understates what more cores give.

    .venv/bin/python bench/workers_bench.py [--seconds 10] [--concurrency 16] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.gateway_bench import (  # noqa: E402
    POLICY,
    child_pids,
    cpu_seconds,
    load,
    registry,
    rss_kib,
    show,
    wait_ready,
)
from gateway.auth import KeyStore  # noqa: E402
from gateway.settings import load_settings  # noqa: E402
from gateway.sidecar import go_runtime_env  # noqa: E402
from tests.processes import free_port  # noqa: E402
from translator.opa import find_opa  # noqa: E402
from translator.pipeline import compile_policy, write_output  # noqa: E402

BIN = Path(sys.executable).parent

# (label, workers, shared OPA, decision logs)
CONFIGS = (
    ("1 worker", 1, False, True),
    ("2 workers", 2, False, True),
    ("2 workers, OPA each", 2, False, False),
    ("2 workers, OPA shared", 2, True, False),
)


class Gateway:
    """One `kamiwaza serve` under test and the processes whose cost it is."""

    def __init__(self, proc: subprocess.Popen[bytes], workers: int, shared: int | None) -> None:
        self.proc = proc
        self.workers = workers
        self.shared = shared  # pid of the shared OPA

    def processes(self) -> tuple[list[int], list[int]]:
        served = child_pids(self.proc.pid) if self.workers > 1 else [self.proc.pid]
        opas = [self.shared] if self.shared else [o for p in served for o in child_pids(p)]
        return served, opas


def start_shared_opa(work: Path, procs: list[subprocess.Popen[bytes]]) -> tuple[int, int]:
    """An OPA on the compiled bench policy, as the gateway's sidecar runs: (port, pid)."""
    settings = load_settings()
    _, files = compile_policy(str(work / "routing.yaml"), str(work / "endpoints.yaml"))
    write_output(files, str(work / "compiled"))
    port = free_port()
    args = [find_opa(), "run", "--server", "--addr", f"127.0.0.1:{port}"]
    args += ["--log-level", "error", str(work / "compiled"), str(ROOT / "rego")]
    env = {**os.environ, **go_runtime_env(settings.opa_gomaxprocs, settings.opa_gogc)}
    procs.append(
        subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    )
    return port, procs[-1].pid


async def start_gateway(
    work: Path, env: dict[str, str], workers: int, opa_url: str | None, decision_logs: bool
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    extra = ["--opa-url", opa_url] if opa_url else []
    proc = subprocess.Popen(
        [str(BIN / "kamiwaza"), "serve", "--policy", "routing.yaml", "--keys", "keys.json",
         "--port", str(port), "--audit-dir", f"audit-{port}", "--rego", str(ROOT / "rego"),
         "--workers", str(workers), *extra],
        cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**env, "KAMIWAZA_AUDIT_DECISION_LOGS": str(decision_logs).lower()},
    )  # fmt: skip
    await wait_ready(f"http://127.0.0.1:{port}/readyz")
    seen: set[str] = set()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        while workers > 1 and len(seen) < workers:  # until every worker answers
            async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                seen.add((await resp.json())["worker"])
    return proc, port


async def measure(
    gateway: Gateway, url: str, headers: dict[str, str], args: argparse.Namespace, stream: bool
) -> dict[str, Any]:
    served, opas = gateway.processes()
    pids = served + opas
    before = sum(cpu_seconds(p) for p in pids)
    result = await load(
        url, headers, stream=stream, seconds=args.seconds, concurrency=args.concurrency
    )
    after = sum(cpu_seconds(p) for p in pids)
    result["cpu_ms"] = (after - before) * 1000 / max(result["requests"], 1)
    result["rss_gateway_mib"] = sum(rss_kib(p) for p in served) / 1024
    result["rss_opa_mib"] = sum(rss_kib(p) for p in opas) / 1024
    return result


async def run(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="kamiwaza-wkbench-"))
    procs: list[subprocess.Popen[bytes]] = []
    results: dict[str, Any] = {}
    try:
        up_port = free_port()
        upstream = [sys.executable, str(ROOT / "bench" / "fast_upstream.py"), str(up_port)]
        procs.append(subprocess.Popen(upstream))
        (work / "routing.yaml").write_text(POLICY)
        (work / "endpoints.yaml").write_text(registry(up_port))
        _, key = KeyStore.load(work / "keys.json", missing_ok=True).create(tenant="bench")
        env = {**os.environ, "BENCH_TOKEN": "bench-token"}
        await wait_ready(f"http://127.0.0.1:{up_port}/")
        headers = {"Authorization": f"Bearer {key}", "X-Latency-Budget-Ms": "50"}
        print(
            f"concurrency {args.concurrency}, {args.seconds:g} s per run, median of "
            f"{args.rounds} rounds, loopback, {os.cpu_count()} CPUs shared with the load generator"
        )
        gateways: dict[str, tuple[Gateway, str]] = {}
        for label, workers, shared, decision_logs in CONFIGS:
            opa_url, opa_pid = None, None
            if shared:
                opa_port, opa_pid = start_shared_opa(work, procs)
                opa_url = f"http://127.0.0.1:{opa_port}"
                await wait_ready(f"{opa_url}/health")
            proc, port = await start_gateway(work, env, workers, opa_url, decision_logs)
            procs.append(proc)
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            gateways[label] = Gateway(proc, workers, opa_pid), url
            if args.warmup_s:  # connection pools, OPA's caches
                await load(url, headers, stream=False, seconds=args.warmup_s, concurrency=4)
        # Rounds, each running every configuration in turn: whatever else loads
        # the machine meanwhile weighs on all of them alike; the median counts.
        runs: dict[str, list[dict[str, Any]]] = {}
        for _ in range(args.rounds):
            for label, (gateway, url) in gateways.items():
                for stream in (False, True):
                    kind = "stream" if stream else "json"
                    r = await measure(gateway, url, headers, args, stream)
                    runs.setdefault(f"{label}/{kind}", []).append(r)
        for name, measured in runs.items():
            r = sorted(measured, key=lambda m: float(m["rps"]))[len(measured) // 2]
            r["rps_runs"] = [round(m["rps"]) for m in measured]
            results[name] = r
            show(name.replace("/", " "), r)
            print(
                f"  {'':<28} CPU {r['cpu_ms']:.2f} ms/request (gateway + OPA), RSS "
                f"gateway {r['rss_gateway_mib']:.0f} MiB + OPA {r['rss_opa_mib']:.0f} MiB; "
                f"req/s of each round {r['rps_runs']}"
            )
        for kind in ("json", "stream"):
            one, two = results[f"1 worker/{kind}"], results[f"2 workers/{kind}"]
            each = results[f"2 workers, OPA each/{kind}"]
            shared_r = results[f"2 workers, OPA shared/{kind}"]
            print(
                f"  {kind}: 2 workers / 1 worker = {two['rps'] / one['rps']:.2f}x req/s; "
                f"OPA shared / OPA each = {shared_r['rps'] / each['rps']:.2f}x req/s, "
                f"{shared_r['cpu_ms'] / each['cpu_ms']:.2f}x CPU per request, "
                f"{shared_r['rss_opa_mib'] / each['rss_opa_mib']:.2f}x OPA RSS"
            )
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(work, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--warmup-s", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3, help="runs per configuration")
    parser.add_argument("--json", default=None, help="also write results to this file")
    return asyncio.run(run(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
