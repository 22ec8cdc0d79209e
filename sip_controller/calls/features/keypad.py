"""Keypad (DTMF): digits mapped to actions run directly; the others are gathered (until ``#`` or a pause) and
passed to the model as a user message, since the model does not see digits on its own."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sip_controller.calls.features import transfer
from sip_controller.calls.io import DTMF_FLUSH_TIMER, GOODBYE_INSTRUCTIONS, Action, CancelTimer, StartTimer

if TYPE_CHECKING:
    from sip_controller.calls.machine import CallMachine


@dataclass
class KeypadState:
    digits: str = ""


def on_digit(m: CallMachine, digit: str, rel: float) -> list[Action]:
    if not m.live or not digit:
        return []
    m.record.mark(rel, "keypad digit")
    action = m.profile.dtmf.actions.get(digit)
    if action is not None:
        m.keys.digits = ""
        if action.action == "transfer" and action.target is not None:
            return [CancelTimer(DTMF_FLUSH_TIMER), *transfer.start(m, action.target, rel)]
        return [CancelTimer(DTMF_FLUSH_TIMER), *m.begin_ending("agent_end_call", rel, GOODBYE_INSTRUCTIONS)]
    if not m.profile.dtmf.forward:
        return []
    m.keys.digits = (m.keys.digits + digit)[-64:]
    if digit == "#":
        return [CancelTimer(DTMF_FLUSH_TIMER), *_flush(m)]
    return [StartTimer(DTMF_FLUSH_TIMER, m.profile.dtmf.flush_after_s)]


def _flush(m: CallMachine) -> list[Action]:
    digits, m.keys.digits = m.keys.digits, ""
    if not digits or not m.live:
        return []
    return [m.user_text(f"[keypad] The caller pressed: {digits}"), m.respond()]


def on_timer(m: CallMachine, name: str, rel: float) -> list[Action]:
    return _flush(m) if name == DTMF_FLUSH_TIMER else []
