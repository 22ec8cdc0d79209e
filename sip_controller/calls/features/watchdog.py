"""Watchdogs: a maximum call duration (spoken wrap-up first), caller silence (one nudge, then goodbye) and a
cost budget. Each ends the call through ``begin_ending``: the same goodbye-then-hangup path as ``end_call``."""

from __future__ import annotations

from dataclasses import dataclass

from sip_controller.agent.profile import Watchdogs
from sip_controller.calls.actions import Action, CancelTimer, StartTimer
from sip_controller.calls.features.port import CallPort
from sip_controller.calls.states import GOODBYE_INSTRUCTIONS

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

    def start(self) -> list[Action]:
        """The call is attached: start the duration countdown and, when configured, the silence one."""
        w = self.config
        actions: list[Action] = [StartTimer(MAX_WRAP_TIMER, max(0.0, w.max_duration_s - w.wrap_up_before_s))]
        if w.silence_timeout_s is not None:
            self.armed = True
            actions.append(StartTimer(SILENCE_TIMER, w.silence_timeout_s))
        return actions

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
            wrap_up = port.say(_wrap_up_line(w.wrap_up_before_s), purpose="wrap_up")
            return [wrap_up, StartTimer(MAX_END_TIMER, w.wrap_up_before_s)]
        if name == MAX_END_TIMER:
            return port.begin_ending("max_duration", rel, GOODBYE_INSTRUCTIONS)
        if name == SILENCE_TIMER and self.armed and not self._someone_speaks_or_paused():
            if not self.nudged:
                self.nudged = True
                port.record.mark(rel, "silence: nudge")
                return [port.say(NUDGE_INSTRUCTIONS, purpose="nudge"), *self._restart_silence(port)]
            return port.begin_ending("silence_timeout", rel, SILENCE_GOODBYE)
        return []

    def on_cost(self, port: CallPort, rel: float) -> list[Action]:
        """The call's cost changed: past the budget, the call is wrapped up."""
        budget = self.config.budget_usd
        cost = port.record.cost_usd
        if budget is None or not port.live or cost <= budget:
            return []
        port.record.mark(rel, f"cost budget exceeded ({cost:.4f} > {budget} USD)")
        return port.begin_ending("budget_exceeded", rel, BUDGET_GOODBYE)

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
