"""Optional scrape of self-hosted servers' own Prometheus metrics.

An `openai-compatible` endpoint with a `metrics_url` in the registry (vLLM and
TGI serve `/metrics` on their API port) is read every
`health_scrape_interval_s` by one background task, never on the request path.
The values go to the :class:`~gateway.health.monitor.HealthMonitor` as gauges:

- `queue_depth`: requests waiting for the server (`vllm:num_requests_waiting`,
  TGI's `tgi_queue_size`), summed over label sets;
- `kv_cache_usage`: the KV cache in use, 0..1 (`vllm:kv_cache_usage_perc`, or
  `vllm:gpu_cache_usage_perc` on older vLLM), the highest over label sets.

A scrape that fails or times out forgets the endpoint's scraped values (a
stale queue depth must not keep moving traffic); the failure is logged once
until a scrape succeeds again.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Mapping

import aiohttp
from aiohttp import web

from gateway.health.monitor import HealthMonitor

log = logging.getLogger("gateway.health")

# Prometheus metric name -> (health value, how label sets combine).
METRICS: Mapping[str, tuple[str, str]] = {
    "vllm:num_requests_waiting": ("queue_depth", "sum"),
    "tgi_queue_size": ("queue_depth", "sum"),
    "vllm:kv_cache_usage_perc": ("kv_cache_usage", "max"),
    "vllm:gpu_cache_usage_perc": ("kv_cache_usage", "max"),
}
MAX_BODY_BYTES = 4 << 20


def parse_metrics(text: str) -> dict[str, float]:
    """The health values in a Prometheus text exposition (unknown metrics ignored)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_end = len(line)
        for i, ch in enumerate(line):
            if ch in "{ \t":
                name_end = i
                break
        wanted = METRICS.get(line[:name_end])
        if wanted is None:
            continue
        rest = line[name_end:]
        if rest.startswith("{"):
            close = rest.rfind("}")
            if close < 0:
                continue
            rest = rest[close + 1 :]
        fields = rest.split()
        if not fields:
            continue
        try:
            value = float(fields[0])
        except ValueError:
            continue
        if not math.isfinite(value):
            continue
        key, combine = wanted
        if key not in out:
            out[key] = value
        elif combine == "sum":
            out[key] += value
        else:
            out[key] = max(out[key], value)
    return out


class MetricsScraper:
    """Reads each endpoint's `metrics_url` every `interval_s` into the monitor."""

    def __init__(
        self,
        monitor: HealthMonitor,
        urls: Mapping[str, str],
        *,
        interval_s: float = 10.0,
        timeout_s: float = 2.0,
    ) -> None:
        self.monitor = monitor
        self.urls = dict(urls)
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.scrapes = 0  # completed rounds, for tests and `kamiwaza stats`
        self._failing: set[str] = set()
        self._session: aiohttp.ClientSession | None = None

    async def scrape_once(self) -> None:
        """One round over every endpoint (concurrently)."""
        if self._session is None:
            raise RuntimeError("the scraper is not running")
        await asyncio.gather(*(self._scrape(n, u) for n, u in self.urls.items()))
        self.scrapes += 1

    async def _scrape(self, name: str, url: str) -> None:
        assert self._session is not None
        try:
            async with self._session.get(url, allow_redirects=False) as resp:
                if resp.status != 200:
                    raise ValueError(f"HTTP {resp.status}")
                body = await resp.content.read(MAX_BODY_BYTES)
            values = parse_metrics(body.decode("utf-8", errors="replace"))
        except (aiohttp.ClientError, TimeoutError, ValueError) as err:
            self.monitor.set_gauges(name, {})
            if name not in self._failing:
                self._failing.add(name)
                log.warning("health: cannot scrape %s metrics: %s", name, err or type(err).__name__)
            return
        if name in self._failing:
            self._failing.discard(name)
            log.info("health: scraping %s metrics again", name)
        self.monitor.set_gauges(name, values)

    async def _loop(self) -> None:
        while True:
            try:
                await self.scrape_once()
            except Exception:  # a scraper bug must not end the scraping for good
                log.exception("health: scrape round failed")
            await asyncio.sleep(self.interval_s)

    async def cleanup_ctx(self, app: web.Application) -> AsyncIterator[None]:
        """For `app.cleanup_ctx`: the session and the task live while the app does."""
        if not self.urls:
            yield
            return
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout_s), trust_env=False
        )
        task = asyncio.create_task(self._loop(), name="kamiwaza-health-scrape")
        try:
            yield
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await self._session.close()
            self._session = None
