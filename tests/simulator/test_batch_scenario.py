"""A scenario's outbound batch (``twilio.batch``, #16): the schema, the simulated clock, and the checks the harness
makes of what the controller and Twilio did (each fed a run that breaks one rule, so none of them passes blindly)."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from sip_controller.config import Settings
from sip_controller.simulator import ScenarioError, parse_scenario
from sip_controller.simulator.batch_clock import SimClock
from sip_controller.simulator.batch_run import BatchOutcome, check_batch, predicted, with_do_not_call
from sip_controller.simulator.scenario import OutboundBatch
from sip_controller.simulator.twilio_records import TwilioCall
from sip_controller.state.batches import BatchCallRow, BatchRecord

ROOT = Path(__file__).resolve().parents[2]
NY = ZoneInfo("America/New_York")
START = datetime(2026, 3, 10, 7, 30, tzinfo=NY)


def batch(**extra: object) -> OutboundBatch:
    data: dict[str, object] = {
        "name": "b",
        "start": "2026-03-10T07:30:00-04:00",
        "pacing": {"calls_per_second": 0.5, "max_in_flight": 2},
        "calling_hours": {"start": "09:00", "end": "17:00", "timezone": "America/New_York"},
        "retries": {"no_answer": 1, "busy": 0, "delay_s": 600},
        "rows": [
            {"to": "+14155550101", "callees": [{"outcome": "no_answer"}, {"outcome": "answer"}]},
            {"to": "+14155550102", "callees": [{"outcome": "busy"}]},
        ],
    }
    data.update(extra)
    return OutboundBatch.model_validate(data)


def test_generated_rows_count_up_and_cycle_their_callees() -> None:
    spec = batch(generate={"count": 3, "first": "+14155550200", "variables": {"first_name": "Caller {n}"},
                           "callees": [[{"outcome": "answer"}], [{"outcome": "busy"}]]})  # fmt: skip
    rows = spec.all_rows()
    assert [r.to for r in rows] == ["+14155550101", "+14155550102", "+14155550200", "+14155550201", "+14155550202"]
    assert rows[3].variables == {"first_name": "Caller 2"}
    assert [r.callees[0].outcome for r in rows[2:]] == ["answer", "busy", "answer"]
    body = spec.request()
    assert body["pacing"] == {"calls_per_second": 0.5, "max_in_flight": 2}
    assert body["calling_hours"] == {"start": "09:00", "end": "17:00", "timezone": "America/New_York"}
    assert body["rows"][0] == {"to": "+14155550101", "variables": {}}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"start": "2026-03-10T07:30:00"}, "give the UTC offset"),
        ({"rows": []}, "a batch needs rows, generate, or both"),
        ({"rows": [{"to": "+14155550101"}, {"to": "+14155550101"}]}, "is in the batch twice"),
        ({"generate": {"count": 2, "first": "+999999999999999"}}, "leaves E.164"),
        ({"do_not_call": ["415*"]}, "do_not_call"),
        ({"pacing": {"calls_per_second": 0}}, "calls_per_second"),
    ],
)
def test_a_bad_batch_names_the_field(extra: dict[str, object], message: str) -> None:
    data = {"name": "s", "twilio": {"batch": batch().model_dump(by_alias=True, mode="json") | extra}}
    with pytest.raises(ScenarioError, match=message):
        parse_scenario(data)


def test_a_batch_alone_is_a_twilio_scenario_and_its_name_is_a_call_name() -> None:
    scenario = parse_scenario({"name": "s", "twilio": {"batch": batch().model_dump(by_alias=True, mode="json")}})
    assert scenario.twilio is not None
    assert scenario.twilio.names == ["b"]


def test_predicted_attempts_follow_the_callees_and_the_retries() -> None:
    spec = batch()
    first, second = spec.all_rows()
    assert predicted(first, spec, True) == (2, "completed")
    assert predicted(second, spec, True) == (1, "busy")  # no busy retries
    machine = batch(rows=[{"to": "+14155550103", "callees": [{"outcome": "voicemail"}]}]).all_rows()[0]
    assert predicted(machine, spec, True) == (1, "voicemail")
    assert predicted(machine, spec, False) == (1, "completed")  # no answering-machine detection


def test_do_not_call_patterns_join_the_configured_list() -> None:
    settings = Settings.model_validate({"twilio": {"do_not_call": ["+1900*"]}})
    assert with_do_not_call(settings, ["+1415*", "+1900*"]).twilio.do_not_call == ("+1900*", "+1415*")
    assert with_do_not_call(settings, []) is settings


@pytest.mark.anyio
async def test_the_clock_stands_still_until_moved_and_wakes_its_sleepers() -> None:
    clock = SimClock(1000.0)
    before = time.monotonic()
    sleeper = asyncio.create_task(clock.sleep(60))
    await asyncio.sleep(0.01)
    assert clock.time() == 1000.0
    assert not sleeper.done()
    clock.advance_to(1030.0)
    await asyncio.sleep(0)
    assert not sleeper.done()
    clock.advance_to(1060.0)
    await asyncio.wait_for(sleeper, 1)
    clock.advance_to(10.0)  # never back
    assert clock.time() == 1060.0
    assert clock.at(before) == 1000.0
    assert clock.at(time.monotonic()) == 1060.0
    cancelled = asyncio.create_task(clock.sleep(5))
    await asyncio.sleep(0)
    cancelled.cancel()
    await asyncio.gather(cancelled, return_exceptions=True)
    clock.advance_to(2000.0)  # a cancelled sleeper is forgotten


# ---- check_batch: a run that keeps every rule, then one broken rule at a time ------------------------------------


def _call(sid: str, to: str, created: float, ended: float) -> TwilioCall:
    call = TwilioCall(sid=sid, account_sid="AC", direction="outbound-api", from_=ORIGIN, to=to, name=sid,
                      created_at=created, status="completed")  # fmt: skip
    call.ended_at = ended
    return call


ORIGIN = "+18005550100"


def _row(to: str, outcome: str) -> BatchCallRow:
    return BatchCallRow(batch_id="x", row=1, to_number=to, variables={}, timezone=None, state="done", outcome=outcome,
                        attempt=0, claims=1, due_at=0, lease_owner=None, lease_until=None, twilio_id=None,
                        last_error=None, updated_at=0)  # fmt: skip


def good_run(spec: OutboundBatch) -> BatchOutcome:
    nine = datetime(2026, 3, 10, 9, 0, tzinfo=NY).timestamp()
    record = BatchRecord(id="x", idempotency_key=None, request_hash=None, profile="default", status="done",
                         calls_per_second=0.5, max_in_flight=2, next_slot_at=0, options={}, rejected=[],
                         created_at=0, updated_at=0, outcomes={"busy": 1, "completed": 1})  # fmt: skip
    calls = [_call("CA1", "+14155550101", 0.0, 1.0), _call("CA2", "+14155550102", 0.1, 0.5),
             _call("CA3", "+14155550101", 2.0, 3.0)]  # fmt: skip
    return BatchOutcome(
        spec=spec, created_status=201, created={"id": "x", "rejected": []}, record=record,
        rows=[_row("+14155550101", "completed"), _row("+14155550102", "busy")], calls=calls,
        placed_at={"CA1": nine, "CA2": nine + 2, "CA3": nine + 700},
    )  # fmt: skip


def test_a_run_that_keeps_every_rule_passes() -> None:
    assert check_batch(good_run(batch()), Settings()) == []


def test_each_broken_rule_is_reported() -> None:
    spec = batch()
    early = good_run(spec)
    early.placed_at["CA1"] = datetime(2026, 3, 10, 8, 59, 59, tzinfo=NY).timestamp()
    assert any("outside calling hours" in p for p in check_batch(early, Settings()))

    late = good_run(spec)
    late.placed_at["CA3"] = datetime(2026, 3, 10, 17, 0, tzinfo=NY).timestamp()
    assert any("17:00:00" in p and "outside calling hours" in p for p in check_batch(late, Settings()))

    soon = good_run(spec)
    soon.placed_at["CA3"] = soon.placed_at["CA1"] + 599
    assert any("retries.delay_s" in p for p in check_batch(soon, Settings()))

    fast = good_run(spec)
    fast.placed_at["CA2"] = fast.placed_at["CA1"]  # two at once: the burst allows 1 + 0.5, not 2
    assert any("pacing" in p for p in check_batch(fast, Settings()))

    crowded = good_run(spec)
    crowded.calls.append(_call("CA4", "+14155550101", 0.2, 0.3))
    crowded.placed_at["CA4"] = crowded.placed_at["CA1"] + 1000
    problems = check_batch(crowded, Settings())
    assert any("max_in_flight: 3" in p for p in problems)
    assert any("called 3 time(s); its callees and the retries make 2" in p for p in problems)
    assert any("at most 2" in p for p in problems)

    listed = check_batch(good_run(spec), Settings.model_validate({"twilio": {"do_not_call": ["+14155550102"]}}))
    assert any("on the do-not-call list but was dialled" in p for p in listed)

    wrong = good_run(batch(expect={"outcomes": {"completed": 2}, "calls": 2, "rejected": 1, "status": "running"}))
    assert len(check_batch(wrong, Settings())) == 4


def test_a_config_that_cannot_make_the_batch_is_named_before_any_call() -> None:
    from sip_controller.agent.profile import AgentProfile
    from sip_controller.simulator import harness

    settings = Settings(profiles={"default": AgentProfile(), "reminders": AgentProfile(variables=("first_name",))})
    scenario = parse_scenario({"name": "s", "twilio": {"batch": batch(profile="nope").model_dump(by_alias=True,
                                                                                                mode="json")}})
    assert scenario.twilio is not None
    [problem] = harness.twilio_serving_problems(scenario.twilio, settings)
    assert problem == "twilio.batch (b): profile nope is not defined by this config (default, reminders)"
    scenario = parse_scenario({"name": "s", "twilio": {"batch": batch(profile="reminders").model_dump(
        by_alias=True, mode="json")}})  # fmt: skip
    assert scenario.twilio is not None
    assert harness.twilio_serving_problems(scenario.twilio, settings) == [
        "twilio.batch (b): the row for +14155550101 gives variables none, but profile reminders declares first_name",
        "twilio.batch (b): no caller ID: give from, or set the profile's outbound.from_number or twilio.from_number",
    ]
