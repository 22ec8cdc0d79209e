"""Opt-in diagnostics from inside the process: event-loop lag and garbage-collector pauses.

Off by default; ``SIPCTL_DIAGNOSTICS=1`` turns it on. Then:

- the event loop's lag: a loop timer due every :data:`PERIOD_S` notes how late it ran (anything that holds the
  loop, a collector pass included, shows here as the time every call's next event waited);
- the collector's pauses: a ``gc.callbacks`` hook times each pass, by generation, with what it freed: wall time
  (what every call waits) and this thread's CPU time (what the pass itself cost: on a shared machine a pass can
  be descheduled half-way, and the wall time then counts another process's work);
- both go to ``/metrics`` as histograms (``sipctl_event_loop_lag_seconds``, ``sipctl_gc_pause_seconds`` by
  ``generation``) and a counter (``sipctl_gc_collected_objects``): operators watch them there beside the rest;
- and, for a measurement window with exact percentiles and maxima (which histogram buckets cannot give), the
  admin API (bearer token) has ``GET /v1/diagnostics`` (the window so far), ``POST /v1/diagnostics/reset``
  (start a new window) and ``GET /v1/diagnostics/census`` (the objects the collector tracks, counted by type: a
  heap walk that holds the loop for tens of milliseconds with thousands of calls live; for a bench or a staging
  box, not for a scrape loop).

Costs when on: about :data:`PERIOD_S`'s inverse timer callbacks a second (a few microseconds each) and four clock
reads per collector pass. The collector hook only appends to a deque: the histograms are fed from the loop timer,
never inside a collection (prometheus-client's locks are not re-entrant, and a pass can start in the middle of an
observation).
"""

from __future__ import annotations

import asyncio
import collections
import gc
import os
import statistics
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

ENV = "SIPCTL_DIAGNOSTICS"
#: how often the loop-lag timer is due
PERIOD_S = 0.01
#: at most this many lag samples and collector passes are kept per window (over 15 minutes of lag samples)
MAX_SAMPLES = 100_000
PAUSE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
GENERATIONS = ("0", "1", "2")


def enabled(environ: Mapping[str, str] | None = None) -> bool:
    """``SIPCTL_DIAGNOSTICS`` is 1, true, yes or on (any case)."""
    value = (os.environ if environ is None else environ).get(ENV, "")
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _ms_summary(seconds: list[float]) -> dict[str, Any]:
    """count, p50/p90/p99/max in ms (None without samples); p99 by ``statistics.quantiles``."""
    if not seconds:
        return {"count": 0, "p50_ms": None, "p90_ms": None, "p99_ms": None, "max_ms": None}
    q = [seconds[0]] * 99 if len(seconds) == 1 else statistics.quantiles(seconds, n=100, method="inclusive")
    return {
        "count": len(seconds),
        "p50_ms": round(q[49] * 1000, 3),
        "p90_ms": round(q[89] * 1000, 3),
        "p99_ms": round(q[98] * 1000, 3),
        "max_ms": round(max(seconds) * 1000, 3),
    }


def census() -> dict[str, Any]:
    """The objects the collector walks (``gc.get_objects``: frozen ones are not among them), by type."""
    counts: collections.Counter[str] = collections.Counter()
    for obj in gc.get_objects():
        kind = type(obj)
        counts[f"{kind.__module__}.{kind.__qualname__}"] += 1
    return {
        "tracked": sum(counts.values()),
        "frozen": gc.get_freeze_count(),
        "gc_count": list(gc.get_count()),
        #: the objects in each generation now (a young pass walks the first, a middle one the first two)
        "generations": [len(gc.get_objects(generation)) for generation in range(3)],
        "gc_threshold": list(gc.get_threshold()),
        "by_type": dict(counts.most_common()),
    }


