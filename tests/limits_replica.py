"""One limiter replica in its own process, for tests/test_limits_redis.py.

`python -m tests.limits_replica REDIS_URL LIMITS_FILE MODE TENANT COSTS...`

Prints `ready` once connected, waits for a line on stdin (so that every replica
starts its burst at the same moment), then:

- `burst`: reserves every cost of COSTS at once (concurrently), holds all the
  admitted reservations in flight together, settles each at its reserved cost,
  and prints `{"admitted": [...], "refused": [...]}` as one JSON line;
- `hold`: reserves the first cost, prints `reserved`, and waits to be killed.
"""

from __future__ import annotations

import asyncio
import json
import sys

from gateway.errors import RateLimitedError
from gateway.limits.config import load_limits
from gateway.limits.estimate import Estimate
from gateway.limits.model import Subject
from gateway.limits.redis_backend import RedisLimits, redis_client


async def main(url: str, limits_file: str, mode: str, tenant: str, costs: list[float]) -> None:
    limiter = RedisLimits(load_limits(limits_file), redis_client(url, timeout_s=5.0))
    await limiter.start()
    subject = Subject(tenant)
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)

    async def attempt(cost: float) -> tuple[float, object]:
        try:
            return cost, await limiter.reserve(subject, Estimate(100, 100, cost))
        except RateLimitedError as err:
            return cost, err

    if mode == "hold":
        await limiter.reserve(subject, Estimate(100, 100, costs[0]))
        print("reserved", flush=True)
        await asyncio.Event().wait()
    outcomes = await asyncio.gather(*(attempt(cost) for cost in costs))
    admitted, refused = [], []
    for cost, outcome in outcomes:
        if isinstance(outcome, RateLimitedError):
            refused.append(cost)
        else:
            admitted.append((cost, outcome))
    await asyncio.gather(
        *(limiter.settle(r, 200, cost, estimated=False) for cost, r in admitted)  # type: ignore[arg-type]
    )
    await limiter.close()
    print(json.dumps({"admitted": [c for c, _ in admitted], "refused": refused}), flush=True)


if __name__ == "__main__":
    url, limits_file, mode, tenant, *rest = sys.argv[1:]
    asyncio.run(main(url, limits_file, mode, tenant, [float(c) for c in rest]))
