"""Twilio's voice webhook and status callbacks, parsed at the edge."""

from __future__ import annotations

import pytest

from sip_controller.telephony.callbacks import BadCallback, StatusCallback, VoiceRequest

SID = "CA" + "a" * 32


def test_a_voice_request() -> None:
    voice = VoiceRequest.parse({"CallSid": SID, "From": "+14155550123", "To": "+18005550100", "Direction": "inbound"})
    assert (voice.call_sid, voice.caller, voice.dialed) == (SID, "+14155550123", "+18005550100")


def test_a_withheld_caller_is_no_number() -> None:
    assert VoiceRequest.parse({"CallSid": SID, "From": "anonymous", "To": "+18005550100"}).caller is None


@pytest.mark.parametrize("sid", ["", "CA123", "SM" + "a" * 32])
def test_a_request_without_a_call_sid_is_refused(sid: str) -> None:
    with pytest.raises(BadCallback, match="CallSid"):
        VoiceRequest.parse({"CallSid": sid})


@pytest.mark.parametrize(
    ("status", "reason"),
    [("busy", "busy"), ("no-answer", "no_answer"), ("canceled", "canceled"), ("failed", "failed"),
     ("completed", None), ("in-progress", None), ("ringing", None)],
)  # fmt: skip
def test_unanswered_outcomes_map_to_ended_reasons(status: str, reason: str | None) -> None:
    callback = StatusCallback.parse({"CallSid": SID, "CallStatus": status})
    assert callback.unanswered_reason == reason
    assert callback.final == (status not in ("in-progress", "ringing"))


def test_a_failed_call_carries_twilios_error_code() -> None:
    callback = StatusCallback.parse(
        {"CallSid": SID, "CallStatus": "failed", "ErrorCode": "32009", "SipResponseCode": "503", "SequenceNumber": "2"}
    )
    assert (callback.error_code, callback.sip_response_code, callback.sequence) == (32009, 503, 2)
    assert callback.event() == {
        "kind": "status", "status": "failed", "error_code": 32009, "sip_response_code": 503, "sequence": 2,
    }  # fmt: skip


def test_an_answering_machine_result_without_a_status() -> None:
    callback = StatusCallback.parse({"CallSid": SID, "AnsweredBy": "machine_end_beep"})
    assert (callback.kind, callback.answered_by, callback.final) == ("amd", "machine_end_beep", False)


@pytest.mark.parametrize(
    ("form", "match"),
    [({"CallStatus": "exploded"}, "CallStatus"), ({"AnsweredBy": "robot"}, "AnsweredBy"), ({}, "neither")],
)
def test_what_twilio_does_not_send_is_refused(form: dict[str, str], match: str) -> None:
    with pytest.raises(BadCallback, match=match):
        StatusCallback.parse({"CallSid": SID, **form})
