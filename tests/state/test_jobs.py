"""Tests for sip_controller.state.jobs: the bounded sweep, once and as a loop, on both backends."""

from __future__ import annotations

import asyncio

import pytest

from sip_controller.state.jobs import sweep_loop, sweep_once
from sip_controller.state.store import Store
from sip_controller.state.twilio_calls import KEEP_TWILIO_CALLS_S, NewTwilioCall
from tests.state.conftest import Cluster

pytestmark = pytest.mark.anyio


async def test_sweep_once_goes_round_until_done_but_never_past_its_bound(cluster: Cluster, store: Store) -> None:
    for i in range(35):
        assert await store.claim(f"k{i}", 10)
    await store.allow_caller("+14155550100", 5, window_s=10)
    cluster.clock.advance(11)
    bounded = await sweep_once(store, limit=10, max_rounds=2)
    assert (bounded.claims, bounded.caller_hits) == (20, 1)
    rest = await sweep_once(store, limit=10)
    assert (rest.claims, rest.total) == (15, 15)
    assert (await sweep_once(store, limit=10)).total == 0


async def test_sweep_once_counts_old_twilio_calls_across_rounds(cluster: Cluster, store: Store) -> None:
    for n in range(25):
        await store.create_twilio_call(NewTwilioCall(id=f"in_{n}", correlation=f"corr{n:020d}", direction="inbound",
                                                     status="completed", call_sid=f"CA{n}"))  # fmt: skip
    cluster.clock.advance(KEEP_TWILIO_CALLS_S + 1)
    swept = await sweep_once(store, limit=10)
    assert (swept.twilio_calls, swept.total) == (25, 25)
    assert await store.get_twilio_call(call_sid="CA24") is None


class Flaky:
    """A store whose first sweep fails, as a database that went away for a moment."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.calls = 0

    async def sweep(self, *, limit: int = 1000, keep_delivered_s: float = 86_400.0, **more: float) -> object:
        self.calls += 1
        if self.calls == 1:
            raise ConnectionResetError("gone for a moment")
        return await self.store.sweep(limit=limit, keep_delivered_s=keep_delivered_s, **more)


async def test_the_loop_survives_a_failed_sweep_and_stops_when_cancelled(cluster: Cluster, store: Store) -> None:
    assert await store.claim("old", 1)
    cluster.clock.advance(2)
    flaky = Flaky(store)
    task = asyncio.create_task(sweep_loop(flaky, every_s=0.01))  # type: ignore[arg-type]
    async with asyncio.timeout(10):
        while flaky.calls < 3:
            await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await store.sweep()).claims == 0  # the loop's second sweep deleted the expired claim
