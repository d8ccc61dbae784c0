"""Times as the CLIs and the audit trail write them: one parser for all.

Command lines take an RFC 3339 time (naive = UTC, a bare date allowed) or a
duration before now ("90s", "15m", "2h", "7d", "1w"); records and entries carry
RFC 3339 timestamps ending in "Z".
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> timedelta | None:
    """ "15m" -> 15 minutes; None when `text` is not a duration."""
    match = _DURATION.match(text.strip())
    if match is None:
        return None
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])


def parse_timestamp(raw: object) -> datetime | None:
    """An RFC 3339 timestamp as an aware UTC datetime; None when absent or malformed."""
    if not isinstance(raw, str) or not raw:
        return None
    try:
        moment = datetime.fromisoformat(raw.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def parse_moment(text: str, now: datetime) -> datetime:
    """A time or a duration before `now`; ValueError says what is accepted."""
    ago = parse_duration(text)
    if ago is not None:
        return now - ago
    moment = parse_timestamp(text)
    if moment is None:
        raise ValueError(
            f"{text.strip()!r} is neither a time (2026-06-01T12:00:00Z) "
            "nor a duration (15m, 2h, 7d)"
        )
    return moment
