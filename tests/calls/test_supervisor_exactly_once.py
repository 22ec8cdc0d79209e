"""Exactly once (#13) at the call's I/O edge, OpenAI mocked by respx: an accept whose answer was lost is ours when
the retry hears ``call_already_accepted``; a hangup answered 5xx is retried with backoff until OpenAI confirms it,
and the store's hook hears of every unconfirmed round."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest
import respx

from sip_controller.calls.inputs import OperatorHangup
from sip_controller.calls.machine import CallMachine
from sip_controller.calls.report import CallRecord, report_document
from sip_controller.calls.states import CallState
from sip_controller.calls.supervisor import CallOptions, CallSupervisor
from sip_controller.config import AgentProfile
from sip_controller.realtime.rest import RealtimeCalls
from sip_controller.realtime.retries import RetryPolicy
from sip_controller.realtime.sideband import FakeConnector
from tests.servicekit import mocked_api, openai_router

pytestmark = pytest.mark.anyio
FAST = RetryPolicy(wait_initial=0.001, wait_max=0.01, wait_jitter=0.001, gone_grace_s=0.1, attempts=2, timeout_s=2)
ALREADY = {"error": {"message": "The call has already been accepted.", "type": "invalid_request_error",
                     "code": "call_already_accepted", "param": None}}


@pytest.fixture
def router() -> respx.Router:
    return openai_router()


@pytest.fixture
async def api(router: respx.Router) -> AsyncIterator[RealtimeCalls]:
    async with mocked_api(router) as client:
        yield client


def supervisor(
    api: RealtimeCalls, connect: FakeConnector, hanging: list[tuple[str, float]] | None = None
) -> CallSupervisor:
    record = CallRecord(call_id="rtc_x", profile="default", received_at=datetime.now(UTC))
    machine = CallMachine(call_id="rtc_x", profile_name="default", profile=AgentProfile(greeting=None),
                          record=record, close_wait_s=0.2, today=record.received_at.date())

    async def on_hanging_up(call_id: str, next_try_at: float) -> None:
        assert hanging is not None
        hanging.append((call_id, next_try_at))

    options = CallOptions(ring_budget_s=3, retry=FAST, on_hanging_up=on_hanging_up if hanging is not None else None)
    return CallSupervisor(machine, api, connect, options=options)


async def wait_attached(connector: FakeConnector) -> None:
    async with asyncio.timeout(5):
        while "rtc_x" not in connector.attached:
            await asyncio.sleep(0.005)


async def test_an_accept_whose_answer_was_lost_is_ours_when_the_retry_hears_already_accepted(
    api: RealtimeCalls, router: respx.Router
) -> None:
    router.routes["accept"].side_effect = [httpx.ReadTimeout("lost"), httpx.Response(400, json=ALREADY)]
    connector = FakeConnector()
    call = supervisor(api, connector)
    task = asyncio.create_task(call.run())
    await wait_attached(connector)  # the sideband is up: the machine hears of it next
    async with asyncio.timeout(5):
        while call.machine.state != CallState.ATTACHED:  # attached: supervised, greeting, watchdogs, end_call
            await asyncio.sleep(0.005)
    connector.attached["rtc_x"].close_from_server(1000)
    record = await asyncio.wait_for(task, 5)
    assert router.routes["accept"].call_count == 2
    assert router.routes["reject"].call_count == 0
    assert record.ended_reason == "caller_hangup"
    assert record.errors == []
    assert any("already accepted" in what for _, what in record.timeline)


async def test_a_reset_then_a_5xx_then_already_accepted_is_ours_too(api: RealtimeCalls, router: respx.Router) -> None:
    router.routes["accept"].side_effect = [
        httpx.RemoteProtocolError("connection reset"), httpx.Response(502), httpx.Response(400, json=ALREADY)
    ]
    connector = FakeConnector()
    task = asyncio.create_task(supervisor(api, connector).run())
    await wait_attached(connector)
    connector.attached["rtc_x"].close_from_server(1000)
    record = await asyncio.wait_for(task, 5)
    assert (record.ended_reason, router.routes["reject"].call_count) == ("caller_hangup", 0)


async def test_already_accepted_at_the_first_try_is_not_taken_for_ours(
    api: RealtimeCalls, router: respx.Router
) -> None:
    router.routes["accept"].return_value = httpx.Response(400, json=ALREADY)
    connector = FakeConnector()
    record = await asyncio.wait_for(supervisor(api, connector).run(), 5)
    assert record.ended_reason == "accept_failed"  # nothing of ours can have accepted it: not attached
    assert connector.requests == []


async def test_a_hangup_answered_500_is_retried_until_confirmed_and_reported_once(
    api: RealtimeCalls, router: respx.Router
) -> None:
    router.routes["hangup"].side_effect = [*(httpx.Response(500) for _ in range(5)), httpx.Response(200)]
    hanging: list[tuple[str, float]] = []
    connector = FakeConnector()
    call = supervisor(api, connector, hanging)
    task = asyncio.create_task(call.run())
    await wait_attached(connector)
    before = time.time()
    call.post(OperatorHangup(now=True))
    async with asyncio.timeout(5):
        while not hanging:
            await asyncio.sleep(0.005)
    assert call.machine.state == CallState.HANGING_UP
    record = await asyncio.wait_for(task, 10)
    assert router.routes["hangup"].call_count == 6
    assert record.ended_reason == "operator_hangup"
    assert record.state == "ended"
    doc = report_document(record)
    assert (doc["hangup_confirmed"], doc["hangup_attempts"]) == (True, 6)
    # 2 attempts a round (FAST): three unconfirmed rounds, each told to the store with its next try
    assert [call_id for call_id, _ in hanging] == ["rtc_x"] * 2
    assert all(before < at < time.time() + 30 for _, at in hanging)
    assert hanging[0][1] < hanging[1][1]


async def test_a_hangup_that_never_succeeds_keeps_the_call_hanging_up(
    api: RealtimeCalls, router: respx.Router
) -> None:
    router.routes["hangup"].return_value = httpx.Response(500)
    hanging: list[tuple[str, float]] = []
    connector = FakeConnector()
    call = supervisor(api, connector, hanging)
    task = asyncio.create_task(call.run())
    await wait_attached(connector)
    call.post(OperatorHangup(now=True))
    async with asyncio.timeout(5):
        while not hanging:
            await asyncio.sleep(0.005)
    connector.attached["rtc_x"].close_from_server(1000)  # the socket closing proves nothing
    await asyncio.sleep(2.5)  # rounds at 0.25, 0.5, 1 s: the old controller gave up by now
    assert not task.done()
    assert call.machine.state == CallState.HANGING_UP
    assert len(hanging) >= 3
    task.cancel()  # the process has to go: the call is left hanging_up, unconfirmed
    with pytest.raises(asyncio.CancelledError):
        await task
    assert call.record.state == "hanging_up"
    assert call.record.hangup_confirmed is False
    assert call.record.hangup_attempts == router.routes["hangup"].call_count
