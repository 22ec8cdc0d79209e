"""The store contract of outbound batches (#16), on SQLite and on PostgreSQL (``backend``), real databases both:
a batch written with its rows at once (once per Idempotency-Key), rows claimed with a lease within the batch's
pacing and in-flight bound (across two replicas), placed, settled (retried or done, the batch done with its last
row), deferred, paused, resumed and canceled."""

from __future__ import annotations

import asyncio

import pytest

from sip_controller.state.batches import NewBatch, NewBatchRow, pace
from sip_controller.state.jobs import sweep_once
from sip_controller.state.records import SweepCounts
from sip_controller.state.store import Store
from sip_controller.state.twilio_calls import NewTwilioCall
from tests.state.conftest import T0, Cluster

pytestmark = pytest.mark.anyio

LEASE = 30.0


def batch(batch_id: str = "b1", rows: int = 5, *, cps: float = 100.0, max_in_flight: int = 100,
          key: str | None = None, due_at: float = T0) -> NewBatch:  # fmt: skip
    return NewBatch(
        id=batch_id, profile="reminders", calls_per_second=cps, max_in_flight=max_in_flight,
        rows=[NewBatchRow(n, f"+1415555{n:04d}", {"first_name": f"P{n}"}, due_at, "Europe/Paris" if n % 2 else None)
              for n in range(1, rows + 1)],
        options={"retries": {"busy": 1}}, rejected=[{"row": rows + 1, "error": "to: not E.164"}],
        idempotency_key=key, request_hash="h1",
    )  # fmt: skip


async def test_a_batch_is_written_with_its_rows_once_per_key(store: Store) -> None:
    made, created = await store.create_batch(batch(key="k1"))
    assert created is True
    assert (made.id, made.status, made.profile, made.calls_per_second, made.max_in_flight) == (
        "b1",
        "running",
        "reminders",
        100.0,
        100,
    )
    assert made.states == {"queued": 5, "placing": 0, "in_flight": 0, "done": 0, "canceled": 0}
    assert made.rejected == [{"row": 6, "error": "to: not E.164"}]
    assert made.options == {"retries": {"busy": 1}}
    again, created = await store.create_batch(batch("b2", rows=2, key="k1"))
    assert (again.id, created, again.total) == ("b1", False, 5)
    assert await store.get_batch("b2") is None
    rows = await store.list_batch_rows("b1")
    assert [r.row for r in rows] == [1, 2, 3, 4, 5]
    assert (rows[0].to_number, rows[0].variables, rows[0].timezone, rows[1].timezone) == (
        "+14155550001",
        {"first_name": "P1"},
        "Europe/Paris",
        None,
    )
    assert [r.row for r in await store.list_batch_rows("b1", after_row=3, limit=1)] == [4]
    assert rows[0].idempotency_key == "batch:b1:1:0"


def test_pacing_maths() -> None:
    assert pace(T0, T0, 5.0, 0, 10, 100) == (1, T0)  # one slot now
    assert pace(T0 - 0.4, T0, 5.0, 0, 10, 100) == (3, T0 - 0.4)  # slots at -0.4, -0.2, 0
    assert pace(T0 - 60, T0, 5.0, 0, 10, 100) == (6, T0 - 1.0)  # an idle spell: a burst of one second's worth + 1
    assert pace(T0 + 0.1, T0, 5.0, 0, 10, 100) == (0, T0 + 0.1)  # the next slot is ahead
    assert pace(T0 - 60, T0, 5.0, 8, 10, 100)[0] == 2  # max in flight
    assert pace(T0 - 60, T0, 5.0, 0, 10, 4)[0] == 4  # the caller's limit
    assert pace(T0 - 60, T0, 5.0, 12, 10, 100)[0] == 0


