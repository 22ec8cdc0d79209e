"""End to end: the controller against what OpenAI really does (issue 15, "Where the controller must handle what
OpenAI really does"), played by the simulator with the scenario keys of docs/scenarios.md: failed responses
(fault ``response_failures``), a goodbye talked over (``interrupt``), the 60-minute session limit
(``session_limit``), server VAD's idle timeout (``idle_timeout_ms``, ``idle_reply``) and ``rate_limits``.

Real uvicorn, real WebSockets, loopback; the harness compresses time on both sides, so each call takes seconds.
"""

from __future__ import annotations

import pytest

from sip_controller.agent.profile import AgentProfile, TurnDetection, Watchdogs
from sip_controller.calls.report import CallRecord
from sip_controller.config import Settings
from sip_controller.simulator import CallSpec, Expectation, Faults, Step, ToolCall, harness
from sip_controller.simulator.faults import ResponseFailure
from sip_controller.simulator.scenario import RateLimits

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]
SCALE = 0.05
GOODBYE_TOOL = ToolCall(name="end_call", arguments={"reason": "caller said goodbye"})


def settings_for(profile: AgentProfile) -> Settings:
    return Settings(profiles={"default": profile})


def watchdogs(
    *, max_duration_s: float = 600, wrap_up_before_s: float = 30, silence_timeout_s: float | None = None
) -> Watchdogs:
    """Watchdogs that stay out of the way unless a test sets one (built without validation: shorter than any config
    allows); silence is off unless given."""
    return Watchdogs.model_construct(
        max_duration_s=max_duration_s, wrap_up_before_s=wrap_up_before_s, silence_timeout_s=silence_timeout_s,
        budget_usd=None,
    )  # fmt: skip


async def run_clean(profile: AgentProfile, spec: CallSpec) -> tuple[harness.CallOutcome, CallRecord]:
    """``spec`` on a fresh stack whose default profile is ``profile``: it met its expectations and the controller
    kept its record (returned with the outcome)."""
    async with harness.running_stack(settings_for(profile), time_scale=SCALE) as st:
        outcome = await harness.run_call(st, spec, timeout=20)
    assert outcome.problems == []
    assert outcome.record is not None
    return outcome, outcome.record


async def test_a_greeting_that_fails_twice_ends_the_call_as_model_error() -> None:
    failures = Faults(response_failures=(ResponseFailure(source="client", code="server_error", times=2),))
    spec = CallSpec(
        name="greeting-fails",
        max_call_seconds=400,
        steps=[Step(wait=300)],
        faults=failures,
        expect=Expectation(ended_reason="model_error", ended_by="agent", greeting_heard=False),
    )
    profile = AgentProfile(watchdogs=watchdogs())
    outcome, record = await run_clean(profile, spec)
    # asked once more after the first failure, then hung up at once rather than left in silence
    assert [r.status for r in outcome.sim.responses] == ["failed", "failed"]
    assert [(f.status, f.error_code, f.purpose) for f in record.failed_responses] == [
        ("failed", "server_error", "greeting"),
        ("failed", "server_error", "greeting"),
    ]
    assert record.failed_responses_total == 2
    assert outcome.sim.ended_at is not None
    assert outcome.sim.accepted_at is not None
    assert outcome.sim.ended_at - outcome.sim.accepted_at < 3.0  # not the silence watchdog (off here)


async def test_a_greeting_that_fails_once_is_asked_for_again_and_the_call_goes_on() -> None:
    failures = Faults(response_failures=(ResponseFailure(nth=1, source="client", code="insufficient_quota"),))
    spec = CallSpec(
        name="greeting-retried",
        faults=failures,
        steps=[Step(say="Thanks, bye!", tool=GOODBYE_TOOL, then="Goodbye!")],
        expect=Expectation(ended_reason="agent_end_call", ended_by="agent", greeting_heard=True),
    )
    _, record = await run_clean(AgentProfile(watchdogs=watchdogs()), spec)
    assert [(f.error_code, f.purpose) for f in record.failed_responses] == [("insufficient_quota", "greeting")]


