"""Tests for sip_controller.calls.features.hold: hold mode for wait_on_hold, through the call machine."""

from __future__ import annotations

from typing import Any

import pytest

from sip_controller.agent.profile import AgentProfile, TurnDetection
from sip_controller.calls.actions import Action, Finish
from sip_controller.calls.features import hold
from sip_controller.calls.features.hold import HOLD_MAX_TIMER
from sip_controller.calls.features.watchdog import SILENCE_TIMER
from sip_controller.calls.inputs import OperatorMute, SidebandClosed, TimerFired
from sip_controller.calls.pricing import (
    DEFAULT_MODEL_PRICES,
    DEFAULT_TRANSCRIPTION_PRICES,
    TranscriptionPrices,
    response_cost,
    transcription_cost,
)
from sip_controller.calls.report import report_document
from sip_controller.calls.states import SESSION_ACK_TIMER, CallState
from tests.callkit import (  # the shared machine-test kit
    Call,
    cancelled,
    creates,
    end_after_goodbye,
    fc,
    finishes,
    heard,
    outputs,
    plain_answer,
    response_created,
    response_done,
    said,
    sb,
    sends,
    session_updated,
    speech,
    timers,
    usage,
)

META = {"sipctl": hold.PURPOSE, "n": "1"}  # a hold check's tag (calls/tags.py), as OpenAI echoes it
PRICES = DEFAULT_MODEL_PRICES["gpt-realtime-2.1"]
MINI_TRANSCRIBE = DEFAULT_TRANSCRIPTION_PRICES["gpt-4o-mini-transcribe"]


def hold_profile(**hold_cfg: Any) -> AgentProfile:
    return AgentProfile.model_validate({"tools": ["end_call", "wait_on_hold"], "hold": hold_cfg})


def answer(text: str) -> list[dict[str, Any]]:
    return [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}]


def go_on_hold(c: Call) -> list[Action]:
    c.greeted()
    actions = c.feed(response_done("r1", output=[fc("c1", "wait_on_hold", '{"reason": "music"}')]))
    c.feed(session_updated())
    return actions


def check(c: Call, rid: str, text: str, verdict: str, u: dict[str, Any] | None = None) -> list[Action]:
    """A caller transcript on hold, its out-of-band check, and the classifier's verdict; all actions."""
    out = c.feed(heard(text))
    out += c.feed(response_created(rid, metadata=META))
    out += c.feed(response_done(rid, output=answer(verdict), usage=u, metadata=META))
    return out


