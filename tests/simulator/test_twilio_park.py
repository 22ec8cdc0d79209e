"""A long hold parked on Twilio (#16), on the stand-in: a live update ends the ``<Dial>`` into OpenAI and runs a
``<Gather input="speech">``; the person's script goes on where the OpenAI leg left it (music heard part by part, a
person heard), and a new OpenAI leg opens with the reply to what the Gather heard. The "controller" is the tiny
receiver of :mod:`tests.simulator.twilio_receiver` with a few lines of parking of its own (:class:`Parker`)."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from websockets.asyncio.client import connect

from sip_controller.simulator.records import SimCall
from sip_controller.simulator.scenario import CallSpec, HoldMusic, Step, ToolCall
from sip_controller.simulator.twilio_records import TwilioCall, check_twilio_call
from sip_controller.simulator.twilio_script import PersonScript
from sip_controller.simulator.twilio_spec import Callee, TwilioExpectation
from sip_controller.telephony.twiml import CORRELATION_HEADER, bridge_to_openai
from tests.simulator.test_twilio_calls import create, side_of
from tests.simulator.twilio_receiver import TinyController, twilio_stack

pytestmark = pytest.mark.anyio

CALLEE = "+14155550111"
OURS = "+18005550100"
PLEASE_HOLD = "Acme billing, please hold, it may be 40 minutes."
DANA = "Hi, thanks for holding, this is Dana from billing."
DANA_REPLY = "Hi Dana, I'm calling about claim 4471 for our patient."
PAID = "Claim 4471 is approved and paid today. Anything else?"
GOODBYE = "No, that's all. Thank you Dana, goodbye!"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def person(hold_seconds: float, *, text: str | None = "[hold music]", after: list[Step] | None = None,
           max_call_seconds: float = 3000) -> Callee:  # fmt: skip
    """The insurer of the scenario: asks us to hold (the model calls wait_on_hold), plays hold music, then Dana."""
    later = [
        Step(say=DANA, reply=DANA_REPLY),
        Step(say=PAID, tool=ToolCall(name="end_call", arguments={"reason": "claim settled"}), then=GOODBYE),
    ]
    return Callee(
        ring_seconds=1,
        max_call_seconds=max_call_seconds,
        steps=[
            Step(say=PLEASE_HOLD, tool=ToolCall(name="wait_on_hold", arguments={"expected_minutes": 40,
                                                                                 "reason": "status of claim 4471"})),
            Step(hold_music=HoldMusic(seconds=hold_seconds, every=20, text=text)),
            *(later if after is None else after),
        ],
    )  # fmt: skip


@dataclass
class Leg:
    """What the controller saw of one OpenAI leg."""

    call_id: str
    said: list[str] = field(default_factory=list)
    responses: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Parker:
    """The controller's side of parking, as small as it gets: the model's ``wait_on_hold`` of at least
    ``threshold`` minutes parks the call (Calls API update with a ``<Gather>``); what a Gather hears is a person
    unless it is hold music, and a person is bridged to a new OpenAI leg; ``end_call`` says goodbye, hangs up."""

    ctl: TinyController
    threshold: float = 10
    timeout: int = 15
    on_empty: bool = True
    #: answer every Gather with another one (never bridge back)
    keep_listening: bool = False
    legs: list[Leg] = field(default_factory=list)
    spells: int = 0

    def gather(self) -> str:
        self.spells += 1
        action = f"{self.ctl.url}/twilio/parked?twilio_id=tw_1&amp;spell={self.spells}"
        on_empty = "true" if self.on_empty else "false"
        return (f'<?xml version="1.0" encoding="UTF-8"?><Response><Gather input="speech" action="{action}" '
                f'method="POST" timeout="{self.timeout}" speechTimeout="auto" speechModel="phone_call" '
                f'actionOnEmptyResult="{on_empty}"/></Response>')  # fmt: skip

    def parked(self, params: dict[str, str]) -> str:
        heard = params.get("SpeechResult")
        if heard is None or "[hold music]" in heard or self.keep_listening:
            return self.gather()
        return bridge_to_openai(self.ctl.sim.project_id, f"back{len(self.legs):020d}")

    async def park(self, sid: str) -> None:
        side = side_of(self.ctl)
        async with httpx.AsyncClient() as client:
            response = await client.post(
                f"{side.base_url}/2010-04-01/Accounts/{self.ctl.account.account_sid}/Calls/{sid}.json",
                content=urlencode({"Twiml": self.gather()}),
                headers={"Content-Type": "application/x-www-form-urlencoded"},
                auth=(self.ctl.account.account_sid, self.ctl.account.auth_token),
            )
        assert response.status_code == 200, response.text

    async def play(self, ctl: TinyController, call_id: str) -> None:
        leg = Leg(call_id)
        self.legs.append(leg)
        await ctl.accept(call_id)
        sid = dict(ctl.headers_of(call_id))["X-Twilio-CallSid"]
        url = ctl.sim.base_url.replace("http://", "ws://") + f"/realtime?call_id={call_id}"
        goodbye: str | None = None
        async with asyncio.timeout(30.0), connect(url, additional_headers=ctl.auth) as ws:
            greeting = {"instructions": 'Say exactly: "Example Dental claims, how can I help?"',
                        "metadata": {"sipctl": "greeting", "n": "1"}}  # fmt: skip
            await ws.send(json.dumps({"type": "response.create", "response": greeting}))
            async for raw in ws:
                event = json.loads(raw)
                kind = event["type"]
                if kind == "response.done":
                    leg.responses.append(event["response"])
                elif kind == "response.output_audio_transcript.done":
                    leg.said.append(event["transcript"])
                elif kind == "response.function_call_arguments.done":
                    arguments = json.loads(event["arguments"])
                    if event["name"] == "wait_on_hold" and arguments.get("expected_minutes", 0) >= self.threshold:
                        await self.park(sid)  # Twilio ends the <Dial>: this leg is hung up, its socket closes
                    elif event["name"] == "end_call":
                        output = {"type": "function_call_output", "call_id": event["call_id"], "output": "{}"}
                        await ws.send(json.dumps({"type": "conversation.item.create", "item": output}))
                        await ws.send(json.dumps({"type": "response.create", "response": {}}))
                        goodbye = ""
                elif kind == "response.created" and goodbye == "":
                    goodbye = event["response"]["id"]
                elif kind == "output_audio_buffer.stopped" and goodbye and event["response_id"] == goodbye:
                    await ctl.http.post(f"/realtime/calls/{call_id}/hangup")
                    return


async def place(ctl: TinyController) -> str:
    """The outbound call, bridged into OpenAI with a correlation header; returns its sid."""
    ctl.twiml = bridge_to_openai(ctl.sim.project_id, "0123456789abcdef01234567")
    return await create(ctl)


def legs_of(ctl: TinyController, call: TwilioCall) -> list[SimCall]:
    return [ctl.sim.calls[call_id] for call_id in call.openai_call_ids]


def music_heard(call: TwilioCall) -> int:
    return sum(1 for g in call.gathers if g.heard == "[hold music]")


async def test_a_parked_hold_is_heard_part_by_part_then_dana_opens_a_new_leg_with_the_pending_reply() -> None:
    async with twilio_stack(time_scale=0.002) as ctl:
        side = side_of(ctl)
        parker = Parker(ctl)
        ctl.openai, ctl.parked = parker.play, parker.parked
        side.script(CALLEE, person(2400))
        began = time.monotonic()
        call = await side.wait_ended(await place(ctl), 30.0)
        took = time.monotonic() - began

        # 40 minutes of music at 0.002 (4.8 s of it) and 120 Gather rounds: no more than a few seconds
        assert took < 15, took
        assert call.problems == []
        assert call.status == "completed"
        assert call.ended_by == "twiml"  # the controller hung up the second leg after the goodbye: the TwiML ended
        first, second = legs_of(ctl, call)
        assert (first.ended_by, second.ended_by) == ("caller", "agent")  # the park hung the first leg up

        # the first leg got through the request to hold (and maybe the first part of the music)
        assert first.steps_done >= 1
        begun = first.step_chunks if first.step_index == 1 else 0
        # every part of the music ended one Gather, heard as the music's text, a low confidence
        assert music_heard(call) + begun == 120
        music = [g for g in call.gathers if g.heard == "[hold music]"]
        assert {(g.confidence, g.status, tuple(g.answered)) for g in music} == {(0.35, 200, ("Gather",))}
        assert all(g.seconds is not None and g.seconds >= 19.9 for g in music[1:])  # 20 nominal seconds each
        # then Dana, heard whole with a high confidence: the controller bridges a new leg
        last = call.gathers[-1]
        assert (last.heard, last.confidence, last.answered) == (DANA, 0.92, ["Dial"])
        assert len(call.gathers) == music_heard(call) + 1
        posted = ctl.of("parked")
        assert len(posted) == len(call.gathers)
        assert all(r.signed for r in posted)
        assert [r.params.get("SpeechResult") for r in posted[-2:]] == ["[hold music]", DANA]
        assert posted[-1].params["Confidence"] == "0.92"
        assert {k: posted[-1].params[k] for k in ("CallSid", "AccountSid", "From", "To", "CallStatus", "Direction",
                                                  "ApiVersion")} == {
            "CallSid": call.sid, "AccountSid": ctl.account.account_sid, "From": OURS, "To": CALLEE,
            "CallStatus": "in-progress", "Direction": "outbound-api", "ApiVersion": "2010-04-01",
        }  # fmt: skip

        # the new leg: a new correlation header; the person does not speak first, the model answers the
        # controller's greeting with the reply to what the Gather heard; then the rest of the script
        assert (CORRELATION_HEADER, f"back{1:020d}") in ctl.headers_of(second.call_id)
        assert second.spec.opening is not None
        assert second.spec.opening.say == DANA
        assert [s.say for s in second.spec.steps] == [PAID]
        greeting = second.responses[0]
        assert (greeting.transcript, greeting.metadata) == (DANA_REPLY, {"sipctl": "greeting", "n": "1"})
        assert parker.legs[1].said[:1] == [DANA_REPLY]
        assert [t["text"] for t in second.transcripts if t["role"] == "caller"] == [PAID]
        assert GOODBYE in parker.legs[1].said
        assert all(DANA not in t["text"] for t in first.transcripts)

        # the record: both legs, every gather in the timeline (alike ones as one line)
        assert call.openai_call_ids == [first.call_id, second.call_id]
        assert check_twilio_call(call, TwilioExpectation(openai_legs=2, min_gathers=100, no_problems=True)) == []
        assert check_twilio_call(call, TwilioExpectation(openai_legs=1, min_gathers=500)) == [
            f"{call.name}: twilio openai_legs: expected 1, got 2",
            f"{call.name}: twilio min_gathers: expected at least 500, got {len(call.gathers)}",
        ]
        lines = [text for _, text in call.timeline()]
        assert any(t.startswith("twilio  gather: heard '[hold music]' (0.35) → HTTP 200: Gather  (x") for t in lines)
        assert f"twilio  gather: heard '{DANA}' (0.92) → HTTP 200: Dial" in lines
        assert not any(t.startswith("twilio  gather callback") for t in lines)
        assert sum(t.startswith("twilio  dials") for t in lines) == 2
        assert call.summary()["gathers"][-1]["heard"] == DANA


async def test_nothing_heard_with_action_on_empty_result_posts_without_speech() -> None:
    """Silent hold music: each part ends a Gather after its timeout with nothing heard, posted all the same."""
    async with twilio_stack(time_scale=0.01) as ctl:
        side = side_of(ctl)
        parker = Parker(ctl, timeout=5)
        ctl.openai, ctl.parked = parker.play, parker.parked
        side.script(CALLEE, person(60, text=None))
        call = await side.wait_ended(await place(ctl), 30.0)
        first = legs_of(ctl, call)[0]
        begun = first.step_chunks if first.step_index == 1 else 0
        empty = [g for g in call.gathers if g.heard is None]
        assert len(empty) + begun == 3
        assert all(g.confidence is None and g.digits is None and g.seconds == pytest.approx(5, abs=2) for g in empty)
        posted = ctl.of("parked")
        assert all("SpeechResult" not in r.params and "Confidence" not in r.params for r in posted[: len(empty)])
        assert call.gathers[-1].heard == DANA
        assert len(legs_of(ctl, call)) == 2
        assert first.hold_segments == 0  # silent music makes no speech on the OpenAI leg either
        assert any("nothing heard in 5s" in text for _, text in call.timeline())


async def test_the_script_running_out_while_parked_is_the_person_hanging_up() -> None:
    async with twilio_stack(time_scale=0.01) as ctl:
        side = side_of(ctl)
        parker = Parker(ctl)
        ctl.openai, ctl.parked = parker.play, parker.parked
        side.script(CALLEE, person(60, after=[]))
        call = await side.wait_ended(await place(ctl), 30.0)
        assert (call.status, call.ended_by) == ("completed", "callee")
        assert [r.params["CallStatus"] for r in ctl.of("status")][-1] == "completed"
        assert ctl.of("status")[-1].params["CallDuration"].isdigit()
        assert len(call.openai_call_ids) == 1
        assert (call.gathers[-1].heard, call.gathers[-1].action) == (None, None)  # the person hung up in it
        assert call.problems == []


async def test_a_hang_up_step_heard_while_parked_ends_the_call() -> None:
    async with twilio_stack(time_scale=0.01) as ctl:
        side = side_of(ctl)
        parker = Parker(ctl)
        ctl.openai, ctl.parked = parker.play, parker.parked
        side.script(CALLEE, person(20, after=[Step(wait=3), Step(hangup=True)]))
        call = await side.wait_ended(await place(ctl), 30.0)
        assert (call.status, call.ended_by) == ("completed", "callee")
        assert len(call.openai_call_ids) == 1


async def test_without_action_on_empty_result_nothing_heard_goes_on_with_the_next_verb() -> None:
    async with twilio_stack(time_scale=0.01) as ctl:
        side = side_of(ctl)
        side.script(CALLEE, Callee(ring_seconds=0.5, steps=[Step(wait=30), Step(say="Hello? Anyone there?")]))
        ctl.twiml = (f'<Response><Gather input="speech" timeout="3" action="{ctl.url}/twilio/parked">'
                     "<Say>Please hold.</Say></Gather><Say>Goodbye.</Say></Response>")  # fmt: skip
        call = await side.wait_ended(await place_with(ctl), 15.0)
        (gather,) = call.gathers
        assert (gather.heard, gather.action, gather.timeout) == (None, None, 3)
        assert gather.seconds == pytest.approx(3, abs=1.5)
        assert ctl.of("parked") == []
        assert [s.text for s in call.said] == ["Please hold.", "Goodbye."]  # the prompt, then the verb after
        assert (call.status, call.ended_by) == ("completed", "twiml")
        assert any("nothing heard in 3s, on with the next verb" in text for _, text in call.timeline())


async def test_speech_heard_before_the_timeout_is_posted_and_a_dtmf_gather_hears_digits_only() -> None:
    async with twilio_stack(time_scale=0.01) as ctl:
        side = side_of(ctl)
        side.script(CALLEE, Callee(ring_seconds=0.5, steps=[Step(wait=2), Step(say="It's Dana."),
                                                            Step(dtmf="4471#9")]))  # fmt: skip
        ctl.twiml = (f'<Response><Gather input="speech" timeout="5" action="{ctl.url}/twilio/parked"/>'
                     "<Hangup/></Response>")  # fmt: skip
        calls = 0

        def parked(params: dict[str, str]) -> str:
            nonlocal calls
            calls += 1
            return (f'<Response><Gather input="dtmf" numDigits="3" timeout="5" action="{ctl.url}/twilio/parked"/>'
                    "</Response>") if calls == 1 else "<Response><Hangup/></Response>"  # fmt: skip

        ctl.parked = parked
        call = await side.wait_ended(await place_with(ctl), 15.0)
        speech, digits = call.gathers
        assert (speech.heard, speech.confidence, speech.digits) == ("It's Dana.", 0.92, None)
        assert speech.seconds == pytest.approx(2 + 2 * 0.4, abs=1.0)  # the silence, then the words
        assert (digits.heard, digits.digits) == (None, "447")  # cut at numDigits
        first, second = ctl.of("parked")
        assert (first.params["SpeechResult"], "Digits" in first.params) == ("It's Dana.", False)
        assert (second.params["Digits"], "SpeechResult" in second.params) == ("447", False)
        assert call.ended_by == "twiml"


async def test_a_machine_says_nothing_to_a_gather() -> None:
    async with twilio_stack(time_scale=0.01) as ctl:
        side = side_of(ctl)
        side.script(CALLEE, Callee(outcome="voicemail", ring_seconds=0.5, greeting_seconds=1))
        ctl.twiml = '<Response><Gather input="speech" timeout="2"/></Response>'
        call = await side.wait_ended(await place_with(ctl), 15.0)
        (gather,) = call.gathers
        assert (gather.heard, gather.action) == (None, None)
        assert call.ended_by == "twiml"


async def test_a_gather_without_action_posts_to_the_url_of_its_document() -> None:
    async with twilio_stack(time_scale=0.01) as ctl:
        side = side_of(ctl)
        side.script(CALLEE, Callee(ring_seconds=0.5, steps=[Step(say="Yes?")]))
        answers = iter(['<Response><Gather input="speech"/></Response>', "<Response><Hangup/></Response>"])
        ctl.twiml = lambda params: next(answers)
        call = await side.wait_ended(await place_with(ctl), 15.0)
        voice = ctl.of("voice")
        assert len(voice) == 2
        assert voice[1].params["SpeechResult"] == "Yes?"
        assert call.gathers[0].action == f"{ctl.url}/twilio/voice"


async def place_with(ctl: TinyController) -> str:
    """A call whose voice URL answers ``ctl.twiml`` as it stands."""
    side = side_of(ctl)
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{side.base_url}/2010-04-01/Accounts/{ctl.account.account_sid}/Calls.json",
            data={
                "To": CALLEE,
                "From": OURS,
                "Url": f"{ctl.url}/twilio/voice",
                "StatusCallback": f"{ctl.url}/twilio/status",
            },
            auth=(ctl.account.account_sid, ctl.account.auth_token),
        )
    assert response.status_code == 201, response.text
    sid: str = response.json()["sid"]
    return sid


# ---- the script across legs, without a network ---------------------------------------------------------------


def leg_record(steps_done: int, step_index: int, chunks: int = 0, started: float | None = None,
               ended: float | None = None) -> SimCall:  # fmt: skip
    leg = SimCall(call_id="rtc_x", name="x", spec=CallSpec(name="x"), webhook_id="w", event_id="e", placed_at=0)
    leg.steps_done, leg.step_index, leg.step_chunks = steps_done, step_index, chunks
    leg.step_started_at, leg.ended_at = started, ended
    return leg


SCRIPT = [
    Step(say=PLEASE_HOLD, tool=ToolCall(name="wait_on_hold")),
    Step(hold_music=HoldMusic(seconds=100, every=20)),
    Step(wait=10),
    Step(say=DANA, reply=DANA_REPLY),
]


def test_a_leg_cut_during_the_music_leaves_the_parts_it_had_not_begun() -> None:
    script = PersonScript(SCRIPT, person=True, time_scale=0.5)
    steps, opening = script.for_leg()
    assert (steps, opening) == (SCRIPT, None)
    script.leg_began(leg_record(steps_done=1, step_index=1, chunks=2))
    script.sync()
    assert (script.pos, script.chunks) == (1, 2)
    current = script.current()
    assert current is not None
    assert current.hold_music is not None
    assert (current.hold_music.seconds, current.hold_music.chunks) == (60, 3)
    for _ in range(3):
        script.take_chunk()
    assert (script.pos, script.chunks) == (2, 0)
    # the wait: half of it passed on a leg (time_scale 0.5: 2.5 real seconds are 5 nominal)
    script.leg_began(leg_record(steps_done=0, step_index=0, started=10.0, ended=12.5))
    script.sync()
    assert script.wait_left() == pytest.approx(5)
    script.take_wait(5)
    current = script.current()
    assert current is not None
    assert current.say == DANA
    script.opening = current
    script.take_step()
    assert script.exhausted
    assert script.current() is None
    assert script.for_leg() == ([], current)
    assert script.for_leg() == ([], None)  # the opening opens one leg


def test_a_say_cut_off_mid_sentence_is_said_again_and_a_spoken_one_is_past() -> None:
    script = PersonScript(SCRIPT, person=True, time_scale=1)
    script.leg_began(leg_record(steps_done=0, step_index=0))  # cut while saying it
    script.sync()
    assert script.pos == 0
    script.leg_began(leg_record(steps_done=1, step_index=0))  # said: its answer was still to come
    script.sync()
    assert (script.pos, script.chunks) == (1, 0)
    script.sync()  # once: the leg is forgotten
    assert script.pos == 1
    leg_steps, _ = script.for_leg()
    assert leg_steps == SCRIPT[1:]


def test_a_leg_that_played_all_the_music_moves_past_it() -> None:
    script = PersonScript(SCRIPT, person=True, time_scale=1)
    script.pos = 1
    script.leg_began(leg_record(steps_done=0, step_index=0, chunks=5))
    script.sync()
    assert (script.pos, script.chunks) == (2, 0)
