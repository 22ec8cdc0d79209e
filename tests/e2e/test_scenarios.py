"""End to end: every shipped scenario (config/scenarios/*.yaml) as ``sipctl simulate <file>`` runs it (the config
the scenario names, loaded and checked by ``harness.prepare``), with both sides' time compressed."""

from __future__ import annotations

from pathlib import Path

import pytest

from sip_controller.agent.profile import AgentProfile, Watchdogs
from sip_controller.calls.report import report_document
from sip_controller.config import Settings
from sip_controller.simulator import CallSpec, Expectation, Step, harness, load_scenario
from sip_controller.simulator.harness import CallOutcome, ScenarioRun

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "sipctl.example.yaml"
SCENARIOS = sorted((ROOT / "config" / "scenarios").glob("*.yaml"))
#: nominal seconds -> real seconds; the hold scenario (20 simulated minutes) runs in about 12 s
SCALE = 0.02
HOLD_SCALE = 0.01
#: the parked hold (40 simulated minutes on Twilio, #16) runs in about 13 s
PARKED_SCALE = 0.005
PARKED = "twilio-outbound-parked-hold.yaml"
_runs: dict[str, ScenarioRun] = {}


async def run_of(path: Path) -> ScenarioRun:
    """Run a scenario file once per test session (the hold comparison reuses the hold run), the way
    ``sipctl simulate <file>`` does: no --config, so the config the scenario names."""
    if path.name not in _runs:
        prepared = harness.prepare(path)
        assert prepared.config_path == EXAMPLE
        assert prepared.warnings == []
        scale = {"hold.yaml": HOLD_SCALE, PARKED: PARKED_SCALE}.get(path.name, SCALE)
        _runs[path.name] = await harness.run_scenario(
            prepared.scenario, prepared.settings, time_scale=scale, timeout=40
        )
    return _runs[path.name]


async def outcomes_of(path: Path) -> list[CallOutcome]:
    """The scenario's ``calls`` (its Twilio calls are in :func:`run_of`)."""
    return (await run_of(path)).calls


def test_every_behaviour_has_a_scenario() -> None:
    assert {p.stem for p in SCENARIOS} >= {
        "goodbye", "caller-hangup", "duplicate-delivery", "transfer", "transfer-failed", "transfer-fallback",
        "silence-timeout", "max-duration", "budget", "keypad", "routing", "denied-caller", "hold", "python-tool",
        "twilio-outbound-person", "twilio-outbound-busy", "twilio-outbound-no-answer", "twilio-outbound-failed",
        "twilio-outbound-voicemail", "twilio-inbound", "twilio-outbound-canceled", "twilio-outbound-fax",
        "twilio-batch", "twilio-outbound-parked-hold",
    }
    for path in SCENARIOS:
        scenario = load_scenario(path)
        assert all(call.expect is not None for call in scenario.calls), path.name
        if scenario.twilio is not None:
            twilio = scenario.twilio
            assert all(c.expect is not None and c.report is not None for c in twilio.outbound), path.name
            assert all(c.expect is not None and c.report is not None for c in twilio.inbound), path.name


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
async def test_the_scenario_passes_as_sipctl_simulate_runs_it(path: Path) -> None:
    run = await run_of(path)
    scenario = load_scenario(path)
    names = [call.name for call in scenario.calls] + (scenario.twilio.names if scenario.twilio else [])
    assert run.problems == {name: [] for name in names}


async def test_the_python_tool_answer_reaches_the_model() -> None:
    (outcome,) = await outcomes_of(ROOT / "config" / "scenarios" / "python-tool.yaml")
    assert outcome.record is not None
    (call,) = [t for t in outcome.record.tool_calls if t.name == "opening_hours"]
    assert call.outcome == "ok"
    assert '"hours": "9:00-19:00"' in call.result
    assert any('"9:00-19:00"' in o["output"] for o in outcome.sim.function_outputs)


def _hold_costs(outcomes: list[CallOutcome]) -> tuple[float, float]:
    by_name = {o.spec.name: o for o in outcomes}
    with_hold, without = by_name["with-hold-mode"].record, by_name["without-hold-mode"].record
    assert with_hold is not None
    assert without is not None
    return with_hold.cost_usd, without.cost_usd


