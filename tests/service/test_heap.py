"""The heap freezer (#18), and what it relies on: a call's objects are freed by reference counting alone; its forced
full pass tied to the container's memory limit (#16), with fake cgroup files and a fake resident-memory reader."""

from __future__ import annotations

import asyncio
import gc
import os
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import structlog

from sip_controller.config import Settings
from sip_controller.service.heap import HeapFreezer, memory_limit, resident_bytes
from sip_controller.simulator import CallSpec, harness

pytestmark = pytest.mark.anyio


@pytest.fixture
def thawed() -> Iterator[None]:
    """Each test leaves the collector as it found it: nothing frozen, enabled."""
    yield
    gc.unfreeze()
    gc.enable()


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def counting(
    live_calls: Callable[[], int],
    *,
    every_s: float = 1.0,
    check_every_s: float = 10**6,
    idle_pass_after: int,
    forced_pass_after: int,
) -> HeapFreezer:
    """A freezer that knows no memory limit and no resident memory (not the host's): only counts force a pass."""
    return HeapFreezer(
        live_calls, every_s=every_s, check_every_s=check_every_s, idle_pass_after=idle_pass_after,
        forced_pass_after=forced_pass_after, memory_limits=(), rss=lambda: None,
    )  # fmt: skip


async def test_a_tick_freezes_what_survived(thawed: None) -> None:
    freezer = counting(lambda: 5, every_s=1, check_every_s=10**6, idle_pass_after=1, forced_pass_after=1)
    freezer.start()
    try:
        survivors = [[i] for i in range(1000)]
        assert any(obj is survivors for obj in gc.get_objects())
        freezer.tick()
        assert not any(obj is survivors for obj in gc.get_objects())  # frozen: no pass walks it
        assert all(len(gc.get_objects(generation)) < 50 for generation in range(3))  # nothing left to walk
        assert freezer.full_passes == 0  # a tick only freezes: the frozen total is read at a check
    finally:
        freezer.stop()


async def test_every_check_every_s_a_tick_checks(thawed: None) -> None:
    freezer = counting(lambda: 0, every_s=1.0, check_every_s=3.0, idle_pass_after=1, forced_pass_after=10**9)
    freezer.start()
    try:
        passes = []
        for _ in range(6):
            _garbage = [_Cycle() for _ in range(10)]
            freezer.tick()
            passes.append(freezer.full_passes)
        assert passes == [0, 0, 1, 1, 1, 2]
    finally:
        freezer.stop()


async def test_no_call_live_and_enough_frozen_is_a_full_pass_that_frees_frozen_cycles(thawed: None) -> None:
    live = [3]
    freezer = counting(lambda: live[0], every_s=1, check_every_s=10**6, idle_pass_after=100, forced_pass_after=10**9)
    freezer.start()
    try:
        cycles = [_Cycle() for _ in range(200)]
        probe = weakref.ref(cycles[0])
        freezer.tick()  # frozen while alive
        del cycles
        assert not freezer.check()
        assert probe() is not None  # garbage now, but frozen: no pass walks it while calls are live
        live[0] = 0
        assert freezer.check()
        assert probe() is None
        assert freezer.full_passes == 1
        assert freezer.found_unreachable >= 200
        assert not freezer.check()  # nothing new frozen since
    finally:
        freezer.stop()


async def test_a_full_pass_is_forced_under_load_only_once_that_much_is_still_frozen(thawed: None) -> None:
    freezer = counting(lambda: 1000, every_s=1, check_every_s=10**6, idle_pass_after=10, forced_pass_after=5000)
    freezer.start()
    try:
        for _ in range(3):
            short_lived = [[i] for i in range(3000)]
            freezer.tick()
            del short_lived  # freed by reference counting: frozen once, no longer there
        assert not freezer.check()  # 9,000 were frozen, but the permanent generation did not keep them
        kept = [_Cycle() for _ in range(20_000)]
        freezer.tick()
        assert freezer.check()
        assert freezer.full_passes == 1
        assert kept
    finally:
        freezer.stop()


async def test_the_timer_ticks_on_the_loop_until_stopped(thawed: None) -> None:
    freezer = counting(lambda: 0, every_s=0.01, check_every_s=0.01, idle_pass_after=1, forced_pass_after=10**9)
    freezer.start()
    try:
        for _ in range(200):  # bounded: 2 s at most
            if freezer.full_passes >= 2:
                break
            _cycles = [_Cycle() for _ in range(10)]
            await asyncio.sleep(0.01)
        assert freezer.full_passes >= 2
    finally:
        freezer.stop()
    passes = freezer.full_passes
    await asyncio.sleep(0.05)
    assert freezer.full_passes == passes


