"""Keep the garbage collector's passes off live calls: what has survived is frozen, so passes walk only new objects.

A call's objects live for minutes, and CPython's collector walks every object it tracks in its older generations:
with a thousand calls live, a middle-generation pass took 65-90 ms and held every call (#18). But calls do not need
the collector: their objects are freed by reference counting when the call ends (a test holds the controller to
that: ``tests/service/test_heap.py``). So, in ``sipctl serve``:

- every :data:`FREEZE_EVERY_S` the heap is frozen (``gc.freeze``: constant time, it moves the collector's lists to
  the permanent generation, which passes never walk). Young passes (every ``GC_THRESHOLDS[0]`` net allocations)
  still collect short-lived cycles; a middle or full pass only ever sees what survived since the last freeze.
- Cyclic garbage that was frozen while still alive is not collected until the heap is unfrozen. So every
  :data:`CHECK_EVERY_S` the freezer reads how much is frozen (``gc.get_freeze_count`` walks the permanent generation:
  a few milliseconds with thousands of calls live, so not every second) and unfreezes and fully collects the heap
  when no call is live (nobody waits then) and at least :data:`IDLE_PASS_AFTER` objects more are frozen than after
  the last full pass; and, so that memory stays bounded on a replica that is never idle, whatever the load once
  :data:`FORCED_PASS_AFTER` more are (a long pause, logged as ``heap.full_pass`` with ``forced=True``).

``heap.full_pass`` logs how many objects each full pass found unreachable: the rate of cyclic garbage, which should
stay near zero.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable

import structlog

log = structlog.get_logger("sip_controller.service.heap")

#: how often what survived is frozen
FREEZE_EVERY_S = 1.0
#: how often the frozen total is read, and a full pass considered
CHECK_EVERY_S = 60.0
#: a full pass once idle, when at least this many objects were frozen since the last one
IDLE_PASS_AFTER = 50_000
#: a full pass under any load, when this many were (about 100-200 MB of small objects)
FORCED_PASS_AFTER = 2_000_000


class HeapFreezer:
    """Owned by the app lifespan: :meth:`start` on the running loop, :meth:`stop` at shutdown. A loop timer, no task."""

    def __init__(
        self,
        live_calls: Callable[[], int],
        *,
        every_s: float = FREEZE_EVERY_S,
        check_every_s: float = CHECK_EVERY_S,
        idle_pass_after: int = IDLE_PASS_AFTER,
        forced_pass_after: int = FORCED_PASS_AFTER,
    ) -> None:
        self._live_calls = live_calls
        self._every_s = every_s
        self._check_every = max(1, round(check_every_s / every_s))
        self._idle_pass_after = idle_pass_after
        self._forced_pass_after = forced_pass_after
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ticks = 0
        #: frozen objects right after the last full pass (or the start)
        self.baseline = 0
        #: full passes so far, and the unreachable objects they found
        self.full_passes = 0
        self.found_unreachable = 0

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        gc.freeze()
        self.baseline = gc.get_freeze_count()
        self._schedule()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._loop = None

    def _schedule(self) -> None:
        if self._loop is not None:
            self._timer = self._loop.call_later(self._every_s, self.tick)

    def tick(self) -> None:
        """Freeze what survived (constant time); every ``check_every_s``, :meth:`check`."""
        gc.freeze()
        self._ticks += 1
        if self._ticks % self._check_every == 0:
            self.check()
        self._schedule()

    def check(self) -> bool:
        """A full pass if one is due (see the module's docstring); whether it ran. Public for tests."""
        gc.freeze()
        grown = gc.get_freeze_count() - self.baseline
        if grown >= self._forced_pass_after:
            self.full_pass(forced=True)
            return True
        if grown >= self._idle_pass_after and self._live_calls() == 0:
            self.full_pass(forced=False)
            return True
        return False

    def full_pass(self, *, forced: bool) -> int:
        """Unfreeze, collect everything, freeze again; the number of unreachable objects found."""
        started = time.perf_counter()
        before = gc.get_freeze_count()
        gc.unfreeze()
        found = gc.collect()
        gc.freeze()
        self.baseline = gc.get_freeze_count()
        self.full_passes += 1
        self.found_unreachable += found
        log.info(
            "heap.full_pass", forced=forced, frozen_before=before, frozen_after=self.baseline, unreachable=found,
            pause_ms=round(1000 * (time.perf_counter() - started), 1),
        )  # fmt: skip
        return found
