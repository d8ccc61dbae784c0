"""What the per-tenant limiter adds to a request.

Per request, the request path makes three limiter calls: `remaining_share`
(for OPA's input), `reserve` before dispatch, `settle` after the answer. This
measures the three together, and reserve + settle alone, with:

1. Redis on loopback (a redis-server started here on a free port, one client
   as one replica has): one EVALSHA per call, sequential requests, then
   concurrent ones (16 in flight) to see the store under a burst;
2. the in-process backend (one replica only);
3. through the gateway (bench/limits_gateway_bench.py): `kamiwaza serve`
   without limits, with in-process limits and with Redis limits, the same
   request round robin; the difference of the medians is what the limiter adds.

The subject has a tenant, key and user limit (4 + 1 + 1 limits checked) and a
spend limit high enough never to refuse. Figures are printed, never asserted.

    .venv/bin/python bench/limits_bench.py [--requests 3000] [--gateway-requests 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.limits_gateway_bench import through_gateway  # noqa: E402
from gateway.limits.backend import LimitsBackend  # noqa: E402
from gateway.limits.config import parse_limits  # noqa: E402
from gateway.limits.estimate import estimate_request  # noqa: E402
from gateway.limits.memory import InProcessLimits  # noqa: E402
from gateway.limits.model import Subject  # noqa: E402
from gateway.limits.redis_backend import RedisLimits, redis_client  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402
from translator.registry import Pricing  # noqa: E402

LIMITS = """\
version: v1
defaults:
  requests_per_minute: 100000000
  tokens_per_minute: 100000000000
  usd_per_day: 1000000
  usd_per_month: 1000000
tenants:
  bench:
    users: {"*": {requests_per_minute: 100000000}}
keys:
  00000000000000aa: {tokens_per_minute: 100000000000}
"""
SUBJECT = Subject("bench", key_id="00000000000000aa", user="u-1", endpoint="anthropic")
BODY = {"model": "m", "max_tokens": 256, "messages": [{"role": "user", "content": "x" * 2000}]}
PRICE = Pricing(input_per_1k=0.003, output_per_1k=0.015)


def _ms(samples: list[float]) -> str:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (
        f"p50 {statistics.median(ordered) * 1000:.3f} ms  p99 {p99 * 1000:.3f} ms  "
        f"mean {statistics.fmean(ordered) * 1000:.3f} ms"
    )


async def _one(limiter: LimitsBackend, with_share: bool) -> None:
    if with_share:
        await limiter.remaining_share(Subject("bench", key_id=SUBJECT.key_id, user=SUBJECT.user))
    estimate = estimate_request(BODY, PRICE, limiter.config.reservation)
    reservation = await limiter.reserve(SUBJECT, estimate)
    await limiter.settle(reservation, 700, 0.004, estimated=False)


async def _sequential(limiter: LimitsBackend, requests: int, with_share: bool) -> list[float]:
    for _ in range(min(200, requests)):  # warm up: connections, scripts
        await _one(limiter, with_share)
    samples = []
    for _ in range(requests):
        start = time.perf_counter()
        await _one(limiter, with_share)
        samples.append(time.perf_counter() - start)
    return samples


async def _concurrent(
    limiter: LimitsBackend, requests: int, width: int
) -> tuple[float, list[float]]:
    samples: list[float] = []
    queue = iter(range(requests))

    async def worker() -> None:
        for _ in queue:
            start = time.perf_counter()
            await _one(limiter, True)
            samples.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(width)))
    return time.perf_counter() - start, samples


async def _report(name: str, make: Callable[[], Awaitable[LimitsBackend]], requests: int) -> None:
    limiter = await make()
    try:
        both = await _sequential(limiter, requests, with_share=False)
        print(f"{name}: reserve + settle, {requests} sequential requests: {_ms(both)}")
        three = await _sequential(limiter, requests, with_share=True)
        print(f"{name}: remaining_share + reserve + settle: {_ms(three)}")
        elapsed, samples = await _concurrent(limiter, requests, 16)
        print(
            f"{name}: the three calls, 16 in flight: {_ms(samples)}  "
            f"({requests / elapsed:.0f} requests/s through the limiter)"
        )
    finally:
        await limiter.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument(
        "--gateway-requests", type=int, default=1000, help="per gateway; 0: skip the gateways"
    )
    args = parser.parse_args(argv)
    config = parse_limits(LIMITS, "bench-limits.yaml")
    print(f"limiter cost per request; subject with {6} limits (tenant 4, key 1, user 1)")
    with tempfile.TemporaryDirectory(prefix="kamiwaza-limits-bench-") as tmp:
        server = RedisServer(Path(tmp))
        server.start()
        try:

            async def redis_limits() -> LimitsBackend:
                limiter = RedisLimits(config, redis_client(server.url, timeout_s=2.0))
                await limiter.start()
                return limiter

            async def memory_limits() -> LimitsBackend:
                return InProcessLimits(config)

            async def run() -> None:
                await _report("redis (loopback)", redis_limits, args.requests)
                await _report("in-process", memory_limits, args.requests)

            asyncio.run(run())
            if args.gateway_requests:
                work = Path(tmp) / "gateways"
                work.mkdir()
                for line in through_gateway(work, server.url, args.gateway_requests):
                    print(line)
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
