"""Load benchmark: the same traffic sent directly to a fast local upstream and
through the gateway (with its OPA sidecar in the path), on loopback.

Reports requests/s and p50/p99 latency for both, the latency the gateway adds,
time-to-first-token overhead for streams, CPU per request of the gateway and
its OPA sidecar, and the gateway's memory over the run.
Targets (issue 3, on the 2-core machine): added p50 < 1 ms and p99 < 5 ms at
moderate load; >= 1,000 requests/s through the gateway; TTFT overhead < 2 ms;
memory flat over a 2-minute run.

The same load also goes through `bench/floor_proxy.py`, the cheapest proxy the
gateway's design allows (an OPA query through opa-python-client, one aiohttp
forward, nothing else) against its own OPA on the same compiled policy: what it
adds is the floor that the components cost on this machine before any of the
gateway's own work.

    .venv/bin/python bench/gateway_bench.py [--seconds 10] [--concurrency 16] [--soak 120]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.auth import KeyStore  # noqa: E402
from gateway.settings import load_settings  # noqa: E402
from gateway.sidecar import go_runtime_env  # noqa: E402
from tests.processes import free_port  # noqa: E402
from translator.opa import find_opa  # noqa: E402
from translator.pipeline import compile_policy, write_output  # noqa: E402

BIN = Path(sys.executable).parent
BODY = {"model": "bench", "messages": [{"role": "user", "content": "ping"}]}

POLICY = """\
version: v1
rules:
  - name: pii
    match: {data_class: pii-restricted}
    route_to: gpu
  - name: fast
    match: {latency_budget_ms: "<100"}
    route_to: gpu
  - default: {route_to: gpu}
