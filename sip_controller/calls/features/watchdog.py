"""Watchdogs: a maximum call duration (spoken wrap-up first), caller silence (one nudge, then goodbye) and a
cost budget. Each ends the call through ``begin_ending``: the same goodbye-then-hangup path as ``end_call``.

With ``turn_detection.idle_timeout_ms`` set, OpenAI re-prompts a silent caller by itself
(``input_audio_buffer.timeout_triggered``) but never hangs up: its re-prompt counts as the nudge, and a second idle
timeout with no caller speech since ends the call (``silence_timeout``), as ``silence_timeout_s`` would.

The wrap-up line is one of the controller's lines (``calls/lines.py``): a failed one is asked for once more (a
second failure ends the call as ``model_error``); when the caller talks over it, the model is told what the caller
missed (the call ends in about N seconds) so that its answer says it. The maximum duration itself never moves.
"""

from __future__ import annotations

from dataclasses import dataclass

from sip_controller.agent.profile import Watchdogs
from sip_controller.calls import lines
from sip_controller.calls.actions import Action, CancelTimer, Send, StartTimer
from sip_controller.calls.features.port import CallPort
from sip_controller.calls.report import BargeIn
from sip_controller.calls.states import GOODBYE_INSTRUCTIONS
from sip_controller.calls.tags import Tag, answers, request_tag
from sip_controller.realtime import events as ev

MAX_WRAP_TIMER = "max_duration_wrap_up"
MAX_END_TIMER = "max_duration_end"
SILENCE_TIMER = "silence"

NUDGE_INSTRUCTIONS = "Ask the caller briefly whether they are still there. One short sentence; do not call any tool."
SILENCE_GOODBYE = (
    "You have not heard from the caller. Say that you will end the call now since there is no answer, and say "
    "goodbye in one sentence. Do not call any tool."
)
BUDGET_GOODBYE = (
    "This call has to end now. Apologise briefly, suggest calling back if anything is left, and say goodbye in "
    "one sentence. Do not call any tool."
)


def _wrap_up_line(seconds: float) -> str:
    return (
        f"The call has to end in about {int(seconds)} seconds. Tell the caller politely, and help them wrap up "
        "quickly. Do not call any tool."
    )


def _wrap_up_note(seconds: float) -> str:
    return (
        f"The caller spoke while you were telling them that the call has to end in about {int(seconds)} seconds. "
        "Answer what they said briefly, and in the same answer tell them politely that the call has to end in "
        f"about {int(seconds)} seconds."
    )


