"""The heap freezer (#18), and what it relies on: a call's objects are freed by reference counting alone."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator

import pytest

from sip_controller.config import Settings
from sip_controller.service.heap import HeapFreezer
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


async def test_a_tick_freezes_what_survived(thawed: None) -> None:
    freezer = HeapFreezer(lambda: 5, every_s=1, check_every_s=10**6, idle_pass_after=1, forced_pass_after=1)
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
    freezer = HeapFreezer(lambda: 0, every_s=1.0, check_every_s=3.0, idle_pass_after=1, forced_pass_after=10**9)
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
    freezer = HeapFreezer(lambda: live[0], every_s=1, check_every_s=10**6, idle_pass_after=100, forced_pass_after=10**9)
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
    freezer = HeapFreezer(lambda: 1000, every_s=1, check_every_s=10**6, idle_pass_after=10, forced_pass_after=5000)
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
    freezer = HeapFreezer(lambda: 0, every_s=0.01, check_every_s=0.01, idle_pass_after=1, forced_pass_after=10**9)
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