"""


def registry(port: int) -> str:
    return (
        "endpoints:\n"
        "  gpu:\n"
        "    type: openai-compatible\n"
        f"    base_url: http://127.0.0.1:{port}/v1\n"
        "    in_vpc: true\n"
        "    auth: {bearer_token_env: BENCH_TOKEN}\n"
        "    pricing: {input_per_1k: 0.0002, output_per_1k: 0.0002}\n"
    )


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_pids(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as fh:
        return [int(p) for p in fh.read().split()]


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def wait_ready(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(url) as resp:
                    if resp.status in (200, 404, 405):
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)  # readiness poll interval
    raise RuntimeError(f"{url} did not become ready")


async def load(
    url: str, headers: dict[str, str], *, stream: bool, seconds: float, concurrency: int
) -> dict[str, Any]:
    """Closed-loop load: `concurrency` workers send requests back to back."""
    latencies: list[float] = []
    ttfts: list[float] = []
    errors = 0
    body = json.dumps({**BODY, "stream": stream}).encode()
    hdrs = {"Content-Type": "application/json", **headers}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers=hdrs) as resp:
                        if stream:
                            first = True
                            async for _line in resp.content:
                                if first:
                                    ttfts.append(time.perf_counter() - start)
                                    first = False
                        else:
                            await resp.read()
                        if resp.status != 200:
                            errors += 1
                            continue
                except aiohttp.ClientError:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - start)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    qs = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    out = {
        "requests": len(latencies),
        "errors": errors,
        "rps": len(latencies) / elapsed,
        "p50_ms": qs[49] * 1000,
        "p99_ms": qs[98] * 1000,
    }
    if ttfts:
        out["ttft_p50_ms"] = statistics.median(ttfts) * 1000
    return out


def show(label: str, r: dict[str, Any]) -> None:
    ttft = f", TTFT p50 {r['ttft_p50_ms']:.2f} ms" if "ttft_p50_ms" in r else ""
    print(
        f"  {label:<28} {r['rps']:8.0f} req/s  p50 {r['p50_ms']:6.2f} ms  "
        f"p99 {r['p99_ms']:6.2f} ms{ttft}  ({r['requests']} ok, {r['errors']} errors)"
    )


def start_floor(
    work: Path, up_port: int, procs: list[subprocess.Popen[bytes]]
) -> tuple[str, int, int, int]:
    """Start an OPA on the compiled bench policy and the floor proxy in front of it.

    Returns the proxy's URL, its OPA's port and the pids of the proxy and its OPA. The OPA runs
    with the Go runtime settings the gateway gives its sidecar (inherited from
    this environment otherwise), without decision logs."""
    settings = load_settings()
    _, files = compile_policy(str(work / "routing.yaml"), str(work / "endpoints.yaml"))
    write_output(files, str(work / "compiled"))
    opa_port, floor_port = free_port(), free_port()
    procs.append(
        subprocess.Popen(
            [
                find_opa(),
                "run",
                "--server",
                "--addr",
                f"127.0.0.1:{opa_port}",
                "--log-level",
                "error",
                str(work / "compiled"),
                str(ROOT / "rego"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, **go_runtime_env(settings.opa_gomaxprocs, settings.opa_gogc)},
        )
    )
    procs.append(
        subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "bench" / "floor_proxy.py"),
                str(floor_port),
                f"http://127.0.0.1:{opa_port}",
                f"http://127.0.0.1:{up_port}/v1/chat/completions",
            ]
        )
    )
    return f"http://127.0.0.1:{floor_port}", opa_port, procs[-1].pid, procs[-2].pid


async def run(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="kamiwaza-gwbench-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        up_port, gw_port = free_port(), free_port()
        procs.append(
            subprocess.Popen(
                [sys.executable, str(ROOT / "bench" / "fast_upstream.py"), str(up_port)]
            )
        )
        (work / "routing.yaml").write_text(POLICY)
        (work / "endpoints.yaml").write_text(registry(up_port))
        _, key = KeyStore.load(work / "keys.json", missing_ok=True).create(tenant="bench")
        env = {**os.environ, "BENCH_TOKEN": "bench-token"}
        gateway = subprocess.Popen(
            [
                str(BIN / "kamiwaza"),
                "serve",
                "--policy",
                "routing.yaml",
                "--keys",
                "keys.json",
                "--port",
                str(gw_port),
                "--audit-dir",
                "audit",
                "--rego",
                str(ROOT / "rego"),
            ],
            cwd=work,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(gateway)
        floor, floor_opa_port, floor_pid, floor_opa_pid = start_floor(work, up_port, procs)
        direct = f"http://127.0.0.1:{up_port}/v1/chat/completions"
        via = f"http://127.0.0.1:{gw_port}/v1/chat/completions"
        await wait_ready(f"http://127.0.0.1:{up_port}/")
        await wait_ready(f"http://127.0.0.1:{gw_port}/readyz")
        await wait_ready(f"http://127.0.0.1:{floor_opa_port}/health")
        await wait_ready(f"{floor}/")
        sidecar = child_pids(gateway.pid)[0]
        auth_direct = {"Authorization": "Bearer bench-token"}
        auth_gw = {"Authorization": f"Bearer {key}", "X-Latency-Budget-Ms": "50"}
        targets = (
            ("direct", direct, auth_direct),
            ("floor", f"{floor}/v1/chat/completions", auth_direct),
            ("gateway", via, auth_gw),
        )
        # Warm up connection pools and both OPAs.
        for _, url, headers in targets[1:]:
            await load(url, headers, stream=False, seconds=1, concurrency=4)

        async def measure(
            label: str, url: str, headers: dict[str, str], stream: bool, concurrency: int
        ) -> dict[str, Any]:
            seconds = args.seconds if concurrency > 1 else args.seconds / 2
            pids = {"gateway": (gateway.pid, sidecar), "floor": (floor_pid, floor_opa_pid)}
            if label not in pids:
                return await load(
                    url, headers, stream=stream, seconds=seconds, concurrency=concurrency
                )
            proxy, opa = pids[label]
            before = cpu_seconds(proxy), cpu_seconds(opa)
            r = await load(url, headers, stream=stream, seconds=seconds, concurrency=concurrency)
            after = cpu_seconds(proxy), cpu_seconds(opa)
            if r["requests"]:
                r["cpu_proxy_ms"] = (after[0] - before[0]) * 1000 / r["requests"]
                r["cpu_opa_ms"] = (after[1] - before[1]) * 1000 / r["requests"]
            return r

        results: dict[str, Any] = {}
        print(
            f"concurrency {args.concurrency}, {args.seconds:g} s per run, loopback, 2 cores shared"
        )
        # Then moderate load: one request at a time, the latency a single caller sees.
        for prefix, concurrency in (("", args.concurrency), ("serial-", 1)):
            for stream in (False, True):
                kind = "stream" if stream else "json"
                for label, url, headers in targets:
                    r = await measure(label, url, headers, stream, concurrency)
                    results[f"{prefix}{kind}-{label}"] = r
                    show(f"{prefix}{kind} {label}", r)
                d = results[f"{prefix}{kind}-direct"]
                for label in ("floor", "gateway"):
                    g = results[f"{prefix}{kind}-{label}"]
                    line = (
                        f"  {prefix}{kind}: {label} adds p50 {g['p50_ms'] - d['p50_ms']:.2f} ms, "
                        f"p99 {g['p99_ms'] - d['p99_ms']:.2f} ms"
                    )
                    if stream:
                        line += f", TTFT {g['ttft_p50_ms'] - d['ttft_p50_ms']:.2f} ms"
                    line += (
                        f"; CPU per request: {label} {g['cpu_proxy_ms']:.2f} ms,"
                        f" its OPA {g['cpu_opa_ms']:.2f} ms"
                    )
                    print(line)
        if args.soak:
            before = rss_kib(gateway.pid), rss_kib(sidecar)
            samples = []
            step = max(args.soak / 6, 1)
            for _ in range(6):
                await load(via, auth_gw, stream=False, seconds=step, concurrency=args.concurrency)
                samples.append((rss_kib(gateway.pid), rss_kib(sidecar)))
            for i, name in enumerate(("gateway", "OPA sidecar")):
                print(
                    f"  memory over {args.soak:g} s soak: {name} RSS {before[i] / 1024:.1f} MiB -> "
                    + " -> ".join(f"{s[i] / 1024:.1f}" for s in samples)
                    + " MiB"
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
    parser.add_argument("--soak", type=float, default=0.0, help="seconds of soak for memory")
    parser.add_argument("--json", default=None, help="also write results to this file")
    return asyncio.run(run(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