@dataclass(slots=True)
class Watchdog:
    """A call's watchdogs and what they have seen."""

    config: Watchdogs
    #: the caller was asked whether they are still there (reset when they speak)
    nudged: bool = False
    #: the caller or the agent is speaking: silence is not counted
    caller_speaking: bool = False
    agent_speaking: bool = False
    #: silence is not counted at all (hold mode)
    paused: bool = False
    #: the silence timer is running
    armed: bool = False
    #: when (call time) the wrap-up is due, and, once it was said, when the call ends
    wrap_at: float | None = None
    end_at: float | None = None
    #: the wrap-up line asked for (its tag; its response once created), and how often it failed
    wrap_tag: Tag | None = None
    wrap_id: str | None = None
    wrap_failures: int = 0

    def start(self, rel: float = 0.0, *, since: float | None = None) -> list[Action]:
        """The call is attached: start the duration countdown and, when configured, the silence one. ``since``:
        when the call was first attached, for a call taken over from another process (the duration counts from
        then; default ``rel``)."""
        w = self.config
        delay = max(0.0, w.max_duration_s - w.wrap_up_before_s)
        self.wrap_at = (rel if since is None else since) + delay
        actions: list[Action] = [StartTimer(MAX_WRAP_TIMER, max(0.0, self.wrap_at - rel))]
        if w.silence_timeout_s is not None:
            self.armed = True
            actions.append(StartTimer(SILENCE_TIMER, w.silence_timeout_s))
        return actions

    def resume(self, port: CallPort, rel: float) -> list[Action]:
        """An ending gave way (the caller talked over its goodbye): the duration countdown goes on with the time
        that was left, and silence is counted again."""
        actions: list[Action] = []
        if self.end_at is not None:
            actions.append(StartTimer(MAX_END_TIMER, max(0.0, self.end_at - rel)))
        elif self.wrap_at is not None:
            actions.append(StartTimer(MAX_WRAP_TIMER, max(0.0, self.wrap_at - rel)))
        return actions + self._restart_silence(port)

    def stop(self) -> list[Action]:
        """The call is ending: the watchdogs have done their part (the goodbye timer bounds the rest)."""
        self.armed = False
        return [CancelTimer(MAX_WRAP_TIMER), CancelTimer(MAX_END_TIMER), CancelTimer(SILENCE_TIMER)]

    def pause_silence(self, port: CallPort, paused: bool) -> list[Action]:
        """Hold mode is not silence."""
        self.paused = paused
        return self._restart_silence(port)

    def on_caller_speech(self, port: CallPort, *, started: bool) -> list[Action]:
        self.caller_speaking = started
        if started:
            self.nudged = False
        return self._restart_silence(port)

    def on_assistant_audio(self, port: CallPort, *, started: bool) -> list[Action]:
        self.agent_speaking = started
        return self._restart_silence(port)

    def on_timer(self, port: CallPort, name: str, rel: float) -> list[Action]:
        if not port.live:
            return []
        w = self.config
        if name == MAX_WRAP_TIMER:
            port.record.mark(rel, "max duration: wrap-up")
            self.end_at = rel + w.wrap_up_before_s
            return [self._wrap_up(port, rel), StartTimer(MAX_END_TIMER, w.wrap_up_before_s)]
        if name == MAX_END_TIMER:
            return port.begin_ending("max_duration", rel, GOODBYE_INSTRUCTIONS)
        if name == SILENCE_TIMER and self.armed and not self._someone_speaks_or_paused():
            if not self.nudged:
                self.nudged = True
                port.record.mark(rel, "silence: nudge")
                return [port.say(NUDGE_INSTRUCTIONS, purpose="nudge"), *self._restart_silence(port)]
            return port.begin_ending("silence_timeout", rel, SILENCE_GOODBYE)
        return []

    def on_idle_timeout(self, port: CallPort, rel: float) -> list[Action]:
        """OpenAI's server VAD ``idle_timeout_ms`` fired (``input_audio_buffer.timeout_triggered``): OpenAI
        re-prompts the caller by itself, which is the nudge; it never hangs up, so a second one with no caller
        speech since ends the call (its re-prompts' audio would otherwise keep restarting the silence count)."""
        if self.config.silence_timeout_s is None or self.paused or not port.live:
            port.record.mark(rel, "idle timeout: OpenAI re-prompts (silence not watched now)")
            return []
        if not self.nudged:
            self.nudged = True
            port.record.mark(rel, "silence: OpenAI's idle timeout re-prompted the caller")
            return []
        port.record.mark(rel, "silence: OpenAI's idle timeout again, no answer since its re-prompt")
        return port.begin_ending("silence_timeout", rel, SILENCE_GOODBYE)

    def on_cost(self, port: CallPort, rel: float) -> list[Action]:
        """The call's cost changed: past the budget, the call is wrapped up."""
        budget = self.config.budget_usd
        cost = port.record.cost_usd
        if budget is None or not port.live or cost <= budget:
            return []
        port.record.mark(rel, f"cost budget exceeded ({cost:.4f} > {budget} USD)")
        return port.begin_ending("budget_exceeded", rel, BUDGET_GOODBYE)

    def on_response_created(self, resp: ev.Response) -> None:
        if self.wrap_id is None and answers(resp, self.wrap_tag):
            self.wrap_id = resp.id

    def on_response_done(self, port: CallPort, resp: ev.Response, rel: float) -> list[Action]:
        """The wrap-up's response is over: asked for once more if it failed; talked over, the model is told."""
        if self.wrap_id is None and answers(resp, self.wrap_tag):
            self.wrap_id = resp.id  # its response.created was missed
        if self.wrap_id is None or resp.id != self.wrap_id:
            return []
        heard = resp.id in port.audio_started or resp.id in port.spoken or resp.has_audio()
        result = lines.outcome(resp, heard=heard)
        if result == "interrupted":
            return self._wrap_up_interrupted(port, rel)
        if result != "failed" or not port.live:
            if result != "heard" or resp.id in port.audio_stopped:
                self.wrap_tag = self.wrap_id = None
            return []
        if self.wrap_failures >= lines.LINE_RETRIES:
            self.wrap_tag = self.wrap_id = None
            return port.model_failed(rel, f"the wrap-up failed {self.wrap_failures + 1} times")
        self.wrap_failures += 1
        port.record.mark(rel, "wrap-up failed: asking for it once more")
        return [self._wrap_up(port, rel)]

    def on_audio_cleared(self, port: CallPort, response_id: str | None, rel: float) -> list[Action]:
        """A response's audio was cleared: the caller talked over it."""
        if self.wrap_id is None or response_id != self.wrap_id:
            return []
        return self._wrap_up_interrupted(port, rel)

    def _wrap_up(self, port: CallPort, rel: float) -> Send:
        """The wrap-up line, saying how long is left."""
        left = self.end_at - rel if self.end_at is not None else self.config.wrap_up_before_s
        request = port.say(_wrap_up_line(max(1.0, left)), purpose="wrap_up")
        self.wrap_tag, self.wrap_id = request_tag(request), None
        return request

    def _wrap_up_interrupted(self, port: CallPort, rel: float) -> list[Action]:
        """The caller talked over the wrap-up: the model's answer to them says how long is left. (Once per
        wrap-up line: its cancelled response and its cleared audio are one barge-in.)"""
        self.wrap_tag = self.wrap_id = None
        if not port.live:
            return []
        left = self.end_at - rel if self.end_at is not None else self.config.wrap_up_before_s
        port.record.add_barge_in(BargeIn("wrap_up", round(rel, 3), "noted"))
        port.record.mark(rel, "the caller talked over the wrap-up: the model is told to say it in its answer")
        return [port.note(_wrap_up_note(max(1.0, left)))]

    def _someone_speaks_or_paused(self) -> bool:
        return self.paused or self.caller_speaking or self.agent_speaking

    def _restart_silence(self, port: CallPort) -> list[Action]:
        """(Re)start the silence countdown when nobody speaks; stop it while someone does."""
        timeout = self.config.silence_timeout_s
        if timeout is None:
            return []
        if not port.live or self._someone_speaks_or_paused():
            if not self.armed:
                return []
            self.armed = False
            return [CancelTimer(SILENCE_TIMER)]
        self.armed = True
        return [StartTimer(SILENCE_TIMER, timeout)]