async def test_claims_follow_the_pacing_slots_and_the_in_flight_bound(cluster: Cluster, store: Store) -> None:
    await store.create_batch(batch(rows=20, cps=2.0, max_in_flight=3))
    first = await store.claim_batch_rows("p1", lease_s=LEASE)
    assert [r.row for r in first] == [1]  # the batch's first slot is now
    assert (first[0].state, first[0].lease_owner, first[0].claims) == ("placing", "p1", 1)
    assert await store.claim_batch_rows("p1", lease_s=LEASE) == []  # the next slot is half a second away
    cluster.clock.advance(0.5)
    assert [r.row for r in await store.claim_batch_rows("p1", lease_s=LEASE)] == [2]
    cluster.clock.advance(10)  # slots for a burst, but only one more may be in flight
    assert [r.row for r in await store.claim_batch_rows("p1", lease_s=LEASE)] == [3]
    for n in (1, 2, 3):
        assert await store.placed_batch_row("p1", "b1", n, f"tw_{n}")
    assert await store.claim_batch_rows("p1", lease_s=LEASE) == []
    assert await store.settle_batch_row("b1", 1, outcome="completed", twilio_id="tw_1")
    assert [r.row for r in await store.claim_batch_rows("p1", lease_s=LEASE)] == [4]
    record = await store.get_batch("b1")
    assert record is not None
    assert (record.states["in_flight"], record.states["placing"], record.states["done"]) == (2, 1, 1)
    assert record.outcomes == {"completed": 1}


async def test_two_replicas_never_exceed_the_in_flight_bound(cluster: Cluster) -> None:
    a, b = await cluster.open(), await cluster.open()
    await a.create_batch(batch(rows=30, cps=1000.0, max_in_flight=7))
    cluster.clock.advance(5)
    got = await asyncio.gather(*(s.claim_batch_rows(name, lease_s=LEASE) for s, name in ((a, "p1"), (b, "p2")) * 3))
    rows = [r.row for claimed in got for r in claimed]
    assert len(rows) == len(set(rows)) == 7


async def test_a_lapsed_lease_is_claimed_again_with_the_same_attempt(cluster: Cluster, store: Store) -> None:
    await store.create_batch(batch(rows=1))
    [row] = await store.claim_batch_rows("p1", lease_s=LEASE)
    assert await store.claim_batch_rows("p2", lease_s=LEASE) == []
    cluster.clock.advance(LEASE)
    [again] = await store.claim_batch_rows("p2", lease_s=LEASE)
    assert (again.row, again.claims, again.lease_owner) == (1, 2, "p2")
    assert again.idempotency_key == row.idempotency_key  # so the call p1 may have placed is found, not placed again
    assert await store.placed_batch_row("p1", "b1", 1, "tw_x") is False  # p1's lease is gone
    assert await store.placed_batch_row("p2", "b1", 1, "tw_1") is True


async def test_a_retry_is_queued_as_the_next_attempt_and_the_last_row_ends_the_batch(
    cluster: Cluster, store: Store
) -> None:
    await store.create_batch(batch(rows=2))
    cluster.clock.advance(1)
    for row in await store.claim_batch_rows("p1", lease_s=LEASE):
        await store.placed_batch_row("p1", "b1", row.row, f"tw_{row.row}")
    assert await store.settle_batch_row("b1", 1, outcome="busy", retry_at=T0 + 60, twilio_id="tw_1")
    assert await store.settle_batch_row("b1", 1, outcome="busy", twilio_id="tw_1") is False  # settled once
    assert await store.settle_batch_row("b1", 2, outcome="no_answer", twilio_id="tw_2")
    rows = await store.list_batch_rows("b1")
    assert [(r.state, r.outcome, r.attempt, r.twilio_id) for r in rows] == [
        ("queued", "busy", 1, None),
        ("done", "no_answer", 0, None),
    ]
    assert rows[0].idempotency_key == "batch:b1:1:1"
    assert await store.claim_batch_rows("p1", lease_s=LEASE) == []  # not due yet
    cluster.clock.advance(60)
    [retry] = await store.claim_batch_rows("p1", lease_s=LEASE)
    assert retry.row == 1
    assert await store.settle_batch_row("b1", 1, outcome="do_not_call", worker="p2") is False
    assert await store.settle_batch_row("b1", 1, outcome="do_not_call", worker="p1")
    record = await store.get_batch("b1")
    assert record is not None
    assert record.status == "done"
    assert record.outcomes == {"do_not_call": 1, "no_answer": 1}
    with pytest.raises(ValueError, match="either"):
        await store.settle_batch_row("b1", 1, outcome="x")


