"""Tests for sip_controller.report: usage totals, number masking, the call record, summary and full dict."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sip_controller.events import Usage
from sip_controller.report import CallRecord, ToolCallRecord, TranscriptEntry, UsageTotals, mask_number

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
