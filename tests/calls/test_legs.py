"""Tests for sip_controller.calls.legs: one call's report from its OpenAI legs and the parks between them (#16)."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sip_controller.calls.legs import BACK_EVENT, PARKED_EVENT, merge_legs
from sip_controller.calls.report import (
    BargeIn,
    CallRecord,
    FailedResponse,
    ToolCallRecord,
    TranscriptEntry,
    report_document,
)
from sip_controller.realtime.events import Usage

RECEIVED = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
START = RECEIVED.timestamp()
#: the park: the first leg ends 100 s in, a person is back 20 minutes later
PARK_FROM, PARK_TO = START + 100.0, START + 1300.0


def usage(*, text_in: int = 0, audio_in: int = 0, audio_out: int = 0) -> Usage:
    return Usage.model_validate(
        {
            "input_token_details": {"text_tokens": text_in, "audio_tokens": audio_in},
            "output_token_details": {"audio_tokens": audio_out},
        }
    )


def iso(offset_s: float) -> str:
    return (RECEIVED + timedelta(seconds=offset_s)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def first_leg() -> dict[str, Any]:
    record = CallRecord(
        call_id="rtc_1",
        profile="dental",
        received_at=RECEIVED,
        caller="+14155550123",
        dialed="+18005550100",
        outbound={"id": "out_1", "variables": {"name": "Ada"}},
        twilio={"id": "tw_1", "direction": "outbound", "call_sid": "CA1", "status": "in-progress"},
        accepted_s=0.1,
        attached_s=0.5,
        duration_s=100.0,
    )
    record.mark(0.5, "attached")
    record.mark(40.0, "on hold")
    record.mark(100.0, "ended: parked")
    record.transcripts += [TranscriptEntry("assistant", "Hello", 1.0), TranscriptEntry("caller", "hold on", 5.0)]
    record.tool_calls.append(ToolCallRecord("call_1", "wait_on_hold", "{}", 6.0, "ok"))
    record.add_failed_response(FailedResponse("resp_1", "failed", None, "server_error", None, None, None, 7.0))
    record.add_barge_in(BargeIn("goodbye", 8.0, "resumed"))
    record.usage.add(usage(text_in=10, audio_out=20))
    record.usage.add(usage(audio_in=5))
    record.hold_usage.add(usage(audio_in=5))
    record.transcription.audio_tokens, record.transcription.seconds = 300, 50.5
    record.hold_transcription.audio_tokens, record.hold_transcription.seconds = 200, 40.25
    record.hold_s = 60.0
    record.cost_usd, record.hold_cost_usd, record.transcription_cost_usd = 0.1, 0.02, 0.01
    record.errors.append("first leg error")
    record.ignored_events = 1
    record.hangup_attempts = 1
    record.hangup_confirmed = True
    record.takeovers.append({"at": iso(20.0), "gap_s": 3.0, "by": "b"})
    record.transfer_target = "+18005550199"
    record.state, record.ended_reason = "ended", "parked"
    return report_document(record)


def last_leg() -> dict[str, Any]:
    record = CallRecord(
        call_id="rtc_2",
        profile="dental",
        received_at=RECEIVED + timedelta(seconds=1300.0),
        caller="+18005550100",  # as the fresh leg came in: not the call's identity
        twilio={"id": "tw_1", "direction": "outbound", "call_sid": "CA1", "status": "completed"},
        recording={"sid": "RE1", "url": "https://example.invalid/RE1", "duration_s": 1360, "channels": 2},
        accepted_s=0.2,
        attached_s=0.6,
        duration_s=60.0,
    )
    record.mark(0.6, "attached")
    record.mark(60.0, "ended: caller_hangup")
    record.transcripts.append(TranscriptEntry("caller", "I'm here", 1.0))
    record.tool_calls.append(ToolCallRecord("call_2", "lookup", '{"q": 1}', 2.0, "ok"))
    record.usage.add(usage(text_in=1, audio_out=2))
    record.transcription.audio_tokens, record.transcription.seconds = 30, 9.5
    record.cost_usd, record.transcription_cost_usd = 0.05, 0.001
    record.errors.append("second leg error")
    record.add_failed_response(FailedResponse("resp_2", "incomplete", "max_output_tokens", None, None, None, None, 3.0))
    record.failed_responses_total = 4
    record.hangup_attempts = 2
    record.hangup_confirmed = False
    record.state, record.ended_reason = "ended", "caller_hangup"
    return report_document(record)


SPELL = {
    "from": PARK_FROM,
    "to": PARK_TO,
    "listens": 80,
    "checks": 3,
    "listen_cost_usd": 1.6,
    "check_cost_usd": 0.003,
    "hold_mode_cost_usd": 0.152,
}


def test_two_legs_make_one_call() -> None:
    first, last = first_leg(), last_leg()
    before = copy.deepcopy((first, last))
    doc = merge_legs([first], last, [SPELL])
    assert (first, last) == before  # inputs untouched
    assert list(doc) == list(last)  # the report's shape
    assert json.loads(json.dumps(doc, allow_nan=False)) == doc
    # the call's identity is the first leg's; its Twilio side, recording and outcome the last's
    assert (doc["call_id"], doc["profile"], doc["caller"], doc["dialed"]) == (
        "rtc_1",
        "dental",
        first["caller"],
        "+18005550100",
    )
    assert doc["outbound"] == {"id": "out_1", "variables": {"name": "Ada"}}
    assert doc["twilio"]["status"] == "completed"
    assert doc["recording"]["sid"] == "RE1"
    assert doc["ended_reason"] == "caller_hangup"
    assert (doc["hangup_confirmed"], doc["hangup_attempts"]) == (False, 3)
    assert doc["transfer"] == {"target": None, "outcome": None}
    assert doc["timestamps"] == {
        "received_at": "2026-11-22T12:00:00.000Z",
        "accepted_at": "2026-11-22T12:00:00.100Z",
        "attached_at": "2026-11-22T12:00:00.500Z",
        "ended_at": "2026-11-22T12:22:40.000Z",
    }
    assert doc["timings"] == {
        "webhook_to_accept_ms": 100,
        "accept_to_attach_ms": 400,
        "duration_s": 1360.0,
        "talk_s": 98.9,  # (100 - 0.5 - 60 on hold) + (60 - 0.6)
        "hold_s": 60.0,
        "parked_s": 1200.0,
    }


def test_times_are_moved_onto_the_first_legs_clock() -> None:
    doc = merge_legs([first_leg()], last_leg(), [SPELL])
    assert [(t["text"], t["at_s"]) for t in doc["transcript"]] == [
        ("Hello", 1.0),
        ("hold on", 5.0),
        ("I'm here", 1301.0),
    ]
    assert [(t["id"], t["at_s"]) for t in doc["tool_calls"]] == [("call_1", 6.0), ("call_2", 1302.0)]
    assert doc["tool_calls"][1]["arguments"] == {"q": 1}
    assert [(f["id"], f["at_s"]) for f in doc["failed_responses"]] == [("resp_1", 7.0), ("resp_2", 1303.0)]
    assert doc["barge_ins"] == [{"line": "goodbye", "at_s": 8.0, "then": "resumed"}]
    assert doc["timeline"] == [
        {"at_s": 0.5, "event": "attached"},
        {"at_s": 40.0, "event": "on hold"},
        {"at_s": 100.0, "event": "ended: parked"},
        {"at_s": 100.0, "event": PARKED_EVENT},  # after the leg it ended, at the same moment
        {"at_s": 1300.0, "event": BACK_EVENT},
        {"at_s": 1300.6, "event": "attached"},
        {"at_s": 1360.0, "event": "ended: caller_hangup"},
    ]


def test_usage_costs_and_counts_are_summed() -> None:
    doc = merge_legs([first_leg()], last_leg(), [SPELL])
    assert doc["usage"] == {
        "responses": 3,
        "input_text_tokens": 11,
        "input_audio_tokens": 5,
        "cached_text_tokens": 0,
        "cached_audio_tokens": 0,
        "output_text_tokens": 0,
        "output_audio_tokens": 22,
        "hold": {
            "responses": 1,
            "input_text_tokens": 0,
            "input_audio_tokens": 5,
            "cached_text_tokens": 0,
            "cached_audio_tokens": 0,
            "output_text_tokens": 0,
            "output_audio_tokens": 0,
            "transcription": {"audio_tokens": 200, "text_tokens": 0, "output_tokens": 0, "seconds": 40.25},
        },
        "transcription": {"audio_tokens": 330, "text_tokens": 0, "output_tokens": 0, "seconds": 60.0},
    }
    assert doc["cost_usd"] == 0.153  # 0.1 + 0.05, and the park's checks (OpenAI spend) 0.003
    assert doc["hold_cost_usd"] == 0.02
    assert doc["transcription_cost_usd"] == 0.011
    assert doc["errors"] == ["first leg error", "second leg error"]
    assert doc["ignored_events"] == 1
    assert doc["failed_responses_total"] == 5
    assert doc["takeovers"] == [{"at": "2026-11-22T12:00:20.000Z", "gap_s": 3.0, "by": "b"}]


def test_legs_and_parked_figures() -> None:
    doc = merge_legs([first_leg()], last_leg(), [SPELL])
    assert doc["legs"] == [
        {
            "call_id": "rtc_1",
            "received_at": "2026-11-22T12:00:00.000Z",
            "ended_at": "2026-11-22T12:01:40.000Z",
            "duration_s": 100.0,
            "ended_reason": "parked",
            "cost_usd": 0.1,
        },
        {
            "call_id": "rtc_2",
            "received_at": "2026-11-22T12:21:40.000Z",
            "ended_at": "2026-11-22T12:22:40.000Z",
            "duration_s": 60.0,
            "ended_reason": "caller_hangup",
            "cost_usd": 0.05,
        },
    ]
    assert doc["parked"] == {
        "parked_s": 1200.0,
        "spells": [{"from_s": 100.0, "to_s": 1300.0, "s": 1200.0, "listens": 80, "checks": 3}],
        "listen_cost_usd": 1.6,
        "check_cost_usd": 0.003,
        "hold_mode_cost_usd": 0.152,
        "cost_saved_usd": -1.451,  # 0.152 - (1.6 + 0.003)
    }


def test_three_legs_two_parks_in_order() -> None:
    first, last = first_leg(), last_leg()
    middle = copy.deepcopy(last)
    middle["call_id"], middle["ended_reason"] = "rtc_mid", "parked"
    middle["timestamps"] = {**middle["timestamps"], "received_at": iso(500.0), "ended_at": iso(560.0)}
    last["timestamps"] = {**last["timestamps"], "received_at": iso(1300.0), "ended_at": iso(1360.0)}
    spells = [
        {**SPELL, "from": START + 100.0, "to": START + 500.0},
        {**SPELL, "from": START + 560.0, "to": START + 1300.0, "listens": 2},
    ]
    doc = merge_legs([first, middle], last, spells)
    assert [leg["call_id"] for leg in doc["legs"]] == ["rtc_1", "rtc_mid", "rtc_2"]
    assert [t["at_s"] for t in doc["transcript"]] == [1.0, 5.0, 501.0, 1301.0]
    marks = [(e["at_s"], e["event"]) for e in doc["timeline"] if e["event"] in (PARKED_EVENT, BACK_EVENT)]
    assert marks == [(100.0, PARKED_EVENT), (500.0, BACK_EVENT), (560.0, PARKED_EVENT), (1300.0, BACK_EVENT)]
    assert doc["parked"]["parked_s"] == doc["timings"]["parked_s"] == 1140.0
    assert [s["listens"] for s in doc["parked"]["spells"]] == [80, 2]
    assert doc["parked"]["listen_cost_usd"] == 3.2
    assert doc["cost_usd"] == 0.206  # 0.1 + 0.05 + 0.05 + 2 * 0.003


def test_a_call_that_ended_while_parked() -> None:
    first = first_leg()
    spell = {**SPELL, "to": START + 700.0}
    doc = merge_legs([first], None, [spell], ended_reason="caller_hangup", ended_at=iso(700.0))
    assert doc["call_id"] == "rtc_1"
    assert doc["ended_reason"] == "caller_hangup"
    assert doc["timestamps"]["ended_at"] == "2026-11-22T12:11:40.000Z"
    assert doc["timings"]["duration_s"] == 700.0
    assert doc["timings"]["parked_s"] == 600.0
    assert doc["timeline"][-2:] == [
        {"at_s": 100.0, "event": PARKED_EVENT},
        {"at_s": 700.0, "event": "ended while parked: caller_hangup"},
    ]
    assert [leg["call_id"] for leg in doc["legs"]] == ["rtc_1"]
    assert doc["legs"][0]["ended_reason"] == "parked"
    assert doc["recording"] is None  # the only leg's
    assert doc["cost_usd"] == 0.103


def test_a_park_the_call_ended_in_lasts_until_the_end_when_its_end_is_not_given() -> None:
    spell = {k: v for k, v in SPELL.items() if k != "to"}
    doc = merge_legs([first_leg()], None, [spell], ended_reason="timeout", ended_at="2026-11-22T12:05:00+00:00")
    assert doc["parked"]["spells"] == [{"from_s": 100.0, "to_s": 300.0, "s": 200.0, "listens": 80, "checks": 3}]
    assert doc["timestamps"]["ended_at"] == "2026-11-22T12:05:00.000Z"  # the report's own form
    assert doc["timeline"][-1] == {"at_s": 300.0, "event": "ended while parked: timeout"}


def test_a_negative_saving_stays_negative() -> None:
    costly = {**SPELL, "listen_cost_usd": 0.5, "check_cost_usd": 0.2, "hold_mode_cost_usd": 0.3}
    assert merge_legs([first_leg()], last_leg(), [costly])["parked"]["cost_saved_usd"] == -0.4
    cheap = {**SPELL, "listen_cost_usd": 0.1, "check_cost_usd": 0.0, "hold_mode_cost_usd": 0.3}
    assert merge_legs([first_leg()], last_leg(), [cheap])["parked"]["cost_saved_usd"] == 0.2


def test_spell_times_are_rounded_to_the_millisecond() -> None:
    spell = {**SPELL, "from": PARK_FROM + 0.00049, "to": PARK_TO + 0.1234567}
    (row,) = merge_legs([first_leg()], last_leg(), [spell])["parked"]["spells"]
    assert (row["from_s"], row["to_s"], row["s"]) == (100.0, 1300.123, 1200.123)


def test_missing_fields_count_zero_and_never_raise() -> None:
    doc = merge_legs([{}], {}, [{}])
    assert doc["usage"] == {}
    assert doc["transcript"] == doc["timeline"] == doc["errors"] == doc["takeovers"] == []
    assert (doc["cost_usd"], doc["hold_cost_usd"], doc["failed_responses_total"], doc["hangup_attempts"]) == (
        0.0,
        0.0,
        0,
        0,
    )
    assert doc["timings"] == {
        "webhook_to_accept_ms": None,
        "accept_to_attach_ms": None,
        "duration_s": None,
        "talk_s": None,
        "hold_s": 0.0,
        "parked_s": 0.0,
    }
    assert doc["parked"]["spells"] == [{"from_s": None, "to_s": None, "s": 0.0, "listens": 0, "checks": 0}]
    assert doc["parked"]["cost_saved_usd"] == 0.0
    json.dumps(doc, allow_nan=False)


def test_partial_and_older_documents_merge_with_full_ones() -> None:
    older: dict[str, Any] = {
        "call_id": "rtc_old",
        "timestamps": {"received_at": iso(0.0), "accepted_at": None, "ended_at": "not a time"},
        "timings": None,
        "usage": {"responses": 2, "input_text_tokens": None, "hold": None},
        "transcript": [{"role": "caller", "text": "no time"}, {"role": "caller", "text": "x", "at_s": 2.0}, "junk"],
        "timeline": None,
        "cost_usd": None,
        "errors": "not a list",
        "failed_responses_total": "7",
        "legs": None,
    }
    doc = merge_legs([older], last_leg(), [{**SPELL, "from": None, "to": "soon", "listens": None}])
    assert doc["call_id"] == "rtc_old"
    assert doc["usage"]["responses"] == 3
    assert doc["usage"]["input_text_tokens"] == 1
    assert doc["usage"]["hold"]["transcription"]["audio_tokens"] == 0
    assert doc["transcript"] == [
        {"role": "caller", "text": "no time"},  # no time: at its leg's start
        "junk",
        {"role": "caller", "text": "x", "at_s": 2.0},
        {"role": "caller", "text": "I'm here", "at_s": 1301.0},
    ]
    assert doc["errors"] == ["second leg error"]
    assert doc["failed_responses_total"] == 4  # "7" is not a count
    assert doc["timings"]["talk_s"] == 59.4
    assert doc["legs"][0] == {
        "call_id": "rtc_old",
        "received_at": iso(0.0),
        "ended_at": "not a time",
        "duration_s": None,
        "ended_reason": None,
        "cost_usd": 0.0,
    }
    assert doc["parked"]["spells"][0]["s"] == 0.0


def test_without_the_first_legs_time_nothing_is_shifted() -> None:
    first = first_leg()
    first["timestamps"] = None
    doc = merge_legs([first], last_leg(), [SPELL])
    assert [t["at_s"] for t in doc["transcript"]] == [1.0, 1.0, 5.0]
    assert doc["timings"]["duration_s"] is None
    assert doc["parked"]["spells"][0]["from_s"] is None
    assert all(e["event"] not in (PARKED_EVENT, BACK_EVENT) for e in doc["timeline"])


def test_value_errors() -> None:
    with pytest.raises(ValueError, match="at least one earlier"):
        merge_legs([], last_leg(), [])
    with pytest.raises(ValueError, match="ended_reason and ended_at"):
        merge_legs([first_leg()], None, [SPELL])
    with pytest.raises(ValueError, match="ended_reason and ended_at"):
        merge_legs([first_leg()], None, [SPELL], ended_reason="caller_hangup")
    with pytest.raises(ValueError, match="ended_reason and ended_at"):
        merge_legs([first_leg()], None, [SPELL], ended_at=iso(700.0))


USAGE_KEYS = ("responses", "input_text_tokens", "output_audio_tokens")
counts = st.integers(min_value=0, max_value=10**12)
leg_strategy = st.fixed_dictionaries(
    {
        "times": st.lists(st.integers(min_value=0, max_value=600_000).map(lambda ms: ms / 1000), max_size=8),
        "gap_ms": st.integers(min_value=0, max_value=3_600_000),
        "usage": st.fixed_dictionaries({k: counts for k in USAGE_KEYS}),
        "hold": st.fixed_dictionaries({k: counts for k in USAGE_KEYS}),
    }
)


@settings(max_examples=150, deadline=None)
@given(st.lists(leg_strategy, min_size=1, max_size=5), st.booleans())
def test_merged_transcript_is_ordered_complete_and_usage_sums_exact(
    legs: list[dict[str, Any]], ended_parked: bool
) -> None:
    documents: list[dict[str, Any]] = []
    offset_ms = 0
    for leg in legs:
        offset_ms += leg["gap_ms"]
        documents.append(
            {
                "timestamps": {"received_at": iso(offset_ms / 1000)},
                "transcript": [{"role": "caller", "text": "t", "at_s": t} for t in sorted(leg["times"])],
                "usage": {**leg["usage"], "hold": dict(leg["hold"])},
            }
        )
    earlier: list[dict[str, Any]] = documents
    last: dict[str, Any] | None = None
    if not ended_parked and len(documents) > 1:
        earlier, last = documents[:-1], documents[-1]
    doc = merge_legs(earlier, last, [], ended_reason="caller_hangup", ended_at=iso(offset_ms / 1000 + 1))
    times = [t["at_s"] for t in doc["transcript"]]
    assert times == sorted(times)
    assert len(times) == sum(len(leg["times"]) for leg in legs)
    for key in USAGE_KEYS:
        assert doc["usage"][key] == sum(leg["usage"][key] for leg in legs)
        assert doc["usage"]["hold"][key] == sum(leg["hold"][key] for leg in legs)


def test_what_twilio_heard_the_person_say_is_their_line_in_the_transcript() -> None:
    spell = {**SPELL, "heard": " Hi, this is Dana. "}
    merged = merge_legs([first_leg()], last_leg(), [spell])
    dana = [t for t in merged["transcript"] if t["text"] == "Hi, this is Dana."]
    assert dana == [{"role": "caller", "text": "Hi, this is Dana.", "at_s": 1300.0}]
    assert merged["transcript"] == sorted(merged["transcript"], key=lambda t: t["at_s"])
    without = merge_legs([first_leg()], last_leg(), [SPELL])
    assert len(merged["transcript"]) == len(without["transcript"]) + 1
