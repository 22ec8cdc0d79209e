"""The store contract: every test runs on SQLite and on PostgreSQL (``backend``), real databases both.

Races use two stores on one database ("two replicas"), each with its own connections, started together with
``asyncio.gather``: exactly one wins each race.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

from sip_controller.state.records import (
    CallerLimit,
    CallExists,
    Entry,
    Fence,
    Fenced,
    HistoryQuery,
    NewCall,
    OutboxItem,
    StoreError,
)
from sip_controller.state.store import Store
from sip_controller.state.twilio_calls import KEEP_TWILIO_CALLS_S, NewTwilioCall
from tests.state.conftest import T0, Cluster

pytestmark = pytest.mark.anyio

TTL = 3600.0
INPUTS: dict[str, Any] = {
    "incoming": {"call_id": "x", "sip_headers": [{"name": "From", "value": "sip:+14155550100@sip.example"}]},
    "instructions": "Bonjour — you are the front desk. ☎",
    "profile": {"voice": "marin", "tools": ["end_call"], "limits": {"max_duration_s": 600}},
}


def new_call(call_id: str, owner: str = "p1", **overrides: Any) -> NewCall:
    fields: dict[str, Any] = {
        "call_id": call_id,
        "owner": owner,
        "profile": "default",
        "inputs": INPUTS,
        "received_at": T0,
        "caller": "+14155550100",
        "dialed": "+18005550199",
        "deadlines": {"max_duration": T0 + 600},
    }
    fields.update(overrides)
    return NewCall(**fields)


def ended(call_id: str, destination: str = "https://ops.example.com/hook") -> OutboxItem:
    return OutboxItem(
        key=f"call.ended:{call_id}:{destination}",
        destination=destination,
        event="call.ended",
        payload={"call_id": call_id, "ended_reason": "caller_hangup"},
        call_id=call_id,
    )


async def live_call(store: Store, call_id: str, owner: str = "p1", **overrides: Any) -> Fence:
    row = await store.create_call(new_call(call_id, owner, **overrides))
    assert row is not None
    return row.fence


# ---- claims ----------------------------------------------------------------------------------------------------


async def test_claim_once_per_key(store: Store) -> None:
    assert await store.claim("webhook:wh_1", TTL) is True
    assert await store.claim("webhook:wh_1", TTL) is False
    assert await store.claim("call:rtc_1", TTL) is True
    assert await store.claim("webhook:wh_2", TTL) is True


async def test_claim_expires_and_a_failed_claim_does_not_extend_it(cluster: Cluster, store: Store) -> None:
    assert await store.claim("k", 10)
    cluster.clock.advance(8)
    assert await store.claim("k", 10) is False
    cluster.clock.advance(1.999)
    assert await store.claim("k", 10) is False
    cluster.clock.advance(0.001)  # exactly at expiry the key is free again
    assert await store.claim("k", 10) is True
    cluster.clock.advance(9)
    assert await store.claim("k", 10) is False


async def test_release_frees_a_claim(store: Store) -> None:
    assert await store.claim("k", TTL)
    await store.release("k")
    assert await store.claim("k", TTL) is True
    await store.release("never-claimed")
    assert await store.claim("k", TTL) is False


async def test_sweep_deletes_expired_claims_only_and_is_bounded(cluster: Cluster, store: Store) -> None:
    for i in range(25):
        assert await store.claim(f"old:{i}", 10)
    assert await store.claim("young", 1000)
    cluster.clock.advance(11)
    first = await store.sweep(limit=10)
    assert first.claims == 10
    assert (await store.sweep(limit=10)).claims == 10
    assert (await store.sweep(limit=10)).claims == 5
    assert (await store.sweep(limit=10)).total == 0
    assert await store.claim("young", 1000) is False
    assert await store.claim("old:3", 10) is True


async def test_two_replicas_racing_on_claims_one_winner_each(cluster: Cluster) -> None:
    a, b = await cluster.open(), await cluster.open()
    keys = [f"webhook:wh_{i}" for i in range(40)]
    results = await asyncio.gather(*(s.claim(k, TTL) for k in keys for s in (a, b, a)))
    per_key = [results[i * 3 : i * 3 + 3] for i in range(len(keys))]
    assert all(sum(r) == 1 for r in per_key), per_key


# ---- processes -------------------------------------------------------------------------------------------------


async def test_heartbeat_lease_and_lapse(cluster: Cluster, store: Store) -> None:
    assert await store.heartbeat("p1", 6, {"host": "a", "version": "0.1.0"}) is True
    assert await store.heartbeat("p2", 6) is True
    assert await store.lapsed_processes() == []
    cluster.clock.advance(4)
    assert await store.heartbeat("p1", 6) is True  # renewed in time: p1 now lasts until +10
    cluster.clock.advance(2)  # p2's lease ends exactly now
    lapsed = await store.lapsed_processes()
    assert [p.process_id for p in lapsed] == ["p2"]
    cluster.clock.advance(5)
    lapsed = await store.lapsed_processes()
    assert [p.process_id for p in lapsed] == ["p2", "p1"]  # oldest heartbeat first
    assert lapsed[1].info == {"host": "a", "version": "0.1.0"}  # kept from the first heartbeat
    assert lapsed[1].heartbeat_at == T0 + 4
    assert await store.heartbeat("p1", 6) is False  # it had lapsed: its calls may be gone
    assert await store.heartbeat("p1", 6) is True
    assert [p.process_id for p in await store.lapsed_processes()] == ["p2"]


async def test_end_lease_lapses_at_once(store: Store) -> None:
    await store.heartbeat("p1", 6)
    await store.end_lease("p1")
    assert [p.process_id for p in await store.lapsed_processes()] == ["p1"]
    await store.end_lease("unknown")  # no error


# ---- calls -----------------------------------------------------------------------------------------------------


async def test_create_call_round_trips_every_field(cluster: Cluster, store: Store) -> None:
    cluster.clock.advance(0.25)
    outbox = [OutboxItem("call.started:rtc_1:jsonl", "jsonl", "call.started", {"call_id": "rtc_1"}, "rtc_1")]
    row = await store.create_call(new_call("rtc_1", cost_usd=0.5, accepted_at=T0 + 0.1), outbox=outbox)
    assert row is not None
    assert row.fence == Fence("rtc_1", "p1", 1)
    assert (row.state, row.profile, row.caller, row.dialed) == ("received", "default", "+14155550100", "+18005550199")
    assert row.inputs == INPUTS
    assert row.deadlines == {"max_duration": T0 + 600}
    assert (row.received_at, row.accepted_at, row.updated_at) == (T0, T0 + 0.1, T0 + 0.25)
    assert (row.cost_usd, row.takeovers, row.takeover_gap_s, row.entry_count) == (0.5, 0, None, 0)
    assert row.live
    assert row.ended_at is None
    assert row.ended_reason is None
    assert row.wake_at is None
    assert await store.get_call("rtc_1") == row
    assert await store.get_call("rtc_nope") is None
    assert await store.get_report("rtc_1") is None  # live: no report yet
    claimed = await store.claim_outbox("w1")
    assert [(r.key, r.event, r.payload) for r in claimed] == [
        ("call.started:rtc_1:jsonl", "call.started", {"call_id": "rtc_1"})
    ]


async def test_create_call_twice_is_refused_and_writes_nothing(store: Store) -> None:
    await live_call(store, "rtc_1")
    with pytest.raises(CallExists):
        await store.create_call(new_call("rtc_1", "p2"), outbox=[ended("rtc_1")])
    row = await store.get_call("rtc_1")
    assert row is not None
    assert row.owner == "p1"
    assert (await store.outbox_stats()).pending == 0  # the refused transaction's outbox row rolled back


async def test_capacity_is_checked_with_the_insert(store: Store) -> None:
    fences = [await live_call(store, f"rtc_{i}") for i in range(3)]
    assert await store.create_call(new_call("rtc_x"), max_live=3) is None
    assert await store.get_call("rtc_x") is None
    await store.finish_call(fences[0], state="ended", ended_reason="caller_hangup", report={})
    assert await store.create_call(new_call("rtc_x"), max_live=3) is not None
    assert await store.count_live() == 3


async def test_capacity_holds_across_replicas(cluster: Cluster) -> None:
    a, b = await cluster.open(), await cluster.open()
    results = await asyncio.gather(
        *(s.create_call(new_call(f"rtc_{i}"), max_live=5) for i, s in enumerate([a, b] * 8))
    )
    assert sum(r is not None for r in results) == 5
    assert await a.count_live() == 5


async def test_update_call_changes_only_what_is_given(cluster: Cluster, store: Store) -> None:
    fence = await live_call(store, "rtc_1")
    cluster.clock.advance(1)
    await store.update_call(fence, state="accepting")
    await store.update_call(fence, state="attached", accepted_at=T0 + 1, deadlines={"silence": T0 + 31})
    await store.update_call(fence, cost_usd=0.0125, wake_at=T0 + 5)
    row = await store.get_call("rtc_1")
    assert row is not None
    assert (row.state, row.accepted_at, row.deadlines, row.cost_usd, row.wake_at, row.updated_at) == (
        "attached", T0 + 1, {"silence": T0 + 31}, 0.0125, T0 + 5, T0 + 1,
    )  # fmt: skip
    await store.update_call(fence, wake_at=None)
    row = await store.get_call("rtc_1")
    assert row is not None
    assert row.wake_at is None
    assert row.state == "attached"
    await store.verify(fence)
    with pytest.raises(Fenced) as caught:
        await store.update_call(Fence("rtc_nope", "p1", 1), state="x")
    assert caught.value.reason == "unknown_call"


async def test_append_in_batches_and_read_back_in_order(store: Store) -> None:
    fence = await live_call(store, "rtc_1")
    first = [Entry("mark", T0 + 0.1, {"what": "accepted"}), Entry("transcript", T0 + 2, {"role": "assistant"})]
    assert await store.append(fence, first, state="attached") == 2
    second = [Entry("tool_call", T0 + 3, {"name": "lookup", "arguments": {"q": "ä"}})]
    second += [Entry("usage", T0 + 4 + i, {"input_tokens": i}) for i in range(50)]
    assert await store.append(fence, second, cost_usd=0.2) == 53
    assert await store.append(fence, []) == 53
    entries = await store.read_entries("rtc_1")
    assert [e.seq for e in entries] == list(range(1, 54))
    assert [(e.kind, e.at, e.data) for e in entries[:3]] == [
        ("mark", T0 + 0.1, {"what": "accepted"}),
        ("transcript", T0 + 2, {"role": "assistant"}),
        ("tool_call", T0 + 3, {"name": "lookup", "arguments": {"q": "ä"}}),
    ]
    assert [e.data for e in await store.read_entries("rtc_1", after_seq=51)] == [
        {"input_tokens": 48},
        {"input_tokens": 49},
    ]
    row = await store.get_call("rtc_1")
    assert row is not None
    assert (row.entry_count, row.cost_usd, row.state) == (53, 0.2, "attached")
    assert await store.read_entries("rtc_nope") == []


async def test_a_value_json_cannot_carry_is_refused_before_writing(store: Store) -> None:
    fence = await live_call(store, "rtc_1")
    with pytest.raises(ValueError, match="JSON"):
        await store.append(fence, [Entry("usage", T0, {"cost": math.nan})])
    assert await store.read_entries("rtc_1") == []


async def test_finish_writes_report_and_outbox_in_one_go_and_only_once(cluster: Cluster, store: Store) -> None:
    fence = await live_call(store, "rtc_1")
    await store.append(fence, [Entry("transcript", T0 + 1, {"text": "hello"})])
    cluster.clock.advance(30)
    report = {"call_id": "rtc_1", "ended_reason": "agent_end_call", "usage": {"total_tokens": 12}, "cost_usd": 0.3}
    outbox = [ended("rtc_1"), ended("rtc_1", "jsonl")]
    last = [Entry("mark", T0 + 30, {"what": "ended"})]
    await store.finish_call(
        fence, state="ended", ended_reason="agent_end_call", report=report, outbox=outbox, entries=last, cost_usd=0.3
    )
    row = await store.get_call("rtc_1")
    assert row is not None
    assert (row.state, row.ended_reason, row.ended_at, row.cost_usd, row.entry_count, row.live) == (
        "ended", "agent_end_call", T0 + 30, 0.3, 2, False,
    )  # fmt: skip
    assert await store.get_report("rtc_1") == report
    assert [e.kind for e in await store.read_entries("rtc_1")] == ["transcript", "mark"]
    assert (await store.outbox_stats()).pending == 2
    assert await store.count_live() == 0
    with pytest.raises(Fenced) as caught:
        await store.finish_call(fence, state="ended", ended_reason="shutdown", report={}, outbox=[ended("rtc_1", "x")])
    assert caught.value.reason == "finished"
    with pytest.raises(Fenced):
        await store.update_call(fence, state="attached")
    with pytest.raises(Fenced):
        await store.verify(fence)
    assert await store.get_report("rtc_1") == report
    assert (await store.outbox_stats()).pending == 2  # the refused finish enqueued nothing


async def test_a_finished_report_takes_fields_that_came_after_it(store: Store) -> None:
    fence = await live_call(store, "rtc_1")
    assert not await store.merge_report("rtc_1", {"recording": {"sid": "RE1"}})  # live: no report to change
    assert not await store.merge_report("rtc_nope", {"recording": {"sid": "RE1"}})
    report: dict[str, object] = {"call_id": "rtc_1", "ended_reason": "agent_end_call", "recording": None}
    await store.finish_call(fence, state="ended", ended_reason="agent_end_call", report=report, outbox=[])
    recording = {"sid": "RE1", "url": "https://api.twilio.com/x/RE1", "duration_s": 42.0, "channels": 2}
    assert await store.merge_report("rtc_1", {"recording": recording})
    assert await store.get_report("rtc_1") == {**report, "recording": recording}
    assert await store.merge_report("rtc_1", {"recording": recording})  # again: the same document
    assert await store.get_report("rtc_1") == {**report, "recording": recording}


async def test_finish_at_a_given_time(store: Store) -> None:
    fence = await live_call(store, "rtc_1")
    await store.finish_call(fence, state="rejected", ended_reason="rejected", report={"r": 1}, ended_at=T0 + 0.002)
    row = await store.get_call("rtc_1")
    assert row is not None
    assert row.ended_at == T0 + 0.002
    assert row.state == "rejected"


async def test_live_lists_and_counts(cluster: Cluster) -> None:
    a, b = await cluster.open(), await cluster.open()
    await live_call(a, "rtc_1", "p1")
    cluster.clock.advance(1)
    await live_call(b, "rtc_2", "p2", received_at=T0 + 1)
    f3 = await live_call(b, "rtc_3", "p2", received_at=T0 + 2)
    f4 = await live_call(a, "rtc_4", "p1", received_at=T0 + 3)
    await a.update_call(f3, state="hanging_up")
    await b.finish_call(f4, state="ended", ended_reason="caller_hangup", report={})
    assert [c.call_id for c in await b.list_live()] == ["rtc_1", "rtc_2", "rtc_3"]
    assert [c.call_id for c in await a.list_live(owner="p2")] == ["rtc_2", "rtc_3"]
    assert [c.call_id for c in await a.list_live(limit=1)] == ["rtc_1"]
    assert (await a.count_live(), await b.count_live(state="hanging_up"), await a.count_live(state="x")) == (3, 1, 0)


async def test_hanging_up_calls_due_for_a_retry(cluster: Cluster, store: Store) -> None:
    f1 = await live_call(store, "rtc_1")
    f2 = await live_call(store, "rtc_2")
    f3 = await live_call(store, "rtc_3")
    await live_call(store, "rtc_4")
    await store.update_call(f1, state="hanging_up", wake_at=T0 + 10)
    await store.update_call(f2, state="hanging_up", wake_at=T0 + 5)
    await store.update_call(f3, state="hanging_up", wake_at=T0 + 50)
    assert await store.hanging_up_calls() == []
    cluster.clock.advance(10)
    assert [c.call_id for c in await store.hanging_up_calls()] == ["rtc_2", "rtc_1"]
    assert [c.call_id for c in await store.hanging_up_calls(limit=1)] == ["rtc_2"]
    await store.finish_call(f2, state="ended", ended_reason="agent_end_call", report={"hangup": "confirmed"})
    assert [c.call_id for c in await store.hanging_up_calls()] == ["rtc_1"]


# ---- ownership: fencing and takeover ----------------------------------------------------------------------------


async def test_no_takeover_while_the_owner_lives(cluster: Cluster, store: Store) -> None:
    await store.heartbeat("p1", 6)
    fence = await live_call(store, "rtc_1")
    assert await store.orphaned_calls() == []
    assert await store.take_over("rtc_1", "p2", expected_epoch=1) is None
    cluster.clock.advance(5.9)
    assert await store.take_over("rtc_1", "p2", expected_epoch=1) is None
    await store.verify(fence)


async def test_takeover_after_the_lease_lapses(cluster: Cluster, store: Store) -> None:
    await store.heartbeat("p1", 6)
    await store.heartbeat("p2", 6)
    fence = await live_call(store, "rtc_1")
    await live_call(store, "rtc_2", "p2")
    cluster.clock.advance(4)
    await store.heartbeat("p2", 6)  # p2 lives on; p1 died after its heartbeat at T0
    cluster.clock.advance(2)
    orphans = await store.orphaned_calls()
    assert [(c.call_id, c.epoch) for c in orphans] == [("rtc_1", 1)]
    taken = await store.take_over("rtc_1", "p2", expected_epoch=1)
    assert taken is not None
    assert (taken.owner, taken.epoch, taken.takeovers, taken.takeover_gap_s) == ("p2", 2, 1, 6.0)
    assert taken.inputs == INPUTS
    assert taken.deadlines == {"max_duration": T0 + 600}
    assert await store.orphaned_calls() == []
    assert await store.take_over("rtc_1", "p3", expected_epoch=1) is None  # the epoch moved on
    assert [c.call_id for c in await store.list_live(owner="p2")] == ["rtc_1", "rtc_2"]
    await store.verify(taken.fence)
    with pytest.raises(Fenced) as caught:
        await store.verify(fence)
    assert caught.value.reason == "stale_owner"


async def test_a_stale_owner_that_wakes_up_cannot_write(cluster: Cluster, store: Store) -> None:
    await store.heartbeat("p1", 6)
    old = await live_call(store, "rtc_1")
    await store.append(old, [Entry("transcript", T0 + 1, {"text": "one"})], cost_usd=0.1)
    cluster.clock.advance(7)
    taken = await store.take_over("rtc_1", "p2", expected_epoch=1)
    assert taken is not None
    assert await store.heartbeat("p1", 6) is False  # p1 wakes up: its lease had lapsed
    for attempt in (
        store.append(old, [Entry("transcript", T0 + 8, {"text": "stale"})], cost_usd=9.9),
        store.update_call(old, state="hanging_up"),
        store.finish_call(old, state="ended", ended_reason="shutdown", report={"stale": True}, outbox=[ended("rtc_1")]),
    ):
        with pytest.raises(Fenced) as caught:
            await attempt
        assert caught.value.reason == "stale_owner"
        assert caught.value.fence == old
    row = await store.get_call("rtc_1")
    assert row is not None
    assert (row.owner, row.epoch, row.cost_usd, row.state, row.live) == (
        "p2", 2, 0.1, "received", True,
    )
    assert [e.data for e in await store.read_entries("rtc_1")] == [{"text": "one"}]
    assert (await store.outbox_stats()).pending == 0
    # the new owner goes on, numbering after what the old one wrote
    assert await store.append(taken.fence, [Entry("mark", T0 + 7, {"what": "takeover"})]) == 2
    # and if the new owner dies too, the call moves again
    cluster.clock.advance(7)
    again = await store.take_over("rtc_1", "p3", expected_epoch=2)
    assert again is not None
    assert (again.epoch, again.takeovers) == (3, 2)


async def test_an_owner_that_never_heartbeat_is_an_orphan_at_once(cluster: Cluster, store: Store) -> None:
    await live_call(store, "rtc_1", "ghost")
    cluster.clock.advance(3)
    assert [c.call_id for c in await store.orphaned_calls()] == ["rtc_1"]
    taken = await store.take_over("rtc_1", "p2", expected_epoch=1)
    assert taken is not None
    assert taken.takeover_gap_s == 3.0


async def test_end_lease_hands_calls_over_at_once(store: Store) -> None:
    await store.heartbeat("p1", 6)
    await live_call(store, "rtc_1")
    await store.end_lease("p1")
    taken = await store.take_over("rtc_1", "p2", expected_epoch=1)
    assert taken is not None
    assert taken.takeover_gap_s == 0.0


async def test_two_replicas_racing_on_takeovers_one_winner_each(cluster: Cluster) -> None:
    a, b = await cluster.open(), await cluster.open()
    await a.heartbeat("dead", 6)
    for i in range(15):
        await live_call(a, f"rtc_{i}", "dead")
    cluster.clock.advance(10)
    orphans = await a.orphaned_calls()
    assert len(orphans) == 15
    results = await asyncio.gather(
        *(s.take_over(c.call_id, owner, expected_epoch=c.epoch) for c in orphans for s, owner in ((a, "pa"), (b, "pb")))
    )
    pairs = [results[i * 2 : i * 2 + 2] for i in range(len(orphans))]
    assert all(sum(r is not None for r in pair) == 1 for pair in pairs)
    rows = [r for r in results if r is not None]
    assert all(r.epoch == 2 and r.takeovers == 1 for r in rows)
    assert {r.owner for r in rows} <= {"pa", "pb"}
    assert sorted(c.call_id for c in await a.list_live()) == sorted(c.call_id for c in rows)


async def test_fenced_writes_race_a_takeover(cluster: Cluster) -> None:
    """The old owner keeps writing while a survivor takes the call over: every write lands before the takeover
    (so the taker reads it) or is refused; none lands after."""
    a, b = await cluster.open(), await cluster.open()
    await a.heartbeat("p1", 6)
    old = await live_call(a, "rtc_1")
    cluster.clock.advance(7)

    async def writer() -> int:
        written = 0
        for i in range(30):
            try:
                await a.append(old, [Entry("usage", T0 + i, {"i": i})])
            except Fenced:
                return written
            written += 1
            await asyncio.sleep(0)
        return written

    written, taken = await asyncio.gather(writer(), b.take_over("rtc_1", "p2", expected_epoch=1))
    assert taken is not None
    assert taken.entry_count == written
    entries = await b.read_entries("rtc_1")
    assert [e.data["i"] for e in entries] == list(range(written))


# ---- history -----------------------------------------------------------------------------------------------------


async def test_history_filters_and_keyset_paging(cluster: Cluster, store: Store) -> None:
    reasons = ["caller_hangup", "agent_end_call", "max_duration"]
    for i in range(23):
        fence = await live_call(
            store, f"rtc_{i:02d}", profile="sales" if i % 2 else "default", caller=f"+1415555{i % 4:04d}"
        )
        cluster.clock.now = T0 + 100 + (i // 2)  # pairs finish at the same second: the call_id breaks the tie
        await store.finish_call(
            fence, state="ended", ended_reason=reasons[i % 3], report={"call_id": f"rtc_{i:02d}", "n": i}
        )
    await live_call(store, "rtc_live")  # never listed: not finished
    everything = await store.list_finished(HistoryQuery(limit=1000))
    assert [c.call_id for c in everything.calls] == [f"rtc_{i:02d}" for i in reversed(range(23))]
    assert everything.next_cursor is None
    seen: list[str] = []
    cursor = None
    while True:
        page = await store.list_finished(HistoryQuery(limit=5, cursor=cursor))
        seen += [c.call_id for c in page.calls]
        assert len(page.calls) <= 5
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == [c.call_id for c in everything.calls]
    sales = await store.list_finished(HistoryQuery(profile="sales", ended_reason="caller_hangup"))
    assert [c.call_id for c in sales.calls] == ["rtc_21", "rtc_15", "rtc_09", "rtc_03"]
    window = await store.list_finished(HistoryQuery(since=T0 + 102, until=T0 + 104))
    assert [c.call_id for c in window.calls] == ["rtc_07", "rtc_06", "rtc_05", "rtc_04"]
    caller = await store.list_finished(HistoryQuery(caller="+14155550003", limit=2))
    assert [c.call_id for c in caller.calls] == ["rtc_19", "rtc_15"]
    assert caller.next_cursor is not None
    rest = await store.list_finished(HistoryQuery(caller="+14155550003", limit=2, cursor=caller.next_cursor))
    assert [c.call_id for c in rest.calls] == ["rtc_11", "rtc_07"]
    assert await store.get_report("rtc_07") == {"call_id": "rtc_07", "n": 7}
    with pytest.raises(ValueError, match="cursor"):
        await store.list_finished(HistoryQuery(cursor="not-a-cursor"))
    with pytest.raises(ValueError, match="limit"):
        await store.list_finished(HistoryQuery(limit=0))


# ---- outbox ------------------------------------------------------------------------------------------------------


async def test_outbox_lease_deliver_and_stats(cluster: Cluster, store: Store) -> None:
    assert await store.outbox_stats() == type(await store.outbox_stats())(0, 0, None)
    assert await store.enqueue([ended("rtc_1"), ended("rtc_2"), ended("rtc_1")]) == 2
    assert await store.enqueue([ended("rtc_1")]) == 0  # the same key again: nothing
    cluster.clock.advance(5)
    stats = await store.outbox_stats()
    assert (stats.pending, stats.gave_up, stats.oldest_age_s) == (2, 0, 5.0)
    rows = await store.claim_outbox("w1", lease_s=30)
    assert [(r.call_id, r.attempts, r.created_at) for r in rows] == [("rtc_1", 1, T0), ("rtc_2", 1, T0)]
    assert await store.claim_outbox("w2") == []  # leased to w1
    assert await store.mark_delivered([rows[0].id]) == 1
    assert await store.mark_delivered([rows[0].id]) == 0
    assert await store.mark_delivered([]) == 0
    cluster.clock.advance(31)  # w1 vanished without an answer for rtc_2: its lease passes
    again = await store.claim_outbox("w2")
    assert [(r.call_id, r.attempts) for r in again] == [("rtc_2", 2)]
    assert await store.mark_failed("w1", again[0].id, next_attempt_at=T0 + 100, error="late") is False
    assert await store.mark_failed("w2", again[0].id, next_attempt_at=T0 + 100, error="503 Service Unavailable")
    assert await store.claim_outbox("w2") == []  # not due yet
    cluster.clock.now = T0 + 100
    third = await store.claim_outbox("w3")
    assert [(r.attempts, r.last_error) for r in third] == [(3, "503 Service Unavailable")]
    stats = await store.outbox_stats()
    assert (stats.pending, stats.oldest_age_s) == (1, 100.0)
    assert await store.mark_failed("w3", third[0].id, next_attempt_at=None, error="410 Gone")
    stats = await store.outbox_stats()
    assert (stats.pending, stats.gave_up, stats.oldest_age_s) == (0, 1, None)
    cluster.clock.advance(10_000)
    assert await store.claim_outbox("w3") == []  # given up: never again


async def test_outbox_order_limit_destination_and_later_due(cluster: Cluster, store: Store) -> None:
    later = OutboxItem("k-later", "jsonl", "call.ended", {"n": 0}, due_at=T0 + 60)
    await store.enqueue([ended(f"rtc_{i}", "jsonl" if i % 2 else "https://a.example/h") for i in range(6)] + [later])
    jsonl = await store.claim_outbox("w1", destination="jsonl", limit=2, lease_s=600)
    assert [r.call_id for r in jsonl] == ["rtc_1", "rtc_3"]
    rest = await store.claim_outbox("w1", lease_s=600)
    assert [r.call_id for r in rest] == ["rtc_0", "rtc_2", "rtc_4", "rtc_5"]
    cluster.clock.advance(60)
    assert [r.key for r in await store.claim_outbox("w1")] == ["k-later"]


async def test_two_replicas_claiming_the_outbox_never_share_a_row(cluster: Cluster) -> None:
    a, b = await cluster.open(), await cluster.open()
    await a.enqueue([ended(f"rtc_{i}") for i in range(60)])
    batches = await asyncio.gather(*(s.claim_outbox(w, limit=7) for _ in range(6) for s, w in ((a, "wa"), (b, "wb"))))
    ids = [r.id for batch in batches for r in batch]
    assert len(ids) == len(set(ids)) == 60
    assert all(r.attempts == 1 for batch in batches for r in batch)


async def test_sweep_forgets_old_deliveries_and_dead_processes(cluster: Cluster, store: Store) -> None:
    await store.enqueue([ended("rtc_1"), ended("rtc_2"), ended("rtc_3")])
    rows = await store.claim_outbox("w1")
    await store.mark_delivered([rows[0].id])
    await store.mark_failed("w1", rows[1].id, next_attempt_at=None, error="gone")
    await store.heartbeat("gone", 6)
    await store.heartbeat("owner", 6)
    await live_call(store, "rtc_live", "owner")
    cluster.clock.advance(3600)
    assert (await store.sweep(keep_delivered_s=7200)).outbox == 0
    cluster.clock.advance(86_400)
    counts = await store.sweep(keep_delivered_s=7200)
    assert (counts.outbox, counts.processes) == (2, 1)  # "owner" still owns a live call: kept
    assert {p.process_id for p in await store.lapsed_processes()} == {"owner"}
    assert (await store.outbox_stats()).pending == 1


async def test_record_finished_writes_a_call_that_never_lived_in_one_go(cluster: Cluster, store: Store) -> None:
    cluster.clock.advance(1)
    started = OutboxItem("call.started:rtc_r:jsonl", "jsonl", "call.started", {"call_id": "rtc_r"}, "rtc_r")
    await store.record_finished(
        new_call("rtc_r", state="rejected", deadlines={}),
        ended_reason="rejected", report={"call_id": "rtc_r", "ended_reason": "rejected"},
        outbox=[started, ended("rtc_r")], entries=[Entry("mark", T0, {"what": "rejected: SIP 486"})],
        ended_at=T0 + 0.5,
    )  # fmt: skip
    row = await store.get_call("rtc_r")
    assert row is not None
    assert (row.state, row.ended_reason, row.ended_at, row.live, row.entry_count) == (
        "rejected", "rejected", T0 + 0.5, False, 1
    )  # fmt: skip
    assert row.updated_at == T0 + 1
    assert await store.get_report("rtc_r") == {"call_id": "rtc_r", "ended_reason": "rejected"}
    assert [(e.seq, e.kind) for e in await store.read_entries("rtc_r")] == [(1, "mark")]
    assert await store.count_live() == 0
    assert [r.key for r in await store.claim_outbox("w1")] == [started.key, ended("rtc_r").key]
    with pytest.raises(CallExists):  # never twice, and the refused one writes nothing
        await store.record_finished(
            new_call("rtc_r", "p2"), ended_reason="rejected", report={}, outbox=[ended("rtc_r", "other")]
        )
    assert (await store.outbox_stats()).pending == 2
    page = await store.list_finished(HistoryQuery(limit=10))
    assert [c.call_id for c in page.calls] == ["rtc_r"]


# ---- the admission (one transaction) ----------------------------------------------------------------------------

KEYS = ("webhook:wh_1", "call:rtc_1")


async def test_admit_writes_claims_call_caller_hit_and_outbox_in_one_go(cluster: Cluster, store: Store) -> None:
    cluster.clock.advance(0.25)
    outbox = [OutboxItem("call.started:rtc_1:jsonl", "jsonl", "call.started", {"call_id": "rtc_1"}, "rtc_1")]
    got = await store.admit(
        KEYS, ttl_s=TTL, call=new_call("rtc_1", accepted_at=T0 + 0.1), max_live=5,
        caller=CallerLimit("+14155550100", 3), outbox=outbox,
    )  # fmt: skip
    assert (got.outcome, got.held) == ("admitted", None)
    assert got.row is not None
    assert got.row == await store.get_call("rtc_1")  # the row as written, without reading it back
    assert got.row.fence == Fence("rtc_1", "p1", 1)
    assert got.row.updated_at == T0 + 0.25
    assert [await store.claim(k, TTL) for k in KEYS] == [False, False]
    assert await store.caller_count("+14155550100") == 1
    claimed = await store.claim_outbox("w1")
    assert [(r.key, r.call_id, r.payload) for r in claimed] == [
        ("call.started:rtc_1:jsonl", "rtc_1", {"call_id": "rtc_1"})
    ]


async def test_admit_a_duplicate_writes_nothing_and_names_the_held_key(store: Store) -> None:
    assert await store.claim("call:rtc_1", TTL)
    got = await store.admit(
        KEYS, ttl_s=TTL, call=new_call("rtc_1"), caller=CallerLimit("+14155550100", 3), outbox=[ended("rtc_1")]
    )
    assert (got.outcome, got.held, got.row) == ("duplicate", "call:rtc_1", None)
    assert await store.claim("webhook:wh_1", TTL) is True  # all or none: the free key was not taken either
    assert await store.get_call("rtc_1") is None
    assert await store.caller_count("+14155550100") == 0
    assert (await store.outbox_stats()).pending == 0
    again = await store.admit(["webhook:wh_2", "call:rtc_2"], ttl_s=TTL)
    assert again.outcome == "claimed"
    assert (await store.admit(["webhook:wh_2"], ttl_s=TTL)).held == "webhook:wh_2"


async def test_admit_takes_an_expired_claim(cluster: Cluster, store: Store) -> None:
    assert (await store.admit(KEYS, ttl_s=10)).outcome == "claimed"
    assert (await store.admit(KEYS, ttl_s=10)).outcome == "duplicate"
    cluster.clock.advance(11)
    got = await store.admit(KEYS, ttl_s=10, call=new_call("rtc_1"))
    assert got.outcome == "admitted"


async def test_admit_refusals_keep_the_claims_but_count_nothing(store: Store) -> None:
    await live_call(store, "rtc_live")
    limit = CallerLimit("+14155550100", 1)
    at_capacity = await store.admit(["call:rtc_a"], ttl_s=TTL, call=new_call("rtc_a"), max_live=1, caller=limit)
    assert (at_capacity.outcome, at_capacity.row) == ("at_capacity", None)
    assert await store.caller_count("+14155550100") == 0  # refused: not counted
    exists = await store.admit(["call:rtc_b"], ttl_s=TTL, call=new_call("rtc_live", "p2"), caller=limit)
    assert exists.outcome == "exists"
    assert (await store.get_call("rtc_live") or new_call("x")).owner == "p1"
    assert await store.caller_count("+14155550100") == 0
    assert (await store.admit(["call:rtc_c"], ttl_s=TTL, call=new_call("rtc_c"), caller=limit)).outcome == "admitted"
    limited = await store.admit(
        ["call:rtc_d"], ttl_s=TTL, call=new_call("rtc_d"), caller=limit, outbox=[ended("rtc_d")]
    )
    assert limited.outcome == "rate_limited"
    assert await store.get_call("rtc_d") is None
    assert (await store.outbox_stats()).pending == 0
    assert [await store.claim(k, TTL) for k in ("call:rtc_a", "call:rtc_b", "call:rtc_d")] == [False, False, False]
    off = await store.admit(["call:rtc_e"], ttl_s=TTL, call=new_call("rtc_e"), caller=CallerLimit("+14155550100", 0))
    assert off.outcome == "admitted"  # a limit of 0 is off
    assert await store.caller_count("+14155550100") == 1


async def test_admit_races_across_replicas_one_winner_per_call_and_capacity_holds(cluster: Cluster) -> None:
    a, b = await cluster.open(), await cluster.open()

    async def ring(store: Store, i: int) -> str:
        call_id = f"rtc_{i // 2}"  # every call arrives twice (one webhook redelivered), at both replicas
        got = await store.admit(
            [f"webhook:wh_{i // 2}", f"call:{call_id}"], ttl_s=TTL, call=new_call(call_id), max_live=5
        )
        return got.outcome

    outcomes = await asyncio.gather(*(ring(s, i) for i, s in enumerate([a, b] * 8)))
    assert outcomes.count("duplicate") == 8
    assert outcomes.count("admitted") == 5
    assert outcomes.count("at_capacity") == 3
    assert await a.count_live() == 5


async def test_admit_caller_window_holds_across_replicas(cluster: Cluster) -> None:
    a, b = await cluster.open(), await cluster.open()
    limit = CallerLimit("+14155550100", 3)
    results = await asyncio.gather(
        *(
            s.admit([f"call:rtc_{i}"], ttl_s=TTL, call=new_call(f"rtc_{i}"), caller=limit)
            for i, s in enumerate([a, b] * 5)
        )
    )
    assert [r.outcome for r in results].count("admitted") == 3
    assert await b.caller_count("+14155550100") == 3


# ---- cluster counts --------------------------------------------------------------------------------------------


async def test_caller_sliding_window(cluster: Cluster, store: Store) -> None:
    for _ in range(3):
        assert await store.allow_caller("+14155550100", 3)
        cluster.clock.advance(10)
    assert await store.allow_caller("+14155550100", 3) is False  # 3 in the last 60 s; refused ones do not count
    assert await store.allow_caller("anonymous", 3) is True
    assert await store.caller_count("+14155550100") == 3
    cluster.clock.now = T0 + 60  # the first call leaves the window
    assert await store.caller_count("+14155550100") == 2
    assert await store.allow_caller("+14155550100", 3) is True
    assert await store.allow_caller("+14155550100", 3) is False
    assert await store.allow_caller("+14155550100", 0) is True  # the limit is off
    assert await store.caller_count("+14155550100", window_s=15) == 1
    cluster.clock.advance(120)
    assert (await store.sweep()).caller_hits == 5


async def test_caller_limit_holds_across_replicas(cluster: Cluster) -> None:
    a, b = await cluster.open(), await cluster.open()
    results = await asyncio.gather(*(s.allow_caller("+14155550100", 5) for s in [a, b] * 10))
    assert sum(results) == 5
    assert await b.caller_count("+14155550100") == 5


# ---- life cycle ------------------------------------------------------------------------------------------------


async def test_a_reopened_store_has_everything(cluster: Cluster) -> None:
    first = await cluster.open()
    await first.heartbeat("p1", 6)
    fence = await live_call(first, "rtc_1")
    await first.append(fence, [Entry("transcript", T0, {"text": "hi"})])
    await first.claim("call:rtc_1", TTL)
    await first.aclose()
    with pytest.raises(StoreError, match="closed"):
        await first.get_call("rtc_1")
    second = await cluster.open()
    row = await second.get_call("rtc_1")
    assert row is not None
    assert row.fence == fence
    assert row.entry_count == 1
    assert await second.claim("call:rtc_1", TTL) is False
    await second.aclose()
    await second.aclose()  # twice is fine


# ---- Twilio calls (#16) -------------------------------------------------------------------------------------


def twilio_call(n: int, **overrides: Any) -> NewTwilioCall:
    fields: dict[str, Any] = {
        "id": f"out_{n}",
        "correlation": f"corr{n:020d}",
        "direction": "outbound",
        "status": "requested",
        "idempotency_key": f"key-{n}",
        "request_hash": "h1",
        "profile": "reminders",
        "from_number": "+18005550100",
        "to_number": "+14155550123",
        "variables": {"first_name": "Ada", "note": "Bonjour ☎"},
    }
    fields.update(overrides)
    return NewTwilioCall(**fields)


async def test_a_twilio_call_is_written_and_found_by_each_key(store: Store, cluster: Cluster) -> None:
    row, created = await store.create_twilio_call(twilio_call(1))
    assert created
    assert (row.status, row.call_sid, row.call_id, row.events, row.created_at) == ("requested", None, None, [], T0)
    assert row.variables == {"first_name": "Ada", "note": "Bonjour ☎"}
    cluster.clock.advance(1)
    await store.update_twilio_call("out_1", call_sid="CA1", status="queued")
    for key in ({"id": "out_1"}, {"correlation": "corr00000000000000000001"}, {"call_sid": "CA1"}):
        found = await store.get_twilio_call(**key)
        assert found is not None
        assert (found.id, found.status, found.updated_at) == ("out_1", "queued", T0 + 1)
    assert await store.get_twilio_call(call_sid="CA2") is None
    with pytest.raises(ValueError, match="exactly one"):
        await store.get_twilio_call(id="out_1", call_sid="CA1")


async def test_a_repeated_idempotency_key_or_call_sid_returns_the_first_row(store: Store) -> None:
    first, _ = await store.create_twilio_call(twilio_call(1))
    again, created = await store.create_twilio_call(twilio_call(2, idempotency_key="key-1", request_hash="h2"))
    assert not created
    assert (again.id, again.request_hash) == (first.id, "h1")
    inbound = twilio_call(3, direction="inbound", call_sid="CA3", idempotency_key=None, profile=None)
    await store.create_twilio_call(inbound)
    retried, created = await store.create_twilio_call(twilio_call(4, direction="inbound", call_sid="CA3",
                                                                 idempotency_key=None))  # fmt: skip
    assert not created
    assert retried.id == "out_3"


async def test_status_callbacks_append_events_and_a_final_status_stays(store: Store) -> None:
    await store.create_twilio_call(twilio_call(1))
    await store.update_twilio_call("out_1", status="ringing", event={"kind": "status", "status": "ringing"})
    await store.update_twilio_call(
        "out_1", status="failed", error_code=32009, event={"kind": "status", "status": "failed", "error_code": 32009}
    )
    late = await store.update_twilio_call("out_1", status="in-progress", answered_by="human",
                                          event={"kind": "status", "status": "in-progress"})  # fmt: skip
    assert late is not None
    assert (late.status, late.error_code, late.answered_by, late.final) == ("failed", 32009, "human", True)
    assert [e["status"] for e in late.events] == ["ringing", "failed", "in-progress"]
    assert await store.update_twilio_call("out_9", status="ringing") is None


async def test_a_correlation_id_links_one_openai_call_only(cluster: Cluster) -> None:
    a, b = await cluster.open(), await cluster.open()
    await a.create_twilio_call(twilio_call(1))
    results = await asyncio.gather(
        a.link_twilio_call("corr00000000000000000001", "rtc_a"), b.link_twilio_call("corr00000000000000000001", "rtc_b")
    )
    linked = [r for r in results if r is not None]
    assert len(linked) == 1
    winner = linked[0].call_id
    assert winner is not None
    again = await b.link_twilio_call("corr00000000000000000001", winner)  # the same call's webhook redelivered
    assert again is not None
    assert again.call_id == winner
    assert await a.link_twilio_call("corr-unknown-000000000000", "rtc_c") is None


async def test_sweep_forgets_twilio_calls_made_over_a_week_ago_bounded(cluster: Cluster, store: Store) -> None:
    for n in range(1, 5):
        await store.create_twilio_call(twilio_call(n))
    cluster.clock.advance(20)
    await store.create_twilio_call(twilio_call(5))
    cluster.clock.advance(KEEP_TWILIO_CALLS_S - 30)
    await store.update_twilio_call("out_1", status="completed", event={"kind": "status", "status": "completed"})
    assert (await store.sweep()).twilio_calls == 0
    cluster.clock.advance(20)
    assert (await store.sweep(limit=3)).twilio_calls == 3
    counts = await store.sweep(limit=3)
    assert (counts.twilio_calls, counts.total) == (1, 1)
    assert [await store.get_twilio_call(id=f"out_{n}") is not None for n in range(1, 6)] == [False] * 4 + [True]
    # its idempotency key is free again once the row is gone
    again, created = await store.create_twilio_call(twilio_call(6, idempotency_key="key-1"))
    assert (again.id, created) == ("out_6", True)
    assert (await store.sweep(keep_twilio_calls_s=60)).twilio_calls == 1  # out_5, not out_6 (just made)
    assert await store.get_twilio_call(id="out_6") is not None