def test_wait_on_hold_turns_off_automatic_responses() -> None:
    c = Call(profile=hold_profile(max_hold_s=900), silence_watchdog=True)
    c.greeted()
    actions = c.feed(response_done("r1", output=[fc("c1", "wait_on_hold", "{}")]))
    assert "on hold" in outputs(actions)["c1"]["status"]
    assert timers(actions)[HOLD_MAX_TIMER] == 900.0
    assert SESSION_ACK_TIMER in timers(actions)
    assert SILENCE_TIMER in cancelled(actions)
    [update] = [e for e in sends(actions) if e["type"] == "session.update"]
    s = update["session"]
    assert s["type"] == "realtime"
    assert s["audio"]["input"]["turn_detection"]["create_response"] is False
    assert s["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    assert s["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    assert s["audio"]["output"]["format"] == {"type": "audio/pcmu"}
    assert creates(actions) == []
    assert c.m.hold.active
    assert c.m.watchdog.paused
    assert cancelled(c.feed(session_updated())) == {SESSION_ACK_TIMER}


def test_classifier_check_is_out_of_band_text() -> None:
    c = Call(profile=hold_profile())
    go_on_hold(c)
    [event] = sends(c.feed(heard("Your call is important to us. Please stay on the line.")))
    r = event["response"]
    assert event["type"] == "response.create"
    assert r["conversation"] == "none"
    assert r["output_modalities"] == ["text"]
    assert r["metadata"]["sipctl"] == hold.PURPOSE
    assert r["metadata"]["item_id"] == "i"  # the transcript's item: kept if this is the person coming back
    assert r["input"] == [
        {"type": "message", "role": "user",
         "content": [{"type": "input_text", "text": "Your call is important to us. Please stay on the line."}]}
    ]  # its own small input: a check never re-reads the conversation
    assert r["tool_choice"] == "none"
    assert "Your call is important to us" not in r["instructions"]  # the transcript travels in `input` only


def test_classifier_no_keeps_holding_and_its_text_is_not_recorded() -> None:
    c = Call(profile=hold_profile())
    go_on_hold(c)
    lines_before = [t.text for t in c.record.transcripts if t.role == "assistant"]
    actions = check(c, "r_chk", "la la la music", "no")
    assert [e["type"] for e in sends(actions)] == ["response.create"]  # only the check itself
    c.feed(said("r_chk", "no"))
    assert c.m.hold.active
    assert [t.text for t in c.record.transcripts if t.role == "assistant"] == lines_before
    assert [t.text for t in c.record.transcripts if t.role == "caller"] == ["la la la music"]


def test_classifier_yes_restores_responses_and_answers_after_session_updated() -> None:
    c = Call(profile=hold_profile())
    go_on_hold(c)
    actions = check(c, "r_chk", "Hi, this is Dana, are you still there?", "Yes.")
    assert HOLD_MAX_TIMER in cancelled(actions)
    [update] = [e for e in sends(actions) if e["type"] == "session.update"]
    assert update["session"]["type"] == "realtime"
    assert update["session"]["audio"]["input"]["turn_detection"]["create_response"] is True
    assert update["session"]["audio"]["output"]["format"] == {"type": "audio/pcmu"}
    assert creates(actions)[-1]["response"]["metadata"]["sipctl"] == hold.PURPOSE  # no plain response.create yet
    assert not c.m.hold.active
    assert not c.m.watchdog.paused
    after = c.feed(session_updated())
    assert [plain_answer(e) for e in creates(after)] == ["answer"]
    assert c.m.live


def test_resume_keeps_the_profile_turn_detection_settings() -> None:
    profile = hold_profile().model_copy(
        update={"turn_detection": TurnDetection(type="semantic_vad", eagerness="low", create_response=True)}
    )
    c = Call(profile=profile)
    on = go_on_hold(c)
    td_on = next(e for e in sends(on) if e["type"] == "session.update")["session"]["audio"]["input"]
    assert td_on["turn_detection"] == {
        "type": "semantic_vad",
        "eagerness": "low",
        "create_response": False,
        "interrupt_response": True,
    }
    off = check(c, "r_chk", "hello?", "yes")
    td_off = next(e for e in sends(off) if e["type"] == "session.update")["session"]["audio"]["input"]
    assert td_off["turn_detection"]["create_response"] is True
    assert td_off["turn_detection"]["eagerness"] == "low"


def test_phrase_mode_resumes_on_a_configured_phrase() -> None:
    c = Call(profile=hold_profile(detect="phrases", resume_phrases=["back with you"]))
    go_on_hold(c)
    assert c.feed(heard("Thank you for holding, how can I help?")) == []  # not this profile's phrase
    assert c.m.hold.active
    actions = c.feed(heard("OK, I'm BACK WITH YOU now."))
    assert not c.m.hold.active
    assert [e["type"] for e in sends(actions)] == ["session.update"]
    assert [plain_answer(e) for e in creates(c.feed(session_updated()))] == ["answer"]


def test_hold_time_and_hold_usage_are_recorded() -> None:
    c = Call(profile=hold_profile(), prices=None)
    c.greeted()
    before = c.record.usage.responses
    c.now = 200.0
    c.feed(response_done("r1", output=[fc("c1", "wait_on_hold", "{}")], usage=usage(text_in=10)))
    c.feed(session_updated())
    c.now = 500.0
    check(c, "r_chk1", "music", "no", usage(text_in=300, text_out=1))
    c.now = 800.0
    c.feed(heard("hello, anyone there?"))
    c.feed(response_created("r_chk2", metadata=META))
    c.now = 1100.0
    c.feed(response_done("r_chk2", output=answer("yes"), usage=usage(text_in=400, text_out=1), metadata=META))
    assert c.record.hold_s == pytest.approx(900.0)
    assert c.record.hold_usage.responses == 2
    assert c.record.hold_usage.input_text_tokens == 700
    assert c.record.hold_usage.output_text_tokens == 2
    assert c.record.usage.responses == before + 3
    c.feed(session_updated())
    c.play("r_after")
    assert c.record.hold_usage.responses == 2


def test_hold_time_is_settled_when_the_call_ends_on_hold() -> None:
    c = Call(profile=hold_profile())
    c.greeted()
    c.now = 300.0
    c.feed(response_done("r1", output=[fc("c1", "wait_on_hold", "{}")]))
    c.now = 420.0
    c.feed(SidebandClosed(1000))
    assert c.record.ended_reason == "caller_hangup"
    assert c.record.hold_s == pytest.approx(120.0)


def test_hold_max_ends_the_call_with_a_goodbye() -> None:
    c = Call(profile=hold_profile(max_hold_s=60))
    go_on_hold(c)
    actions = c.feed(TimerFired(HOLD_MAX_TIMER))
    [bye] = creates(actions)
    assert bye["response"]["instructions"] == hold.HOLD_GIVE_UP
    assert c.m.state == CallState.ENDING
    assert finishes(end_after_goodbye(c)) == [Finish("max_duration")]


def test_second_wait_on_hold_is_acknowledged_only() -> None:
    c = Call(profile=hold_profile())
    go_on_hold(c)
    actions = c.feed(response_done("r2", output=[fc("c2", "wait_on_hold", "{}")]))
    assert "already on hold" in outputs(actions)["c2"]["status"]
    assert [e["type"] for e in sends(actions)] == ["conversation.item.create"]


def test_transcripts_off_hold_send_no_check() -> None:
    c = Call(profile=hold_profile())
    c.greeted()
    assert c.feed(heard("I need help with my bill")) == []


def test_speech_while_hold_update_is_pending_is_not_answered() -> None:
    c = Call(profile=hold_profile())
    c.greeted()
    c.feed(response_done("r1", output=[fc("c1", "wait_on_hold", "{}")]))
    c.feed(speech("started"))
    c.feed(speech("stopped"))  # hold music, before session.updated
    assert creates(c.feed(session_updated())) == []


def heard_with_usage(text: str, audio_tokens: int, text_tokens: int = 0, output_tokens: int = 0) -> Any:
    return sb(
        {
            "type": "conversation.item.input_audio_transcription.completed",
            "item_id": "i",
            "transcript": text,
            "usage": {
                "type": "tokens",
                "input_tokens": audio_tokens + text_tokens,
                "output_tokens": output_tokens,
                "input_token_details": {"audio_tokens": audio_tokens, "text_tokens": text_tokens},
            },
        }
    )


def test_transcription_spent_on_hold_is_part_of_the_hold_cost() -> None:
    # the report's case: phrase detection, 1,500 of 1,560 transcription tokens spent on hold music
    c = Call(profile=hold_profile(detect="phrases", resume_phrases=["hello"]), prices=PRICES)
    c.m.transcription_prices = MINI_TRANSCRIBE
    c.greeted()
    c.feed(heard_with_usage("I'll hold, thanks", audio_tokens=30, output_tokens=5))
    go = c.feed(response_done("r1", output=[fc("c1", "wait_on_hold", "{}")]))
    assert c.m.hold.active, go
    c.feed(session_updated())
    for _ in range(3):
        c.feed(heard_with_usage("[music]", audio_tokens=480, output_tokens=10))
    c.feed(heard_with_usage("hello, this is Dana", audio_tokens=20, output_tokens=5))  # still on hold when it came
    assert not c.m.hold.active
    c.feed(session_updated())
    c.feed(heard_with_usage("great, thanks", audio_tokens=5, output_tokens=0))  # after the hold: not its cost
    t = c.record.hold_transcription
    assert (t.audio_tokens, t.output_tokens) == (1460, 35)
    expected = transcription_cost(1460, 0, 35, 0.0, MINI_TRANSCRIBE)
    assert c.record.hold_usage.responses == 0  # phrase detection: no response spent on hold
    assert c.record.hold_cost_usd == pytest.approx(expected)
    assert expected > 0
    all_transcription = transcription_cost(1495, 0, 40, 0.0, MINI_TRANSCRIBE)  # before, on and after the hold
    assert c.record.cost_usd == pytest.approx(response_cost(c.record.usage, PRICES) + all_transcription)
    assert c.record.transcription_cost_usd == pytest.approx(all_transcription)  # the history's split (#17)
    document = report_document(c.record)
    assert document["hold_cost_usd"] == round(expected, 6)
    assert document["transcription_cost_usd"] == round(all_transcription, 6)
    assert document["usage"]["hold"]["transcription"] == {
        "audio_tokens": 1460, "text_tokens": 0, "output_tokens": 35, "seconds": 0.0
    }


def test_hold_cost_adds_both_parts_and_needs_no_model_prices_for_the_transcription_part() -> None:
    c = Call(profile=hold_profile(), prices=None)
    c.m.transcription_prices = TranscriptionPrices(per_minute=0.006)  # whisper-1: billed by duration
    go_on_hold(c)
    c.feed(sb({"type": "conversation.item.input_audio_transcription.completed", "item_id": "i",
               "transcript": "[music]", "usage": {"type": "duration", "seconds": 120}}))
    assert c.record.hold_cost_usd == pytest.approx(0.012)
    c.m.prices = PRICES
    check(c, "r_chk", "[music]", "no", usage(text_in=1000, text_out=1))
    model_part = response_cost(c.record.hold_usage, PRICES)
    assert model_part > 0
    assert c.record.hold_cost_usd == pytest.approx(model_part + 0.012)  # the check's transcript carried no usage


# ---- hold and live control's mute (#17): both turn the agent's own answers off --------------------------------


def test_a_hold_ending_while_muted_leaves_the_agent_muted_and_asks_for_no_answer() -> None:
    c = Call(profile=hold_profile(detect="phrases", resume_phrases=["back with you"]))
    go_on_hold(c)
    c.feed(OperatorMute(True))
    c.feed(session_updated())
    resumed = c.feed(heard("OK, I'm back with you."))
    assert not c.m.hold.active
    [update] = [e for e in sends(resumed) if e["type"] == "session.update"]
    td = update["session"]["audio"]["input"]["turn_detection"]
    assert (td["create_response"], td["interrupt_response"]) == (False, False)
    assert creates(resumed) == []
    assert creates(c.feed(session_updated())) == []  # no answer of its own: the operator has the call
    assert c.m.control.muted


def test_a_hold_check_while_muted_is_still_asked_and_its_yes_ends_only_the_hold() -> None:
    c = Call(profile=hold_profile())
    go_on_hold(c)
    c.feed(OperatorMute(True))
    c.feed(session_updated())
    [event] = sends(c.feed(heard("la la la")))  # muted or not, what is heard on hold is checked
    assert event["response"]["conversation"] == "none"
    actions = check(c, "r_chk", "Hi, this is Dana.", "Yes.")
    (only,) = creates(actions)  # the check itself, no answer
    assert hold.PURPOSE in only["response"]["metadata"].values()
    assert not c.m.hold.active
    assert HOLD_MAX_TIMER in cancelled(actions)
    assert creates(c.feed(session_updated())) == []


def test_on_hold_openai_s_idle_timeout_re_prompt_is_off_and_the_end_of_the_hold_restores_it() -> None:
    vad = TurnDetection(type="server_vad", idle_timeout_ms=8000)
    profile = hold_profile(detect="phrases", resume_phrases=["hello"])
    c = Call(profile=profile.model_copy(update={"turn_detection": vad}))
    c.greeted()
    on = c.feed(response_done("r1", output=[fc("c1", "wait_on_hold", "{}")]))
    [update] = [e for e in sends(on) if e["type"] == "session.update"]
    assert update["session"]["audio"]["input"]["turn_detection"]["idle_timeout_ms"] is None
    c.feed(session_updated())
    off = c.feed(heard("hello?"))
    [update] = [e for e in sends(off) if e["type"] == "session.update"]
    assert update["session"]["audio"]["input"]["turn_detection"]["idle_timeout_ms"] == 8000
