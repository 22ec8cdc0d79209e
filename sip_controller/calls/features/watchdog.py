"""Watchdogs: a maximum call duration (spoken wrap-up first), caller silence (one nudge, then goodbye) and a
cost budget. Each ends the call through ``begin_ending``: the same goodbye-then-hangup path as ``end_call``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sip_controller.calls.io import (
    GOODBYE_INSTRUCTIONS,
    MAX_END_TIMER,
    MAX_WRAP_TIMER,
    SILENCE_TIMER,
    Action,
    CancelTimer,
    StartTimer,
)

if TYPE_CHECKING:
    from sip_controller.calls.machine import CallMachine

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


@dataclass
class WatchState:
    nudged: bool = False
    #: the caller or the agent is speaking: silence is not counted
    caller_speaking: bool = False
    agent_speaking: bool = False
    paused: bool = False
    armed: bool = False


def start(m: CallMachine) -> list[Action]:
    w = m.profile.watchdogs
    actions: list[Action] = [StartTimer(MAX_WRAP_TIMER, max(0.0, w.max_duration_s - w.wrap_up_before_s))]
    if w.silence_timeout_s is not None:
        m.watch.armed = True
        actions.append(StartTimer(SILENCE_TIMER, w.silence_timeout_s))
    return actions


def stop(m: CallMachine) -> list[Action]:
    """The call is ending: the watchdogs have done their part (the goodbye timer bounds the rest)."""
    m.watch.armed = False
    return [CancelTimer(MAX_WRAP_TIMER), CancelTimer(MAX_END_TIMER), CancelTimer(SILENCE_TIMER)]


def pause_silence(m: CallMachine, paused: bool) -> list[Action]:
    """Hold mode is not silence."""
    m.watch.paused = paused
    return _restart_silence(m)


def _restart_silence(m: CallMachine) -> list[Action]:
    """(Re)start the silence countdown when nobody speaks; stop it while someone does."""
    timeout = m.profile.watchdogs.silence_timeout_s
    w = m.watch
    if timeout is None:
        return []
    if not m.live or w.paused or w.caller_speaking or w.agent_speaking:
        if not w.armed:
            return []
        w.armed = False
        return [CancelTimer(SILENCE_TIMER)]
    w.armed = True
    return [StartTimer(SILENCE_TIMER, timeout)]


def on_caller_speech(m: CallMachine, *, started: bool) -> list[Action]:
    m.watch.caller_speaking = started
    if started:
        m.watch.nudged = False
    return _restart_silence(m)


def on_assistant_audio(m: CallMachine, *, started: bool) -> list[Action]:
    m.watch.agent_speaking = started
    return _restart_silence(m)


def on_timer(m: CallMachine, name: str, rel: float) -> list[Action]:
    if not m.live:
        return []
    w = m.profile.watchdogs
    if name == MAX_WRAP_TIMER:
        m.record.mark(rel, "max duration: wrap-up")
        return [m.say(_wrap_up_line(w.wrap_up_before_s)), StartTimer(MAX_END_TIMER, w.wrap_up_before_s)]
    if name == MAX_END_TIMER:
        return m.begin_ending("max_duration", rel, GOODBYE_INSTRUCTIONS)
    watch = m.watch
    if name == SILENCE_TIMER and watch.armed and not (watch.paused or watch.caller_speaking or watch.agent_speaking):
        if not m.watch.nudged:
            m.watch.nudged = True
            m.record.mark(rel, "silence: nudge")
            return [m.say(NUDGE_INSTRUCTIONS), *_restart_silence(m)]
        return m.begin_ending("silence_timeout", rel, SILENCE_GOODBYE)
    return []


def on_cost(m: CallMachine, rel: float) -> list[Action]:
    budget = m.profile.watchdogs.budget_usd
    if budget is None or not m.live or m.record.cost_usd <= budget:
        return []
    m.record.mark(rel, f"cost budget exceeded ({m.record.cost_usd:.4f} > {budget} USD)")
    return m.begin_ending("budget_exceeded", rel, BUDGET_GOODBYE)