async def test_a_goodbye_talked_over_lets_the_call_go_on_and_it_ends_properly_later() -> None:
    spec = CallSpec(
        name="interrupt-goodbye",
        max_call_seconds=400,
        steps=[
            Step(say="That's all, thanks.", tool=GOODBYE_TOOL, then="Thanks for calling, have a lovely day, goodbye!"),
            Step(say="Oh wait, one more thing: do you deliver?", interrupt=0.5, reply="Yes, we deliver in town."),
            Step(say="Great, bye now.", tool=GOODBYE_TOOL, then="Goodbye!"),
        ],
        expect=Expectation(ended_reason="agent_end_call", ended_by="agent", hangup_after_audio=True),
    )
    outcome, record = await run_clean(AgentProfile(watchdogs=watchdogs()), spec)
    assert outcome.sim.barge_ins >= 1
    assert [(b.line, b.then) for b in record.barge_ins] == [("goodbye", "resumed")]
    cut = [r for r in outcome.sim.responses if r.audio_cleared]
    assert cut
    assert "goodbye" in cut[0].transcript.lower()
    # the caller's question was answered, and the second goodbye played to its end before the hang-up
    said = [t.text for t in record.transcripts if t.role == "assistant"]
    assert "Yes, we deliver in town." in said
    assert said[-1] == "Goodbye!"
    assert [c.name for c in record.tool_calls] == ["end_call", "end_call"]


async def test_a_session_that_hits_openais_time_limit_is_reported_as_session_limit() -> None:
    # a 4-nominal-second limit (0.2 s here) stands for the 60 minutes; the controller's own maximum is far away
    spec = CallSpec(
        name="session-limit",
        session_limit=4,
        max_call_seconds=400,
        steps=[Step(say="Let me tell you a long story.", reply="Go on."), Step(wait=300)],
        expect=Expectation(ended_reason="session_limit", ended_by="session_limit"),
    )
    _, record = await run_clean(AgentProfile(watchdogs=watchdogs()), spec)
    assert record.hangup_attempts == 0  # OpenAI ended it: nothing to hang up
    assert any("session_expired" in error or "60 minutes" in error for error in record.errors)


async def test_openais_idle_timeout_is_the_nudge_and_the_next_one_ends_the_call() -> None:
    profile = AgentProfile(
        watchdogs=watchdogs(silence_timeout_s=600),  # the controller's own count would take 30 s here
        turn_detection=TurnDetection(idle_timeout_ms=5000),  # 0.25 s here
    )
    spec = CallSpec(
        name="idle",
        idle_reply="Hello? Are you still there?",
        max_call_seconds=400,
        steps=[Step(wait=300)],
        expect=Expectation(ended_reason="silence_timeout", ended_by="agent", hangup_after_audio=True),
    )
    outcome, record = await run_clean(profile, spec)
    assert outcome.sim.idle_timeouts == 2
    timeline = [what for _, what in record.timeline]
    assert "silence: OpenAI's idle timeout re-prompted the caller" in timeline
    assert "silence: OpenAI's idle timeout again, no answer since its re-prompt" in timeline
    # OpenAI re-prompted twice by itself; the controller asked for nothing but its greeting and the goodbye
    auto = [r.transcript for r in outcome.sim.responses if r.source == "auto"]
    assert auto == ["Hello? Are you still there?", "Hello? Are you still there?"]
    assert len([r for r in outcome.sim.responses if r.source == "client"]) == 2


async def test_rate_limits_updated_lands_on_the_report() -> None:
    limits = RateLimits(requests=50, tokens=4000, requests_remaining=20, tokens_remaining=3000, reset_seconds=30)
    spec = CallSpec(
        name="rate-limits",
        rate_limits=limits,
        steps=[Step(say="Thanks, bye!", tool=GOODBYE_TOOL, then="Goodbye!")],
        expect=Expectation(ended_reason="agent_end_call", ended_by="agent"),
    )
    outcome, record = await run_clean(AgentProfile(watchdogs=watchdogs()), spec)
    assert set(record.rate_limits) == {"requests", "tokens"}
    requests, tokens = record.rate_limits["requests"], record.rate_limits["tokens"]
    assert (requests.limit, tokens.limit) == (50, 4000)
    # three responses (greeting, tool call, goodbye), a request each; tokens reserved and spent below the start
    assert requests.remaining == 20 - len(outcome.sim.responses)
    assert tokens.remaining is not None
    assert tokens.remaining < 3000
    assert requests.reset_seconds is not None
    assert requests.reset_seconds > 0
