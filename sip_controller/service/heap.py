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
  the last full pass.
- So that memory stays bounded on a replica that is never idle, a full pass is also *forced*, whatever the load, by
  whichever comes first (#16):

  - :data:`FORCED_PASS_AFTER` more objects frozen than after the last full pass. 500,000: above what a full house
    adds by itself (a live call keeps about 130 tracked objects: 2,000 live calls are some 260,000), so a growing
    load alone does not force passes; and, at roughly 50-100 bytes an object with what it holds, some 25-50 MB of
    leaked cycles at most, against the Kubernetes manifest's 512 Mi limit (``deploy/kubernetes``), where the earlier
    2,000,000 let a steady leak reach 100-200 MB first.
  - the process's resident memory (``/proc/self/statm``) grown by more than :data:`RSS_GROWTH_FRACTION` of the
    container's memory limit (cgroup v2 ``memory.max``, else cgroup v1 ``memory.limit_in_bytes``; ``max`` or an
    absurd figure is no limit) since the last full pass: 1/8, 64 MiB of 512 Mi, whatever the objects' sizes. Growth,
    not a level: memory that a pass cannot free (more calls, fragmentation) forces one pass per eighth of the limit
    and then moves the baseline, never a pass a minute near the limit. With no limit known (no cgroup, a laptop)
    or no ``/proc``, only the count forces passes.

  A forced pass is a long pause: it is logged as ``heap.forced_pass`` (a warning, with its ``reason``: ``frozen`` or
  ``memory``, and the figures that decided it) before it runs.

``heap.full_pass`` logs how many objects each full pass found unreachable: the rate of cyclic garbage, which should
stay near zero. Nothing here runs at import: the cgroup and ``/proc`` files are read at :meth:`HeapFreezer.start`
and at each check (their paths are constructor arguments, for tests).
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import structlog

log = structlog.get_logger("sip_controller.service.heap")

#: how often what survived is frozen
FREEZE_EVERY_S = 1.0
#: how often the frozen total is read, and a full pass considered
CHECK_EVERY_S = 60.0
#: a full pass once idle, when at least this many objects were frozen since the last one
IDLE_PASS_AFTER = 50_000
#: a full pass under any load, when this many were (see the module's docstring: some 25-50 MB of leaked cycles)
FORCED_PASS_AFTER = 500_000
#: a full pass under any load, when the resident memory grew by this fraction of the memory limit since the last
RSS_GROWTH_FRACTION = 1 / 8
#: the container's memory limit: cgroup v2, then v1 (the first one that can be read decides)
CGROUP_MEMORY_LIMITS: tuple[Path, ...] = (
    Path("/sys/fs/cgroup/memory.max"),
    Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),
)
#: a limit from this figure up is none (cgroup v1 writes "no limit" as 2**63 rounded down to a page)
NO_LIMIT_FROM = 1 << 50
#: the process's memory, in pages: size, resident, ...
STATM = Path("/proc/self/statm")


def memory_limit(paths: Sequence[Path] = CGROUP_MEMORY_LIMITS) -> int | None:
    """The memory limit in bytes from the first of ``paths`` that can be read, or None: no such file, ``max``, a
    figure that is not one, or an absurdly large one (:data:`NO_LIMIT_FROM`)."""
    for path in paths:
        try:
            text = path.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            continue  # not there (not this cgroup version, not Linux) or not readable: the next one
        try:
            limit = int(text)
        except ValueError:
            return None  # "max", or nothing we understand: no limit
        return limit if 0 < limit < NO_LIMIT_FROM else None
    return None


def resident_bytes(path: Path = STATM) -> int | None:
    """The process's resident memory in bytes (``statm``'s second field, in pages), or None where there is none."""
    try:
        pages = int(path.read_text(encoding="ascii").split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, UnicodeDecodeError):
        return None


class HeapFreezer:
    """Owned by the app lifespan: :meth:`start` on the running loop, :meth:`stop` at shutdown. A loop timer, no task.

    ``memory_limits`` (the cgroup files) and ``rss`` (the resident memory in bytes, None when unknown) are for tests."""

    def __init__(
        self,
        live_calls: Callable[[], int],
        *,
        every_s: float = FREEZE_EVERY_S,
        check_every_s: float = CHECK_EVERY_S,
        idle_pass_after: int = IDLE_PASS_AFTER,
        forced_pass_after: int = FORCED_PASS_AFTER,
        rss_growth_fraction: float = RSS_GROWTH_FRACTION,
        memory_limits: Sequence[Path] = CGROUP_MEMORY_LIMITS,
        rss: Callable[[], int | None] = resident_bytes,
    ) -> None:
        self._live_calls = live_calls
        self._every_s = every_s
        self._check_every = max(1, round(check_every_s / every_s))
        self._idle_pass_after = idle_pass_after
        self._forced_pass_after = forced_pass_after
        self._rss_growth_fraction = rss_growth_fraction
        self._memory_limits = tuple(memory_limits)
        self._rss = rss
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ticks = 0
        #: frozen objects right after the last full pass (or the start)
        self.baseline = 0
        #: resident bytes right after the last full pass (or the start); None when unknown
        self.rss_baseline: int | None = None
        #: the memory limit found at the last check (or the start); None: none known, only the count forces passes
        self.limit: int | None = None
        #: full passes so far (forced ones among them), and the unreachable objects they found
        self.full_passes = 0
        self.forced_passes = 0
        self.found_unreachable = 0

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        gc.freeze()
        self.baseline = gc.get_freeze_count()
        self.limit = memory_limit(self._memory_limits)
        self.rss_baseline = self._rss()
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
        self.limit = memory_limit(self._memory_limits)  # a file read a minute: a limit resized in place is seen
        rss = self._rss()
        rss_grown = rss - self.rss_baseline if rss is not None and self.rss_baseline is not None else None
        if self.rss_baseline is None:
            self.rss_baseline = rss  # unknown at the start: from now on
        reason: str | None = None
        if grown >= self._forced_pass_after:
            reason = "frozen"
        elif self.limit is not None and rss_grown is not None and rss_grown > self.limit * self._rss_growth_fraction:
            reason = "memory"
        if reason is not None:
            log.warning(
                "heap.forced_pass", reason=reason, frozen_since=grown, forced_pass_after=self._forced_pass_after,
                rss_grown_mb=None if rss_grown is None else round(rss_grown / 2**20, 1),
                limit_mb=None if self.limit is None else round(self.limit / 2**20, 1),
                live_calls=self._live_calls(),
            )  # fmt: skip
            self.full_pass(forced=True, reason=reason)
            return True
        if grown >= self._idle_pass_after and self._live_calls() == 0:
            self.full_pass(forced=False)
            return True
        return False

    def full_pass(self, *, forced: bool, reason: str = "idle") -> int:
        """Unfreeze, collect everything, freeze again; the number of unreachable objects found."""
        started = time.perf_counter()
        before = gc.get_freeze_count()
        gc.unfreeze()
        found = gc.collect()
        gc.freeze()
        self.baseline = gc.get_freeze_count()
        self.rss_baseline = self._rss()
        self.full_passes += 1
        self.forced_passes += int(forced)
        self.found_unreachable += found
        log.info(
            "heap.full_pass", forced=forced, reason=reason, frozen_before=before, frozen_after=self.baseline,
            unreachable=found, pause_ms=round(1000 * (time.perf_counter() - started), 1),
        )  # fmt: skip
        return found