async def test_a_deferred_row_waits_without_an_attempt(cluster: Cluster, store: Store) -> None:
    await store.create_batch(batch(rows=1))
    [row] = await store.claim_batch_rows("p1", lease_s=LEASE)
    assert await store.defer_batch_row("p2", "b1", 1, due_at=T0 + 3600) is False
    assert await store.defer_batch_row("p1", "b1", 1, due_at=T0 + 3600)
    cluster.clock.advance(3599)
    assert await store.claim_batch_rows("p1", lease_s=LEASE) == []
    cluster.clock.advance(1)
    [again] = await store.claim_batch_rows("p1", lease_s=LEASE)
    assert (again.attempt, again.claims) == (row.attempt, 2)


async def test_pause_resume_and_cancel(cluster: Cluster, store: Store) -> None:
    await store.create_batch(batch(rows=4))
    cluster.clock.advance(1)
    [one, two, *_] = await store.claim_batch_rows("p1", limit=2, lease_s=LEASE)
    await store.placed_batch_row("p1", "b1", one.row, "tw_1")
    paused, changed = await store.set_batch_status("b1", "pause")
    assert paused is not None
    assert (paused.status, changed) == ("paused", True)
    assert (await store.set_batch_status("b1", "pause"))[1] is False
    cluster.clock.advance(60)
    assert await store.claim_batch_rows("p1", lease_s=LEASE) == []  # paused: nothing claimed, not even lapsed leases
    resumed, changed = await store.set_batch_status("b1", "resume")
    assert resumed is not None
    assert (resumed.status, changed) == ("running", True)
    canceled, changed = await store.set_batch_status("b1", "cancel")
    assert canceled is not None
    assert (canceled.status, changed) == ("canceled", True)
    assert canceled.states == {"queued": 0, "placing": 1, "in_flight": 1, "done": 0, "canceled": 2}
    assert canceled.outcomes == {"canceled": 2}
    # the call already placed still ends with its own outcome; a retry is not queued in a canceled batch
    assert await store.settle_batch_row("b1", one.row, outcome="busy", retry_at=T0, twilio_id="tw_1")
    assert (await store.list_batch_rows("b1"))[0].state == "done"
    assert (await store.set_batch_status("b1", "resume"))[1] is False
    assert (await store.set_batch_status("b1", "resume"))[0].status == "canceled"  # type: ignore[union-attr]
    assert await store.set_batch_status("nope", "cancel") == (None, False)
    assert two.state == "placing"


async def test_in_flight_rows_are_listed_once_their_twilio_call_is_over(cluster: Cluster, store: Store) -> None:
    await store.create_batch(batch(rows=3))
    cluster.clock.advance(1)
    for row in await store.claim_batch_rows("p1", lease_s=LEASE):
        tw = NewTwilioCall(id=f"tw_{row.row}", correlation=f"c{row.row}", direction="outbound", status="requested",
                           idempotency_key=row.idempotency_key, to_number=row.to_number)  # fmt: skip
        await store.create_twilio_call(tw)
        await store.placed_batch_row("p1", "b1", row.row, tw.id)
    assert await store.in_flight_batch_rows() == []
    await store.update_twilio_call("tw_1", call_sid="CA1", status="busy")
    await store.update_twilio_call("tw_2", call_sid="CA2", status="ringing")
    over = await store.in_flight_batch_rows(stale_s=600)
    assert [(f.row.row, f.twilio_status) for f in over] == [(1, "busy")]
    cluster.clock.advance(600)  # tw_3 never confirmed placed: listed as stale; tw_2 is ringing, not stale
    over = await store.in_flight_batch_rows(stale_s=600)
    assert sorted((f.row.row, f.twilio_status) for f in over) == [(1, "busy"), (3, "requested")]


