"""Shared keyed state with TTLs (dedupe keys, later call records). MemoryStore now; Redis drops in later."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol


class StateStore(Protocol):
    async def claim(self, key: str, ttl_s: float) -> bool:
        """Set ``key`` if absent (atomically) and return True; False when it was already set."""
        ...

    async def release(self, key: str) -> None:
        """Forget ``key`` (e.g. a claim whose work could not start)."""
        ...


class MemoryStore:
    """A process-local StateStore. Expired keys are swept as new keys arrive, so memory stays bounded."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, sweep_every: int = 1024) -> None:
        self._clock = clock
        self._expires: dict[str, float] = {}
        self._sweep_every = sweep_every
        self._writes = 0

    def __len__(self) -> int:
        return len(self._expires)

    async def claim(self, key: str, ttl_s: float) -> bool:
        now = self._clock()
        expires = self._expires.get(key)
        if expires is not None and expires > now:
            return False
        self._expires[key] = now + ttl_s
        self._writes += 1
        if self._writes % self._sweep_every == 0:
            self._sweep(now)
        return True

    async def release(self, key: str) -> None:
        self._expires.pop(key, None)

    def _sweep(self, now: float) -> None:
        for key in [k for k, exp in self._expires.items() if exp <= now]:
            del self._expires[key]