# ---- the forced pass tied to memory (#16) ------------------------------------------------------------------------

MiB = 2**20
#: cgroup v1's "no limit": 2**63 - 1 rounded down to a 4 KiB page
V1_UNLIMITED = "9223372036854771712"


def cgroup(tmp_path: Path, v2: str | None = None, v1: str | None = None) -> tuple[Path, Path]:
    """Fake ``memory.max`` (v2) and ``memory.limit_in_bytes`` (v1) files; None: not there."""
    paths = (tmp_path / "memory.max", tmp_path / "memory.limit_in_bytes")
    for path, text in zip(paths, (v2, v1), strict=True):
        if text is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(text + "\n")
    return paths


def test_the_memory_limit_is_cgroup_v2s_else_v1s_and_max_or_absurd_is_none(tmp_path: Path) -> None:
    assert memory_limit(cgroup(tmp_path)) is None  # no cgroup files: no limit known
    assert memory_limit(cgroup(tmp_path, v1=str(512 * MiB))) == 512 * MiB
    assert memory_limit(cgroup(tmp_path, v1=V1_UNLIMITED)) is None
    assert memory_limit(cgroup(tmp_path, v2=str(512 * MiB), v1=str(64 * MiB))) == 512 * MiB  # v2 decides
    assert memory_limit(cgroup(tmp_path, v2="max", v1=str(64 * MiB))) is None
    assert memory_limit(cgroup(tmp_path, v2="a lot")) is None
    assert memory_limit(cgroup(tmp_path, v2="0")) is None
    assert memory_limit(cgroup(tmp_path, v2=str(2**60))) is None  # absurdly large: no limit
    unreadable = tmp_path / "a-directory"
    unreadable.mkdir()
    assert memory_limit((unreadable, tmp_path / "memory.limit_in_bytes")) is None  # v1 was removed just above
    (tmp_path / "memory.limit_in_bytes").write_text(str(256 * MiB))
    assert memory_limit((unreadable, tmp_path / "memory.limit_in_bytes")) == 256 * MiB


def test_the_resident_memory_is_statms_second_field_in_pages(tmp_path: Path) -> None:
    statm = tmp_path / "statm"
    statm.write_text("732 442 413 6 0 89 0\n")
    assert resident_bytes(statm) == 442 * os.sysconf("SC_PAGE_SIZE")
    statm.write_text("garbage\n")
    assert resident_bytes(statm) is None
    assert resident_bytes(tmp_path / "missing") is None
    if Path("/proc/self/statm").exists():  # Linux: the real one
        real = resident_bytes()
        assert real is not None
        assert real > 0


def memory_freezer(limits: tuple[Path, Path], rss: list[int | None], *, forced_pass_after: int = 10**9) -> HeapFreezer:
    """Calls always live (no idle pass), the cgroup files ``limits`` and the resident memory ``rss[0]``."""
    return HeapFreezer(
        lambda: 1000, every_s=1, check_every_s=10**6, idle_pass_after=1, forced_pass_after=forced_pass_after,
        memory_limits=limits, rss=lambda: rss[0],
    )  # fmt: skip


async def test_a_full_pass_is_forced_once_resident_memory_grew_by_an_eighth_of_the_limit(
    tmp_path: Path, thawed: None
) -> None:
    rss: list[int | None] = [300 * MiB]
    freezer = memory_freezer(cgroup(tmp_path, v2=str(512 * MiB)), rss)
    freezer.start()
    try:
        assert (freezer.limit, freezer.rss_baseline) == (512 * MiB, 300 * MiB)
        cycles = [_Cycle() for _ in range(200)]
        probe = weakref.ref(cycles[0])
        freezer.tick()  # frozen while alive
        del cycles
        rss[0] = 364 * MiB  # an eighth of the limit exactly: not more
        assert not freezer.check()
        rss[0] = 365 * MiB
        with structlog.testing.capture_logs() as logs:
            assert freezer.check()
        assert probe() is None  # the frozen garbage is gone, with calls live
        assert (freezer.full_passes, freezer.forced_passes) == (1, 1)
        forced = [e for e in logs if e["event"] == "heap.forced_pass"]
        assert len(forced) == 1
        assert (forced[0]["reason"], forced[0]["log_level"]) == ("memory", "warning")
        assert (forced[0]["rss_grown_mb"], forced[0]["limit_mb"]) == (65.0, 512.0)
        (passed,) = [e for e in logs if e["event"] == "heap.full_pass"]
        assert (passed["forced"], passed["reason"]) == (True, "memory")
        # growth from the last full pass on: what the pass could not free moves the baseline, no pass a minute
        assert freezer.rss_baseline == 365 * MiB
        assert not freezer.check()
        rss[0] = 420 * MiB
        assert not freezer.check()
        rss[0] = 430 * MiB
        assert freezer.check()
        assert freezer.forced_passes == 2
        rss[0] = None  # the reader failed: the count alone decides
        assert not freezer.check()
    finally:
        freezer.stop()


