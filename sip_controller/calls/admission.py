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


#: the shared bucket of calls that carry no caller number (withheld or unreadable caller ID)
ANONYMOUS = "anonymous"


class CallerRateLimiter:
    """At most ``per_minute`` calls per caller number in any 60 s window; calls without a number share ONE
    bucket (``ANONYMOUS``) limited by ``anonymous_per_minute``, so withholding the caller ID is no way around the
    limit. 0 turns a limit off. Memory is bounded: callers are kept in arrival order and the least recently seen
    are forgotten past ``max_callers``."""

    def __init__(
        self,
        per_minute: int,
        *,
        anonymous_per_minute: int = 0,
        clock: Callable[[], float] = time.monotonic,
        max_callers: int = 100_000,
    ) -> None:
        self.per_minute = per_minute
        self.anonymous_per_minute = anonymous_per_minute
        self._clock = clock
        self._max = max_callers
        self._seen: OrderedDict[str, deque[float]] = OrderedDict()

    def limit_for(self, caller: str | None) -> int:
        return self.per_minute if caller else self.anonymous_per_minute

    def allow(self, caller: str | None) -> bool:
        limit = self.limit_for(caller)
        if limit <= 0:
            return True  # this limit is off
        key = caller or ANONYMOUS
        now = self._clock()
        window = self._seen.pop(key, None) or deque()
        while window and window[0] <= now - 60.0:
            window.popleft()
        allowed = len(window) < limit
        if allowed:
            window.append(now)
        self._seen[key] = window
        while len(self._seen) > self._max:
            self._seen.popitem(last=False)
        return allowed

    def forget(self, caller: str | None) -> None:
        """Take back the last call :meth:`allow` counted for ``caller`` (it turned out to be a webhook delivered
        again: the store's claim was already held)."""
        if self.limit_for(caller) <= 0:
            return
        window = self._seen.get(caller or ANONYMOUS)
        if window:
            window.pop()
