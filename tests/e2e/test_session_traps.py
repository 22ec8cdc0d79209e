"""End to end: the session traps of the simulator, and the controller ending each call clean."""

from __future__ import annotations

import pytest

from sip_controller.config import AgentProfile, Settings, TurnDetection
from sip_controller.simulator import CallSpec, Expectation, Step, harness

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

SCALE = 0.05


def _settings(profile: AgentProfile) -> Settings:
    return Settings(profiles={"default": profile})


async def test_greeting_waits_until_the_deferred_vad_update_is_in_force() -> None:
    profile = AgentProfile(turn_detection=TurnDetection(silence_duration_ms=800))
    spec = CallSpec(
        name="slow-update",
        session_update_delay=10,  # 0.5 s at this time scale: the greeting must not go out before it applies
        greeting_wait=30,
        steps=[Step(say="Hi there.", reply="Hello!"), Step(hangup=True)],
    )
    async with harness.running_stack(_settings(profile), time_scale=SCALE) as st:
        outcome = await harness.run_call(st, spec, timeout=20)
    sim = outcome.sim
    assert sim.audio_state == "clean"
    assert sim.session_updated_at, "the VAD update was applied"
    greeting = sim.responses[0]
    assert greeting.session_version == 1
    assert greeting.created_at >= sim.session_updated_at[0]
    assert sim.greeting_heard
    assert all(r.session_version >= 1 for r in sim.responses)


async def test_a_caller_who_speaks_before_the_update_applies_is_answered_under_the_new_settings() -> None:
    profile = AgentProfile(greeting=None, turn_detection=TurnDetection(silence_duration_ms=800))
    spec = CallSpec(
        name="early-caller",
        session_update_delay=20,  # 1 s: the caller's first words come before it applies
        greeting_wait=0,
        steps=[Step(say="Hello? Is anyone there?", reply="Yes, I am here. How can I help?"), Step(wait=40),
               Step(hangup=True)],
    )
    async with harness.running_stack(_settings(profile), time_scale=SCALE) as st:
        outcome = await harness.run_call(st, spec, timeout=20)
    sim = outcome.sim
    assert sim.responses, "the caller got an answer"
    assert all(r.session_version >= 1 for r in sim.responses), [(r.id, r.session_version) for r in sim.responses]
    caller_said = [t for t in sim.transcripts if t["role"] == "caller"]
    assert caller_said[0]["t"] < sim.session_updated_at[0], "the caller really spoke before the update applied"
    assert outcome.record is not None
    assert any("held turn" in what for _, what in outcome.record.timeline)
    assert outcome.record.ended_reason == "caller_hangup"


async def test_an_unloadable_stored_prompt_ends_the_call_within_a_second() -> None:
    profile = AgentProfile(prompt={"id": "pmpt_gone"})
    spec = CallSpec(
        name="stored-prompt",
        steps=[Step(say="Hello?")],
        expect=Expectation(ended_reason="session_error", ended_by="agent", max_hangup_after_error_s=1.0),
    )
    async with harness.running_stack(_settings(profile), time_scale=SCALE) as st:
        outcome = await harness.run_call(st, spec, timeout=20)
    assert outcome.problems == []
    assert outcome.record is not None
    assert any("invalid_prompt" in e for e in outcome.record.errors), outcome.record.errors
    assert outcome.sim.hangup_count == 1


@pytest.mark.sdk_referee(allow=("temperature",))  # the refused beta field, on purpose
async def test_a_body_openai_refuses_is_rejected_so_the_caller_is_not_left_ringing() -> None:
    """Preflight would refuse this profile; forced through, OpenAI's 400 still ends the call cleanly."""
    profile = AgentProfile(session={"temperature": 0.8})
    spec = CallSpec(name="beta-field", ring_timeout=100, steps=[])
    async with harness.running_stack(_settings(profile), time_scale=SCALE) as st:
        outcome = await harness.run_call(st, spec, timeout=20)
    sim = outcome.sim
    assert sim.accept_errors
    assert sim.accept_errors[0]["error"]["param"] == "temperature"
    assert sim.reject_status == 603
    assert sim.ended_by == "reject"
    assert outcome.record is not None
    assert outcome.record.ended_reason == "accept_failed"
    assert any("temperature" in e for e in outcome.record.errors)


@pytest.mark.sdk_referee(allow=("voice",))  # the flat voice trap, on purpose
async def test_a_flat_voice_that_breaks_the_call_is_hung_up_within_a_second() -> None:
    profile = AgentProfile(session={"voice": "alloy"})
    spec = CallSpec(
        name="flat-voice",
        steps=[Step(say="Hello?")],
        expect=Expectation(ended_reason="session_error", ended_by="agent", max_hangup_after_error_s=1.0),
    )
    async with harness.running_stack(_settings(profile), time_scale=SCALE) as st:
        outcome = await harness.run_call(st, spec, timeout=20)
    assert outcome.sim.audio_state == "broken"
    assert outcome.problems == []


def test_the_static_trap_cannot_be_configured() -> None:
    """Tools with a negotiated codec turn calls to static; preflight refuses it before a phone rings."""
    from datetime import date

    from sip_controller.agent.preflight import check_profile

    findings = check_profile("p", AgentProfile(codec="negotiated"), date(2026, 11, 22))
    assert [(f.path, f.severity) for f in findings] == [("profiles.p.tools", "error")]
    assert "static" in findings[0].message
