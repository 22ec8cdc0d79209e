"""Twilio's Calls API through our httpx client, Twilio mocked with respx."""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import parse_qsl

import httpx
import pytest
import respx

from sip_controller.realtime.rest import new_http_client
from sip_controller.realtime.retries import RetryPolicy
from sip_controller.telephony.calls_api import CallRequest, TwilioCalls, TwilioError

pytestmark = pytest.mark.anyio
BASE = "https://api.twilio.test"
ACCOUNT = "AC" + "0" * 32
CALLS = f"{BASE}/2010-04-01/Accounts/{ACCOUNT}/Calls.json"
SID = "CA" + "b" * 32
QUICK = RetryPolicy(wait_initial=0.001, wait_max=0.002, wait_jitter=0.0, attempts=4, timeout_s=2.0)
REQUEST = CallRequest(
    to="+14155550123",
    from_="+18005550100",
    status_callback="https://calls.example.com/twilio/status?leg=abc",
    twiml="<Response><Hangup/></Response>",
    timeout_s=25,
    machine_detection="DetectMessageEnd",
)


@pytest.fixture
async def api() -> AsyncIterator[TwilioCalls]:
    async with new_http_client() as client:
        yield TwilioCalls(client, base_url=BASE + "/", account_sid=ACCOUNT, auth=(ACCOUNT, "token"), policy=QUICK)


async def test_placing_a_call_posts_twilios_form_with_basic_auth(api: TwilioCalls) -> None:
    with respx.mock(using="httpx") as mock:
        route = mock.post(CALLS).respond(201, json={"sid": SID, "status": "queued"})
        placed = await api.create(REQUEST)
    assert (placed.sid, placed.status) == (SID, "queued")
    request = route.calls.last.request
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert request.headers["authorization"] == httpx.BasicAuth(ACCOUNT, "token")._auth_header
    form = parse_qsl(request.content.decode())
    assert ("To", "+14155550123") in form
    assert ("From", "+18005550100") in form
    assert ("Twiml", "<Response><Hangup/></Response>") in form
    assert ("StatusCallback", "https://calls.example.com/twilio/status?leg=abc") in form
    assert [v for k, v in form if k == "StatusCallbackEvent"] == ["initiated", "ringing", "answered", "completed"]
    assert ("Timeout", "25") in form
    assert ("MachineDetection", "DetectMessageEnd") in form


async def test_a_refused_number_is_final_with_twilios_code(api: TwilioCalls) -> None:
    with respx.mock(using="httpx") as mock:
        route = mock.post(CALLS).respond(
            400, json={"code": 21211, "message": "The 'To' number is not a valid phone number.", "status": 400}
        )
        with pytest.raises(TwilioError) as caught:
            await api.create(REQUEST)
    assert (caught.value.status, caught.value.code, caught.value.ambiguous) == (400, 21211, False)
    assert route.call_count == 1


async def test_429_is_retried_then_placed(api: TwilioCalls) -> None:
    with respx.mock(using="httpx") as mock:
        route = mock.post(CALLS)
        route.side_effect = [
            httpx.Response(429, headers={"retry-after": "0"}, json={"code": 20429, "message": "Too many requests"}),
            httpx.Response(201, json={"sid": SID, "status": "queued"}),
        ]
        placed = await api.create(REQUEST)
    assert placed.sid == SID
    assert route.call_count == 2


async def test_a_connection_never_opened_is_retried(api: TwilioCalls) -> None:
    with respx.mock(using="httpx") as mock:
        route = mock.post(CALLS)
        route.side_effect = [httpx.ConnectError("refused"), httpx.Response(201, json={"sid": SID, "status": "queued"})]
        assert (await api.create(REQUEST)).sid == SID
    assert route.call_count == 2


@pytest.mark.parametrize(
    "failure",
    [httpx.ReadTimeout("slow"), httpx.Response(500, json={"code": 20500, "message": "Internal Server Error"})],
)
async def test_what_may_have_placed_a_call_is_never_sent_again(
    api: TwilioCalls, failure: Exception | httpx.Response
) -> None:
    with respx.mock(using="httpx") as mock:
        route = mock.post(CALLS)
        route.side_effect = [failure, httpx.Response(201, json={"sid": SID, "status": "queued"})]
        with pytest.raises(TwilioError) as caught:
            await api.create(REQUEST)
    assert caught.value.ambiguous
    assert route.call_count == 1


async def test_update_hangs_up_a_live_call(api: TwilioCalls) -> None:
    with respx.mock(using="httpx") as mock:
        route = mock.post(f"{BASE}/2010-04-01/Accounts/{ACCOUNT}/Calls/{SID}.json").respond(
            200, json={"sid": SID, "status": "completed"}
        )
        body = await api.update(SID, Status="completed")
    assert body["status"] == "completed"
    assert parse_qsl(route.calls.last.request.content.decode()) == [("Status", "completed")]


def test_a_call_needs_twiml_or_a_url() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        CallRequest(to="+1", from_="+1", status_callback="x").form()


def test_a_recorded_call_asks_for_a_dual_channel_recording_and_its_signed_callback() -> None:
    recorded = CallRequest(
        to="+14155550123", from_="+18005550100", status_callback="https://calls.example.com/twilio/status?leg=abc",
        twiml="<Response/>", recording_callback="https://calls.example.com/twilio/recording?leg=abc",
    )  # fmt: skip
    form = recorded.form()
    assert [(k, v) for k, v in form if k.startswith("Record")] == [
        ("Record", "true"), ("RecordingChannels", "dual"),
        ("RecordingStatusCallback", "https://calls.example.com/twilio/recording?leg=abc"),
        ("RecordingStatusCallbackMethod", "POST"), ("RecordingStatusCallbackEvent", "completed absent"),
    ]  # fmt: skip
    assert not [k for k, _ in REQUEST.form() if k.startswith("Record")]  # off unless asked for
