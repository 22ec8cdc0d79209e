"""End to end, continued: the rest of issue 15's "Where the controller must handle what OpenAI really does", each
behaviour the real controller driven through the simulator (real uvicorn, real WebSockets, loopback), where the
machine-level tests (tests/calls/) only fed it inputs:

- the agent's goodbye after ``end_call`` failing twice (fault ``response_failures``): ``model_error``;
- an ``incomplete`` response (``max_output_tokens``, ``content_filter``) on the report with OpenAI's status_details;
- the caller talking over a transfer's handoff line, the max-duration wrap-up and the goodbyes the controller
  imposes (max duration, shutdown): ``interrupt``, with ``interrupt_wait`` to barge into a line that comes later;
- the controller's guard before OpenAI's 60-minute session limit (``session_limit``, scaled down with the
  controller's own idea of the limit);
- ``rate_limits.updated`` in ``/metrics`` while calls are live.

The harness compresses the simulator's time (``SCALE``); the controller's durations are set in real seconds.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sip_controller.agent.profile import OPENAI_SESSION_LIMIT_S, AgentProfile, Transfer
from sip_controller.calls import machine as call_machine
from sip_controller.calls import registry as call_registry
from sip_controller.calls.inputs import OperatorHangup
from sip_controller.calls.report import CallRecord, report_document
from sip_controller.simulator import CallSpec, Expectation, Faults, SimCall, Step, ToolCall, harness
from sip_controller.simulator.faults import IncompleteReason, ResponseFailure
from sip_controller.simulator.records import ResponseRecord
from sip_controller.simulator.scenario import RateLimits
from tests.e2e.test_openai_behaviours import GOODBYE_TOOL, SCALE, run_clean, settings_for, watchdogs

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]
TARGETS = {"sales": "tel:+14155550199"}
#: a bound on every wait for something to happen (real seconds)
PATIENCE_S = 10.0


def purpose(response: ResponseRecord) -> str | None:
    """The controller's line a simulated response said (its ``sipctl`` metadata tag), None for the model's own."""
    tag = response.metadata.get("sipctl") if response.metadata else None
    return tag if isinstance(tag, str) else None


def marks(record: CallRecord, text: str) -> list[float]:
    """When (call time) the record's timeline says ``text`` (a substring)."""
    return [at for at, what in record.timeline if text in what]


def notes(sim: SimCall) -> list[str]:
    """The texts the controller added to the conversation (``conversation.item.create`` of a message)."""
    found: list[str] = []
    for event in sim.client_events:
        item = event.payload.get("item") if event.type == "conversation.item.create" else None
        if isinstance(item, dict) and item.get("type") == "message":
            found.extend(str(part.get("text", "")) for part in item.get("content", []) if isinstance(part, dict))
    return found


def answered_then_said_again(
    first: ResponseRecord, reply: ResponseRecord, again: ResponseRecord, answer: str
) -> None:
    """A line the caller talked over (``first``, cut), the model's ``answer`` (``reply``) heard to its end, then the
    line asked for again once the caller had their answer (``again``) and heard to its end."""
    assert first.audio_cleared
    assert reply.transcript == answer
    assert reply.audio_stopped_at is not None
    assert again.created_at >= reply.audio_stopped_at
    assert again.audio_stopped_at is not None
    assert not again.audio_cleared


