"""The hangup janitor (#13) on real stores (SQLite, and PostgreSQL: skipped without a server, failing under
CI=true) with OpenAI mocked by respx: a call left ``hanging_up`` is finished by whichever process may act for it,
retried with backoff until OpenAI confirms (2xx) or says it is gone (404), reported once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import httpx
import pytest
import respx

from sip_controller.calls.hangups import (
    HANGUP_RETRY,
    hangup_pass,
    leave_hanging_up,
    retry_delay,
    run_hangup_janitor,
)
from sip_controller.realtime.rest import RealtimeCalls
from sip_controller.state.records import HANGING_UP, CallRow, NewCall, OutboxItem
from sip_controller.state.store import Store
from tests.servicekit import mocked_api, openai_router
from tests.state.conftest import Cluster

pytestmark = pytest.mark.anyio
LEASE = 6.0
PENDING = {"call_id": "rtc_h", "profile": "default", "ended_reason": "agent_end_call", "state": "hanging_up",
           "hangup_confirmed": False, "hangup_attempts": 4, "errors": ["hangup failed: HTTP 500"]}


@pytest.fixture
def router() -> respx.Router:
    return openai_router()


@pytest.fixture
async def api(router: respx.Router) -> AsyncIterator[RealtimeCalls]:
    async with mocked_api(router) as client:
        yield client


async def hanging_call(store: Store, owner: str, call_id: str = "rtc_h") -> CallRow:
    """A call ``owner`` left hanging_up (due now) with the report it would have sent."""
    await store.heartbeat(owner, LEASE)
    row = await store.create_call(NewCall(call_id, owner, "default", {"profile": "default"}, received_at=0.0))
    assert row is not None
    await leave_hanging_up(store, row.fence, {**PENDING, "call_id": call_id}, wake_at=0.0)
    got = await store.get_call(call_id)
    assert got is not None
    assert got.state == HANGING_UP
    return got


def deliveries(report: Mapping[str, Any]) -> Sequence[OutboxItem]:
    return [OutboxItem(f"call.ended:{report['call_id']}:jsonl", "jsonl", "call.ended", report, report["call_id"])]


async def test_an_orphan_hanging_up_is_retried_with_backoff_until_confirmed_then_reported_once(
    cluster: Cluster, api: RealtimeCalls, router: respx.Router
) -> None:
    dead, survivor = await cluster.open(), await cluster.open()
    await hanging_call(dead, "proc-dead")
    await survivor.heartbeat("proc-b", LEASE)
    router.routes["hangup"].side_effect = [httpx.Response(500), httpx.Response(503), httpx.Response(200)]

    # the owner is alive: its own supervisor retries; nobody else touches the call
    assert (await hangup_pass(survivor, api, "proc-b")).skipped == 1
    assert router.routes["hangup"].call_count == 0

    cluster.clock.advance(LEASE + 1)  # the owner died
    await survivor.heartbeat("proc-b", LEASE)
    clock = cluster.clock
    first = await hangup_pass(survivor, api, "proc-b", clock=clock, outbox_for=deliveries)
    assert (first.unconfirmed, router.routes["hangup"].call_count) == (1, 1)
    row = await survivor.get_call("rtc_h")
    assert row is not None
    assert (row.live, row.state) == (True, HANGING_UP)
    assert (row.owner, row.epoch, row.takeovers) == ("proc-b", 2, 1)  # taken over: the dead owner is fenced out
    assert row.wake_at == clock.now + retry_delay(1)

    assert (await hangup_pass(survivor, api, "proc-b", clock=clock)).unconfirmed == 0  # not due yet
    assert router.routes["hangup"].call_count == 1
    clock.advance(retry_delay(1))
    assert (await hangup_pass(survivor, api, "proc-b", clock=clock)).unconfirmed == 1
    row = await survivor.get_call("rtc_h")
    assert row is not None
    assert row.wake_at == clock.now + retry_delay(2) == clock.now + 0.5  # doubled
    clock.advance(0.5)
    done = await hangup_pass(survivor, api, "proc-b", clock=clock, outbox_for=deliveries)
    assert done.confirmed == 1
    assert router.routes["hangup"].call_count == 3

    finished = await survivor.get_call("rtc_h")
    assert finished is not None
    assert not finished.live
    assert (finished.ended_reason, finished.state) == ("agent_end_call", "ended")
    report = await survivor.get_report("rtc_h")
    assert report is not None
    assert (report["hangup_confirmed"], report["hangup_attempts"], report["state"]) == (True, 4 + 3, "ended")
    [item] = await survivor.claim_outbox("w", destination="jsonl")
    assert item.payload["hangup_confirmed"] is True
    assert [e.kind for e in await survivor.read_entries("rtc_h")].count(HANGUP_RETRY) == 2
    clock.advance(60)
    assert await hangup_pass(survivor, api, "proc-b", clock=clock) == type(done)()  # nothing left: once only
    assert router.routes["hangup"].call_count == 3


async def test_a_404_finishes_the_call_as_gone(cluster: Cluster, api: RealtimeCalls, router: respx.Router) -> None:
    store = await cluster.open()
    await hanging_call(store, "proc-a")
    router.routes["hangup"].return_value = httpx.Response(404, json={"error": {"code": "call_id_not_found"}})
    done = await hangup_pass(store, api, "proc-a", clock=cluster.clock)  # ours, and no supervisor: a restart
    assert done.gone == 1
    report = await store.get_report("rtc_h")
    assert report is not None
    assert report["hangup_confirmed"] is True
    errors = report["errors"]
    assert isinstance(errors, list)
    assert any("(gone)" in e for e in errors)


async def test_a_call_this_process_still_supervises_is_left_to_its_supervisor(
    cluster: Cluster, api: RealtimeCalls, router: respx.Router
) -> None:
    store = await cluster.open()
    await hanging_call(store, "proc-a")
    done = await hangup_pass(store, api, "proc-a", supervised=lambda call_id: call_id == "rtc_h")
    assert (done.skipped, router.routes["hangup"].call_count) == (1, 0)


async def test_two_replicas_racing_for_an_orphan_hang_it_up_once(
    cluster: Cluster, api: RealtimeCalls, router: respx.Router
) -> None:
    dead, b, c = await cluster.open(), await cluster.open(), await cluster.open()
    await hanging_call(dead, "proc-dead")
    cluster.clock.advance(LEASE + 1)
    for store, me in ((b, "proc-b"), (c, "proc-c")):
        await store.heartbeat(me, LEASE)
    passes = await asyncio.gather(
        hangup_pass(b, api, "proc-b", clock=cluster.clock), hangup_pass(c, api, "proc-c", clock=cluster.clock)
    )
    assert sorted(p.confirmed for p in passes) == [0, 1]
    assert router.routes["hangup"].call_count == 1


async def test_the_janitor_loop_finishes_due_calls_and_survives_a_failing_pass(
    cluster: Cluster, api: RealtimeCalls, router: respx.Router
) -> None:
    store = await cluster.open()
    await hanging_call(store, "proc-a")
    router.routes["hangup"].side_effect = [httpx.Response(500), httpx.Response(200)]
    retried: list[str] = []
    task = asyncio.create_task(
        run_hangup_janitor(store, api, "proc-a", every_s=0.01, clock=cluster.clock, retry_max_s=0.0,
                           on_retry=retried.append)
    )
    try:
        async with asyncio.timeout(10):
            while (row := await store.get_call("rtc_h")) is not None and row.live:
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert retried == ["rtc_h"]
    report = await store.get_report("rtc_h")
    assert report is not None
    assert report["hangup_attempts"] == 6