@pytest.mark.parametrize(
    ("v2", "v1"), [(None, None), ("max", None), (None, V1_UNLIMITED)], ids=["no cgroup", "v2 max", "v1 unlimited"]
)
async def test_with_no_limit_known_only_the_frozen_count_forces_a_pass(
    tmp_path: Path, thawed: None, v2: str | None, v1: str | None
) -> None:
    rss: list[int | None] = [300 * MiB]
    freezer = memory_freezer(cgroup(tmp_path, v2=v2, v1=v1), rss, forced_pass_after=5000)
    freezer.start()
    try:
        assert freezer.limit is None
        rss[0] = 30_000 * MiB
        assert not freezer.check()
        kept = [_Cycle() for _ in range(20_000)]
        freezer.tick()
        with structlog.testing.capture_logs() as logs:
            assert freezer.check()
        assert [e["reason"] for e in logs if e["event"] == "heap.forced_pass"] == ["frozen"]
        assert kept
    finally:
        freezer.stop()


async def test_the_limit_is_read_again_at_each_check(tmp_path: Path, thawed: None) -> None:
    rss: list[int | None] = [300 * MiB]
    limits = cgroup(tmp_path, v2="max")
    freezer = memory_freezer(limits, rss)
    freezer.start()
    try:
        rss[0] = 400 * MiB
        assert not freezer.check()
        cgroup(tmp_path, v2=str(512 * MiB))  # resized in place
        assert freezer.check()
        assert freezer.limit == 512 * MiB
    finally:
        freezer.stop()


async def test_a_resident_memory_unknown_at_the_start_counts_from_the_first_check(tmp_path: Path, thawed: None) -> None:
    rss: list[int | None] = [None]
    freezer = memory_freezer(cgroup(tmp_path, v2=str(512 * MiB)), rss)
    freezer.start()
    try:
        rss[0] = 300 * MiB
        assert not freezer.check()
        assert freezer.rss_baseline == 300 * MiB
        rss[0] = 400 * MiB
        assert freezer.check()
    finally:
        freezer.stop()


async def test_a_finished_calls_objects_are_freed_by_reference_counting_alone(thawed: None) -> None:
    """The freezer never lets the collector walk a live call, so a call must not need it once it ends: with the
    collector off, the call's supervisor (with its machine) and sideband connection are gone as soon as the call is."""
    spec = CallSpec.model_validate({
        "name": "goodbye",
        "steps": [
            {"say": "What time do you open?", "reply": "We open at nine."},
            {"say": "Thanks, bye!", "tool": {"name": "end_call", "arguments": {"reason": "bye"}},
             "then": "Goodbye!"},
        ],
    })  # fmt: skip
    async with harness.running_stack(Settings(), time_scale=0.05) as stack:
        registry = stack.runtime.registry
        gc.collect()
        gc.disable()
        sim_call = await stack.sim.place_call(spec)
        supervisor = None
        for _ in range(500):  # bounded: 5 s
            entry = registry._live.get(sim_call.call_id)
            if entry is not None and entry.supervisor is not None and entry.supervisor._sideband is not None:
                supervisor = entry.supervisor
                break
            await asyncio.sleep(0.01)
        assert supervisor is not None, "the call was never attached"
        sideband = supervisor._sideband
        probes: dict[str, weakref.ReferenceType[object]] = {
            "supervisor": weakref.ref(supervisor),
            "sideband": weakref.ref(sideband),
        }
        connection = getattr(sideband, "_ws", None)
        if connection is not None:
            probes["connection"] = weakref.ref(connection)
            protocol = getattr(connection, "_protocol", None)
            if protocol is not None:
                probes["websocket protocol"] = weakref.ref(protocol)
        del entry, supervisor, sideband, connection, protocol
        record = await registry.wait_ended(sim_call.call_id, 20.0)
        assert record.ended_reason == "agent_end_call"
        for _ in range(100):  # bounded: 1 s for the last callbacks to run
            if all(probe() is None for probe in probes.values()):
                break
            await asyncio.sleep(0.01)
        alive = [name for name, probe in probes.items() if probe() is not None]
        gc.enable()
        assert alive == []
