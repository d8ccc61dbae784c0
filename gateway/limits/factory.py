"""Builds the limiter the settings describe (None when no limits file is set)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from gateway.errors import ConfigError
from gateway.limits.backend import LimitsBackend, LimitsObserver
from gateway.limits.config import LimitsConfigError, load_limits
from gateway.limits.memory import InProcessLimits
from gateway.settings import Settings


class LimitsSetupError(ConfigError):
    """The limits file or the Redis settings are invalid; the message says which."""


def build_limits(
    settings: Settings,
    *,
    environ: Mapping[str, str] | None = None,
    observer: LimitsObserver | None = None,
    clock: Callable[[], float] = time.time,
) -> LimitsBackend | None:
    """The limiter for `settings`: Redis when `limits_redis_url` is set, else in-process.

    Validates the limits file now (LimitsSetupError lists every problem); does
    not connect (call `await limiter.start()`)."""
    if settings.limits is None:
        return None
    try:
        config = load_limits(settings.limits)
    except LimitsConfigError as err:
        raise LimitsSetupError("\n".join(err.problems)) from err
    fail_open = settings.limits_fail_mode == "open"
    if settings.limits_redis_url is None:
        return InProcessLimits(config, fail_open=fail_open, clock=clock, observer=observer)
    from gateway.limits.redis_backend import RedisConfigError, RedisLimits, redis_client

    try:
        client = redis_client(
            settings.limits_redis_url,
            cluster=settings.limits_redis_cluster,
            timeout_s=settings.limits_redis_timeout_ms / 1000,
            password_env=settings.limits_redis_password_env,
            environ=environ,
        )
    except RedisConfigError as err:
        raise LimitsSetupError(str(err)) from err
    return RedisLimits(config, client, fail_open=fail_open, clock=clock, observer=observer)
