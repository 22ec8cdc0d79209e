"""The machine's own noise during a measurement: what no controller could get under.

Two readings per measured window, both from outside the controller:

- hypervisor steal: the share of CPU time the virtual machine wanted but the host gave to someone else
  (``steal`` in ``/proc/stat``); while a vCPU is stolen, every process on it stalls;
- a do-nothing probe: a child process that only sleeps 2 ms at a time and records how late it wakes. Its
  p99 is the scheduling jitter any process on this machine sees at that moment (steal, and the run queue it
  shares with the controller and the load peer); a latency p99 below it is out of reach here.

Run as ``python -m sip_controller.bench.noise``: sleeps until SIGTERM, then prints one JSON line.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from sip_controller.bench.stats import latency_summary, rounded

PERIOD_S = 0.002
#: at most this many wake-ups are kept (10 minutes at the period): the probe's memory stays bounded
MAX_SAMPLES = 300_000


def read_cpu_times(path: Path = Path("/proc/stat")) -> tuple[int, int] | None:
    """(steal, total) jiffies of all CPUs, or None where /proc/stat is not there."""
    try:
        for line in path.read_text().splitlines():
            if line.startswith("cpu "):
                fields = [int(x) for x in line.split()[1:]]
                steal = fields[7] if len(fields) > 7 else 0
                return steal, sum(fields[:8])
    except (OSError, ValueError):
        return None
    return None


def steal_percent(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    if before is None or after is None or after[1] <= before[1]:
        return None
    return rounded(100 * (after[0] - before[0]) / (after[1] - before[1]), 1)


def _probe_main() -> int:
    stop = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    late_ns: list[int] = []
    deadline = time.monotonic() + 600  # a probe nobody stops ends by itself
    print("READY", flush=True)
    while not stop and time.monotonic() < deadline and len(late_ns) < MAX_SAMPLES:
        t0 = time.perf_counter_ns()
        time.sleep(PERIOD_S)
        late_ns.append(max(0, time.perf_counter_ns() - t0 - int(PERIOD_S * 1e9)))
    print(json.dumps(latency_summary(late_ns)), flush=True)
    return 0


@contextlib.asynccontextmanager
async def measuring(into: dict[str, Any]) -> AsyncIterator[None]:
    """Around one measured window: fills ``into`` with ``steal_percent`` and ``probe_lag_{p50,p99,max}_ms``."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sip_controller.bench.noise",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(30):
            ready = await proc.stdout.readline()
        if ready.strip() != b"READY":
            raise RuntimeError(f"noise probe did not start (said {ready!r})")
        before = read_cpu_times()
        yield
        after = read_cpu_times()
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            summary = json.loads(await proc.stdout.readline())
        into["steal_percent"] = steal_percent(before, after)
        into["probe_lag_p50_ms"] = summary["p50_ms"]
        into["probe_lag_p99_ms"] = summary["p99_ms"]
        into["probe_lag_max_ms"] = summary["max_ms"]
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        await proc.wait()


if __name__ == "__main__":
    raise SystemExit(_probe_main())


@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    """Keep the peer's own collector pauses out of its timestamps during a measurement."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
