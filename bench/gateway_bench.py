"""Load benchmark: the same traffic sent directly to a fast local upstream and
through the gateway (with its OPA sidecar in the path), on loopback.

Reports requests/s and p50/p99 latency for both, the latency the gateway adds,
time-to-first-token overhead for streams, and the gateway's memory over the run.
Targets (issue 3, on the 2-core machine): added p50 < 1 ms and p99 < 5 ms at
moderate load; >= 1,000 requests/s through the gateway; TTFT overhead < 2 ms;
memory flat over a 2-minute run.

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
from tests.processes import free_port  # noqa: E402

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
        direct = f"http://127.0.0.1:{up_port}/v1/chat/completions"
        via = f"http://127.0.0.1:{gw_port}/v1/chat/completions"
        await wait_ready(f"http://127.0.0.1:{up_port}/")
        await wait_ready(f"http://127.0.0.1:{gw_port}/readyz")
        auth_direct = {"Authorization": "Bearer bench-token"}
        auth_gw = {"Authorization": f"Bearer {key}", "X-Latency-Budget-Ms": "50"}
        # Warm up connection pools and OPA.
        await load(via, auth_gw, stream=False, seconds=1, concurrency=4)

        results: dict[str, Any] = {}
        print(
            f"concurrency {args.concurrency}, {args.seconds:g} s per run, loopback, 2 cores shared"
        )
        for stream in (False, True):
            kind = "stream" if stream else "json"
            for label, url, headers in (("direct", direct, auth_direct), ("gateway", via, auth_gw)):
                r = await load(
                    url, headers, stream=stream, seconds=args.seconds, concurrency=args.concurrency
                )
                results[f"{kind}-{label}"] = r
                show(f"{kind} {label}", r)
            d, g = results[f"{kind}-direct"], results[f"{kind}-gateway"]
            line = (
                f"  {kind}: gateway adds p50 {g['p50_ms'] - d['p50_ms']:.2f} ms, "
                f"p99 {g['p99_ms'] - d['p99_ms']:.2f} ms"
            )
            if stream:
                line += f", TTFT {g['ttft_p50_ms'] - d['ttft_p50_ms']:.2f} ms"
            print(line)
        # Moderate load: one request at a time, the latency a single caller sees.
        for stream in (False, True):
            kind = "stream" if stream else "json"
            for label, url, headers in (("direct", direct, auth_direct), ("gateway", via, auth_gw)):
                r = await load(url, headers, stream=stream, seconds=args.seconds / 2, concurrency=1)
                results[f"serial-{kind}-{label}"] = r
                show(f"{kind} serial {label}", r)
            d, g = results[f"serial-{kind}-direct"], results[f"serial-{kind}-gateway"]
            line = (
                f"  serial {kind}: gateway adds p50 {g['p50_ms'] - d['p50_ms']:.2f} ms, "
                f"p99 {g['p99_ms'] - d['p99_ms']:.2f} ms"
            )
            if stream:
                line += f", TTFT {g['ttft_p50_ms'] - d['ttft_p50_ms']:.2f} ms"
            print(line)
        if args.soak:
            before = rss_kib(gateway.pid)
            samples = []
            step = max(args.soak / 6, 1)
            for _ in range(6):
                await load(via, auth_gw, stream=False, seconds=step, concurrency=args.concurrency)
                samples.append(rss_kib(gateway.pid))
            print(
                f"  memory over {args.soak:g} s soak: RSS {before / 1024:.1f} MiB -> "
                + " -> ".join(f"{s / 1024:.1f}" for s in samples)
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