async def _finish(cluster: Cluster, store: Store, batch_id: str, worker: str = "p1") -> None:
    """Claim every row of the batch (a second apart: its pacing) and settle each (``do_not_call``): it is done."""
    for _ in range(50):
        cluster.clock.advance(1)
        rows = await store.claim_batch_rows(worker, limit=1000, lease_s=LEASE)
        if not rows:
            break
        for row in rows:
            await store.settle_batch_row(batch_id, row.row, outcome="do_not_call", worker=worker)
    record = await store.get_batch(batch_id)
    assert record is not None
    assert record.status == "done"


async def test_the_sweep_deletes_old_finished_batches_and_their_rows_in_bounded_passes(
    cluster: Cluster, store: Store
) -> None:
    """#16: batches done or canceled over ``keep_batches_s`` ago go with their rows, the rows ``limit`` at a time
    first; running, paused, young and still-dialling batches stay; ``None`` keeps everything."""
    day = 86_400.0
    await store.create_batch(batch("done_old", rows=25))
    await _finish(cluster, store, "done_old")
    await store.create_batch(batch("canceled_old", rows=3))
    await store.set_batch_status("canceled_old", "cancel")
    await store.create_batch(batch("dialling_old", rows=2))  # canceled with a call still in flight: kept
    cluster.clock.advance(1)
    [held] = await store.claim_batch_rows("p1", limit=1, lease_s=LEASE)
    assert held.batch_id == "dialling_old"
    await store.placed_batch_row("p1", "dialling_old", held.row, "tw_1")
    await store.set_batch_status("dialling_old", "cancel")
    await store.create_batch(batch("paused_old", rows=2))
    await store.set_batch_status("paused_old", "pause")
    cluster.clock.advance(10 * day)
    await store.create_batch(batch("done_young", rows=2))
    await _finish(cluster, store, "done_young")
    cluster.clock.advance(1 * day)

    assert (await store.sweep(keep_batches_s=None)).batch_rows == 0  # kept forever
    first = await store.sweep(limit=10, keep_batches_s=7 * day)
    assert first.batch_rows == 10  # rows first, limit at a time; a batch only once its rows are all gone
    assert await store.get_batch("done_old") is not None
    swept = SweepCounts()
    for _ in range(10):  # bounded: a few more passes finish the job
        counts = await store.sweep(limit=10, keep_batches_s=7 * day)
        swept = SweepCounts(batch_rows=swept.batch_rows + counts.batch_rows, batches=swept.batches + counts.batches)
        if counts.batch_rows < 10 and counts.batches < 10:
            break
    assert (first.batch_rows + swept.batch_rows, first.batches + swept.batches) == (25 + 3, 2)
    assert await store.get_batch("done_old") is None
    assert await store.get_batch("canceled_old") is None
    assert await store.list_batch_rows("done_old") == []
    for kept in ("dialling_old", "paused_old", "done_young"):
        record = await store.get_batch(kept)
        assert record is not None, kept
        assert record.total == 2, kept
    # the in-flight call ends: the canceled batch goes at the next sweep after it
    assert await store.settle_batch_row("dialling_old", held.row, outcome="busy", twilio_id="tw_1")
    done = await sweep_once(store, keep_batches_s=7 * day)
    assert (done.batch_rows, done.batches) == (2, 1)
    assert await store.get_batch("dialling_old") is None
    assert {b for b in ("paused_old", "done_young") if await store.get_batch(b) is not None} == {
        "paused_old",
        "done_young",
    }


async def test_the_newest_batches_are_listed_with_their_counts(cluster: Cluster, store: Store) -> None:
    """The console's batch panel (#16): newest first, each with its rows by state and finished ones by outcome."""
    assert await store.list_batches() == []
    await store.create_batch(batch("older", rows=3))
    cluster.clock.advance(1)
    await store.create_batch(batch("newer", rows=2))
    await store.set_batch_status("older", "cancel")
    listed = await store.list_batches()
    assert [b.id for b in listed] == ["newer", "older"]
    assert listed[0].states == {"queued": 2, "placing": 0, "in_flight": 0, "done": 0, "canceled": 0}
    assert (listed[1].status, listed[1].outcomes, listed[1].total) == ("canceled", {"canceled": 3}, 3)
    assert [b.id for b in await store.list_batches(limit=1)] == ["newer"]
