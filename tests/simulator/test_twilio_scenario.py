"""Scenario files declaring Twilio calls: the schema and its errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from sip_controller.agent.profile import AgentProfile, Outbound
from sip_controller.calls.report import CallRecord, report_document
from sip_controller.config import Settings
from sip_controller.simulator import ScenarioError, harness, load_scenario, parse_scenario
from sip_controller.simulator.twilio_spec import Callee, ReportExpectation

GOOD = """
name: twilio-outcomes
twilio:
  numbers: ["+18005550100"]
  outbound:
    - name: reaches-a-person
      to: "+14155550111"
      profile: reminders
      variables: {first_name: Ada}
      callee: {outcome: answer, ring_seconds: 3, steps: [{say: "Hello?", reply: "Hi Ada!"}, {hangup: true}]}
      expect: {statuses: [initiated, ringing, in-progress, completed], answered_by: human, bridged: true}
    - name: voicemail
      to: "+14155550112"
      from: "+18005550100"
      callee: {outcome: voicemail, greeting: "Leave a message.", max_message_seconds: 20}
      expect: {answered_by: machine_end_beep, voicemail_contains: ["call us back"]}
  inbound:
    - name: calls-the-number
      from: "+14155550123"
      to: "+18005550100"
      steps: [{say: "I need an appointment", reply: "Sure."}]
      expect: {sip_headers: [X-Sipctl-Correlation]}
      openai: {ended_by: caller}
