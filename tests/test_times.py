"""The one time parser the CLIs and audit readers share."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from observability.times import parse_duration, parse_moment, parse_timestamp

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("90s", timedelta(seconds=90)), (" 2 h", timedelta(hours=2)), ("1.5d", timedelta(hours=36)),
     ("1w", timedelta(days=7)), ("0s", timedelta(0)), ("2x", None), ("soon", None), ("", None)],
)  # fmt: skip
def test_parse_duration(text: str, expected: timedelta | None) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2026-06-01T10:00:00Z", datetime(2026, 6, 1, 10, tzinfo=UTC)),
        ("2026-06-01T10:00:00.123z", datetime(2026, 6, 1, 10, 0, 0, 123000, tzinfo=UTC)),
        ("2026-06-01T12:00:00+02:00", datetime(2026, 6, 1, 10, tzinfo=UTC)),
        ("2026-06-01T10:00:00", datetime(2026, 6, 1, 10, tzinfo=UTC)),  # naive = UTC
        ("2026-06-01", datetime(2026, 6, 1, tzinfo=UTC)),
        ("yesterday", None),
        ("", None),
        (None, None),
        (1750000000, None),
    ],
)
def test_parse_timestamp(raw: object, expected: datetime | None) -> None:
    got = parse_timestamp(raw)
    assert got == expected
    if got is not None:
        assert got.tzinfo == UTC


def test_parse_moment() -> None:
    assert parse_moment("15m", NOW) == NOW - timedelta(minutes=15)
    assert parse_moment("2026-05-31T00:00:00Z", NOW) == datetime(2026, 5, 31, tzinfo=UTC)
    with pytest.raises(ValueError, match=r"'soon' is neither a time .* nor a duration"):
        parse_moment("soon", NOW)
