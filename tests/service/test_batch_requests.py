"""Batch requests (#16) without the app: each row's message, calling-hours maths across daylight-saving changes,
retry rules and the outcome a row takes from its Twilio call."""

from __future__ import annotations

from datetime import UTC, datetime, time
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from sip_controller.service.batches import BatchRefused, CallingHours, Retries, from_json, window_opens_at
from sip_controller.service.dialler import outcome_of
from sip_controller.state.batches import BatchCallRow, InFlight
from tests.service.test_batches import SETTINGS

NY = ZoneInfo("America/New_York")
HOURS = CallingHours(time(9), time(18))


def at(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def test_each_bad_row_gets_its_own_message_and_the_good_rows_are_kept() -> None:
    rows: list[Any] = [
        {"to": "+14155550100", "variables": {"first_name": "Ada"}},
        "+14155550101",
        {"to": "+1 415 555 0102", "variables": {"first_name": "B"}},
        {"to": "+19005550103", "variables": {"first_name": "C"}},
        {"to": "+14155550104", "variables": {"first_name": "D", "last_name": "E"}},
        {"to": "+14155550105", "variables": {"first_name": 5}},
        {"to": "+14155550106", "variables": {"first_name": "F"}, "timezone": "Nowhere/Land"},
        {"to": "+14155550107", "variables": {"first_name": "G"}, "phone": "x"},
        {"to": "+14155550100", "variables": {"first_name": "Ada"}},
        {"to": "+14155550108", "variables": {"first_name": "H"}, "timezone": "Europe/Paris"},
    ]
    checked = from_json(SETTINGS, {"profile": "reminders", "rows": rows,
                                   "calling_hours": {"start": "09:00", "end": "18:00"}})  # fmt: skip
    errors = {r["row"]: r["error"] for r in checked.rejected}
    assert [g.row for g in checked.good] == [10]  # row 1 has no time zone for the calling hours
    assert errors[1].startswith("timezone: calling hours need the callee's time zone")
    assert errors[2].startswith("a row is a JSON object")
    assert errors[3].startswith("to: '+1 415 555 0102' is not an E.164 number")
    assert errors[4] == "to: the number is on the do-not-call list (twilio.do_not_call); it is never called"
    assert "not declared by profile 'reminders': last_name" in errors[5]
    assert errors[6].startswith("variables: a JSON object of strings")
    assert errors[7] == "timezone: 'Nowhere/Land' is not an IANA time zone (e.g. America/New_York)"
    assert errors[8] == "unknown field(s) phone; use to, variables, timezone"
    assert sorted(errors) == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert errors[9].startswith("timezone:")  # row 1 was refused, so its number does not count as seen
    with pytest.raises(BatchRefused, match=r"calling_hours\.timezone"):
        from_json(SETTINGS, {"rows": rows, "calling_hours": {"start": "09:00", "end": "18:00", "timezone": "X/Y"}})


def test_a_duplicate_number_names_the_row_it_repeats() -> None:
    row = {"to": "+14155550100", "variables": {"first_name": "Ada"}}
    checked = from_json(SETTINGS, {"profile": "reminders", "rows": [row, row]})
    assert checked.rejected == [{"row": 2, "error": "to: the number is already in row 1; a batch calls each "
                                                    "number once"}]  # fmt: skip


def test_the_window_is_open_now_or_opens_next() -> None:
    assert window_opens_at(at("2024-06-03T10:00:00-04:00"), HOURS, NY) == at("2024-06-03T10:00:00-04:00")
    assert window_opens_at(at("2024-06-03T07:30:00-04:00"), HOURS, NY) == at("2024-06-03T09:00:00-04:00")
    assert window_opens_at(at("2024-06-03T18:00:00-04:00"), HOURS, NY) == at("2024-06-04T09:00:00-04:00")
    # late evening in New York is the next day in UTC: the window is the callee's local one
    assert window_opens_at(at("2024-06-04T02:00:00+00:00"), HOURS, NY) == at("2024-06-04T09:00:00-04:00")


def test_the_window_follows_daylight_saving_changes() -> None:
    # spring forward (2024-03-10, 02:00 EST -> 03:00 EDT): the evening before in EST, the opening at 09:00 EDT
    opens = window_opens_at(at("2024-03-09T20:00:00-05:00"), HOURS, NY)
    assert datetime.fromtimestamp(opens, UTC) == datetime(2024, 3, 10, 13, 0, tzinfo=UTC)
    # fall back (2024-11-03): 09:00 EST is 14:00 UTC
    opens = window_opens_at(at("2024-11-02T19:00:00-04:00"), HOURS, NY)
    assert datetime.fromtimestamp(opens, UTC) == datetime(2024, 11, 3, 14, 0, tzinfo=UTC)
    # a window starting in the skipped hour opens at the same wall-clock time on the old offset (03:30 EDT)
    early = CallingHours(time(2, 30), time(5))
    opens = window_opens_at(at("2024-03-10T01:00:00-05:00"), early, NY)
    assert datetime.fromtimestamp(opens, NY).strftime("%H:%M %Z") == "03:30 EDT"


def test_retries_are_per_latest_outcome() -> None:
    retries = Retries(no_answer=2, busy=1, delay_s=60)
    assert retries.allowed("busy", 0)
    assert not retries.allowed("busy", 1)
    assert retries.allowed("no_answer", 1)
    assert not retries.allowed("no_answer", 2)
    assert not retries.allowed("failed", 0)
    assert not retries.allowed("completed", 0)


def in_flight(status: str | None, answered_by: str | None = None, error_code: int | None = None) -> InFlight:
    row = BatchCallRow("b", 1, "+14155550100", {}, None, "in_flight", None, 0, 1, 0.0, None, None, "tw", None, 0.0)
    return InFlight(row, status, answered_by, error_code, 0.0)


@pytest.mark.parametrize(
    ("call", "outcome"),
    [
        (in_flight("completed", "human"), ("completed", None)),
        (in_flight("completed", "machine_end_beep"), ("voicemail", None)),
        (in_flight("completed", "fax"), ("voicemail", None)),
        (in_flight("busy"), ("busy", None)),
        (in_flight("no-answer"), ("no_answer", None)),
        (in_flight("canceled"), ("canceled", None)),
        (in_flight("failed", error_code=21211), ("failed", "Twilio error 21211")),
        (in_flight(None), ("failed", "the Twilio call's record is gone")),
    ],
)
def test_a_rows_outcome_is_its_twilio_calls(call: InFlight, outcome: tuple[str, str | None]) -> None:
    assert outcome_of(call) == outcome


def test_a_call_never_confirmed_placed_is_failed_saying_so() -> None:
    outcome, why = outcome_of(in_flight("requested"))
    assert outcome == "failed"
    assert why is not None
    assert "never confirmed" in why
