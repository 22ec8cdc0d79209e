"""The store contract of post-call analyses (#17), on SQLite and on PostgreSQL (``backend``), real databases both:
created once per call, claimed with a lease (one winner between replicas, taken again after the lease passes),
finished or failed together with their outbox rows, only by the lease holder."""

from __future__ import annotations

import asyncio

import pytest

from sip_controller.state.records import OutboxItem
from sip_controller.state.store import Store
from tests.state.conftest import T0, Cluster
from tests.state.test_contract import live_call

pytestmark = pytest.mark.anyio

LEASE = 60.0


async def finished_call(store: Store, call_id: str) -> None:
    fence = await live_call(store, call_id)
    await store.finish_call(fence, state="ended", ended_reason="caller_hangup", report={"call_id": call_id})


def analyzed(call_id: str, destination: str = "jsonl") -> OutboxItem:
    key = f"call.analyzed:{call_id}:{destination}"
    return OutboxItem(key, destination, "call.analyzed", {"line": {"call_id": call_id}}, call_id)


async def test_an_analysis_is_created_once_and_read_back(cluster: Cluster, store: Store) -> None:
    await finished_call(store, "rtc_a1")
    assert await store.get_analysis("rtc_a1") is None
    assert await store.create_analysis("rtc_a1", "sales") is True
    assert await store.create_analysis("rtc_a1", "other") is False  # a retried finish: nothing written twice
    row = await store.get_analysis("rtc_a1")
    assert row is not None
    assert (row.call_id, row.profile, row.status, row.attempts) == ("rtc_a1", "sales", "pending", 0)
    assert row.created_at == row.due_at == T0
    assert (row.result, row.cost_usd, row.finished_at, row.last_error, row.lease_owner) == (None,) * 5


async def test_claim_counts_an_attempt_and_hides_the_row_until_the_lease_passes(
    cluster: Cluster, store: Store
) -> None:
    for n in (1, 2, 3):
        await finished_call(store, f"rtc_c{n}")
    await store.create_analysis("rtc_c2", "default")
    await store.create_analysis("rtc_c1", "default", due_at=T0 + 5)  # not due yet
    cluster.clock.advance(1)
    await store.create_analysis("rtc_c3", "default")
    claimed = await store.claim_analyses("p1", limit=10, lease_s=LEASE)
    assert [r.call_id for r in claimed] == ["rtc_c2", "rtc_c3"]  # oldest due first; rtc_c1 not due
    assert all(r.attempts == 1 and r.lease_owner == "p1" for r in claimed)
    assert await store.claim_analyses("p2", lease_s=LEASE) == []  # held
    cluster.clock.advance(5)
    assert [r.call_id for r in await store.claim_analyses("p2", limit=1, lease_s=LEASE)] == ["rtc_c1"]
    cluster.clock.advance(LEASE)  # p1 died mid-analysis: its rows are anyone's again, a second attempt each
    again = await store.claim_analyses("p2", lease_s=LEASE)
    assert {r.call_id: r.attempts for r in again} == {"rtc_c1": 2, "rtc_c2": 2, "rtc_c3": 2}


async def test_finish_stores_the_result_and_its_outbox_rows_only_for_the_lease_holder(
    cluster: Cluster, store: Store
) -> None:
    await finished_call(store, "rtc_f1")
    await store.create_analysis("rtc_f1", "sales")
    assert len(await store.claim_analyses("p1", lease_s=LEASE)) == 1
    result = {"status": "completed", "summary": "Booked — mardi ☎", "fields": {"n": 1}}
    assert await store.finish_analysis("p2", "rtc_f1", result=result, cost_usd=0.01, outbox=[analyzed("x")]) is False
    assert await store.finish_analysis("p1", "rtc_f1", result=result, cost_usd=0.0012, outbox=[analyzed("rtc_f1")])
    done = await store.get_analysis("rtc_f1")
    assert done is not None
    assert (done.status, done.result, done.cost_usd, done.finished_at) == ("done", result, 0.0012, T0)
    assert done.lease_owner is None
    rows = await store.claim_outbox("n1", destination="jsonl")
    assert [(r.key, r.event, r.call_id) for r in rows] == [("call.analyzed:rtc_f1:jsonl", "call.analyzed", "rtc_f1")]
    # finished: never claimed, finished or failed again
    assert await store.claim_analyses("p1", lease_s=LEASE) == []
    assert await store.finish_analysis("p1", "rtc_f1", result={}, cost_usd=None) is False
    assert await store.fail_analysis("p1", "rtc_f1", error="late", next_attempt_at=None) is False


async def test_a_failed_attempt_is_due_again_later_then_failed_for_good_with_why(
    cluster: Cluster, store: Store
) -> None:
    await finished_call(store, "rtc_r1")
    await store.create_analysis("rtc_r1", "sales")
    await store.claim_analyses("p1", lease_s=LEASE)
    assert await store.fail_analysis("p1", "rtc_r1", error="HTTP 503", next_attempt_at=T0 + 30)
    row = await store.get_analysis("rtc_r1")
    assert row is not None
    assert (row.status, row.last_error, row.due_at, row.lease_owner, row.attempts) == (
        "pending", "HTTP 503", T0 + 30, None, 1
    )
    assert await store.claim_analyses("p1", lease_s=LEASE) == []  # not due yet
    cluster.clock.advance(30)
    [again] = await store.claim_analyses("p1", lease_s=LEASE)
    assert again.attempts == 2
    why = {"status": "failed", "error": "HTTP 503 twice"}
    assert await store.fail_analysis(
        "p1", "rtc_r1", error="HTTP 503 twice", next_attempt_at=None, result=why, outbox=[analyzed("rtc_r1")]
    )
    failed = await store.get_analysis("rtc_r1")
    assert failed is not None
    assert (failed.status, failed.result, failed.last_error, failed.finished_at) == (
        "failed", why, "HTTP 503 twice", T0 + 30
    )
    assert [r.event for r in await store.claim_outbox("n1")] == ["call.analyzed"]
    assert await store.claim_analyses("p1", lease_s=LEASE) == []


async def test_release_gives_the_row_back_without_counting_the_attempt(cluster: Cluster, store: Store) -> None:
    await finished_call(store, "rtc_s1")
    await store.create_analysis("rtc_s1", "sales")
    await store.claim_analyses("p1", lease_s=LEASE)
    assert await store.release_analysis("p2", "rtc_s1") is False
    assert await store.release_analysis("p1", "rtc_s1") is True
    [row] = await store.claim_analyses("p2", lease_s=LEASE)
    assert (row.attempts, row.lease_owner) == (1, "p2")


async def test_two_replicas_claiming_never_share_an_analysis(cluster: Cluster) -> None:
    a, b = await cluster.open(), await cluster.open()
    for n in range(12):
        await finished_call(a, f"rtc_{n:02d}")
        await a.create_analysis(f"rtc_{n:02d}", "default")
    got_a, got_b = await asyncio.gather(
        a.claim_analyses("p1", limit=8, lease_s=LEASE), b.claim_analyses("p2", limit=8, lease_s=LEASE)
    )
    ids_a, ids_b = {r.call_id for r in got_a}, {r.call_id for r in got_b}
    assert not ids_a & ids_b
    assert len(ids_a | ids_b) == 12
    # the result written by one replica is read by the other
    some = sorted(ids_a)[0]
    assert await a.finish_analysis("p1", some, result={"status": "completed"}, cost_usd=0.0)
    row = await b.get_analysis(some)
    assert row is not None
    assert row.status == "done"
