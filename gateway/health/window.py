"""A rolling window of one endpoint's attempts, in bounded memory.

The window is a ring of fixed time buckets (default 12 of 5 s for 60 s). Each
bucket counts attempts, errors and timeouts and keeps two small histograms, of
time to first token and of total latency, over log-spaced bins (each bin 25%
wider than the last, 1 ms to 10 min: 60 bins). Totals over the whole window
are kept up to date as attempts arrive and buckets expire, so reading the
percentiles walks 60 counters, whatever the traffic: memory and read cost do
not grow with the request rate.

A percentile is the nearest rank over the bins (the geometric middle of the bin
that holds it), so it is within about 12% of the exact value: enough to tell a
200 ms endpoint from a 2 s one, which is all a health threshold needs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

_RATIO = 1.25
_MIN_MS = 1.0
BINS = 60  # 1 ms * 1.25**60 ≈ 650 s
_LOG_RATIO = math.log(_RATIO)
# The value reported for a bin: its geometric middle (bin 0 holds everything < 1 ms).
_MIDDLES = tuple(_MIN_MS * _RATIO ** (i - 0.5) if i > 0 else _MIN_MS / 2 for i in range(BINS + 1))


def _bin(value_ms: float) -> int:
    if value_ms < _MIN_MS:
        return 0
    return min(BINS, 1 + int(math.log(value_ms / _MIN_MS) / _LOG_RATIO))


@dataclass(slots=True)
class _Counts:
    attempts: int = 0
    errors: int = 0
    timeouts: int = 0
    ttft: list[int] = field(default_factory=lambda: [0] * (BINS + 1))
    latency: list[int] = field(default_factory=lambda: [0] * (BINS + 1))
    answered: int = 0  # attempts with a latency (the histograms' count)

    def clear(self) -> None:
        self.attempts = self.errors = self.timeouts = self.answered = 0
        self.ttft = [0] * (BINS + 1)
        self.latency = [0] * (BINS + 1)


def _p50_p95(hist: list[int], total: int) -> tuple[float, float]:
    """Both percentiles in one walk over the bins (`total` > 0)."""
    rank50, rank95 = max(1, math.ceil(0.5 * total)), max(1, math.ceil(0.95 * total))
    seen = 0
    p50: float | None = None
    for i, n in enumerate(hist):
        if not n:
            continue
        seen += n
        if p50 is None and seen >= rank50:
            p50 = round(_MIDDLES[i], 1)
        if seen >= rank95:
            return p50 if p50 is not None else round(_MIDDLES[i], 1), round(_MIDDLES[i], 1)
    raise AssertionError("the bins do not add up to the total")  # pragma: no cover


class RollingWindow:
    """Attempts of the last `window_s` seconds, in `buckets` time buckets."""

    def __init__(self, window_s: float, *, buckets: int = 12, clock: Callable[[], float]) -> None:
        if window_s <= 0 or buckets < 1:
            raise ValueError("the window needs a positive length and at least one bucket")
        self._bucket_s = window_s / buckets
        self._clock = clock
        self._ring = [_Counts() for _ in range(buckets)]
        self._epochs = [-1] * buckets  # the time bucket each slot holds
        self._total = _Counts()
        self._epoch = -1  # the latest time bucket seen

    def add(
        self, latency_ms: float | None, ttft_ms: float | None, *, error: bool, timeout: bool
    ) -> None:
        """One finished attempt: a latency when it was answered, error/timeout flags otherwise."""
        slot = self._slot()
        for counts in (slot, self._total):
            counts.attempts += 1
            counts.errors += error
            counts.timeouts += timeout
            if latency_ms is not None:
                counts.answered += 1
                counts.latency[_bin(latency_ms)] += 1
                counts.ttft[_bin(latency_ms if ttft_ms is None else ttft_ms)] += 1

    def advance(self) -> bool:
        """Expire the buckets that left the window; True when any did (values changed)."""
        epoch = int(self._clock() // self._bucket_s)
        if epoch == self._epoch:
            return False
        self._epoch = epoch
        changed = False
        size = len(self._ring)
        for i, held in enumerate(self._epochs):
            if held != -1 and held <= epoch - size:
                self._expire(i)
                changed = True
        return changed

    def reset(self) -> None:
        """Forget everything (an endpoint judged again starts from fresh observations)."""
        for i in range(len(self._ring)):
            self._ring[i].clear()
            self._epochs[i] = -1
        self._total.clear()

    def stats(self) -> dict[str, Any]:
        """samples, p50/p95 of time to first token and latency (ms), error and timeout rates."""
        self.advance()
        t = self._total
        out: dict[str, Any] = {"samples": t.attempts}
        if t.answered:
            out["p50_ttft_ms"], out["p95_ttft_ms"] = _p50_p95(t.ttft, t.answered)
            out["p50_latency_ms"], out["p95_latency_ms"] = _p50_p95(t.latency, t.answered)
        if t.attempts:
            out["error_rate"] = round(t.errors / t.attempts, 4)
            out["timeout_rate"] = round(t.timeouts / t.attempts, 4)
        return out

    def _slot(self) -> _Counts:
        self.advance()
        i = self._epoch % len(self._ring)
        if self._epochs[i] != self._epoch:
            if self._epochs[i] != -1:
                self._expire(i)
            self._epochs[i] = self._epoch
        return self._ring[i]

    def _expire(self, i: int) -> None:
        old, t = self._ring[i], self._total
        t.attempts -= old.attempts
        t.errors -= old.errors
        t.timeouts -= old.timeouts
        t.answered -= old.answered
        for b in range(BINS + 1):
            t.ttft[b] -= old.ttft[b]
            t.latency[b] -= old.latency[b]
        old.clear()
        self._epochs[i] = -1
