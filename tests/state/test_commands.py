"""The store's operator commands (``post_command``/``take_commands``/``command_done``) on SQLite and PostgreSQL:
any replica posts, only the call's owner takes, each command once, re-offered after a takeover."""

from __future__ import annotations

import asyncio

import pytest

from sip_controller.state.store import Store
from tests.state.conftest import Cluster
from tests.state.test_contract import live_call

pytestmark = pytest.mark.anyio


async def test_a_command_goes_to_the_call_s_owner_once(store: Store) -> None:
    await live_call(store, "rtc_1", "p1")
    await live_call(store, "rtc_2", "p2")
    first = await store.post_command("rtc_1", "hangup", {"now": True})
    second = await store.post_command("rtc_1", "transfer", {"target": "sales"})
    other = await store.post_command("rtc_2", "hangup")
    assert first is not None
    assert second is not None
    assert other is not None
    assert await store.take_commands("p3") == []
    taken = await store.take_commands("p1")
    assert [(c.id, c.call_id, c.kind, c.args) for c in taken] == [
        (first, "rtc_1", "hangup", {"now": True}),
        (second, "rtc_1", "transfer", {"target": "sales"}),
    ]
    assert all(c.taken_by == "p1" and c.taken_at is not None and c.done_at is None for c in taken)
    assert await store.take_commands("p1") == []  # taken: not offered again to the same owner
    assert [(c.call_id, c.args) for c in await store.take_commands("p2")] == [("rtc_2", {})]
    assert await store.command_done(first, "posted") is True
    assert await store.command_done(first, "posted") is False  # once


async def test_no_command_for_a_call_that_is_not_live(store: Store) -> None:
    assert await store.post_command("rtc_unknown", "hangup") is None
    fence = await live_call(store, "rtc_1")
    await store.finish_call(fence, state="ended", ended_reason="caller_hangup", report={"call_id": "rtc_1"})
    assert await store.post_command("rtc_1", "hangup") is None
    with pytest.raises(ValueError, match="unknown command kind 'shout'"):
        await store.post_command("rtc_1", "shout")


async def test_live_control_commands_are_stored_and_taken_in_order(store: Store) -> None:
    """#17: say, context, mute and unmute pass the kind's CHECK (migration 0006) on both backends."""
    await live_call(store, "rtc_1", "p1")
    posted = [
        ("say", {"text": "Hello there.", "when": "next"}),
        ("context", {"text": "The parcel is late."}),
        ("mute", {}),
        ("unmute", {}),
    ]
    ids = [await store.post_command("rtc_1", kind, args) for kind, args in posted]
    assert None not in ids
    taken = await store.take_commands("p1")
    assert [(c.id, c.kind, c.args) for c in taken] == [(i, k, a) for i, (k, a) in zip(ids, posted, strict=True)]


async def test_commands_of_a_call_that_ended_are_never_taken(store: Store) -> None:
    fence = await live_call(store, "rtc_1", "p1")
    assert await store.post_command("rtc_1", "hangup") is not None
    await store.finish_call(fence, state="ended", ended_reason="caller_hangup", report={"call_id": "rtc_1"})
    assert await store.take_commands("p1") == []


async def test_a_command_taken_but_not_done_follows_the_call_to_its_new_owner(cluster: Cluster, store: Store) -> None:
    await store.heartbeat("p1", 6)
    await live_call(store, "rtc_1", "p1")
    done = await store.post_command("rtc_1", "transfer", {"target": "sales"})
    pending = await store.post_command("rtc_1", "hangup")
    assert done is not None
    assert pending is not None
    assert len(await store.take_commands("p1")) == 2
    assert await store.command_done(done, "posted")
    cluster.clock.advance(10)  # p1's lease lapses (it died with the hangup in hand)
    row = await store.get_call("rtc_1")
    assert row is not None
    assert await store.take_over("rtc_1", "p2", expected_epoch=row.epoch) is not None
    assert await store.take_commands("p1") == []  # not its call any more
    again = await store.take_commands("p2")
    assert [(c.id, c.taken_by) for c in again] == [(pending, "p2")]  # the done one is not repeated
    assert await store.take_commands("p2") == []


async def test_two_replicas_racing_take_each_command_once(cluster: Cluster) -> None:
    a, b = await cluster.open(), await cluster.open()
    for i in range(10):
        await live_call(a, f"rtc_{i}", "p1")
    results = await asyncio.gather(*(s.post_command(f"rtc_{i}", "hangup") for i in range(10) for s in (a, b)))
    posted = [r for r in results if r is not None]
    assert len(set(posted)) == 20
    # the owner's poller on two connections at once, and another replica that owns none of them
    takers = ((a, "p1"), (b, "p1"), (b, "p2"))
    batches = await asyncio.gather(*(s.take_commands(o, limit=3) for _ in range(5) for s, o in takers))
    ids = [c.id for batch in batches for c in batch]
    assert sorted(ids) == sorted(posted)  # every command once, none twice
    assert all(c.taken_by == "p1" for batch in batches for c in batch)


async def test_sweep_forgets_old_commands(cluster: Cluster, store: Store) -> None:
    await live_call(store, "rtc_1")
    for _ in range(3):
        assert await store.post_command("rtc_1", "hangup") is not None
    assert (await store.sweep(keep_delivered_s=3600)).commands == 0
    cluster.clock.advance(3601)
    assert (await store.sweep(limit=2, keep_delivered_s=3600)).commands == 2
    assert (await store.sweep(keep_delivered_s=3600)).commands == 1
    assert await store.take_commands("p1") == []


async def test_a_machine_detected_command_passes_the_kind_check(store: Store) -> None:
    """#16: Twilio's answering-machine verdict for the owner (migration 0010) on both backends, after the others."""
    await live_call(store, "rtc_1", "p1")
    hangup = await store.post_command("rtc_1", "hangup")
    verdict = await store.post_command("rtc_1", "machine_detected", {"answered_by": "machine_end_beep"})
    assert hangup is not None
    assert verdict is not None
    assert verdict > hangup  # the rebuilt table kept its id counter
    taken = await store.take_commands("p1")
    assert [(c.kind, c.args) for c in taken] == [
        ("hangup", {}),
        ("machine_detected", {"answered_by": "machine_end_beep"}),
    ]