async def test_hold_mode_makes_20_minutes_of_hold_music_much_cheaper() -> None:
    outcomes = await outcomes_of(ROOT / "config" / "scenarios" / "hold.yaml")
    by_name = {o.spec.name: o for o in outcomes}
    held = by_name["with-hold-mode"]
    assert held.record is not None
    assert held.sim.hold_segments == by_name["without-hold-mode"].sim.hold_segments == 60
    # the model never answered the music: every automatic answer came before hold mode or after the person
    assert not any(r.transcript == "Sorry, I didn't catch that." for r in held.sim.responses)
    checks = [r for r in held.sim.responses if r.out_of_band]
    assert len(checks) == 61  # every music segment, and Dana's line
    assert [r.transcript for r in checks] == ["no"] * 60 + ["yes"]
    assert held.record.hold_s > 0
    with_hold, without = _hold_costs(outcomes)
    assert with_hold > 0
    assert without / with_hold >= 3.0, (with_hold, without)


async def test_hold_mode_saves_at_least_five_times() -> None:
    with_hold, without = _hold_costs(await outcomes_of(ROOT / "config" / "scenarios" / "hold.yaml"))
    assert without / with_hold >= 5.0, (with_hold, without)


async def test_hold_checks_carry_their_own_small_input() -> None:
    outcomes = await outcomes_of(ROOT / "config" / "scenarios" / "hold.yaml")
    held = next(o for o in outcomes if o.spec.name == "with-hold-mode")
    checks = [
        e.payload["response"] for e in held.sim.client_events
        if e.type == "response.create" and e.payload.get("response", {}).get("conversation") == "none"
    ]
    assert checks
    assert all("input" in check for check in checks)


async def test_an_ending_during_a_long_answer_waits_for_the_goodbye() -> None:
    profile = AgentProfile(watchdogs=Watchdogs(budget_usd=0.015))  # the greeting costs about 0.01
    long_reply = " ".join(["This is a long and detailed answer."] * 6)  # 42 words: 12.6 s of audio
    spec = CallSpec(name="long-answer", max_call_seconds=300,
                    steps=[Step(say="Tell me everything.", reply=long_reply), Step(wait=100)],
                    expect=Expectation(ended_reason="budget_exceeded", ended_by="agent", hangup_after_audio=True))
    settings = Settings(profiles={"default": profile})
    async with harness.running_stack(settings, time_scale=0.05, scale_controller=True) as stack:
        outcome = await harness.run_call(stack, spec, timeout=20)
    assert outcome.problems == []


async def test_a_40_minute_hold_parked_on_twilio_goes_on_in_a_fresh_session_with_none_near_the_limit() -> None:
    """#16's long hold: 40 simulated minutes parked between two OpenAI legs, one report for the call."""
    [outcome] = (await run_of(ROOT / "config" / "scenarios" / PARKED)).twilio
    assert outcome.problems == []
    assert outcome.twilio is not None
    assert [leg.call_id for leg in outcome.legs] == outcome.twilio.openai_call_ids
    assert outcome.record is not None
    report = report_document(outcome.record)  # the last leg's record: the whole call's report
    legs = report["legs"]
    assert [leg["ended_reason"] for leg in legs] == ["parked", "agent_end_call"]
    assert report["call_id"] == legs[0]["call_id"]  # the id call.started went out with
    assert all(leg["duration_s"] / PARKED_SCALE < 3600 for leg in legs)  # no session near OpenAI's 60 minutes
    parked = report["parked"]
    assert parked["parked_s"] / PARKED_SCALE >= 2400 * 0.9
    assert report["timings"]["duration_s"] / PARKED_SCALE > 2400
    assert parked["spells"][0]["listens"] >= 40  # a round per minute of music, and the one that heard Dana
    assert parked["hold_mode_cost_usd"] > 0
    assert parked["listen_cost_usd"] > 0
    said = " ".join(t["text"] for t in report["transcript"])
    assert "please hold" in said.lower()
    assert "this is Dana from billing" in said  # heard by Twilio's Gather, then answered on the fresh leg
