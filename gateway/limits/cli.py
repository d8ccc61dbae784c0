"""`kamiwaza budgets`: each tenant's limits, what it has used and what is left.

Reads the limits file and, with a Redis URL, the counters every replica
shares (purging expired reservations as the gateway would). Without Redis the
limiter is in-process: its counters live in each gateway process's memory and
no other process can read them, so only the limits are shown.

Tenants listed: those of the limits file, those with counters in Redis, and
any given with --tenant. Exit codes: 0 ok, 1 invalid limits file or Redis
unreachable, 2 usage errors.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import click

if TYPE_CHECKING:  # imported when the command runs: `kamiwaza` itself starts fast
    from gateway.limits.backend import LimitsBackend
    from gateway.limits.config import LimitsConfig
    from gateway.limits.model import LimitState, Subject

EXIT_OPERATIONAL = 1
COLUMNS = ("tenant", "scope", "limit", "value", "used", "remaining", "resets in")


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(EXIT_OPERATIONAL)


def _subjects(config: LimitsConfig, tenant: str) -> list[tuple[Subject, str]]:
    """The scopes worth showing for `tenant`: its own, its named users, its endpoints."""
    from gateway.limits.config import EVERY_USER
    from gateway.limits.model import Subject

    entry = config.tenant(tenant)
    out = [(Subject(tenant), "tenant")]
    out += [(Subject(tenant, user=u), "user") for u in sorted(entry.users) if u != EVERY_USER]
    out += [(Subject(tenant, endpoint=e), "endpoint") for e in sorted(entry.endpoints)]
    return out


def _row(
    tenant: str, state: LimitState | None, scope: str, field: str, value: float
) -> dict[str, Any]:
    from gateway.limits.model import SPEND_FIELDS, duration

    spend = field in SPEND_FIELDS
    row: dict[str, Any] = {
        "tenant": tenant,
        "scope": scope,
        "limit": field,
        "value": round(value, 6) if spend else int(value),
        "used": None,
        "remaining": None,
        "resets_in": None,
    }
    if state is not None:
        row["used"] = round(state.used, 6) if spend else int(state.used)
        remaining = max(state.remaining, 0)
        row["remaining"] = round(remaining, 6) if spend else int(remaining)
        row["resets_in"] = duration(state.reset_ms) if state.used else None
    return row


async def _collect(
    config: LimitsConfig, limiter: LimitsBackend | None, tenants: list[str]
) -> list[dict[str, Any]]:
    from gateway.limits.model import applicable

    rows: list[dict[str, Any]] = []
    for tenant in tenants:
        for subject, kind in _subjects(config, tenant):
            states = await limiter.status(subject) if limiter is not None else None
            if states is None:
                for limit in applicable(config, subject):
                    if limit.kind == kind:
                        scope = _scope(limit.kind, limit.name)
                        rows.append(_row(tenant, None, scope, limit.field, limit.value))
                continue
            for state in states:
                if state.limit.kind == kind:
                    scope = _scope(state.limit.kind, state.limit.name)
                    rows.append(_row(tenant, state, scope, state.limit.field, state.limit.value))
    return rows


def _scope(kind: str, name: str | None) -> str:
    return kind if name is None else f"{kind} {name}"


async def _tenants_in_redis(limiter: Any) -> set[str]:
    from gateway.limits.backend import StoreUnavailable
    from gateway.limits.keys import PREFIX

    found: set[str] = set()
    try:
        async for key in limiter.client.scan_iter(f"{PREFIX}:{{*", count=1000):
            text = key.decode() if isinstance(key, bytes) else str(key)
            start, end = text.find("{"), text.find("}")
            if 0 <= start < end:
                found.add(unquote(text[start + 1 : end]))
    except Exception as err:  # redis errors: the caller reports the store as unreachable
        raise StoreUnavailable(f"{type(err).__name__}: {err}") from err
    return found


def _table(rows: list[dict[str, Any]]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.6g}"
        return "-" if value is None else str(value)

    lines = [list(COLUMNS)]
    for row in rows:
        lines.append(
            [
                row["tenant"],
                row["scope"],
                row["limit"],
                cell(row["value"]),
                cell(row["used"]),
                cell(row["remaining"]),
                cell(row["resets_in"]),
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS))]
    return "".join(
        "  ".join(value.ljust(widths[i]) for i, value in enumerate(line)).rstrip() + "\n"
        for line in lines
    )


@click.command("budgets")
@click.option(
    "--limits",
    "limits_file",
    required=True,
    envvar="KAMIWAZA_LIMITS",
    type=click.Path(dir_okay=False),
    help="The limits file (env: KAMIWAZA_LIMITS).",
)
@click.option(
    "--redis-url",
    envvar="KAMIWAZA_LIMITS_REDIS_URL",
    default=None,
    help="The gateway's Redis (env: KAMIWAZA_LIMITS_REDIS_URL); without it, limits only.",
)
@click.option("--redis-cluster", is_flag=True, default=False, help="Redis is a cluster.")
@click.option(
    "--redis-password-env",
    envvar="KAMIWAZA_LIMITS_REDIS_PASSWORD_ENV",
    default=None,
    help="Variable that holds the Redis password.",
)
@click.option("--tenant", "tenants", multiple=True, help="Show this tenant too (repeatable).")
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True
)
def budgets(
    *,
    limits_file: str,
    redis_url: str | None,
    redis_cluster: bool,
    redis_password_env: str | None,
    tenants: tuple[str, ...],
    fmt: str,
) -> None:
    """Each tenant's limits, use and what is left (from Redis, shared by replicas)."""
    from gateway.limits.backend import StoreUnavailable
    from gateway.limits.config import LimitsConfigError, load_limits

    try:
        config = load_limits(limits_file)
    except LimitsConfigError as err:
        _fail("\n".join(err.problems))
        return
    limiter = None
    if redis_url is None:
        click.echo(
            "note: no Redis: the in-process limiter keeps its counters in each gateway "
            "process and shares no state; showing the limits only",
            err=True,
        )
    else:
        from gateway.limits.redis_backend import RedisConfigError, RedisLimits, redis_client

        try:
            client = redis_client(
                redis_url, cluster=redis_cluster, timeout_s=2.0, password_env=redis_password_env
            )
        except RedisConfigError as err:
            _fail(str(err))
            return
        limiter = RedisLimits(config, client)

    async def run() -> list[dict[str, Any]]:
        try:
            names = set(config.tenants) | set(tenants)
            if limiter is not None:
                names |= await _tenants_in_redis(limiter)
            return await _collect(config, limiter, sorted(names))
        finally:
            if limiter is not None:
                await limiter.close()

    try:
        rows = asyncio.run(run())
    except StoreUnavailable as err:
        _fail(f"Redis at {redis_url} is unreachable: {err}")
        return
    if fmt == "json":
        click.echo(json.dumps({"shared": limiter is not None, "limits": rows}, indent=2))
    else:
        click.echo(_table(rows), nl=False)