"""


def test_a_twilio_only_scenario_loads(tmp_path: Path) -> None:
    path = tmp_path / "twilio.yaml"
    path.write_text(GOOD, encoding="utf-8")
    scenario = load_scenario(path)
    assert scenario.calls == []
    assert scenario.twilio is not None
    person, machine = scenario.twilio.outbound
    assert (person.to, person.from_, person.profile, person.variables) == ("+14155550111", None, "reminders",
                                                                           {"first_name": "Ada"})  # fmt: skip
    assert person.callee.rings_for(60) == 3
    assert machine.callee.verdict("DetectMessageEnd") == "machine_end_beep"
    assert machine.callee.verdict("Enable") == "machine_start"
    (inbound,) = scenario.twilio.inbound
    leg = inbound.leg_spec("leg", ring_timeout=30)
    assert (leg.caller, leg.dialed, len(leg.steps)) == ("+14155550123", "+18005550100", 1)
    assert leg.expect is not None
    assert leg.expect.ended_by == "caller"
    assert scenario.twilio.names == ["reaches-a-person", "voicemail", "calls-the-number"]


def test_callee_defaults_per_outcome() -> None:
    assert Callee(outcome="no_answer").rings_for(25) == 25
    assert Callee(outcome="no_answer", ring_seconds=5).rings_for(25) == 5
    assert Callee(outcome="busy", ring_seconds=5).rings_for(25) == 0
    assert Callee(outcome="fax").verdict("Enable") == "fax"
    assert Callee(outcome="voicemail", beep=False).verdict("DetectMessageEnd") == "machine_end_silence"
    assert Callee(answered_by="unknown").verdict("Enable") == "unknown"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("name: x\n", "calls: field required", id="nothing-at-all"),
        pytest.param("name: x\ntwilio: {}\n", "at least one outbound or inbound call", id="empty-twilio"),
        pytest.param(
            "name: x\ntwilio:\n  outbound: [{name: a, to: '0123'}]\n", "twilio.outbound[0].to", id="to-not-e164"
        ),
        pytest.param(
            "name: x\ntwilio:\n  outbound: [{name: a, to: '+14155550111', callee: {outcome: maybe}}]\n",
            "twilio.outbound[0].callee.outcome",
            id="bad-outcome",
        ),
        pytest.param(
            "name: x\ntwilio:\n  outbound: [{name: a, to: '+14155550111', callee: {outcome: busy, "
            "steps: [{say: hi}]}}]\n",
            "steps are a person's script",
            id="steps-for-a-busy-line",
        ),
        pytest.param(
            "name: x\ntwilio:\n  inbound: [{name: a, to: '+14155550999'}]\n",
            "inbound[0] (a).to: +14155550999 is not one of the account's numbers",
            id="inbound-to-a-number-not-owned",
        ),
        pytest.param(
            "name: x\ntwilio:\n  outbound: [{name: a, to: '+14155550111', from: '+14155550999'}]\n",
            "outbound[0] (a).from: +14155550999 is not one of the account's numbers",
            id="outbound-from-not-owned",
        ),
        pytest.param(
            "name: x\ncalls: [{name: a}]\ntwilio:\n  outbound: [{name: a, to: '+14155550111'}]\n",
            "'a' appears twice",
            id="name-shared-with-a-call",
        ),
        pytest.param(
            "name: x\ntwilio:\n  numbers: ['800']\n  outbound: [{name: a, to: '+14155550111'}]\n",
            "twilio.numbers[0]",
            id="number-not-e164",
        ),
        pytest.param(
            "name: x\ntwilio:\n  outbound: [{name: a, to: '+14155550111', expect: {statuses: [rang]}}]\n",
            "twilio.outbound[0].expect.statuses[0]",
            id="unknown-status",
        ),
        pytest.param(
            "name: x\ntwilio:\n  outbound: [{name: a, to: '+14155550111', callee: {anwser: human}}]\n",
            "twilio.outbound[0].callee.anwser: unknown field",
            id="typo",
        ),
    ],
)
def test_bad_twilio_scenarios_name_the_field(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    assert message in str(caught.value)


def test_the_old_scenarios_still_parse() -> None:
    scenario = parse_scenario({"name": "x", "calls": [{"name": "a"}]})
    assert scenario.twilio is None


# ---- a long hold parked on Twilio (#16) -------------------------------------------------------------------------

PARKED_HOLD = Path(__file__).resolve().parents[2] / "config" / "scenarios" / "twilio-outbound-parked-hold.yaml"
RECEIVED = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def test_the_parked_hold_scenario_loads_as_written() -> None:
    scenario = load_scenario(PARKED_HOLD)
    assert scenario.twilio is not None
    (call,) = scenario.twilio.outbound
    assert (call.profile, call.from_, call.variables) == ("claims_parking", "+18005550100", {"claim": "4471"})
    asks, music, dana, paid = call.callee.steps
    assert asks.tool is not None
    assert (asks.tool.name, asks.tool.arguments) == (
        "wait_on_hold", {"expected_minutes": 40, "reason": "status of claim 4471"}
    )  # fmt: skip
    assert music.hold_music is not None
    assert (music.hold_music.seconds, music.hold_music.every, music.hold_music.text) == (2400, 60, "[hold music]")
    assert music.hold_music.chunks == 40
    assert (dana.say, dana.reply is not None) == ("Hi, thanks for holding, this is Dana from billing.", True)
    assert paid.tool is not None
    assert paid.tool.name == "end_call"
    assert call.callee.max_call_seconds > 2400
    assert call.expect is not None
    assert (call.expect.openai_legs, call.expect.min_gathers) == (2, 40)
    assert call.report is not None
    assert (call.report.legs, call.report.parked_min_s, call.report.max_leg_s) == (2, 2000, 3600)


def parking_settings() -> Settings:
    """A config with a profile like the example's hold profile, named as the scenario expects."""
    claims = AgentProfile(tools=("end_call", "wait_on_hold"), variables=("claim",),
                          outbound=Outbound(from_number="+18005550100"))  # fmt: skip
    return Settings(profiles={"default": AgentProfile(), "claims_parking": claims})


def test_a_config_with_the_parking_profile_can_serve_the_parked_hold_scenario() -> None:
    scenario = load_scenario(PARKED_HOLD)
    assert scenario.twilio is not None
    assert harness.serving_problems(scenario, parking_settings()) == []
    without = Settings(profiles={"default": AgentProfile()})
    (problem,) = harness.serving_problems(scenario, without)
    assert "profile claims_parking is not defined" in problem


