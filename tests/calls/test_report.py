"""Tests for sip_controller.calls.report: usage totals, number masking, the call record, summary and full dict."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sip_controller.calls.report import (
    SCHEMA_VERSION,
    BargeIn,
    CallRecord,
    FailedResponse,
    RateLimitState,
    ToolCallRecord,
    TranscriptEntry,
    UsageTotals,
    mask_number,
    report_document,
    started_document,
)
from sip_controller.calls.states import EndedReason
from sip_controller.realtime.events import Usage

RECEIVED = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def usage(
    *, text_in: int = 0, audio_in: int = 0, cached_text: int = 0, cached_audio: int = 0, text_out: int = 0,
    audio_out: int = 0,
) -> Usage:  # fmt: skip
    return Usage.model_validate(
        {
            "input_token_details": {
                "text_tokens": text_in,
                "audio_tokens": audio_in,
                "cached_tokens": cached_text + cached_audio,
                "cached_tokens_details": {"text_tokens": cached_text, "audio_tokens": cached_audio},
            },
            "output_token_details": {"text_tokens": text_out, "audio_tokens": audio_out},
        }
    )


def test_usage_totals_add_up() -> None:
    totals = UsageTotals()
    totals.add(usage(text_in=100, audio_in=50, cached_text=40, cached_audio=10, text_out=7, audio_out=30))
    totals.add(usage(text_in=1, audio_in=2, cached_text=3, cached_audio=4, text_out=5, audio_out=6))
    totals.add(Usage())
    assert totals == UsageTotals(
        responses=3,
        input_text_tokens=101,
        input_audio_tokens=52,
        cached_text_tokens=43,
        cached_audio_tokens=14,
        output_text_tokens=12,
        output_audio_tokens=36,
    )


@pytest.mark.parametrize(
    ("number", "masked"),
    [
        ("+14155550123", "+1415***0123"),
        ("+442071838750", "+4420***8750"),
        (None, None),
        ("", ""),
        ("+1234", "*****"),
        ("+12345", "******"),
    ],
)
def test_mask_number(number: str | None, masked: str | None) -> None:
    assert mask_number(number) == masked


@pytest.mark.parametrize("number", ["+6834002", "+35312345", "+1234567"])
def test_mask_number_short_real_numbers_are_not_revealed(number: str) -> None:
    """Niue (+683 4002) and other short numbers: the mask must not show every digit of the number."""
    masked = mask_number(number)
    assert masked is not None
    shown = masked.replace("*", "")
    assert len(shown) < len(number), f"{number} -> {masked}"


@settings(max_examples=100, deadline=None)
@given(digits=st.text(alphabet="0123456789", min_size=2, max_size=15))
def test_mask_number_always_hides_some_digits(digits: str) -> None:
    """E.164 numbers can be short (``+` and 2..15 digits): the mask must never reveal the whole number."""
    number = "+" + digits
    masked = mask_number(number)
    assert masked is not None
    assert masked != number
    revealed = len(masked) - masked.count("*")
    assert revealed < len(number), f"{number} -> {masked}"


def make_record() -> CallRecord:
    record = CallRecord(
        call_id="rtc_1",
        profile="default",
        received_at=RECEIVED,
        caller="+14155550123",
        dialed="+18005550100",
    )
    record.mark(0.0, "accepting")
    record.mark(1.23456, "attached")
    record.transcripts.append(TranscriptEntry("assistant", "Hello, Example Dental", 1.5))
    record.transcripts.append(TranscriptEntry("caller", "My secret medical question", 3.0))
    record.transcripts.append(TranscriptEntry("caller", "bye", 5.0))
    record.tool_calls.append(ToolCallRecord("call_1", "end_call", '{"reason": "bye"}', 5.5, "ok"))
    record.usage.add(usage(text_in=10, audio_out=20))
    record.errors.append("sideband error x: y")
    record.ignored_events = 2
    record.state = "ended"
    record.ended_reason = "agent_end_call"
    record.duration_s = 9.5
    return record


def test_new_record_defaults() -> None:
    record = CallRecord(call_id="rtc_1", profile="p", received_at=RECEIVED)
    assert record.state == "received"
    assert record.ended_reason is None
    assert record.timeline == []
    assert record.usage == UsageTotals()


def test_mark_rounds_to_milliseconds() -> None:
    record = make_record()
    assert record.timeline == [(0.0, "accepting"), (1.235, "attached")]


def test_summary_is_safe_for_info_logs() -> None:
    record = make_record()
    summary = record.summary()
    assert summary == {
        "call_id": "rtc_1",
        "profile": "default",
        "caller": "+1415***0123",
        "state": "ended",
        "ended_reason": "agent_end_call",
        "duration_s": 9.5,
        "turns_caller": 2,
        "turns_assistant": 1,
        "tool_calls": ["end_call"],
        "responses": 1,
        "cost_usd": 0.0,
        "errors": 1,
        "ignored_events": 2,
    }
    text = json.dumps(summary)
    assert "secret medical" not in text
    assert "Example Dental" not in text
    assert "+14155550123" not in text
    assert "5550100" not in text  # dialed number not in the summary either


def test_to_dict_is_complete_and_json_serialisable() -> None:
    record = make_record()
    full = record.to_dict()
    decoded = json.loads(json.dumps(full))
    assert decoded["caller"] == "+14155550123"
    assert decoded["dialed"] == "+18005550100"
    assert decoded["received_at"] == "2026-11-22T12:00:00+00:00"
    assert decoded["timeline"] == [{"at_s": 0.0, "event": "accepting"}, {"at_s": 1.235, "event": "attached"}]
    assert decoded["transcripts"][1] == {"role": "caller", "text": "My secret medical question", "at_s": 3.0}
    assert decoded["tool_calls"] == [
        {
            "call_id": "call_1",
            "name": "end_call",
            "arguments": '{"reason": "bye"}',
            "at_s": 5.5,
            "outcome": "ok",
            "detail": "",
            "result": "",
            "duration_s": None,
        }
    ]
    assert decoded["usage"]["responses"] == 1
    assert decoded["usage"]["input_text_tokens"] == 10
    assert decoded["usage"]["output_audio_tokens"] == 20
    assert decoded["errors"] == ["sideband error x: y"]
    assert decoded["ended_reason"] == "agent_end_call"
    assert decoded["turns_caller"] == 2


def test_to_dict_copies_errors() -> None:
    record = make_record()
    full = record.to_dict()
    full["errors"].append("mutated")
    assert record.errors == ["sideband error x: y"]


def test_summary_without_caller() -> None:
    record = CallRecord(call_id="rtc_2", profile="p", received_at=RECEIVED)
    assert record.summary()["caller"] is None
    assert record.summary()["tool_calls"] == []


# ---- the end-of-call report document ---------------------------------------------------------------------

DOCUMENT_KEYS = [
    "schema_version",
    "call_id",
    "profile",
    "caller",
    "caller_masked",
    "dialed",
    "twilio_call_sid",
    "twilio",
    "outbound",
    "answered_by",
    "state",
    "ended_reason",
    "timestamps",
    "timings",
    "transfer",
    "recording",
    "transcript",
    "tool_calls",
    "timeline",
    "usage",
    "cost_usd",
    "hold_cost_usd",
    "transcription_cost_usd",
    "errors",
    "ignored_events",
    "failed_responses",
    "failed_responses_total",
    "barge_ins",
    "hangup_confirmed",
    "hangup_attempts",
    "takeovers",
    "rate_limits",
    "legs",
    "parked",
]


def full_record() -> CallRecord:
    record = make_record()
    record.twilio_call_sid = "CA0123456789abcdef"
    record.accepted_s = 0.1234
    record.attached_s = 0.5
    record.duration_s = 42.25
    record.hold_s = 10.0
    record.hold_usage.add(usage(audio_out=5))
    record.transcription.audio_tokens = 300
    record.transcription.output_tokens = 40
    record.transcription.seconds = 12.5
    record.hold_transcription.audio_tokens = 250
    record.hold_transcription.output_tokens = 30
    record.cost_usd = 0.0123456789
    record.hold_cost_usd = 0.001
    record.transcription_cost_usd = 0.0023456789
    record.transfer_target = "+18005550199"
    record.transfer_outcome = "failed"
    record.tool_calls[0].result = '{"ok": true}'
    record.tool_calls[0].duration_s = 0.0123
    record.tool_calls.append(ToolCallRecord("call_2", "lookup", "{not json", 6.0, "invalid_arguments", "bad JSON"))
    return record


def test_report_document_shape_is_stable_and_json_ready() -> None:
    doc = report_document(full_record())
    assert list(doc) == DOCUMENT_KEYS
    assert json.loads(json.dumps(doc, allow_nan=False)) == doc
    assert doc["schema_version"] == SCHEMA_VERSION == 1
    assert doc["call_id"] == "rtc_1"
    assert doc["profile"] == "default"
    assert doc["dialed"] == "+18005550100"
    assert doc["twilio_call_sid"] == "CA0123456789abcdef"
    assert doc["state"] == "ended"
    assert doc["ended_reason"] == "agent_end_call"
    assert doc["transfer"] == {"target": "+18005550199", "outcome": "failed"}
    assert doc["errors"] == ["sideband error x: y"]
    assert doc["ignored_events"] == 2
    assert doc["cost_usd"] == 0.012346
    assert doc["hold_cost_usd"] == 0.001
    assert doc["transcription_cost_usd"] == 0.002346


def test_report_document_failed_responses_barge_ins_and_rate_limits() -> None:
    record = full_record()
    record.add_failed_response(
        FailedResponse("resp_1", "failed", None, "server_error", "server_error", "boom", "goodbye", 3.14159)
    )
    record.add_failed_response(FailedResponse("resp_2", "incomplete", "max_output_tokens", None, None, None, None, 4.0))
    record.add_barge_in(BargeIn("goodbye", 5.5, "resumed"))
    record.rate_limits["tokens"] = RateLimitState(limit=40000, remaining=38211, reset_seconds=2.68, at_s=1.23456)
    doc = report_document(record)
    assert json.loads(json.dumps(doc, allow_nan=False)) == doc
    assert doc["failed_responses"] == [
        {
            "id": "resp_1",
            "status": "failed",
            "reason": None,
            "error": {"type": "server_error", "code": "server_error", "message": "boom"},
            "purpose": "goodbye",
            "at_s": 3.142,
        },
        {"id": "resp_2", "status": "incomplete", "reason": "max_output_tokens", "error": None, "purpose": None,
         "at_s": 4.0},
    ]
    assert doc["failed_responses_total"] == 2
    assert doc["barge_ins"] == [{"line": "goodbye", "at_s": 5.5, "then": "resumed"}]
    assert doc["rate_limits"] == {"tokens": {"limit": 40000, "remaining": 38211, "reset_seconds": 2.68, "at_s": 1.235}}


def test_report_document_timestamps_and_timings() -> None:
    doc = report_document(full_record())
    assert doc["timestamps"] == {
        "received_at": "2026-11-22T12:00:00.000Z",
        "accepted_at": "2026-11-22T12:00:00.123Z",
        "attached_at": "2026-11-22T12:00:00.500Z",
        "ended_at": "2026-11-22T12:00:42.250Z",
    }
    assert doc["timings"] == {
        "webhook_to_accept_ms": 123,
        "accept_to_attach_ms": 377,
        "duration_s": 42.25,
        "talk_s": 31.75,  # attached 0.5 -> ended 42.25, minus 10 s on hold
        "hold_s": 10.0,
        "parked_s": 0.0,
    }


def test_report_document_timestamps_are_utc_whatever_the_zone() -> None:
    tokyo = datetime(2026, 1, 1, 9, 0, tzinfo=timezone(timedelta(hours=9)))
    record = CallRecord(call_id="c", profile="p", received_at=tokyo)
    assert report_document(record)["timestamps"]["received_at"] == "2026-01-01T00:00:00.000Z"
    naive = CallRecord(call_id="c", profile="p", received_at=datetime(2026, 1, 1, 9, 0))
    assert report_document(naive)["timestamps"]["received_at"] == "2026-01-01T09:00:00.000Z"


def test_report_document_masks_the_caller_by_default() -> None:
    record = full_record()
    masked = report_document(record)
    assert masked["caller"] == "+1415***0123"
    assert masked["caller_masked"] is True
    assert "+14155550123" not in json.dumps(masked)
    clear = report_document(record, mask_caller=False)
    assert clear["caller"] == "+14155550123"
    assert clear["caller_masked"] is False


def test_report_document_transcript_is_ordered_by_time() -> None:
    record = full_record()
    record.transcripts.append(TranscriptEntry("assistant", "late arrival said earlier", 2.0))
    record.transcripts.append(TranscriptEntry("caller", "same time, second", 5.0))
    doc = report_document(record)
    assert doc["transcript"] == [
        {"role": "assistant", "text": "Hello, Example Dental", "at_s": 1.5},
        {"role": "assistant", "text": "late arrival said earlier", "at_s": 2.0},
        {"role": "caller", "text": "My secret medical question", "at_s": 3.0},
        {"role": "caller", "text": "bye", "at_s": 5.0},
        {"role": "caller", "text": "same time, second", "at_s": 5.0},
    ]
    assert [t.at_s for t in record.transcripts] == [1.5, 3.0, 5.0, 2.0, 5.0]  # the record is left as it was


def test_report_document_tool_calls() -> None:
    doc = report_document(full_record())
    assert doc["tool_calls"] == [
        {
            "id": "call_1",
            "name": "end_call",
            "arguments": {"reason": "bye"},
            "result": '{"ok": true}',
            "at_s": 5.5,
            "duration_s": 0.012,
            "outcome": "ok",
            "detail": None,
        },
        {
            "id": "call_2",
            "name": "lookup",
            "arguments": "{not json",
            "result": None,
            "at_s": 6.0,
            "duration_s": None,
            "outcome": "invalid_arguments",
            "detail": "bad JSON",
        },
    ]


def test_report_document_usage_includes_hold_and_transcription() -> None:
    usage_doc = report_document(full_record())["usage"]
    assert usage_doc["responses"] == 1
    assert usage_doc["input_text_tokens"] == 10
    assert usage_doc["output_audio_tokens"] == 20
    assert usage_doc["hold"] == {
        "responses": 1,
        "input_text_tokens": 0,
        "input_audio_tokens": 0,
        "cached_text_tokens": 0,
        "cached_audio_tokens": 0,
        "output_text_tokens": 0,
        "output_audio_tokens": 5,
        "transcription": {"audio_tokens": 250, "text_tokens": 0, "output_tokens": 30, "seconds": 0.0},
    }
    assert usage_doc["transcription"] == {"audio_tokens": 300, "text_tokens": 0, "output_tokens": 40, "seconds": 12.5}


def test_report_document_of_a_bare_record_has_nulls_not_errors() -> None:
    """A call rejected at once (or a record other code has not filled in yet): nothing raises."""
    record = CallRecord(call_id="rtc_0", profile="p", received_at=RECEIVED)
    doc = report_document(record)
    assert list(doc) == DOCUMENT_KEYS
    assert doc["caller"] is None
    assert doc["ended_reason"] is None
    assert doc["timestamps"] == {
        "received_at": "2026-11-22T12:00:00.000Z",
        "accepted_at": None,
        "attached_at": None,
        "ended_at": None,
    }
    assert doc["timings"] == {
        "webhook_to_accept_ms": None,
        "accept_to_attach_ms": None,
        "duration_s": None,
        "talk_s": None,
        "hold_s": 0.0,
        "parked_s": 0.0,
    }
    assert doc["transfer"] == {"target": None, "outcome": None}
    assert (doc["failed_responses"], doc["failed_responses_total"], doc["barge_ins"], doc["rate_limits"]) == (
        [],
        0,
        [],
        {},
    )
    assert doc["transcript"] == doc["tool_calls"] == doc["errors"] == []
    assert doc["cost_usd"] == 0.0
    json.dumps(doc, allow_nan=False)


def test_report_document_of_a_call_never_parked_has_no_legs_or_parks() -> None:
    for record in (full_record(), CallRecord(call_id="rtc_0", profile="p", received_at=RECEIVED)):
        doc = report_document(record)
        assert doc["legs"] is None
        assert doc["parked"] is None
        assert doc["timings"]["parked_s"] == 0.0


def test_report_document_of_a_call_parked_before_merges_its_legs() -> None:
    """A fresh leg after a park (#16) reports the whole call: the first leg's identity, both legs, the park."""
    first = CallRecord(call_id="rtc_first", profile="default", received_at=RECEIVED, caller="+14155550123")
    first.transcripts.append(TranscriptEntry("caller", "I'll hold", 2.0))
    first.state, first.ended_reason, first.duration_s, first.cost_usd = "ended", "parked", 60.0, 0.5
    second = CallRecord(
        call_id="rtc_second", profile="default", received_at=RECEIVED + timedelta(seconds=660), caller="+1999"
    )
    second.transcripts.append(TranscriptEntry("caller", "I'm back", 1.0))
    second.state, second.ended_reason, second.duration_s, second.cost_usd = "ended", "caller_hangup", 30.0, 0.25
    start = RECEIVED.timestamp()
    second.earlier_legs = [report_document(first)]
    second.park_spells = [
        {"from": start + 60, "to": start + 660, "listens": 40, "checks": 2, "listen_cost_usd": 0.8,
         "check_cost_usd": 0.01, "hold_mode_cost_usd": 0.64}
    ]  # fmt: skip
    doc = report_document(second)
    assert json.loads(json.dumps(doc, allow_nan=False)) == doc
    assert list(doc) == DOCUMENT_KEYS
    assert doc["call_id"] == "rtc_first"
    assert doc["caller"] == mask_number("+14155550123")
    assert [t["at_s"] for t in doc["transcript"]] == [2.0, 661.0]
    assert [leg["call_id"] for leg in doc["legs"]] == ["rtc_first", "rtc_second"]
    assert doc["ended_reason"] == "caller_hangup"
    assert doc["timings"]["duration_s"] == 690.0
    assert doc["timings"]["parked_s"] == doc["parked"]["parked_s"] == 600.0
    assert doc["cost_usd"] == 0.76  # both legs and the park's checks
    assert doc["parked"]["cost_saved_usd"] == -0.17  # 0.64 - (0.8 + 0.01): shown, not clamped
    assert second.earlier_legs[0]["call_id"] == "rtc_first"  # the record is not changed


def test_report_document_rejected_call() -> None:
    record = CallRecord(call_id="rtc_r", profile="p", received_at=RECEIVED, caller="+14155550123")
    record.state = "rejected"
    record.ended_reason = "rejected"
    record.duration_s = 0.0
    doc = report_document(record)
    assert doc["timestamps"]["ended_at"] == "2026-11-22T12:00:00.000Z"
    assert doc["timings"]["talk_s"] is None  # never attached
    assert doc["timings"]["duration_s"] == 0.0


def test_report_document_falls_back_to_the_timeline() -> None:
    """While ``accepted_s`` / ``attached_s`` are not filled in, the timeline marks give the times."""
    record = CallRecord(call_id="rtc_t", profile="p", received_at=RECEIVED)
    record.mark(0.2, "accepted")
    record.mark(0.7, "attached")
    record.duration_s = 10.7
    timings = report_document(record)["timings"]
    assert timings["webhook_to_accept_ms"] == 200
    assert timings["accept_to_attach_ms"] == 500
    assert timings["talk_s"] == 10.0


def test_talk_seconds_never_negative() -> None:
    record = CallRecord(call_id="rtc_h", profile="p", received_at=RECEIVED, attached_s=1.0, duration_s=5.0)
    record.hold_s = 9.0
    assert report_document(record)["timings"]["talk_s"] == 0.0


def test_started_document_has_no_transcript_or_outcome() -> None:
    record = full_record()
    doc = started_document(record)
    assert list(doc) == [
        "schema_version",
        "call_id",
        "profile",
        "caller",
        "caller_masked",
        "dialed",
        "twilio_call_sid",
        "twilio",
        "outbound",
        "answered_by",
        "state",
        "timestamps",
    ]
    assert doc["caller"] == "+1415***0123"
    assert doc["timestamps"]["received_at"] == "2026-11-22T12:00:00.000Z"
    text = json.dumps(doc)
    assert "secret medical" not in text
    assert "+14155550123" not in text
    assert started_document(record, mask_caller=False)["caller"] == "+14155550123"


def test_report_document_does_not_share_state_with_the_record() -> None:
    record = full_record()
    doc = report_document(record)
    doc["errors"].append("mutated")
    doc["transcript"].clear()
    assert record.errors == ["sideband error x: y"]
    assert len(record.transcripts) == 3


def test_every_ended_reason_is_documented_in_the_readme_and_the_architecture() -> None:
    """A new ended_reason is a contract change: the README's report table and docs/architecture.md list it."""
    root = Path(__file__).resolve().parents[2]
    readme_row = next(
        line for line in (root / "README.md").read_text(encoding="utf-8").splitlines()
        if line.startswith("| `ended_reason` |")
    )
    documented = set(re.findall(r"`([a-z_]+)`", readme_row.split("|")[2]))
    architecture = (root / "docs" / "architecture.md").read_text(encoding="utf-8")
    in_architecture = set(re.findall(r"^\| `([a-z_]+)` \|", architecture, flags=re.MULTILINE))
    reasons = set(get_args(EndedReason))
    assert documented == reasons
    assert reasons <= in_architecture


def test_report_document_timeline_keeps_the_marks_in_order_without_an_operators_text() -> None:
    record = full_record()
    record.mark(0.25, "accepted")
    record.mark(4.0, "control: say now from api (42 chars)")
    doc = report_document(record)
    assert doc["timeline"][-2:] == [
        {"at_s": 0.25, "event": "accepted"},
        {"at_s": 4.0, "event": "control: say now from api (42 chars)"},
    ]
    assert all(set(entry) == {"at_s", "event"} for entry in doc["timeline"])
    assert json.loads(json.dumps(doc))["timeline"] == doc["timeline"]
