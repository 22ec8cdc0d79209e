"""Admission: whether a new call may be taken, and the SIP code to refuse it with when not."""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

BUSY = 486  # Busy Here: at capacity
DECLINE = 603  # Decline: this caller is calling too often
UNAVAILABLE = 503  # Service Unavailable: this replica is draining


@dataclass(frozen=True)
class Refusal:
    status_code: int
    reason: str


class CallerRateLimiter:
    """At most ``per_minute`` calls per caller number in any 60 s window. Memory is bounded: callers are
    kept in arrival order and the least recently seen are forgotten past ``max_callers``."""

    def __init__(self, per_minute: int, *, clock: Callable[[], float] = time.monotonic, max_callers: int = 100_000):
        self.per_minute = per_minute
        self._clock = clock
        self._max = max_callers
        self._seen: OrderedDict[str, deque[float]] = OrderedDict()

    def allow(self, caller: str | None) -> bool:
        if self.per_minute <= 0 or not caller:
            return True  # off, or no number to hold against anyone
        now = self._clock()
        window = self._seen.pop(caller, None) or deque()
        while window and window[0] <= now - 60.0:
            window.popleft()
        allowed = len(window) < self.per_minute
        if allowed:
            window.append(now)
        self._seen[caller] = window
        while len(self._seen) > self._max:
            self._seen.popitem(last=False)
        return allowed
