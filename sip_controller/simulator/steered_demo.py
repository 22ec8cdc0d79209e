"""``sipctl demo``'s steered call (#17): an operator steers a live call through the admin API while it happens.

A caller asks where their parcel is. While the call is live, the demo acts as the operator's own system, with real
HTTP requests and the admin token against the controller on loopback (what an order system or a supervisor's tool
would send):

1. ``POST /v1/calls/{id}/say`` ``{"when": "now"}``: the agent says the operator's line, word for word, at once;
2. ``POST /v1/calls/{id}/context``: a system message the model sees from then on (the parcel is late: offer free
   delivery), before the caller's next question;
3. ``POST /v1/calls/{id}/say`` ``{"when": "next"}`` while the agent is answering that question: the line waits
   for the answer to be over, then is said (the answer is not cut off).

Each step is checked, not only printed (a problem fails the demo): the answer is 202; the caller heard the line
word for word (the simulator's record: a response tagged ``say``, its audio played to the end); the simulator's
model received the system message before it answered the next question; the ``next`` line began only after the
answer it waited for had been heard in full; the controller's timeline marks each (without the text); the call
then ends as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

import httpx

from sip_controller.calls.report import CallRecord
from sip_controller.simulator import harness
from sip_controller.simulator.events import assistant_seconds
from sip_controller.simulator.harness import Stack
from sip_controller.simulator.records import ResponseRecord, SimCall, check_expectations
from sip_controller.simulator.scenario import CallSpec, Expectation, Step, ToolCall

NAME = "steered"
FIRST = "Let me look that up."
SAY_NOW = "Good news: it arrives tomorrow before noon."
CONTEXT = "The parcel is two days late. If the caller mentions the delay, offer free delivery on their next order."
ASKED = "It is late again. Can you do anything?"
ANSWER = "Sorry about the delay: your next delivery is free."
SAY_NEXT = "I've texted you the tracking link."

#: real seconds the operator's side needs beside a line's audio (its HTTP request, the controller's turn, the
#: simulator's reply): the simulator's time scale compresses the caller, not a round trip
SLACK_S = 0.4


def steered_call(time_scale: float) -> CallSpec:
    """The caller: a question; a pause in which the operator has a line said and adds context; a question the
    context bears on (its answer is scripted: the simulator's model says what it is given), during whose answer the
    operator has a line said next; a pause for that line; goodbye. The pauses are the lines' audio plus
    :data:`SLACK_S` of real time at ``time_scale``."""
    slack = SLACK_S / time_scale
    return CallSpec(
        name=NAME,
        caller="+14155550127",
        max_call_seconds=60,
        steps=[
            Step(say="Hi, where is my parcel? Order 4471.", reply=FIRST),
            Step(wait=assistant_seconds(SAY_NOW) + slack),  # the operator: say now, then context
            Step(say=ASKED, reply=ANSWER),  # the operator: say next, while this answer plays
            Step(wait=assistant_seconds(SAY_NEXT) + slack),
            Step(
                say="Great, thanks. Bye!",
                tool=ToolCall(name="end_call", arguments={"reason": "caller said goodbye"}),
                then="Thanks for calling, goodbye!",
            ),
        ],
        expect=Expectation(ended_reason="agent_end_call", ended_by="agent", accept_count=1, hangup_after_audio=True),
    )


@dataclass
class SteeredOutcome:
    """What the steered call did, on both sides, and what the operator's requests got."""

    sim: SimCall | None = None
    record: CallRecord | None = None
    #: the operator's requests as the timeline shows them: (seconds since the call arrived, what)
    operator: list[tuple[float, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    analysis: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


class _Failed(Exception):
    pass


async def _until(what: str, ok: Callable[[], bool], timeout: float) -> None:
    """Poll ``ok`` every 20 ms for at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not ok():
        if time.monotonic() >= deadline:
            raise _Failed(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.02)


def _response(call: SimCall, transcript: str) -> ResponseRecord | None:
    return next((r for r in call.responses if r.transcript == transcript), None)


def _system_items(call: SimCall) -> list[tuple[float, str]]:
    """The system messages the simulator's model received (when, text)."""
    found: list[tuple[float, str]] = []
    for event in call.client_events:
        if event.type != "conversation.item.create" or not isinstance(event.payload, dict):
            continue
        item = event.payload.get("item") or {}
        if item.get("role") == "system":
            found.extend((event.t, c.get("text", "")) for c in item.get("content") or [] if isinstance(c, dict))
    return found


async def run_steered(stack: Stack, *, timeout: float) -> SteeredOutcome:
    """Place :func:`steered_call` on ``stack`` (it needs the admin API: ``running_stack(admin_token=...)``), steer it
    through the admin API over HTTP while it is live, then check it like every scenario call (its expectations on
    both sides) and what the operator's requests did (:func:`check_steered`), and read its analysis."""
    if stack.admin_token is None:
        raise ValueError("the steered call needs the admin API: running_stack(admin_token=...)")
    spec = steered_call(stack.sim.time_scale)
    call = await stack.sim.place_call(spec)
    outcome = SteeredOutcome(sim=call)
    try:
        await _steer(stack, stack.admin_token, call, outcome, timeout=timeout)
    except _Failed as exc:
        outcome.problems.append(str(exc))
    registry = stack.runtime.registry
    try:
        call = outcome.sim = await stack.sim.wait_ended(call.call_id, timeout)
    except TimeoutError:
        outcome.problems.append(f"the call did not end within {timeout:.0f}s")
    record = registry.get(call.call_id)
    if record is not None and record.ended_reason is None:
        with contextlib.suppress(TimeoutError):
            record = await registry.wait_ended(call.call_id, 10.0)
    outcome.record = record
    outcome.problems.extend(check_expectations(call))
    assert spec.expect is not None
    outcome.problems.extend(harness.check_controller_expectations(spec.expect, record))
    if not outcome.problems:
        outcome.problems.extend(check_steered(call, record))
    outcome.analysis = await harness.analysis_of(stack, record, timeout=min(timeout, 20.0))
    return outcome


async def _steer(stack: Stack, token: str, call: SimCall, outcome: SteeredOutcome, *, timeout: float) -> None:
    """The operator's part: each request once the call is where the request makes sense, and its effect awaited."""
    cid = call.call_id
    registry = stack.runtime.registry
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=stack.server.url, headers=headers, timeout=10.0) as api:

        def marked(prefix: str) -> bool:
            rec = registry.get(cid)
            return rec is not None and any(what.startswith(prefix) for _, what in rec.timeline)

        async def post(kind: str, body: dict[str, Any] | None) -> None:
            rec = registry.get(cid)
            at = time.time() - rec.received_at.timestamp() if rec is not None else 0.0
            answer = await api.post(f"/v1/calls/{cid}/{kind}", json=body)
            when = f" when={body['when']}" if body and "when" in body else ""
            text = f" “{body['text']}”" if body and "text" in body else ""
            outcome.operator.append((at, f"POST /v1/calls/{{id}}/{kind}{when}{text} → {answer.status_code}"))
            if answer.status_code != 202:
                raise _Failed(f"POST /v1/calls/{cid}/{kind}: {answer.status_code} {answer.text[:200]}")

        def heard(line: str) -> bool:
            r = _response(call, line)
            return r is not None and r.audio_stopped_at is not None

        # 1. say now, once the first answer was heard
        await _until("the first answer", lambda: heard(FIRST), timeout)
        await post("say", {"text": SAY_NOW, "when": "now"})
        await _until("the say-now line heard", lambda: heard(SAY_NOW), timeout)
        # 2. context, before the caller's next question
        await post("context", {"text": CONTEXT})
        await _until("the system message at the simulator", lambda: any(
            text == CONTEXT for _, text in _system_items(call)), timeout)  # fmt: skip
        # 3. say next, while the answer to that question plays
        await _until("the answer to the next question playing", lambda: (r := _response(call, ANSWER)) is not None
                     and r.audio_started_at is not None, timeout)  # fmt: skip
        await post("say", {"text": SAY_NEXT, "when": "next"})
        await _until("the say-next line heard", lambda: heard(SAY_NEXT), timeout)
        await _until("the controller's mark", lambda: marked("control: a waiting line from operator is said"), 5.0)


def check_steered(call: SimCall, record: CallRecord | None) -> list[str]:
    """What the operator's requests must have done, on the simulator's side and in the controller's record."""
    problems: list[str] = []
    answer, later, say_now = _response(call, ANSWER), _response(call, SAY_NEXT), _response(call, SAY_NOW)
    context_at = next((t for t, text in _system_items(call) if text == CONTEXT), None)
    if context_at is None:
        problems.append("the simulator's model never received the context as a system message")
    elif answer is None or answer.created_at < context_at:
        problems.append("the context reached the model only after it answered the question it bears on")
    if answer is None or later is None:
        problems.append("the answer or the say-next line is missing")
    else:
        if answer.audio_cleared or answer.audio_stopped_at is None:
            problems.append("the say-next line cut off the answer it should have waited for")
        elif later.created_at < answer.audio_stopped_at:
            problems.append("the say-next line was asked for before the answer in progress was over")
        if (later.metadata or {}).get("sipctl") != "say" or later.audio_cleared:
            problems.append("the say-next line was not said in full as a say line")
    if record is None:
        return [*problems, "the controller has no record of the call"]
    marks = [what for _, what in record.timeline if what.startswith("control:")]
    wanted = [
        f"control: say now from operator ({len(SAY_NOW)} chars)",
        f"control: context from operator added ({len(CONTEXT)} chars)",
        f"control: say next from operator ({len(SAY_NEXT)} chars): waiting",
        f"control: a waiting line from operator is said ({len(SAY_NEXT)} chars)",
    ]
    problems.extend(f"the controller's timeline lacks “{mark}”" for mark in wanted if mark not in marks)
    if any(CONTEXT in what or SAY_NOW in what for _, what in record.timeline):
        problems.append("the controller's timeline holds an operator's text")
    said = [t.text for t in record.transcripts if t.role == "assistant"]
    problems.extend(f"the controller's transcript lacks the line “{line}”" for line in (SAY_NOW, SAY_NEXT)
                    if line not in said)  # fmt: skip
    if say_now is not None and (say_now.metadata or {}).get("sipctl") != "say":
        problems.append("the say-now line was not tagged say")
    return problems


def steered_timeline(outcome: SteeredOutcome) -> list[tuple[float, str]]:
    """The call's timeline: the controller's marks and transcript, the operator's requests, and the system
    message as the simulator's model received it."""
    lines: list[tuple[float, str]] = [(t, f"operator    {what}") for t, what in outcome.operator]
    rec, call = outcome.record, outcome.sim
    if rec is not None:
        lines.extend((t, f"controller  {what}") for t, what in rec.timeline)
        lines.extend((t.at_s, f"{t.role:<11} “{t.text}”") for t in rec.transcripts)
        if call is not None:
            # the simulator's clock to the call's: its system item next to the controller's "context added" mark
            added = next((t for t, what in rec.timeline if what.startswith("control: context from operator")), None)
            items = _system_items(call)
            if added is not None and items:
                first = items[0][0]
                lines.extend((added + (t - first), f"model       received a system message: “{text}”")
                             for t, text in items)  # fmt: skip
    return sorted(lines, key=lambda x: x[0])


def print_steered(outcome: SteeredOutcome, out: TextIO) -> None:
    call = outcome.sim
    print(f"\n── steered: the operator steers a live call through the admin API  ({call.call_id if call else '-'})",
          file=out)  # fmt: skip
    print("  say now, context, then say next while the agent answers: real HTTP requests with the admin token",
          file=out)  # fmt: skip
    for t, text in steered_timeline(outcome):
        print(f"  {t:7.2f}s  {text}", file=out)
    if outcome.record is not None:
        rec = outcome.record
        print(f"  controller: profile={rec.profile} ended_reason={rec.ended_reason} cost={rec.cost_usd:.4f} USD",
              file=out)  # fmt: skip
    if call is not None:
        later, answer = _response(call, SAY_NEXT), _response(call, ANSWER)
        waited = (
            f"{later.created_at - answer.audio_stopped_at:.2f}s after the answer's audio ended"
            if later is not None and answer is not None and answer.audio_stopped_at is not None
            else "n/a"
        )
        print(f"  simulator: the caller heard both lines word for word; the say-next line began {waited}; "
              f"ended_by={call.ended_by}", file=out)  # fmt: skip
    for problem in outcome.problems:
        print(f"  ✗ {problem}", file=out)
    print(f"  steered: {'ok' if outcome.ok else 'FAILED'}", file=out)
