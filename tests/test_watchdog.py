"""Tests for sip_controller.watchdog: max duration, silence and the cost budget, through the call machine."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from sip_controller import watchdog
from sip_controller.call import (
    MAX_END_TIMER,
    MAX_WRAP_TIMER,
    SILENCE_TIMER,
    AcceptOk,
    Action,
    Attached,
    CallMachine,
    CallState,
    CancelTimer,
    Finish,
    Hangup,
    HangupOk,
    Input,
    Refer,
    Send,
    SidebandClosed,
    SidebandEvent,
    Start,
    StartTimer,
    TimerFired,
)
from sip_controller.call_io import GOODBYE_INSTRUCTIONS
from sip_controller.events import parse_server_event
from sip_controller.pricing import DEFAULT_MODEL_PRICES, ModelPrices, response_cost
from sip_controller.profile import AgentProfile
from sip_controller.report import CallRecord, UsageTotals

RECEIVED = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def sb(data: dict[str, Any]) -> SidebandEvent:
    """A sideband input built from a wire event, parsed the way the sideband parses it."""
    return SidebandEvent(parse_server_event(json.dumps(data)))


def response_created(rid: str, metadata: dict[str, Any] | None = None) -> SidebandEvent:
    response: dict[str, Any] = {"id": rid, "status": "in_progress", "output": []}
    if metadata is not None:
        response["metadata"] = metadata
    return sb({"type": "response.created", "response": response})


def response_done(
    rid: str,
    status: str = "completed",
    output: list[dict[str, Any]] | None = None,
    usage: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
) -> SidebandEvent:
    response: dict[str, Any] = {"id": rid, "status": status, "output": output or []}
    if usage is not None:
        response["usage"] = usage
    if metadata is not None:
        response["metadata"] = metadata
    return sb({"type": "response.done", "response": response})


def fc(call_id: str, name: str = "end_call", arguments: str = '{"reason": "caller said goodbye"}') -> dict[str, Any]:
    return {"type": "function_call", "id": f"item_{call_id}", "call_id": call_id, "name": name, "arguments": arguments}


def audio(kind: str, rid: str | None) -> SidebandEvent:
    return sb({"type": f"output_audio_buffer.{kind}", "response_id": rid})


def said(rid: str, text: str) -> SidebandEvent:
    return sb({"type": "response.output_audio_transcript.done", "response_id": rid, "item_id": "i", "transcript": text})


def heard(text: str) -> SidebandEvent:
    return sb({"type": "conversation.item.input_audio_transcription.completed", "item_id": "i", "transcript": text})


def speech(kind: str) -> SidebandEvent:
    return sb({"type": f"input_audio_buffer.speech_{kind}", "audio_start_ms": 0, "item_id": "i"})


def dtmf(digit: str) -> SidebandEvent:
    return sb({"type": "input_audio_buffer.dtmf_event_received", "event": digit, "received_at": 1})


def session_updated() -> SidebandEvent:
    return sb({"type": "session.updated", "session": {"type": "realtime"}})


def usage(
    text_in: int = 0,
    audio_in: int = 0,
    text_out: int = 0,
    audio_out: int = 0,
    cached_text: int = 0,
    cached_audio: int = 0,
) -> dict[str, Any]:
    return {
        "total_tokens": text_in + audio_in + text_out + audio_out,
        "input_token_details": {
            "text_tokens": text_in,
            "audio_tokens": audio_in,
            "cached_tokens": cached_text + cached_audio,
            "cached_tokens_details": {"text_tokens": cached_text, "audio_tokens": cached_audio},
        },
        "output_token_details": {"text_tokens": text_out, "audio_tokens": audio_out},
    }


@dataclass
class Call:
    """A machine plus a clock that advances 0.5 s per input (set ``now`` to jump)."""

    profile: AgentProfile = field(default_factory=AgentProfile)
    prices: ModelPrices | None = None
    now: float = 100.0
    log: list[Action] = field(default_factory=list)
    silence_watchdog: bool = False

    def __post_init__(self) -> None:
        if not self.silence_watchdog and self.profile.watchdogs.silence_timeout_s is not None:
            quiet = self.profile.watchdogs.model_copy(update={"silence_timeout_s": None})
            self.profile = self.profile.model_copy(update={"watchdogs": quiet})
        self.record = CallRecord(call_id="rtc_1", profile="default", received_at=RECEIVED)
        self.m = CallMachine(
            call_id="rtc_1", profile_name="default", profile=self.profile, record=self.record, prices=self.prices
        )

    def feed(self, inp: Input) -> list[Action]:
        actions = self.m.handle(inp, self.now)
        self.now += 0.5
        self.log.extend(actions)
        return actions

    def attach(self) -> list[Action]:
        self.feed(Start())
        self.feed(AcceptOk())
        return self.feed(Attached())

    def greeted(self) -> None:
        """Attach and play the greeting (response r_greet) to the end."""
        self.attach()
        for inp in (
            response_created("r_greet"),
            audio("started", "r_greet"),
            said("r_greet", "Hello! Thanks for calling."),
            response_done("r_greet", usage=usage(text_in=100, audio_out=50)),
            audio("stopped", "r_greet"),
        ):
            self.feed(inp)

    def play(self, rid: str, text: str = "Okay.") -> list[Action]:
        """A response the machine asked for: created, audio, transcript, done, stopped; all actions."""
        out: list[Action] = []
        for inp in (
            response_created(rid),
            audio("started", rid),
            said(rid, text),
            response_done(rid),
            audio("stopped", rid),
        ):
            out.extend(self.feed(inp))
        return out


def sends(actions: list[Action]) -> list[dict[str, Any]]:
    return [a.event for a in actions if isinstance(a, Send)]


def creates(actions: list[Action]) -> list[dict[str, Any]]:
    return [e for e in sends(actions) if e["type"] == "response.create"]


def finishes(actions: list[Action]) -> list[Finish]:
    return [a for a in actions if isinstance(a, Finish)]


def refers(actions: list[Action]) -> list[Refer]:
    return [a for a in actions if isinstance(a, Refer)]


def hangups(actions: list[Action]) -> int:
    return sum(1 for a in actions if isinstance(a, Hangup))


def timers(actions: list[Action]) -> dict[str, float]:
    return {a.name: a.seconds for a in actions if isinstance(a, StartTimer)}


def cancelled(actions: list[Action]) -> set[str]:
    return {a.name for a in actions if isinstance(a, CancelTimer)}


def function_output(event: dict[str, Any]) -> tuple[str, Any]:
    assert event["type"] == "conversation.item.create"
    item = event["item"]
    assert item["type"] == "function_call_output"
    assert isinstance(item["output"], str)
    return item["call_id"], json.loads(item["output"])


def outputs(actions: list[Action]) -> dict[str, Any]:
    return dict(
        function_output(e)
        for e in sends(actions)
        if e["type"] == "conversation.item.create" and e["item"]["type"] == "function_call_output"
    )


def end_after_goodbye(c: Call, rid: str = "r_bye") -> list[Action]:
    """Play the goodbye: no hangup until its audio stopped; then hang up and close. Returns the last actions."""
    for inp in (response_created(rid), audio("started", rid), said(rid, "Goodbye!"), response_done(rid)):
        assert hangups(c.feed(inp)) == 0
    assert hangups(c.feed(audio("stopped", rid))) == 1
    c.feed(HangupOk())
    return c.feed(SidebandClosed(1000))


def wd_profile(**watchdogs: Any) -> AgentProfile:
    return AgentProfile.model_validate({"tools": ["end_call", "wait_on_hold"], "watchdogs": watchdogs})


def test_max_duration_wrap_up_then_goodbye_then_hangup() -> None:
    c = Call(profile=wd_profile(max_duration_s=300, wrap_up_before_s=45))
    assert timers(c.attach())[MAX_WRAP_TIMER] == 255.0
    actions = c.feed(TimerFired(MAX_WRAP_TIMER))
    [wrap] = creates(actions)
    assert "45 seconds" in wrap["response"]["instructions"]
    assert wrap["response"]["tool_choice"] == "none"
    assert timers(actions) == {MAX_END_TIMER: 45.0}
    assert c.m.live
    c.play("r_wrap", "We need to wrap up in about 45 seconds.")
    actions = c.feed(TimerFired(MAX_END_TIMER))
    [bye] = creates(actions)
    assert bye["response"]["instructions"] == GOODBYE_INSTRUCTIONS
    assert {MAX_WRAP_TIMER, MAX_END_TIMER, SILENCE_TIMER} <= cancelled(actions)
    assert hangups(actions) == 0
    assert finishes(end_after_goodbye(c)) == [Finish("max_duration")]
    assert c.record.ended_reason == "max_duration"


def test_silence_one_nudge_then_silence_timeout() -> None:
    c = Call(profile=wd_profile(silence_timeout_s=10), silence_watchdog=True)
    assert timers(c.attach())[SILENCE_TIMER] == 10.0
    actions = c.feed(TimerFired(SILENCE_TIMER))
    [nudge] = creates(actions)
    assert nudge["response"]["instructions"] == watchdog.NUDGE_INSTRUCTIONS
    assert timers(actions) == {SILENCE_TIMER: 10.0}
    # the nudge's own audio pauses and restarts the countdown but does not reset the nudge
    assert SILENCE_TIMER in cancelled(c.feed(audio("started", "r_nudge")))
    assert timers(c.feed(audio("stopped", "r_nudge"))) == {SILENCE_TIMER: 10.0}
    actions = c.feed(TimerFired(SILENCE_TIMER))
    [bye] = creates(actions)
    assert bye["response"]["instructions"] == watchdog.SILENCE_GOODBYE
    assert c.m.state == CallState.ENDING
    assert finishes(end_after_goodbye(c)) == [Finish("silence_timeout")]


def test_caller_speech_stops_restarts_the_countdown_and_resets_the_nudge() -> None:
    c = Call(profile=wd_profile(silence_timeout_s=12), silence_watchdog=True)
    c.attach()
    c.feed(TimerFired(SILENCE_TIMER))  # nudged
    assert cancelled(c.feed(speech("started"))) == {SILENCE_TIMER}
    assert timers(c.feed(speech("stopped"))) == {SILENCE_TIMER: 12.0}
    actions = c.feed(TimerFired(SILENCE_TIMER))
    assert [e["response"]["instructions"] for e in creates(actions)] == [watchdog.NUDGE_INSTRUCTIONS]
    assert c.m.live


def test_assistant_audio_stops_and_restarts_the_countdown() -> None:
    c = Call(profile=wd_profile(silence_timeout_s=15), silence_watchdog=True)
    c.attach()
    assert cancelled(c.feed(audio("started", "r_greet"))) == {SILENCE_TIMER}
    assert timers(c.feed(audio("stopped", "r_greet"))) == {SILENCE_TIMER: 15.0}


def test_no_silence_countdown_during_hold() -> None:
    c = Call(profile=wd_profile(silence_timeout_s=10), silence_watchdog=True)
    c.attach()
    actions = c.feed(response_done("r1", output=[fc("c1", "wait_on_hold", "{}")]))
    assert SILENCE_TIMER in cancelled(actions)
    c.feed(session_updated())
    for inp in (speech("started"), speech("stopped"), audio("started", "x"), audio("stopped", "x")):
        assert SILENCE_TIMER not in timers(c.feed(inp))
    assert c.feed(TimerFired(SILENCE_TIMER)) == []
    assert c.m.live
    assert c.m.hold is not None


def test_budget_exceeded_ends_the_call_politely() -> None:
    prices = DEFAULT_MODEL_PRICES["gpt-realtime-2.1"]
    c = Call(profile=wd_profile(budget_usd=0.05), prices=prices)
    c.greeted()  # 100 text in + 50 audio out: well under budget
    assert c.m.live
    u = usage(text_in=2000, audio_in=500, audio_out=700)
    actions = c.feed(response_done("r1", usage=u))
    expected = UsageTotals(responses=2, input_text_tokens=2100, input_audio_tokens=500, output_audio_tokens=750)
    assert c.record.cost_usd == pytest.approx(response_cost(expected, prices))
    assert c.record.cost_usd > 0.05
    [bye] = creates(actions)
    assert bye["response"]["instructions"] == watchdog.BUDGET_GOODBYE
    assert bye["response"]["tool_choice"] == "none"
    assert hangups(actions) == 0
    assert finishes(end_after_goodbye(c)) == [Finish("budget_exceeded")]
    assert c.record.ended_reason == "budget_exceeded"


def test_budget_not_exceeded_keeps_the_call() -> None:
    c = Call(profile=wd_profile(budget_usd=1.0), prices=DEFAULT_MODEL_PRICES["gpt-realtime-2.1"])
    c.greeted()
    assert creates(c.feed(response_done("r1", usage=usage(text_in=1000, audio_out=1000)))) == []
    assert c.m.live
    assert 0 < c.record.cost_usd < 1.0


def test_watchdog_timers_after_ending_do_nothing() -> None:
    c = Call(profile=wd_profile(silence_timeout_s=10), silence_watchdog=True)
    c.attach()
    c.feed(TimerFired(MAX_WRAP_TIMER))
    c.feed(TimerFired(MAX_END_TIMER))
    assert c.m.state == CallState.ENDING
    for name in (MAX_WRAP_TIMER, MAX_END_TIMER, SILENCE_TIMER):
        assert c.feed(TimerFired(name)) == []
    assert len(creates(c.log)) == 3  # the greeting, the wrap-up and one goodbye


def test_budget_is_enforced_while_on_hold() -> None:
    c = Call(profile=wd_profile(budget_usd=0.05), prices=DEFAULT_MODEL_PRICES["gpt-realtime-2.1"])
    c.greeted()
    c.feed(response_done("r1", output=[fc("c1", "wait_on_hold", "{}")]))
    c.feed(session_updated())
    c.feed(heard("la la la hold music"))
    meta = {"purpose": "sipctl_hold_check"}
    c.feed(response_created("r_chk", metadata=meta))
    no = [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "no"}]}]
    actions = c.feed(response_done("r_chk", output=no, usage=usage(text_in=20000), metadata=meta))
    assert c.record.cost_usd > 0.05
    assert c.m.state == CallState.ENDING
    assert creates(actions)[0]["response"]["instructions"] == watchdog.BUDGET_GOODBYE


@pytest.mark.parametrize("edge", ["caller", "agent"])
def test_a_stale_silence_timer_while_someone_speaks_does_nothing(edge: str) -> None:
    c = Call(profile=wd_profile(silence_timeout_s=10), silence_watchdog=True)
    c.attach()
    c.feed(speech("started") if edge == "caller" else audio("started", "r_greet"))
    assert c.feed(TimerFired(SILENCE_TIMER)) == []