async def until(condition: Callable[[], bool], what: str) -> None:
    """Wait (bounded) until ``condition`` holds."""
    for _ in range(int(PATIENCE_S / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"not within {PATIENCE_S:g}s: {what}")


# ---- a line that fails, a response cut short --------------------------------------------------------


async def test_the_agents_goodbye_failing_twice_ends_the_call_as_model_error() -> None:
    bye = "Thanks for calling, have a lovely day, goodbye!"
    failures = Faults(response_failures=(ResponseFailure(says=bye, source="client", code="server_error", times=2),))
    spec = CallSpec(
        name="goodbye-fails",
        max_call_seconds=400,
        faults=failures,
        steps=[Step(say="That's all, thanks.", tool=GOODBYE_TOOL, then=bye), Step(wait=300)],
        expect=Expectation(ended_reason="model_error", ended_by="agent", tools_called=["end_call"]),
    )
    profile = AgentProfile(watchdogs=watchdogs(), goodbye_timeout_s=30)  # its fallback would take 30 s
    outcome, record = await run_clean(profile, spec)
    # asked for once more after the first failure, then hung up at once: no third try, no waiting in silence
    goodbyes = [r for r in outcome.sim.responses if purpose(r) == "goodbye"]
    assert [(r.status, r.status_detail) for r in goodbyes] == [("failed", "server_error"), ("failed", "server_error")]
    assert [(f.status, f.error_code, f.purpose) for f in record.failed_responses] == [
        ("failed", "server_error", "goodbye"),
        ("failed", "server_error", "goodbye"),
    ]
    assert record.failed_responses_total == 2
    assert any("the goodbye failed 2 times" in error for error in record.errors)
    assert outcome.sim.hangup_count == 1
    report = report_document(record)
    assert report["ended_reason"] == "model_error"
    assert [(f["status"], f["error"]["code"], f["purpose"]) for f in report["failed_responses"]] == [
        ("failed", "server_error", "goodbye"),
        ("failed", "server_error", "goodbye"),
    ]
    assert outcome.sim.hangup_at is not None
    assert outcome.sim.hangup_at - goodbyes[-1].created_at < 5.0  # not the goodbye fallback (30 s)


@pytest.mark.parametrize("reason", ["max_output_tokens", "content_filter"])
async def test_an_incomplete_answer_is_on_the_report_with_openais_status_details(reason: IncompleteReason) -> None:
    answer = "We open at nine every morning and close at six in the evening, except on Sundays."
    failures = Faults(response_failures=(ResponseFailure(status="incomplete", reason=reason, says=answer),))
    spec = CallSpec(
        name=f"incomplete-{reason}",
        faults=failures,
        steps=[
            Step(say="When are you open?", reply=answer),
            Step(say="Thanks, bye!", tool=GOODBYE_TOOL, then="Goodbye!"),
        ],
        expect=Expectation(ended_reason="agent_end_call", ended_by="agent", hangup_after_audio=True),
    )
    outcome, record = await run_clean(AgentProfile(watchdogs=watchdogs()), spec)
    [cut] = [r for r in outcome.sim.responses if r.status == "incomplete"]
    assert cut.status_detail == reason
    # recorded with OpenAI's status_details (type incomplete, its reason), as the model's own answer; not an error
    [failed] = record.failed_responses
    assert (failed.response_id, failed.status, failed.reason, failed.purpose) == (cut.id, "incomplete", reason, None)
    assert failed.error_code is None
    assert record.failed_responses_total == 1
    assert not any("response failed" in error for error in record.errors)
    assert marks(record, f"response incomplete: {reason}")
    [entry] = report_document(record)["failed_responses"]
    assert {k: entry[k] for k in ("id", "status", "reason", "error", "purpose")} == {
        "id": cut.id,
        "status": "incomplete",
        "reason": reason,
        "error": None,
        "purpose": None,
    }
    # what the caller heard of it (cut about half-way) is the transcript, and the call went on to its goodbye
    said = [t.text for t in record.transcripts if t.role == "assistant"]
    assert cut.transcript in said
    assert 0 < len(cut.transcript) < len(answer)
    assert said[-1] == "Goodbye!"


# ---- barge-in: the handoff line, the wrap-up, the goodbyes the controller imposes ------------------------


async def test_talking_over_the_handoff_line_is_answered_then_the_line_is_heard_then_the_refer() -> None:
    handoff = "Alright, I am transferring you to our sales team now, please stay on the line."
    answer = "Yes, they will see your order."
    profile = AgentProfile(tools=("end_call", "transfer_call"), transfer=Transfer(targets=TARGETS),
                           watchdogs=watchdogs())  # fmt: skip
    spec = CallSpec(
        name="handoff-talked-over",
        max_call_seconds=400,
        steps=[
            Step(
                say="Can I talk to sales?",
                tool=ToolCall(name="transfer_call", arguments={"target": "sales"}),
                then=handoff,
            ),
            Step(say="Wait, will they know my order number?", interrupt=0.5, reply=answer),
            Step(wait=300),
        ],
        expect=Expectation(
            ended_reason="transferred", ended_by="refer", refers=[TARGETS["sales"]], tools_called=["transfer_call"]
        ),
    )
    outcome, record = await run_clean(profile, spec)
    assert [(b.line, b.then) for b in record.barge_ins] == [("transfer", "answered")]
    assert record.transfer_outcome == "transferred"
    # the line was cut, the model answered the caller, then the line was asked for again and heard to its end
    lines = [(purpose(r), r) for r in outcome.sim.responses if r.kind == "audio"]
    assert [p for p, _ in lines] == ["greeting", "transfer", None, "transfer"]
    first, reply, again = lines[1][1], lines[2][1], lines[3][1]
    assert first.transcript == handoff
    answered_then_said_again(first, reply, again, answer)
    assert any("transfer to sales" in note for note in notes(outcome.sim))  # the model was told what happens
    # the refer only after the line was heard (and only one)
    [refer_at] = marks(record, "transfer to sales: refer (handoff line heard)")
    assert refer_at >= max(marks(record, "the caller talked over"), default=0.0)
    assert outcome.sim.refers == [TARGETS["sales"]]


async def test_talking_over_the_wrap_up_is_answered_and_the_end_stays_where_it_was() -> None:
    max_duration_s = 2.5
    profile = AgentProfile(watchdogs=watchdogs(max_duration_s=max_duration_s, wrap_up_before_s=1.5))
    spec = CallSpec(
        name="wrap-up-talked-over",
        max_call_seconds=400,
        steps=[
            Step(say="Let me tell you a long story."),
            # waits (up to 5 s here) for the next line the caller hears, the wrap-up, and talks over it
            Step(
                say="Oh, can I still ask about delivery?",
                interrupt=0.5,
                interrupt_wait=100,
                reply="Yes, we deliver in town, and we have to end the call in a moment.",
            ),
            Step(wait=300),
        ],
        expect=Expectation(ended_reason="max_duration", ended_by="agent", hangup_after_audio=True),
    )
    outcome, record = await run_clean(profile, spec)
    assert outcome.sim.barge_ins == 1
    assert [(b.line, b.then) for b in record.barge_ins] == [("wrap_up", "noted")]
    [wrap_up] = [r for r in outcome.sim.responses if purpose(r) == "wrap_up"]  # not said again
    assert wrap_up.audio_cleared
    assert any("has to end in about" in note for note in notes(outcome.sim))  # the answer is to say it
    assert "Yes, we deliver in town, and we have to end the call in a moment." in [
        t.text for t in record.transcripts if t.role == "assistant"
    ]
    # the maximum duration did not move: the goodbye is asked for at its time (not earlier; no later than slack)
    assert record.attached_s is not None
    [goodbye_at] = marks(record, "goodbye requested")
    assert max_duration_s - 0.05 <= goodbye_at - record.attached_s < max_duration_s + 2.0
    [goodbye] = [r for r in outcome.sim.responses if purpose(r) == "goodbye"]
    assert goodbye.audio_stopped_at is not None
    assert not goodbye.audio_cleared


async def test_a_max_duration_goodbye_talked_over_is_answered_then_said_again() -> None:
    answer = "Sure, quickly: we open at nine."
    profile = AgentProfile(watchdogs=watchdogs(max_duration_s=3.5, wrap_up_before_s=2.0))  # wrap-up at 1.5 s
    spec = CallSpec(
        name="max-duration-goodbye-talked-over",
        max_call_seconds=400,
        steps=[
            Step(wait=36),  # 1.8 s: the wrap-up (at 1.5 s) starts meanwhile; the goodbye (at 3.5 s) does not
            Step(wait=0.1),  # ... and the caller listens to the wrap-up to its end
            Step(say="Wait, one more thing!", interrupt=0.5, interrupt_wait=100, reply=answer),  # the goodbye
            Step(wait=300),
        ],
        expect=Expectation(ended_reason="max_duration", ended_by="agent", hangup_after_audio=True),
    )
    outcome, record = await run_clean(profile, spec)
    assert [(b.line, b.then) for b in record.barge_ins] == [("goodbye", "answered")]
    spoken = [(purpose(r), r) for r in outcome.sim.responses if r.kind == "audio"]
    assert [p for p, _ in spoken] == ["greeting", "wrap_up", "goodbye", None, "goodbye"]
    wrap_up, first, reply, again = (r for _, r in spoken[1:])
    assert wrap_up.audio_stopped_at is not None
    assert not wrap_up.audio_cleared
    answered_then_said_again(first, reply, again, answer)
    assert len(marks(record, "goodbye requested")) == 2


async def test_a_shutdown_goodbye_talked_over_is_answered_then_said_again_and_the_call_ends_as_shutdown() -> None:
    answer = "Of course: you can call back any time after ten."
    spec = CallSpec(
        name="shutdown-goodbye-talked-over",
        max_call_seconds=400,
        steps=[
            Step(say="Hi, I have a question.", reply="Sure, go ahead."),
            Step(wait=0.1),  # the caller listens to the answer to its end
            # waits (up to 10 s here) for the next line the caller hears, the shutdown goodbye, and talks over it
            Step(say="Wait, when can I call back?", interrupt=0.5, interrupt_wait=200, reply=answer),
            Step(wait=300),
        ],
        expect=Expectation(ended_reason="shutdown", ended_by="agent", hangup_after_audio=True),
    )
    async with harness.running_stack(settings_for(AgentProfile(watchdogs=watchdogs())), time_scale=SCALE) as st:
        call = await st.sim.place_call(spec)

        def answered() -> bool:
            return any(
                r.transcript == "Sure, go ahead." and r.audio_stopped_at is not None and not r.audio_cleared
                for r in call.responses
            )

        await until(answered, "the model's first answer was heard")
        shutdown = asyncio.create_task(st.runtime.registry.shutdown(PATIENCE_S))  # the process is draining
        sim = await st.sim.wait_ended(call.call_id, PATIENCE_S)
        await asyncio.wait_for(shutdown, PATIENCE_S)
        record = await st.runtime.registry.wait_ended(call.call_id, PATIENCE_S)
    assert harness.check_controller_expectations(spec.expect or Expectation(), record) == []
    assert sim.ended_by == "agent"
    assert [(b.line, b.then) for b in record.barge_ins] == [("goodbye", "answered")]
    spoken = [(purpose(r), r) for r in sim.responses if r.kind == "audio"]
    assert [p for p, _ in spoken] == ["greeting", None, "goodbye", None, "goodbye"]
    first, reply, again = (r for _, r in spoken[2:])
    answered_then_said_again(first, reply, again, answer)
    assert sim.hangup_count == 1
    assert not sim.audio_playing_at_hangup


# ---- OpenAI's 60-minute session limit, scaled down ------------------------------------------------------

#: the simulator's session limit (nominal seconds): 3 s here
SESSION_LIMIT = 60.0


@pytest.fixture
def scaled_session_limit(monkeypatch: pytest.MonkeyPatch) -> float:
    """The controller's idea of OpenAI's session limit, and its guard's margins (15 s before it; a close within
    10 s of it is the limit's), scaled as the simulator's ``session_limit`` is: 60 minutes -> ``SESSION_LIMIT``."""
    limit_s = SESSION_LIMIT * SCALE
    assert limit_s < OPENAI_SESSION_LIMIT_S
    monkeypatch.setattr(call_machine, "SESSION_LIMIT_MARGIN_S", 15.0 * SCALE)
    monkeypatch.setattr(call_machine, "SESSION_LIMIT_SLACK_S", 10.0 * SCALE)
    monkeypatch.setattr(
        call_registry, "CallMachine", functools.partial(call_machine.CallMachine, session_limit_s=limit_s)
    )
    return limit_s


def hung_up_before_the_limit(sim: SimCall, limit_s: float) -> None:
    assert sim.ended_by == "agent"  # the controller's hangup, not the session limit
    assert sim.accepted_at is not None
    assert sim.hangup_at is not None
    assert sim.hangup_at - sim.accepted_at < limit_s
    assert not [e for e in sim.errors_sent if e["error"].get("code") == "session_expired"]


async def test_the_guard_hangs_up_a_live_call_before_openais_session_limit(scaled_session_limit: float) -> None:
    spec = CallSpec(
        name="guard",
        session_limit=SESSION_LIMIT,
        max_call_seconds=400,
        steps=[Step(say="Let me tell you a very long story.", reply="Go on."), Step(wait=300)],
        expect=Expectation(ended_reason="max_duration", ended_by="agent"),
    )
    # the controller's maximum duration is far beyond the session limit: only the guard can end the call in time
    outcome, record = await run_clean(AgentProfile(watchdogs=watchdogs()), spec)
    hung_up_before_the_limit(outcome.sim, scaled_session_limit)
    assert marks(record, "OpenAI's session limit is 0.75s away: hanging up now")
    assert record.ended_reason == "max_duration"


async def test_a_wrap_up_whose_goodbye_is_talked_over_still_ends_before_openais_session_limit(
    scaled_session_limit: float,
) -> None:
    """The wrap-up and the goodbye at the maximum duration; the caller talks over the goodbye and the model never
    answers (the controller would wait 30 s for that answer before saying the goodbye again): the guard hangs up
    before the limit, and the call keeps its reason, max_duration."""
    profile = AgentProfile(watchdogs=watchdogs(max_duration_s=1.5, wrap_up_before_s=1.0))  # wrap-up at 0.5 s
    spec = CallSpec(
        name="guard-after-wrap-up",
        session_limit=SESSION_LIMIT,
        max_call_seconds=400,
        steps=[
            Step(wait=20),  # 1 s: the wrap-up (0.5 s) starts meanwhile; the goodbye (1.5 s) does not
            Step(wait=0.1),  # ... and the caller listens to the wrap-up to its end
            Step(say="Hold on, hold on!", interrupt=0.5, interrupt_wait=100),  # over the goodbye; no answer comes
            Step(wait=300),
        ],
        expect=Expectation(ended_reason="max_duration", ended_by="agent"),
    )
    outcome, record = await run_clean(profile, spec)
    hung_up_before_the_limit(outcome.sim, scaled_session_limit)
    spoken = [(purpose(r), r) for r in outcome.sim.responses if r.kind == "audio"]
    assert [p for p, _ in spoken] == ["greeting", "wrap_up", "goodbye"]
    assert spoken[1][1].audio_stopped_at is not None  # the wrap-up was heard, before the limit
    assert spoken[2][1].audio_cleared  # the goodbye was talked over
    assert [(b.line, b.then) for b in record.barge_ins] == [("goodbye", "answered")]
    assert marks(record, "OpenAI's session limit is 0.75s away: hanging up now")


# ---- rate limits in /metrics -----------------------------------------------------------------------------


def remaining_gauge(text: str) -> dict[str, float]:
    """``sipctl_openai_rate_limit_remaining`` by its one label, ``name`` (any other label fails the test)."""
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "sipctl_openai_rate_limit_remaining":
            continue
        for sample in family.samples:
            assert set(sample.labels) == {"name"}, sample
            values[sample.labels["name"]] = sample.value
    return values


async def test_the_lowest_remaining_rate_limits_of_the_live_calls_are_in_metrics() -> None:
    def spec(name: str, requests_remaining: int, tokens_remaining: int) -> CallSpec:
        limits = RateLimits(requests=100, tokens=50_000, requests_remaining=requests_remaining,
                            tokens_remaining=tokens_remaining)  # fmt: skip
        steps = [Step(say="Hi there.", reply="Hello, how can I help?"), Step(wait=300)]
        return CallSpec(name=name, rate_limits=limits, max_call_seconds=400, steps=steps)

    profile = AgentProfile(watchdogs=watchdogs())
    async with harness.running_stack(settings_for(profile), time_scale=SCALE) as st:
        # one call has fewer requests left, the other fewer tokens: the gauge takes the lowest of each
        few_requests = await st.sim.place_call(spec("few-requests", 30, 40_000))
        few_tokens = await st.sim.place_call(spec("few-tokens", 90, 20_000))
        calls = (few_requests, few_tokens)

        def settled() -> bool:
            """Both calls have had their greeting and answer, and the controller has seen every update."""
            records = [st.runtime.registry.get(c.call_id) for c in calls]
            return all(
                len(c.responses) == 2 and all(r.audio_stopped_at is not None for r in c.responses) for c in calls
            ) and all(r is not None and "requests" in r.rate_limits for r in records)

        await until(settled, "both calls answered")
        expected: dict[str, float] = {}
        async with httpx.AsyncClient(base_url=st.server.url, timeout=5.0) as http:
            for _ in range(int(PATIENCE_S / 0.05)):  # until the last updates of both calls have been taken in
                records = [st.runtime.registry.get(c.call_id) for c in calls]
                assert all(r is not None and r.ended_reason is None for r in records)  # both still live
                expected = {
                    "requests": min(30 - len(few_requests.responses), 90 - len(few_tokens.responses)),
                    "tokens": min(r.rate_limits["tokens"].remaining or 0 for r in records if r is not None),
                }
                response = await http.get("/metrics")
                assert response.status_code == 200
                gauge = remaining_gauge(response.text)
                if gauge == expected:
                    break
                await asyncio.sleep(0.05)
            assert gauge == expected
            assert expected["requests"] == 28  # the call with fewer requests left (two responses each)
            assert expected["tokens"] < 20_000  # the call with fewer tokens left
            assert few_requests.call_id not in response.text
            assert few_tokens.call_id not in response.text
            for call in calls:  # an operator hangs them up at once
                supervisor = st.runtime.registry.supervisor(call.call_id)
                assert supervisor is not None
                supervisor.post(OperatorHangup(now=True))
            for call in calls:
                await st.sim.wait_ended(call.call_id, PATIENCE_S)
                await st.runtime.registry.wait_ended(call.call_id, PATIENCE_S)
            # no live call, no value: a gauge of calls that are over would be stale
            assert remaining_gauge((await http.get("/metrics")).text) == {}