class Diagnostics:
    """The loop-lag timer and the collector hook of one process (``start`` in the app's lifespan, ``stop`` after)."""

    def __init__(self, registry: CollectorRegistry, *, period_s: float = PERIOD_S,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.period_s = period_s
        self._clock = clock
        self.lag = Histogram(
            "sipctl_event_loop_lag_seconds", "How late a timer due every 10 ms ran (SIPCTL_DIAGNOSTICS)",
            buckets=PAUSE_BUCKETS, registry=registry,
        )  # fmt: skip
        self.pauses = Histogram(
            "sipctl_gc_pause_seconds", "Garbage-collector passes by generation (SIPCTL_DIAGNOSTICS)",
            ["generation"], buckets=PAUSE_BUCKETS, registry=registry,
        )  # fmt: skip
        self.collected = Counter(
            "sipctl_gc_collected_objects", "Objects the collector freed, by generation (SIPCTL_DIAGNOSTICS)",
            ["generation"], registry=registry,
        )  # fmt: skip
        self._pause_children = [self.pauses.labels(generation=g) for g in GENERATIONS]
        self._collected_children = [self.collected.labels(generation=g) for g in GENERATIONS]
        self._lags: collections.deque[float] = collections.deque(maxlen=MAX_SAMPLES)
        #: (generation, seconds, collected, CPU seconds) of each pass in this window
        self._passes: collections.deque[tuple[int, float, int, float]] = collections.deque(maxlen=MAX_SAMPLES)
        #: passes not yet in the histograms (fed from the loop timer, never inside a collection)
        self._unobserved: collections.deque[tuple[int, float, int, float]] = collections.deque(maxlen=MAX_SAMPLES)
        self._gc_t0 = 0.0
        self._gc_cpu0 = 0.0
        self._window_t0 = clock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0

    # ---- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        gc.callbacks.append(self._on_gc)
        self.reset()
        self._schedule()

    def stop(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._feed()

    # ---- measuring -------------------------------------------------------------------------------------

    def _schedule(self) -> None:
        assert self._loop is not None
        self._due = self._loop.time() + self.period_s
        self._handle = self._loop.call_at(self._due, self._tick)

    def _tick(self) -> None:
        assert self._loop is not None
        late = max(0.0, self._loop.time() - self._due)
        self._lags.append(late)
        self.lag.observe(late)
        self._feed()
        self._schedule()

    def _feed(self) -> None:
        while self._unobserved:
            generation, seconds, freed, _ = self._unobserved.popleft()
            self._pause_children[generation].observe(seconds)
            if freed:
                self._collected_children[generation].inc(freed)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_cpu0 = time.thread_time()
            self._gc_t0 = self._clock()
            return
        wall = self._clock() - self._gc_t0
        entry = (int(info["generation"]), wall, int(info.get("collected", 0)), time.thread_time() - self._gc_cpu0)
        self._passes.append(entry)
        self._unobserved.append(entry)

    # ---- the window ------------------------------------------------------------------------------------

    def reset(self) -> None:
        """Start a new window (the histograms keep counting)."""
        self._lags.clear()
        self._passes.clear()
        self._window_t0 = self._clock()

    def window(self) -> dict[str, Any]:
        """The window so far: loop lag and collector passes per generation (count, wall-time max and total, CPU-time
        max, objects freed)."""
        passes = list(self._passes)
        per_generation: dict[str, Any] = {}
        for g, name in enumerate(GENERATIONS):
            mine = [p for p in passes if p[0] == g]
            per_generation[name] = {
                "count": len(mine),
                "max_ms": round(max(p[1] for p in mine) * 1000, 3) if mine else None,
                "total_ms": round(sum(p[1] for p in mine) * 1000, 3),
                "cpu_max_ms": round(max(p[3] for p in mine) * 1000, 3) if mine else None,
                "collected": sum(p[2] for p in mine),
            }
        return {
            "seconds": round(self._clock() - self._window_t0, 3),
            "period_ms": self.period_s * 1000,
            "loop_lag": _ms_summary(list(self._lags)),
            "gc": per_generation,
            "gc_max_pause_ms": round(max(p[1] for p in passes) * 1000, 3) if passes else 0.0,
            "gc_max_pause_cpu_ms": round(max(p[3] for p in passes) * 1000, 3) if passes else 0.0,
            "gc_threshold": list(gc.get_threshold()),
            "gc_frozen": gc.get_freeze_count(),
        }


Authorize = Callable[..., Awaitable[Response | None]]


def routes(diagnostics: Diagnostics | None, authorize: Authorize) -> list[Route]:
    """The admin API's ``/v1/diagnostics`` routes (``authorize``: the admin bearer token or session); every one
    answers 404 while diagnostics are off."""

    async def off_or_denied(request: Request, *, write: bool = False) -> Response | None:
        if diagnostics is None:
            return JSONResponse({"error": f"diagnostics are off (set {ENV}=1)"}, status_code=404)
        return await authorize(request, write=write)

    async def window(request: Request) -> Response:
        if (denied := await off_or_denied(request)) is not None:
            return denied
        assert diagnostics is not None
        return JSONResponse(diagnostics.window())

    async def reset(request: Request) -> Response:
        if (denied := await off_or_denied(request, write=True)) is not None:
            return denied
        assert diagnostics is not None
        diagnostics.reset()
        return JSONResponse({"status": "reset"})

    async def take_census(request: Request) -> Response:
        if (denied := await off_or_denied(request)) is not None:
            return denied
        return JSONResponse(census())

    return [
        Route("/v1/diagnostics", window, methods=["GET"]),
        Route("/v1/diagnostics/reset", reset, methods=["POST"]),
        Route("/v1/diagnostics/census", take_census, methods=["GET"]),
    ]