def leg(call_id: str, at_s: float, duration_s: float, ended_reason: str) -> CallRecord:
    record = CallRecord(
        call_id=call_id,
        profile="claims_parking",
        received_at=RECEIVED + timedelta(seconds=at_s),
        twilio={"id": "tw_1", "direction": "outbound", "call_sid": "CA1", "status": "completed"},
        accepted_s=0.1,
        attached_s=0.2,
        duration_s=duration_s,
    )
    record.state, record.ended_reason = "ended", ended_reason
    return record


def parked_call(*, first_s: float, parked_s: float, last_s: float) -> CallRecord:
    """The last leg's record of a call parked once: its report is the whole call's (``calls/legs.py``)."""
    first = leg("rtc_1", 0.0, first_s, "parked")
    last = leg("rtc_2", first_s + parked_s, last_s, "agent_end_call")
    last.earlier_legs = [report_document(first)]
    start = RECEIVED.timestamp()
    last.park_spells = [{"from": start + first_s, "to": start + first_s + parked_s, "listens": 120, "checks": 0,
                         "listen_cost_usd": 1.2, "check_cost_usd": 0.0, "hold_mode_cost_usd": 0.9}]  # fmt: skip
    return last


def test_the_report_of_a_parked_call_is_checked_for_its_legs_and_parked_time_in_nominal_seconds() -> None:
    # at time scale 0.01: 24 s parked are 2400 nominal seconds; legs of 0.5 s and 1 s are 50 and 100
    record = parked_call(first_s=0.5, parked_s=24.0, last_s=1.0)
    assert report_document(record)["legs"] is not None
    wanted = ReportExpectation(ended_reason="agent_end_call", legs=2, parked_min_s=2000, max_leg_s=3600)
    assert harness.check_report(wanted, record, time_scale=0.01) == []
    strict = ReportExpectation(legs=3, parked_min_s=3000, max_leg_s=60)
    assert harness.check_report(strict, record, time_scale=0.01) == [
        "report legs: expected 3, got 2",
        "report max_leg_s: the leg rtc_2 lasted 100 nominal seconds, over 60",
        "report parked_min_s: expected at least 3000 nominal seconds parked, got 2400",
    ]


def test_a_call_never_parked_is_one_leg_with_no_parked_time() -> None:
    record = leg("rtc_1", 0.0, 50.0, "agent_end_call")
    assert harness.check_report(ReportExpectation(legs=1, max_leg_s=3600), record) == []
    assert harness.check_report(ReportExpectation(legs=2, max_leg_s=40), record) == [
        "report legs: expected 2, got 1",
        "report max_leg_s: the leg rtc_1 lasted 50 nominal seconds, over 40",
    ]
    (problem,) = harness.check_report(ReportExpectation(parked_min_s=1), record)
    assert problem.startswith("report parked_min_s: expected at least 1 nominal seconds parked, but the report's")


def test_the_new_expectations_are_validated() -> None:
    base = "name: x\ntwilio:\n  outbound: [{name: a, to: '+14155550111', "
    for text, where in (
        (base + "report: {legs: 0}}]\n", "twilio.outbound[0].report.legs"),
        (base + "report: {max_leg_s: 0}}]\n", "twilio.outbound[0].report.max_leg_s"),
        (base + "expect: {openai_legs: -1}}]\n", "twilio.outbound[0].expect.openai_legs"),
        (base + "callee: {steps: [{hold_music: {seconds: 60, text: null}}]}}]\n", None),
    ):
        if where is None:
            scenario = parse_scenario(yaml.safe_load(text))
            assert scenario.twilio is not None
            music = scenario.twilio.outbound[0].callee.steps[0].hold_music
            assert music is not None
            assert music.text is None  # silent hold music
            continue
        with pytest.raises(ScenarioError, match=where.replace("[", r"\[").replace("]", r"\]")):
            parse_scenario(yaml.safe_load(text))
