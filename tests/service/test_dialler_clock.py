"""The dialler's injected clock (#16): its pauses run on the batch clock, so a simulated one moves them."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from sip_controller.config import Settings, TwilioCredentials
from sip_controller.service.dialler import Dialler, SystemClock
from sip_controller.simulator.batch_clock import SimClock

pytestmark = pytest.mark.anyio


def dialler(clock: SimClock) -> Dialler:
    nothing = cast("Any", None)
    return Dialler(Settings(), nothing, cast("TwilioCredentials", nothing), nothing, nothing, worker="w", clock=clock)


async def test_a_pause_ends_when_the_batch_clock_passes_it_not_in_real_time() -> None:
    clock = SimClock(1000.0)
    d = dialler(clock)
    pause = asyncio.create_task(d._pause(60.0))
    await asyncio.sleep(0.05)
    assert not pause.done()  # 50 ms of real time are nothing on a clock that stands still
    clock.advance_to(1059.0)
    await asyncio.sleep(0.01)
    assert not pause.done()
    clock.advance_to(1060.0)
    await asyncio.wait_for(pause, 1)


async def test_a_kick_ends_a_pause_at_once() -> None:
    d = dialler(SimClock(0.0))
    pause = asyncio.create_task(d._pause(3600.0))
    await asyncio.sleep(0)
    d.kick()
    await asyncio.wait_for(pause, 1)


async def test_the_system_clock_is_the_wall_clock_and_asyncio_sleep() -> None:
    clock = SystemClock(lambda: 42.0)
    assert clock.time() == 42.0
    await asyncio.wait_for(clock.sleep(0.001), 1)
