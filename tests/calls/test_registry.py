"""The registry owns call tasks: capacity rejection, isolation of a crashing call, drain on shutdown."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
import respx

from sip_controller.calls.incoming import IncomingCall, SipHeader
from sip_controller.calls.registry import CallRegistry
from sip_controller.config import Limits, Settings
from sip_controller.realtime.rest import RealtimeCalls
from sip_controller.realtime.sideband import FakeConnector, Sideband
from tests.servicekit import mocked_api, openai_router

pytestmark = pytest.mark.anyio


def incoming(call_id: str) -> IncomingCall:
    headers = (SipHeader(name="From", value="<sip:+14155550123@x>"),)
    return IncomingCall(call_id=call_id, webhook_id=f"wh_{call_id}", headers=headers, received_at=datetime.now(UTC))


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


async def test_over_capacity_calls_are_rejected_with_486(api: RealtimeCalls, router: respx.Router) -> None:
    connector = FakeConnector()
    registry = CallRegistry(Settings(limits=Limits(max_concurrent_calls=1)), api, connector)
    registry.start(incoming("rtc_a"))
    registry.start(incoming("rtc_b"))
    rejected = await registry.wait_ended("rtc_b", 5)
    assert rejected.ended_reason == "rejected"
    assert json.loads(router.routes["reject"].calls.last.request.content) == {"status_code": 486}
    await _attached(connector, "rtc_a")
    connector.attached["rtc_a"].close_from_server()
    first = await registry.wait_ended("rtc_a", 5)
    assert first.ended_reason == "caller_hangup"
    assert registry.live_count == 0


async def test_an_accept_given_up_is_rejected_with_limits_accept_give_up_status(
    api: RealtimeCalls, router: respx.Router
) -> None:
    router.routes["accept"].respond(503)
    settings = Settings(limits=Limits(ring_budget_s=0.2, accept_give_up_status=480))
    registry = CallRegistry(settings, api, FakeConnector())
    registry.start(incoming("rtc_a"))
    record = await registry.wait_ended("rtc_a", 5)
    assert record.ended_reason == "accept_failed"
    assert json.loads(router.routes["reject"].calls.last.request.content) == {"status_code": 480}


async def test_a_crashing_call_does_not_touch_another(api: RealtimeCalls, router: respx.Router) -> None:
    good = FakeConnector()

    async def connect(url: str, headers: dict[str, str]) -> Sideband:
        if "rtc_bad" in url:
            raise RuntimeError("bug in a transport")
        return await good(url, headers)

    registry = CallRegistry(Settings(), api, connect)
    registry.start(incoming("rtc_bad"))
    registry.start(incoming("rtc_good"))
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


async def test_shutdown_asks_live_calls_to_wrap_up_then_cancels(api: RealtimeCalls) -> None:
    connector = FakeConnector()
    registry = CallRegistry(Settings(), api, connector)
    registry.start(incoming("rtc_live"))
    await _attached(connector, "rtc_live")
    await registry.shutdown(0.2)
    record = registry.get("rtc_live")
    assert record is not None
    assert record.ended_reason == "shutdown"
    assert registry.draining
    sent = connector.attached["rtc_live"].sent_types()
    assert sent[-1] == "response.create"  # the spoken wrap-up was requested before the cut
    assert registry.live_count == 0


async def test_finished_hooks_see_every_record_once(api: RealtimeCalls) -> None:
    connector = FakeConnector()
    registry = CallRegistry(Settings(), api, connector)
    seen: list[str] = []
    registry.on_finished.append(lambda rec: seen.append(f"{rec.call_id}:{rec.ended_reason}"))
    for cid in ("rtc_1", "rtc_2"):
        registry.start(incoming(cid))
    for cid in ("rtc_1", "rtc_2"):
        await _attached(connector, cid)
        connector.attached[cid].close_from_server()
        await registry.wait_ended(cid, 5)
    assert sorted(seen) == ["rtc_1:caller_hangup", "rtc_2:caller_hangup"]


async def test_a_caller_over_the_rate_limit_is_declined_with_603(api: RealtimeCalls, router: respx.Router) -> None:
    from sip_controller.config import Limits

    connector = FakeConnector()
    registry = CallRegistry(Settings(limits=Limits(caller_calls_per_minute=2)), api, connector)
    refusals = [registry.start(incoming(f"rtc_r{i}")) for i in range(3)]
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


async def test_withheld_caller_ids_share_the_anonymous_limit(api: RealtimeCalls, router: respx.Router) -> None:
    """The reproduction: 8 calls without a caller number and a limit of 3 were all accepted."""
    connector = FakeConnector()
    limits = Limits(caller_calls_per_minute=3, anonymous_calls_per_minute=3)
    registry = CallRegistry(Settings(limits=limits), api, connector)
    anonymous = (SipHeader(name="From", value='"Anonymous" <sip:anonymous@anonymous.invalid>;tag=1'),)
    calls = [
        IncomingCall(call_id=f"rtc_a{i}", webhook_id=f"wh_a{i}", headers=anonymous, received_at=datetime.now(UTC))
        for i in range(8)
    ]
    refusals = [registry.start(call) for call in calls]
    assert [r is None for r in refusals] == [True] * 3 + [False] * 5
    assert {r.status_code for r in refusals if r is not None} == {603}
    assert "without a number" in (refusals[3].reason if refusals[3] else "")
    record = await registry.wait_ended("rtc_a7", 5)
    assert record.ended_reason == "rejected"
    for i in range(3):
        await _attached(connector, f"rtc_a{i}")
        connector.attached[f"rtc_a{i}"].close_from_server()
        await registry.wait_ended(f"rtc_a{i}", 5)


async def test_drain_lets_calls_finish_by_themselves_first(api: RealtimeCalls) -> None:
    connector = FakeConnector()
    registry = CallRegistry(Settings(), api, connector)
    registry.start(incoming("rtc_d1"))
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
    refusal = registry.start(incoming("rtc_after"))
    assert refusal is not None
    assert refusal.status_code == 503


async def test_the_accept_starts_with_the_webhook_and_is_cancelled_with_a_call_cancelled_early(
    api: RealtimeCalls, router: respx.Router
) -> None:
    registry = CallRegistry(Settings(), api, FakeConnector())
    assert registry.start(incoming("rtc_a")) is None
    supervisor = registry.supervisor("rtc_a")
    assert supervisor is not None
    accept = supervisor._tasks["accept"]  # under way before the call's own task has run a step
    registry._live["rtc_a"].task.cancel()  # e.g. a shutdown in the same turn of the loop
    record = await registry.wait_ended("rtc_a", 5)
    await asyncio.sleep(0)
    assert accept.cancelled() or accept.done()
    assert supervisor._tasks == {}
    assert record.ended_reason == "shutdown"
