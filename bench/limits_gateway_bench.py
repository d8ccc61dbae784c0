"""What the per-tenant limiter adds to a request through the gateway.

Three `kamiwaza serve` processes (each with its OPA sidecar) in front of one
fast local upstream (bench/fast_upstream.py), on loopback: one without limits,
one with the in-process limiter, one with its counters in a redis-server on
loopback. The same JSON chat completion goes to each in turn (round robin, one
request at a time, so that drift in the machine's load hits all three alike);
the difference of the medians is what the limiter adds: the budget lookup for
OPA's input, the reservation before dispatch and the settlement after.

Used by bench/limits_bench.py; figures are printed, never asserted.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.gateway_bench import POLICY, registry, wait_ready  # noqa: E402
from gateway.auth import KeyStore  # noqa: E402
from tests.processes import free_port, stop_process  # noqa: E402

BIN = Path(sys.executable).parent
BODY = json.dumps(
    {"model": "bench", "max_tokens": 64, "messages": [{"role": "user", "content": "ping"}]}
).encode()
# High enough never to refuse: every limit is checked, none is reached.
LIMITS = """\
version: v1
defaults:
  requests_per_minute: 100000000
  tokens_per_minute: 100000000000
  usd_per_day: 1000000
  usd_per_month: 1000000
"""


def _serve(
    work: Path, name: str, port: int, settings: Mapping[str, str]
) -> subprocess.Popen[bytes]:
    config = work / f"{name}.yaml"
    lines = {
        "policy": "routing.yaml",
        "endpoints": "endpoints.yaml",
        "keys": "keys.json",
        "audit_dir": f"audit-{name}",
        "rego_dir": str(ROOT / "rego"),
        "log_level": "warning",
        **settings,
    }
    config.write_text("".join(f"{k}: {v}\n" for k, v in lines.items()))
    return subprocess.Popen(
        [str(BIN / "kamiwaza"), "serve", "--config", str(config), "--port", str(port)],
        cwd=work,
        env={**os.environ, "BENCH_TOKEN": "bench-token"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _quantiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return statistics.median(ordered) * 1000, p99 * 1000


async def _round_robin(
    targets: Mapping[str, str], headers: Mapping[str, str], requests: int
) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {name: [] for name in targets}
    hdrs = {"Content-Type": "application/json", **headers}
    async with aiohttp.ClientSession() as session:
        for i in range(requests + 100):  # the first 100 warm up connections and caches
            for name, url in targets.items():
                start = time.perf_counter()
                async with session.post(url, data=BODY, headers=hdrs) as resp:
                    await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"{name}: HTTP {resp.status}")
                if i >= 100:
                    samples[name].append(time.perf_counter() - start)
    return samples


def through_gateway(work: Path, redis_url: str, requests: int) -> list[str]:
    """The report's lines (the caller prints them)."""
    up_port = free_port()
    procs = [
        subprocess.Popen([sys.executable, str(ROOT / "bench" / "fast_upstream.py"), str(up_port)])
    ]
    try:
        (work / "routing.yaml").write_text(POLICY)
        (work / "endpoints.yaml").write_text(registry(up_port))
        (work / "limits.yaml").write_text(LIMITS)
        _, key = KeyStore.load(work / "keys.json", missing_ok=True).create(tenant="bench")
        setups = {
            "no limits": {},
            "in-process limits": {"limits": "limits.yaml"},
            "redis limits": {"limits": "limits.yaml", "limits_redis_url": redis_url},
        }
        targets: dict[str, str] = {}
        for name, settings in setups.items():
            port = free_port()
            procs.append(_serve(work, name.replace(" ", "-"), port, settings))
            targets[name] = f"http://127.0.0.1:{port}/v1/chat/completions"

        async def run() -> dict[str, list[float]]:
            await wait_ready(f"http://127.0.0.1:{up_port}/")
            for url in targets.values():
                await wait_ready(url.replace("/v1/chat/completions", "/readyz"))
            return await _round_robin(targets, {"Authorization": f"Bearer {key}"}, requests)

        samples = asyncio.run(run())
    finally:
        for proc in procs:
            stop_process(proc)
    base_p50, base_p99 = _quantiles(samples["no limits"])
    lines = [f"gateway, no limits: {requests} sequential requests: p50 {base_p50:.3f} ms  "
             f"p99 {base_p99:.3f} ms"]  # fmt: skip
    for name in ("in-process limits", "redis limits"):
        p50, p99 = _quantiles(samples[name])
        lines.append(
            f"gateway, {name}: p50 {p50:.3f} ms  p99 {p99:.3f} ms  "
            f"(adds p50 {p50 - base_p50:+.3f} ms, p99 {p99 - base_p99:+.3f} ms; "
            f"p50 ratio {p50 / base_p50:.3f})"
        )
    return lines
