"""Twilio's voice webhook and status callbacks, parsed at the edge."""

from __future__ import annotations

import pytest

from sip_controller.telephony.callbacks import (
    BadCallback,
    RecordingCallback,
    StatusCallback,
    VoiceRequest,
    recording_of,
)

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


RECORDING = {
    "AccountSid": "AC" + "0" * 32, "CallSid": SID, "RecordingSid": "RE" + "1" * 32,
    "RecordingUrl": "https://api.twilio.com/2010-04-01/Accounts/AC00/Recordings/RE11",
    "RecordingStatus": "completed", "RecordingDuration": "42", "RecordingChannels": "2",
    "RecordingSource": "DialVerb", "RecordingStartTime": "Wed, 02 Dec 2026 13:00:00 +0000",
}  # fmt: skip


def test_a_recording_callback() -> None:
    callback = RecordingCallback.parse(RECORDING)
    assert (callback.call_sid, callback.status, callback.completed) == (SID, "completed", True)
    assert callback.report() == {
        "sid": "RE" + "1" * 32, "url": RECORDING["RecordingUrl"], "duration_s": 42, "channels": 2,
    }  # fmt: skip
    assert callback.event() == {"kind": "recording", "status": "completed", **callback.report(),
                                "source": "DialVerb"}  # fmt: skip


def test_the_recording_kept_on_a_twilio_call_is_its_last_completed_one() -> None:
    first = RecordingCallback.parse(RECORDING).event()
    absent = RecordingCallback.parse({**RECORDING, "RecordingSid": "RE" + "2" * 32, "RecordingStatus": "absent",
                                      "RecordingDuration": "0"}).event()  # fmt: skip
    status = {"kind": "status", "status": "completed"}
    assert recording_of([status, first, absent]) == RecordingCallback.parse(RECORDING).report()
    assert recording_of([status, absent]) is None
    assert recording_of([]) is None


@pytest.mark.parametrize(
    ("form", "match"),
    [({"RecordingSid": "RE123"}, "RecordingSid"), ({"RecordingSid": ""}, "RecordingSid"),
     ({"RecordingStatus": "exploded"}, "RecordingStatus"), ({"RecordingUrl": "javascript:alert(1)"}, "RecordingUrl"),
     ({"RecordingUrl": ""}, "RecordingUrl"), ({"CallSid": "CA1"}, "CallSid")],
)  # fmt: skip
def test_a_recording_callback_twilio_would_not_send_is_refused(form: dict[str, str], match: str) -> None:
    with pytest.raises(BadCallback, match=match):
        RecordingCallback.parse({**RECORDING, **form})


def test_an_absent_recording_needs_no_url() -> None:
    callback = RecordingCallback.parse({**RECORDING, "RecordingStatus": "absent", "RecordingUrl": "",
                                        "RecordingDuration": "0"})  # fmt: skip
    assert (callback.completed, callback.url) == (False, None)
