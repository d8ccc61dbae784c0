"""Redis key names and time windows of the limiter, as pure functions.

Every key of one tenant carries the tenant in a Redis Cluster hash tag
(`kw:lim:{<tenant>}:...`), so all of them live in one slot and one Lua script
can check and reserve every limit of a request atomically, on a single server
or on a cluster. Names are percent-encoded: a `{`, `}` or `:` in a tenant,
user or endpoint name cannot move the hash tag or collide with another key.

Keys of a tenant (every one has a TTL, refreshed by each write):

- `kw:lim:{t}:inflight` hash, reservation id -> what it holds (`field|amount|...`)
- `kw:lim:{t}:expiry` sorted set, reservation id -> when it expires (ms)
- `kw:lim:{t}:reserved` hash, `<scope>:tpm` / `<scope>:usd` -> in-flight sums
- `kw:lim:{t}:<scope>:rpm`, `...:tpm` hashes, bucket number -> requests / tokens
- `kw:lim:{t}:<scope>:usd:d:<YYYYMMDD>`, `...:usd:m:<YYYYMM>` nano-dollars spent

where `<scope>` is `tenant`, `key:<id>`, `user:<name>` or `endpoint:<name>`.
"""

from __future__ import annotations

import calendar
import functools
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final
from urllib.parse import quote

PREFIX: Final = "kw:lim"
# Per-minute limits count in buckets of 6 s; a check sums the current bucket
# and the 10 before it, i.e. the last 60 to 66 seconds. Anything admitted in
# any 60 s window is therefore within the limit (a little stricter than an
# exact sliding log, never looser), at 11 hash fields per limit.
BUCKET_MS: Final = 6_000
BUCKETS: Final = 11
WINDOW_MS: Final = 60_000
WINDOW_TTL_MS: Final = 2 * BUCKET_MS * BUCKETS
# Spend counters stay a day after their period ends (for `kamiwaza budgets`).
PERIOD_GRACE_MS: Final = 86_400_000
NANO: Final = 1_000_000_000  # spend is counted in nano-dollars


@functools.lru_cache(maxsize=4096)
def encode(name: str) -> str:
    """A name made safe inside a key: no `{`, `}`, `:`, `|` or spaces survive."""
    return quote(name, safe="")


@functools.lru_cache(maxsize=4096)
def tenant_tag(tenant: str) -> str:
    return f"{PREFIX}:{{{encode(tenant)}}}"


@dataclass(frozen=True, slots=True)
class TenantKeys:
    """The fixed keys of one tenant (the per-scope ones come from :func:`scope_key`)."""

    inflight: str
    expiry: str
    reserved: str

    @classmethod
    def of(cls, tenant: str) -> TenantKeys:
        tag = tenant_tag(tenant)
        return cls(f"{tag}:inflight", f"{tag}:expiry", f"{tag}:reserved")


def scope_id(kind: str, name: str | None = None) -> str:
    """`tenant`, `key:<id>`, `user:<name>` or `endpoint:<name>`."""
    return kind if name is None else f"{kind}:{encode(name)}"


def scope_key(tenant: str, scope: str, suffix: str) -> str:
    return f"{tenant_tag(tenant)}:{scope}:{suffix}"


def bucket_names(now_ms: int) -> list[str]:
    """The hash fields of the buckets a window check reads, oldest first: the
    current bucket and the BUCKETS - 1 before it."""
    current = now_ms // BUCKET_MS
    return [str(current - BUCKETS + i) for i in range(1, BUCKETS + 1)]


def day_id(now_s: float) -> str:
    return datetime.fromtimestamp(now_s, UTC).strftime("%Y%m%d")


def month_id(now_s: float) -> str:
    return datetime.fromtimestamp(now_s, UTC).strftime("%Y%m")


def day_end_ms(now_s: float) -> int:
    """The end of the UTC day that contains `now_s`, in ms since the epoch."""
    moment = datetime.fromtimestamp(now_s, UTC)
    start = datetime(moment.year, moment.month, moment.day, tzinfo=UTC)
    return int(start.timestamp() * 1000) + 86_400_000


def month_end_ms(now_s: float) -> int:
    """The end of the UTC month that contains `now_s`, in ms since the epoch."""
    moment = datetime.fromtimestamp(now_s, UTC)
    days = calendar.monthrange(moment.year, moment.month)[1]
    start = datetime(moment.year, moment.month, 1, tzinfo=UTC)
    return int(start.timestamp() * 1000) + days * 86_400_000


def to_nano(usd: float) -> int:
    """Dollars as whole nano-dollars, rounded up (a reservation never under-reserves)."""
    # Rounded to a thousandth first, so that float noise (0.3 * 1e9 is
    # 300000000.00000006) does not add a nano-dollar.
    return max(0, math.ceil(round(usd * NANO, 3)))


def to_nano_rounded(usd: float) -> int:
    """Dollars as the nearest whole nano-dollars (what a request actually cost)."""
    return max(0, round(usd * NANO))


def from_nano(nano: int | float) -> float:
    return nano / NANO
