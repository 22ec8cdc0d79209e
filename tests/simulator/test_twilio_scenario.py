"""Scenario files declaring Twilio calls: the schema and its errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from sip_controller.simulator import ScenarioError, load_scenario, parse_scenario
from sip_controller.simulator.twilio_spec import Callee

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
