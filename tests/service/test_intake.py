"""Tests for sip_controller.service.intake: Standard Webhooks verification and parsing of the delivery."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from standardwebhooks import Webhook

from sip_controller.calls.incoming import CUT_MARK, MAX_HEADER_VALUE_CHARS, MAX_HEADERS, IncomingCall, SipHeader
from sip_controller.service.intake import OtherEvent, WebhookRejected, WebhookVerifier, parse_event

NOW = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)
NOW_S = NOW.timestamp()


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(24)).decode()


SECRET = new_secret()
OTHER_SECRET = new_secret()

PAYLOAD: dict[str, Any] = {
    "object": "event",
    "id": "evt_6921f0c1a2b48190b1d7e5c0f0a11b22",
    "type": "realtime.call.incoming",
    "created_at": 1763769600,
    "data": {
        "call_id": "rtc_u1_9c6574da8b8a41a18da9308f4ad974ce",
        "sip_media_security": "srtp",
        "sip_headers": [
            {"name": "From", "value": "<sip:+14155550123@sip.twilio.com>;tag=53892637_c3356d0b"},
            {"name": "To", "value": "<sip:proj_abc123@sip.api.openai.com;transport=tls>"},
            {"name": "Call-ID", "value": "6f3a3c1d8e2b4c7a9f0e1d2c3b4a5968@0.0.0.0"},
            {"name": "P-Asserted-Identity", "value": "<sip:+14155550123@sip.twilio.com>"},
            {"name": "X-Twilio-CallSid", "value": "CA0123456789abcdef0123456789abcdef"},
            {"name": "Diversion", "value": "<sip:+18005550100@sip.twilio.com>;reason=unconditional"},
        ],
    },
}
BODY = json.dumps(PAYLOAD).encode()


@pytest.fixture(autouse=True)
def frozen_time() -> Iterator[None]:
    """Freeze real time too: standardwebhooks checks its own 5-minute window against datetime.now."""
    with time_machine.travel(NOW, tick=False):
        yield


def signed_headers(body: bytes, *, secret: str = SECRET, msg_id: str = "msg_1", at: datetime = NOW) -> dict[str, str]:
    signature = Webhook(secret).sign(msg_id, at, body.decode())
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signature,
        "content-type": "application/json",
    }


def verifier(*secrets: str) -> WebhookVerifier:
    return WebhookVerifier(list(secrets) or [SECRET], clock=lambda: NOW_S)


def rejected(v: WebhookVerifier, body: bytes, headers: dict[str, str]) -> WebhookRejected:
    with pytest.raises(WebhookRejected) as info:
        v.verify(body, headers)
    return info.value


# ---- verify ------------------------------------------------------------------------------------------------


def test_valid_signature_returns_webhook_id() -> None:
    assert verifier().verify(BODY, signed_headers(BODY, msg_id="wh_abc")) == "wh_abc"


def test_rotation_second_secret_matches() -> None:
    v = verifier(OTHER_SECRET, SECRET)
    assert v.verify(BODY, signed_headers(BODY, secret=SECRET)) == "msg_1"
    assert v.verify(BODY, signed_headers(BODY, secret=OTHER_SECRET)) == "msg_1"


def test_any_of_several_signatures_is_enough() -> None:
    headers = signed_headers(BODY)
    stranger = Webhook(OTHER_SECRET).sign("msg_1", NOW, BODY.decode())
    headers["webhook-signature"] = f"{stranger} {headers['webhook-signature']}"
    assert verifier().verify(BODY, headers) == "msg_1"


def test_unknown_secret_is_rejected() -> None:
    err = rejected(verifier(), BODY, signed_headers(BODY, secret=OTHER_SECRET))
    assert (err.status, err.outcome) == (401, "invalid_signature")


def test_tampered_body_is_rejected() -> None:
    headers = signed_headers(BODY)
    err = rejected(verifier(), BODY.replace(b"+1415", b"+1416"), headers)
    assert (err.status, err.outcome) == (401, "invalid_signature")


def test_signature_is_bound_to_the_webhook_id() -> None:
    headers = signed_headers(BODY, msg_id="msg_1")
    headers["webhook-id"] = "msg_2"
    err = rejected(verifier(), BODY, headers)
    assert err.outcome == "invalid_signature"


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_header(missing: str) -> None:
    headers = signed_headers(BODY)
    del headers[missing]
    err = rejected(verifier(), BODY, headers)
    assert (err.status, err.outcome) == (401, "invalid_signature")
    assert "missing" in err.message


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_empty_header(missing: str) -> None:
    headers = signed_headers(BODY)
    headers[missing] = ""
    assert rejected(verifier(), BODY, headers).outcome == "invalid_signature"


@pytest.mark.parametrize(
    "signature",
    [
        "garbage",
        "v1,",
        "v1,!!!not-base64!!!",
        "v1",
        "v1,a,b",
        "v2,AAAA",
        ",,,",
        "v1,YWJj v1",
        " ",
    ],
)
def test_garbage_signature_header(signature: str) -> None:
    headers = signed_headers(BODY)
    headers["webhook-signature"] = signature
    err = rejected(verifier(), BODY, headers)
    assert (err.status, err.outcome) == (401, "invalid_signature")


def test_non_utf8_body_is_rejected() -> None:
    body = b'{"type": "realtime.call.incoming", "x": "\xff\xfe"}'
    headers = signed_headers(b"{}")  # any valid-looking headers
    err = rejected(verifier(), body, headers)
    assert (err.status, err.outcome) == (401, "invalid_signature")


@pytest.mark.parametrize("stamp", ["abc", "1.5", "", "12e3", "0x10"])
def test_non_integer_timestamp(stamp: str) -> None:
    headers = signed_headers(BODY)
    headers["webhook-timestamp"] = stamp
    assert rejected(verifier(), BODY, headers).outcome == "invalid_signature"


@pytest.mark.parametrize("offset_s", [-301, 301, -3600, 86400])
def test_stale_timestamp(offset_s: int) -> None:
    headers = signed_headers(BODY, at=NOW + timedelta(seconds=offset_s))
    err = rejected(verifier(), BODY, headers)
    assert (err.status, err.outcome) == (401, "stale")


@pytest.mark.parametrize("offset_s", [-300, 300, 0, -1, 299])
def test_timestamp_within_tolerance_is_accepted(offset_s: int) -> None:
    headers = signed_headers(BODY, at=NOW + timedelta(seconds=offset_s))
    assert verifier().verify(BODY, headers) == "msg_1"


def test_injected_clock_decides_staleness() -> None:
    at = NOW - timedelta(seconds=200)
    headers = signed_headers(BODY, at=at)
    late = WebhookVerifier([SECRET], clock=lambda: NOW_S + 101)
    assert rejected(late, BODY, headers).outcome == "stale"
    assert WebhookVerifier([SECRET], clock=lambda: NOW_S + 100).verify(BODY, headers) == "msg_1"


def test_custom_tolerance() -> None:
    headers = signed_headers(BODY, at=NOW - timedelta(seconds=61))
    v = WebhookVerifier([SECRET], tolerance_s=60, clock=lambda: NOW_S)
    assert rejected(v, BODY, headers).outcome == "stale"


def test_verifier_needs_a_secret() -> None:
    with pytest.raises(ValueError, match="secret"):
        WebhookVerifier([])


def test_rejection_carries_status_outcome_message() -> None:
    err = WebhookRejected(400, "malformed", "nope")
    assert (err.status, err.outcome, err.message, str(err)) == (400, "malformed", "nope", "nope")


_header_names = st.sampled_from(["webhook-id", "webhook-timestamp", "webhook-signature", "x-other"])
_header_values = st.text(max_size=40) | st.sampled_from(
    [str(int(NOW_S)), str(int(NOW_S) - 299), "v1,AAAA", "v1,!!", "v1", ",", "msg_1", "1" * 5000]
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(headers=st.dictionaries(_header_names, _header_values, max_size=4), body=st.binary(max_size=80))
def test_verify_raises_only_webhook_rejected(headers: dict[str, str], body: bytes) -> None:
    v = verifier()
    with pytest.raises(WebhookRejected) as info:
        v.verify(body, headers)
    assert info.value.status == 401
    assert info.value.outcome in ("invalid_signature", "stale")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.text(max_size=200), msg_id=st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1))
def test_any_genuine_delivery_verifies(body: str, msg_id: str) -> None:
    raw = body.encode()
    assert verifier(OTHER_SECRET, SECRET).verify(raw, signed_headers(raw, msg_id=msg_id)) == msg_id


# ---- parse_event -------------------------------------------------------------------------------------------


def test_parse_incoming_call() -> None:
    call = parse_event(BODY, "wh_1")
    assert isinstance(call, IncomingCall)
    assert call.call_id == "rtc_u1_9c6574da8b8a41a18da9308f4ad974ce"
    assert call.webhook_id == "wh_1"
    assert call.sip_media_security == "srtp"
    assert len(call.headers) == 6
    assert call.headers[0] == SipHeader(name="From", value=PAYLOAD["data"]["sip_headers"][0]["value"])
    assert call.received_at == NOW
    assert call.received_at.tzinfo is not None
    assert call.caller == "+14155550123"
    assert call.dialed == "+18005550100"


def test_parse_incoming_call_minimal() -> None:
    body = json.dumps({"type": "realtime.call.incoming", "data": {"call_id": "rtc_1"}}).encode()
    call = parse_event(body, "wh")
    assert isinstance(call, IncomingCall)
    assert call.headers == ()
    assert call.sip_media_security is None
    assert call.caller is None
    assert call.dialed is None


def test_parsed_headers_are_bounded_whatever_the_caller_sends() -> None:
    """A 200 KB X-Twilio-CallSid and 500 headers: the call keeps 64 headers, each value cut with a marker."""
    headers = [{"name": "X-Twilio-CallSid", "value": "C" * 200_000}]
    headers += [{"name": f"X-Filler-{i}", "value": "v"} for i in range(499)]
    body = json.dumps(
        {"type": "realtime.call.incoming", "data": {"call_id": "rtc_1", "sip_headers": headers,
                                                    "sip_media_security": "s" * 5000}}
    ).encode()
    call = parse_event(body, "wh")
    assert isinstance(call, IncomingCall)
    assert len(call.headers) == MAX_HEADERS
    sid = call.header("X-Twilio-CallSid")
    assert sid is not None
    assert len(sid) == MAX_HEADER_VALUE_CHARS
    assert sid.endswith(CUT_MARK)
    assert call.sip_media_security == "s" * 32


@pytest.mark.parametrize("kind", ["live.call.incoming", "realtime.call.ended", "x" * 300])
def test_other_event_types(kind: str) -> None:
    other = parse_event(json.dumps({"type": kind, "data": {}}).encode(), "wh")
    assert isinstance(other, OtherEvent)
    assert other.type == kind[:100]


@pytest.mark.parametrize("body", [b"", b"not json", b"{", b"\xff\xfe", b"[]", b"null", b'{"type": 3}', b"{}"])
def test_invalid_json_or_shape_is_400(body: bytes) -> None:
    with pytest.raises(WebhookRejected) as info:
        parse_event(body, "wh")
    assert (info.value.status, info.value.outcome) == (400, "malformed")


@pytest.mark.parametrize(
    "data",
    [
        None,
        {},
        {"call_id": ""},
        {"call_id": None},
        {"call_id": 5},
        {"call_id": "x" * 257},
        {"call_id": "rtc", "sip_headers": "From: x"},
    ],
)
def test_incoming_call_without_valid_call_id_is_400(data: dict[str, Any] | None) -> None:
    payload: dict[str, Any] = {"type": "realtime.call.incoming"}
    if data is not None:
        payload["data"] = data
    with pytest.raises(WebhookRejected) as info:
        parse_event(json.dumps(payload).encode(), "wh")
    assert (info.value.status, info.value.outcome) == (400, "malformed")
    assert "data" in info.value.message


def test_unparseable_but_signed_body_is_400_not_a_crash() -> None:
    """JSON Python cannot load (an integer over 4300 digits) is still a malformed delivery: answer 400."""
    body = b'{"type": "realtime.call.incoming", "created_at": ' + b"9" * 5000 + b', "data": {"call_id": "r"}}'
    with pytest.raises(WebhookRejected) as info:
        parse_event(body, "wh")
    assert (info.value.status, info.value.outcome) == (400, "malformed")
