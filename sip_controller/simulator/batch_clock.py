"""The simulated clock of an outbound batch (#16): hours of calling-window time in seconds.

:class:`SimClock` is a :class:`~sip_controller.service.dialler.BatchClock` that stands still until the simulator
moves it (:meth:`SimClock.advance_to`). ``sipctl simulate`` gives it to the controller's dialler, its batch routes
and its store (``store.batch_clock``), and drives the dialler pass by pass (:mod:`.batch_run`): while calls are in
flight the clock stands still (they take no simulated time); when the batch can do nothing until a later time (its
next pacing slot, a retry's delay, calling hours opening) the clock jumps there. Every decision the dialler makes
in one pass is made at one simulated instant, so what Twilio sees can be held against pacing and calling hours
exactly, with no allowance for a loaded machine.
"""

from __future__ import annotations

import asyncio
import bisect
import time


class SimClock:
    """Epoch seconds that move only by :meth:`advance_to`; :meth:`sleep` waits for the clock, not for real time."""

    def __init__(self, start: float) -> None:
        self._now = start
        #: (``time.monotonic()`` when the clock moved, the time it moved to), in order
        self._moves: list[tuple[float, float]] = [(float("-inf"), start)]
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def time(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        entry = (self._now + seconds, asyncio.get_running_loop().create_future())
        self._sleepers.append(entry)
        try:
            await entry[1]
        finally:
            if entry in self._sleepers:
                self._sleepers.remove(entry)

    def advance_to(self, when: float) -> None:
        """Move the clock forward to ``when`` (never back), waking the sleepers whose time has come."""
        if when <= self._now:
            return
        self._now = when
        self._moves.append((time.monotonic(), when))
        for at, future in list(self._sleepers):
            if at <= when and not future.done():
                future.set_result(None)

    def at(self, monotonic: float) -> float:
        """The clock's time at the real instant ``monotonic`` (a ``time.monotonic()`` reading)."""
        index = bisect.bisect_right([m for m, _ in self._moves], monotonic) - 1
        return self._moves[max(index, 0)][1]
