"""The registry owns call tasks: capacity rejection, isolation of a crashing call, drain on shutdown; and writes
every call (taken or rejected) to the store: its row, its entries in batches, its report and outbox rows."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import respx

from sip_controller.calls.incoming import IncomingCall, SipHeader
from sip_controller.calls.registry import CallRegistry
from sip_controller.config import Limits, Settings
from sip_controller.realtime.rest import RealtimeCalls
from sip_controller.realtime.sideband import FakeConnector, Sideband
from sip_controller.state.sqlite import SQLiteStore
from tests.servicekit import mocked_api, openai_router

pytestmark = pytest.mark.anyio


def incoming(call_id: str) -> IncomingCall:
    headers = (SipHeader(name="From", value="<sip:+14155550123@x>"),)
    return IncomingCall(call_id=call_id, webhook_id=f"wh_{call_id}", headers=headers, received_at=datetime.now(UTC))


OWNER = "test-process"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    async with await SQLiteStore.open(tmp_path / "state.db") as opened:
        await opened.heartbeat(OWNER, 60)
        yield opened


@pytest.fixture
def router() -> respx.Router:
    return openai_router()


@pytest.fixture
async def api(router: respx.Router) -> AsyncIterator[RealtimeCalls]:
    async with mocked_api(router) as client:
        yield client


async def _attached(connector: FakeConnector, call_id: str) -> None:
    async with asyncio.timeout(5):
        while call_id not in connector.attached:
            await asyncio.sleep(0.01)


async def test_over_capacity_calls_are_rejected_with_486(
    store: SQLiteStore, api: RealtimeCalls, router: respx.Router
) -> None:
    connector = FakeConnector()
    registry = CallRegistry(Settings(limits=Limits(max_concurrent_calls=1)), api, connector, store=store, owner=OWNER)
    await registry.start(incoming("rtc_a"))
    await registry.start(incoming("rtc_b"))
    rejected = await registry.wait_ended("rtc_b", 5)
    assert rejected.ended_reason == "rejected"
    assert json.loads(router.routes["reject"].calls.last.request.content) == {"status_code": 486}
    await _attached(connector, "rtc_a")
    connector.attached["rtc_a"].close_from_server()
    first = await registry.wait_ended("rtc_a", 5)
    assert first.ended_reason == "caller_hangup"
    assert registry.live_count == 0


async def test_an_accept_given_up_is_rejected_with_limits_accept_give_up_status(
    store: SQLiteStore, api: RealtimeCalls, router: respx.Router
) -> None:
    router.routes["accept"].respond(503)
    settings = Settings(limits=Limits(ring_budget_s=0.2, accept_give_up_status=480))
    registry = CallRegistry(settings, api, FakeConnector(), store=store, owner=OWNER)
    await registry.start(incoming("rtc_a"))
    record = await registry.wait_ended("rtc_a", 5)
    assert record.ended_reason == "accept_failed"
    assert json.loads(router.routes["reject"].calls.last.request.content) == {"status_code": 480}


async def test_a_crashing_call_does_not_touch_another(
    store: SQLiteStore, api: RealtimeCalls, router: respx.Router
) -> None:
    good = FakeConnector()

    async def connect(url: str, headers: dict[str, str]) -> Sideband:
        if "rtc_bad" in url:
            raise RuntimeError("bug in a transport")
        return await good(url, headers)

    registry = CallRegistry(Settings(), api, connect, store=store, owner=OWNER)
    await registry.start(incoming("rtc_bad"))
    await registry.start(incoming("rtc_good"))
    bad = await registry.wait_ended("rtc_bad", 5)
    assert bad.ended_reason == "session_error"
    assert bad.state == "failed"
    assert any("internal error" in e for e in bad.errors)
    # the crashed call was accepted, so it is hung up rather than left unsupervised
    hung_up = [c.request.url.path for c in router.routes["hangup"].calls]
    assert hung_up == ["/v1/realtime/calls/rtc_bad/hangup"]
    await _attached(good, "rtc_good")
    assert registry.get("rtc_good") is not None
    assert registry.get("rtc_good").ended_reason is None  # type: ignore[union-attr]
    good.attached["rtc_good"].close_from_server()
    assert (await registry.wait_ended("rtc_good", 5)).ended_reason == "caller_hangup"


async def test_shutdown_asks_live_calls_to_wrap_up_then_cancels(store: SQLiteStore, api: RealtimeCalls) -> None:
    connector = FakeConnector()
    registry = CallRegistry(Settings(), api, connector, store=store, owner=OWNER)
    await registry.start(incoming("rtc_live"))
    await _attached(connector, "rtc_live")
    await registry.shutdown(0.2)
    record = registry.get("rtc_live")
    assert record is not None
    assert record.ended_reason == "shutdown"
    assert registry.draining
    sent = connector.attached["rtc_live"].sent_types()
    assert sent[-1] == "response.create"  # the spoken wrap-up was requested before the cut
    assert registry.live_count == 0


async def test_finished_hooks_see_every_record_once(store: SQLiteStore, api: RealtimeCalls) -> None:
    connector = FakeConnector()
    registry = CallRegistry(Settings(), api, connector, store=store, owner=OWNER)
    seen: list[str] = []
    registry.on_finished.append(lambda rec: seen.append(f"{rec.call_id}:{rec.ended_reason}"))
    for cid in ("rtc_1", "rtc_2"):
        await registry.start(incoming(cid))
    for cid in ("rtc_1", "rtc_2"):
        await _attached(connector, cid)
        connector.attached[cid].close_from_server()
        await registry.wait_ended(cid, 5)
    assert sorted(seen) == ["rtc_1:caller_hangup", "rtc_2:caller_hangup"]


async def test_a_caller_over_the_rate_limit_is_declined_with_603(
    store: SQLiteStore, api: RealtimeCalls, router: respx.Router
) -> None:
    from sip_controller.config import Limits

    connector = FakeConnector()
    registry = CallRegistry(
        Settings(limits=Limits(caller_calls_per_minute=2)), api, connector, store=store, owner=OWNER
    )
    refusals = [await registry.start(incoming(f"rtc_r{i}")) for i in range(3)]
    assert refusals[:2] == [None, None]
    assert refusals[2] is not None
    assert refusals[2].status_code == 603
    record = await registry.wait_ended("rtc_r2", 5)
    assert record.ended_reason == "rejected"
    assert json.loads(router.routes["reject"].calls.last.request.content) == {"status_code": 603}
    for cid in ("rtc_r0", "rtc_r1"):
        await _attached(connector, cid)
        connector.attached[cid].close_from_server()
        await registry.wait_ended(cid, 5)


async def test_withheld_caller_ids_share_the_anonymous_limit(
    store: SQLiteStore, api: RealtimeCalls, router: respx.Router
) -> None:
    """The reproduction: 8 calls without a caller number and a limit of 3 were all accepted."""
    connector = FakeConnector()
    limits = Limits(caller_calls_per_minute=3, anonymous_calls_per_minute=3)
    registry = CallRegistry(Settings(limits=limits), api, connector, store=store, owner=OWNER)
    anonymous = (SipHeader(name="From", value='"Anonymous" <sip:anonymous@anonymous.invalid>;tag=1'),)
    calls = [
        IncomingCall(call_id=f"rtc_a{i}", webhook_id=f"wh_a{i}", headers=anonymous, received_at=datetime.now(UTC))
        for i in range(8)
    ]
    refusals = [await registry.start(call) for call in calls]
    assert [r is None for r in refusals] == [True] * 3 + [False] * 5
    assert {r.status_code for r in refusals if r is not None} == {603}
    assert "without a number" in (refusals[3].reason if refusals[3] else "")
    record = await registry.wait_ended("rtc_a7", 5)
    assert record.ended_reason == "rejected"
    for i in range(3):
        await _attached(connector, f"rtc_a{i}")
        connector.attached[f"rtc_a{i}"].close_from_server()
        await registry.wait_ended(f"rtc_a{i}", 5)


async def test_drain_lets_calls_finish_by_themselves_first(store: SQLiteStore, api: RealtimeCalls) -> None:
    connector = FakeConnector()
    registry = CallRegistry(Settings(), api, connector, store=store, owner=OWNER)
    await registry.start(incoming("rtc_d1"))
    await _attached(connector, "rtc_d1")

    async def caller_hangs_up_soon() -> None:
        await asyncio.sleep(0.1)
        connector.attached["rtc_d1"].close_from_server()

    hang = asyncio.create_task(caller_hangs_up_soon())
    await registry.drain(wait_s=5, wrap_up_s=1)
    await hang
    record = registry.get("rtc_d1")
    assert record is not None
    assert record.ended_reason == "caller_hangup"  # it ended on its own, before the wrap-up
    assert "response.create" not in connector.attached["rtc_d1"].sent_types()[1:]
    refusal = await registry.start(incoming("rtc_after"))
    assert refusal is not None
    assert refusal.status_code == 503


async def test_the_accept_starts_with_the_webhook_and_is_cancelled_with_a_call_cancelled_early(
    store: SQLiteStore, api: RealtimeCalls, router: respx.Router
) -> None:
    registry = CallRegistry(Settings(), api, FakeConnector(), store=store, owner=OWNER)
    assert await registry.start(incoming("rtc_a")) is None
    supervisor = registry.supervisor("rtc_a")
    assert supervisor is not None
    accept = supervisor._tasks["accept"]  # under way before the call's own task has run a step
    registry._live["rtc_a"].task.cancel()  # e.g. a shutdown in the same turn of the loop
    record = await registry.wait_ended("rtc_a", 5)
    await asyncio.sleep(0)
    assert accept.cancelled() or accept.done()
    assert supervisor._tasks == {}
    assert record.ended_reason == "shutdown"


async def test_a_call_is_written_before_its_accept_and_finished_with_its_report_and_outbox(
    store: SQLiteStore, api: RealtimeCalls, router: respx.Router
) -> None:
    from sip_controller.config import ReportEndpoint, Reports

    reports = Reports(jsonl_path="calls.jsonl", endpoints=(ReportEndpoint(url="http://127.0.0.1:9/hooks"),))
    connector = FakeConnector()
    registry = CallRegistry(Settings(reports=reports), api, connector, store=store, owner=OWNER)
    assert await registry.start(incoming("rtc_w")) is None
    row = await store.get_call("rtc_w")  # written before the accept went out
    assert row is not None
    assert row.live
    assert row.owner == OWNER
    assert row.inputs["incoming"]["webhook_id"] == "wh_rtc_w"
    assert row.inputs["accept_body"]["type"] == "realtime"
    assert "instructions" in row.inputs
    assert set(row.deadlines) == {"ring", "max_duration"}
    assert row.caller == "+14155550123"
    await _attached(connector, "rtc_w")
    connector.attached["rtc_w"].push(
        {"type": "conversation.item.input_audio_transcription.completed", "item_id": "i1", "transcript": "hello"}
    )
    await asyncio.sleep(0.05)
    connector.attached["rtc_w"].close_from_server()
    await registry.wait_ended("rtc_w", 5)
    finished = await store.get_call("rtc_w")
    assert finished is not None
    assert not finished.live
    assert finished.ended_reason == "caller_hangup"
    report = await store.get_report("rtc_w")
    assert report is not None
    assert report["call_id"] == "rtc_w"
    entries = await store.read_entries("rtc_w")
    kinds = [e.kind for e in entries]
    assert "state" in kinds
    assert "mark" in kinds
    assert [e.data["text"] for e in entries if e.kind == "transcript"] == ["hello"]
    assert [e.seq for e in entries] == list(range(1, len(entries) + 1))  # nothing written twice
    rows = await store.claim_outbox("t", limit=10)
    assert sorted((r.event, r.destination.split(":")[0]) for r in rows) == [
        ("call.ended", "endpoint"), ("call.ended", "jsonl"), ("call.started", "endpoint"),
    ]  # fmt: skip


async def test_a_rejected_call_is_a_finished_row_reported_through_the_outbox(
    store: SQLiteStore, api: RealtimeCalls
) -> None:
    from sip_controller.config import Reports

    settings = Settings(limits=Limits(caller_calls_per_minute=1), reports=Reports(jsonl_path="calls.jsonl"))
    connector = FakeConnector()
    registry = CallRegistry(settings, api, connector, store=store, owner=OWNER)
    assert await registry.start(incoming("rtc_ok")) is None
    refusal = await registry.start(incoming("rtc_no"))
    assert refusal is not None
    assert refusal.status_code == 603
    await registry.wait_ended("rtc_no", 5)
    row = await store.get_call("rtc_no")
    assert row is not None
    assert not row.live
    assert (row.state, row.ended_reason) == ("rejected", "rejected")
    report = await store.get_report("rtc_no")
    assert report is not None
    assert report["ended_reason"] == "rejected"
    assert [r.key for r in await store.claim_outbox("t", limit=10)] == ["call.ended:rtc_no:jsonl"]
    await _attached(connector, "rtc_ok")
    connector.attached["rtc_ok"].close_from_server()
    await registry.wait_ended("rtc_ok", 5)


async def test_capacity_holds_across_registries_sharing_the_store(store: SQLiteStore, api: RealtimeCalls) -> None:
    settings = Settings(limits=Limits(max_concurrent_calls=1))
    connector = FakeConnector()
    one = CallRegistry(settings, api, connector, store=store, owner=OWNER)
    two = CallRegistry(settings, api, connector, store=store, owner="other-process")
    assert await one.start(incoming("rtc_1")) is None
    refusal = await two.start(incoming("rtc_2"))  # the other replica has no live call of its own
    assert refusal is not None
    assert refusal.status_code == 486
    assert "cluster" in refusal.reason
    await two.wait_ended("rtc_2", 5)
    await _attached(connector, "rtc_1")
    connector.attached["rtc_1"].close_from_server()
    await one.wait_ended("rtc_1", 5)


async def test_a_fenced_call_stops_and_is_not_reported_by_this_process(
    store: SQLiteStore, api: RealtimeCalls
) -> None:
    from sip_controller.config import Reports

    connector = FakeConnector()
    registry = CallRegistry(
        Settings(reports=Reports(jsonl_path="calls.jsonl")), api, connector, store=store, owner=OWNER,
        journal_flush_s=0.01,
    )  # fmt: skip
    assert await registry.start(incoming("rtc_f")) is None
    await _attached(connector, "rtc_f")
    await store.end_lease(OWNER)
    row = await store.get_call("rtc_f")
    assert row is not None
    assert await store.take_over("rtc_f", "survivor", expected_epoch=row.epoch) is not None
    connector.attached["rtc_f"].push(
        {"type": "conversation.item.input_audio_transcription.completed", "item_id": "i1", "transcript": "still there?"}
    )
    record = await registry.wait_ended("rtc_f", 5)
    assert record.ended_reason == "shutdown"  # its tasks were cancelled: this process stopped acting
    assert await store.get_report("rtc_f") is None
    assert await store.claim_outbox("t", limit=10) == []
    live = await store.get_call("rtc_f")
    assert live is not None
    assert live.live
    assert live.owner == "survivor"


async def test_start_claims_the_webhook_and_the_call_in_its_admission(
    store: SQLiteStore, api: RealtimeCalls, router: respx.Router
) -> None:
    from sip_controller.state.records import Duplicate

    connector = FakeConnector()
    limits = Limits(caller_calls_per_minute=2)
    registry = CallRegistry(Settings(limits=limits), api, connector, store=store, owner=OWNER)
    keys = ("webhook:wh_rtc_c", "call:rtc_c")
    assert await registry.start(incoming("rtc_c"), claims=keys) is None
    assert await store.get_call("rtc_c") is not None
    assert [await store.claim(k, 60) for k in keys] == [False, False]  # claimed with the call, one transaction
    with pytest.raises(Duplicate) as held:
        await registry.start(incoming("rtc_c"), claims=keys)  # the same webhook delivered again
    assert held.value.key == "webhook:wh_rtc_c"
    assert registry.live_count == 1
    assert len(router.routes["accept"].calls) == 1
    # the redelivery was not counted against the caller (limit 2): a second call is still admitted
    assert await registry.start(incoming("rtc_c2"), claims=("webhook:wh_rtc_c2", "call:rtc_c2")) is None
    assert await store.caller_count("caller:+14155550123") == 2
    for cid in ("rtc_c", "rtc_c2"):
        await _attached(connector, cid)
        connector.attached[cid].close_from_server()
        await registry.wait_ended(cid, 5)


async def test_a_call_refused_here_still_claims_its_keys(
    store: SQLiteStore, api: RealtimeCalls, router: respx.Router
) -> None:
    from sip_controller.state.records import Duplicate

    registry = CallRegistry(Settings(), api, FakeConnector(), store=store, owner=OWNER)
    registry.draining = True
    refusal = await registry.start(incoming("rtc_n"), claims=("webhook:wh_rtc_n", "call:rtc_n"))
    assert refusal is not None
    assert refusal.status_code == 503
    await registry.wait_ended("rtc_n", 5)
    with pytest.raises(Duplicate):
        await registry.start(incoming("rtc_n"), claims=("webhook:wh_rtc_n2", "call:rtc_n"))
    assert len(router.routes["reject"].calls) == 1  # rejected once
