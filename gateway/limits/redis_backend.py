"""The limiter's counters in Redis, shared by every gateway replica.

One EVALSHA per step (reserve, settle or release, status) with the scripts of
:mod:`gateway.limits.lua`, loaded once per server at start-up (and again when a
restarted or failed-over server answers NOSCRIPT). All keys of a tenant share
a hash tag, so the same code runs on one server or on Redis Cluster
(`limits_redis_cluster`): a tenant's script runs on the node owning its slot.

Timeouts are short and retries few: a store that does not answer within
`limits_redis_timeout_ms` counts as unreachable, and the limiter fails closed
or open as configured, rather than holding requests.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError

from gateway.errors import ConfigError
from gateway.limits import lua
from gateway.limits.backend import LimitsBackend, StoreUnavailable
from gateway.limits.config import LimitsConfig
from gateway.limits.keys import (
    BUCKET_MS,
    BUCKETS,
    PERIOD_GRACE_MS,
    WINDOW_TTL_MS,
    TenantKeys,
    bucket_names,
)
from gateway.limits.model import CheckResult, Outcome, ReserveStep, SettleTarget

# The state keys outlive the longest reservation by this much.
STATE_TTL_MARGIN_MS = 60_000


class RedisConfigError(ConfigError):
    """The Redis settings are unusable (a password in the URL, a bad scheme)."""


def redis_client(
    url: str,
    *,
    cluster: bool = False,
    timeout_s: float = 0.25,
    password_env: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Redis | RedisCluster:
    """A client for `url` (redis:// or rediss://); the password comes from the
    variable `password_env`, never from the URL (which ends up in logs)."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise RedisConfigError(
            "limits_redis_url: expected a redis://, rediss:// or unix:// URL, "
            f"got {parts.scheme or url!r}"
        )
    if parts.password:
        raise RedisConfigError(
            "limits_redis_url: must not contain a password; name the variable that holds it "
            "in limits_redis_password_env"
        )
    password = None
    if password_env:
        env = os.environ if environ is None else environ
        password = env.get(password_env) or None
        if password is None:
            raise RedisConfigError(f"limits_redis_password_env: variable {password_env} is not set")
    options: dict[str, Any] = {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        # One retry: a pooled connection to a restarted server fails once, then
        # reconnects. More would hold requests while the store is down.
        "retry": Retry(NoBackoff(), 1),
        "password": password,
    }
    if cluster:
        return RedisCluster.from_url(url, **options)
    return Redis.from_url(url, **options)


class RedisLimits(LimitsBackend):
    """Counters in Redis; every replica pointed at the same Redis shares them."""

    name = "redis"
    shared = True

    def __init__(self, config: LimitsConfig, client: Redis | RedisCluster, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.client = client
        self._sha: dict[str, str] = {}

    async def start(self) -> None:
        try:
            await self._load_scripts()
        except StoreUnavailable as err:
            self._log_unavailable(err, "scripts will be loaded when it is back")

    async def close(self) -> None:
        await self.client.aclose()

    async def _load_scripts(self) -> None:
        try:
            for name, text in (("reserve", lua.RESERVE), ("settle", lua.SETTLE)):
                self._sha[name] = await self.client.script_load(text)
        except (TimeoutError, RedisError, OSError) as err:
            raise StoreUnavailable(f"{type(err).__name__}: {err}") from err

    async def _run(self, name: str, keys: Sequence[str], args: Sequence[str | int]) -> Any:
        for attempt in range(2):
            if name not in self._sha:
                await self._load_scripts()
            try:
                return await self.client.evalsha(self._sha[name], len(keys), *keys, *args)
            except NoScriptError:
                # The server restarted or failed over: load the scripts again, once.
                self._sha.clear()
                if attempt:
                    raise StoreUnavailable("the server keeps forgetting the scripts") from None
            except (TimeoutError, RedisError, OSError) as err:
                raise StoreUnavailable(f"{type(err).__name__}: {err}") from err
        raise AssertionError("unreachable")  # pragma: no cover

    async def _reserve(self, step: ReserveStep) -> Outcome:
        checks = step.checks
        fixed = TenantKeys.of(step.tenant)
        keys = [fixed.inflight, fixed.expiry, fixed.reserved]
        ttl_ms = int(self.config.reservation.ttl_s * 1000) + STATE_TTL_MARGIN_MS
        args: list[str | int] = [
            step.now_ms,
            "status" if step.status else "reserve",
            step.res_id or "-",
            step.expires_ms,
            ttl_ms,
            BUCKET_MS,
            BUCKETS,
            WINDOW_TTL_MS,
            len(checks),
            len(step.holds),
            *bucket_names(step.now_ms),
        ]
        for check in checks:
            keys.append(check.key)
            args += [
                check.kind,
                len(keys),
                check.maximum,
                check.amount,
                check.inflight_field,
                check.period_end_ms,
            ]
        for field_name, amount in step.holds:
            args += [field_name, amount]
        reply = await self._run("reserve", keys, args)
        values = [int(v) for v in reply]
        results = tuple(
            CheckResult(*values[1 + i * 4 : 5 + i * 4])  # settled, inflight, wait, reset
            for i in range(len(checks))
        )
        return Outcome(values[0] == 1, results)

    async def _settle(
        self,
        tenant: str,
        res_id: str,
        targets: Sequence[tuple[SettleTarget, int]],
        now_ms: int,
    ) -> bool:
        fixed = TenantKeys.of(tenant)
        keys = [fixed.inflight, fixed.expiry, fixed.reserved]
        args: list[str | int] = [
            now_ms,
            res_id,
            bucket_names(now_ms)[-1],
            BUCKETS,
            WINDOW_TTL_MS,
            len(targets),
        ]
        for target, amount in targets:
            keys.append(target.key)
            args += [target.kind, len(keys), amount, target.period_end_ms + PERIOD_GRACE_MS]
        return int(await self._run("settle", keys, args)) == 1
