"""Keypad (DTMF): digits mapped to actions run directly; the others are gathered (until ``#`` or a pause) and
passed to the model as a user message, since the model does not see digits on its own."""

from __future__ import annotations

from dataclasses import dataclass

from sip_controller.agent.profile import Dtmf
from sip_controller.calls.actions import Action, CancelTimer, StartTimer
from sip_controller.calls.features.port import CallPort
from sip_controller.calls.states import GOODBYE_INSTRUCTIONS

DTMF_FLUSH_TIMER = "dtmf_flush"
#: digits kept while gathering (the latest ones)
MAX_DIGITS = 64


@dataclass(slots=True)
class Keypad:
    """A call's keypad: the digits gathered and not yet passed to the model."""

    config: Dtmf
    digits: str = ""

    def on_digit(self, port: CallPort, digit: str, rel: float) -> list[Action]:
        if not port.live or not digit:
            return []
        port.record.mark(rel, "keypad digit")
        action = self.config.actions.get(digit)
        if action is not None:
            self.digits = ""
            if action.action == "transfer" and action.target is not None:
                return [CancelTimer(DTMF_FLUSH_TIMER), *port.start_transfer(action.target, rel)]
            return [CancelTimer(DTMF_FLUSH_TIMER), *port.begin_ending("agent_end_call", rel, GOODBYE_INSTRUCTIONS)]
        if not self.config.forward:
            return []
        self.digits = (self.digits + digit)[-MAX_DIGITS:]
        if digit == "#":
            return [CancelTimer(DTMF_FLUSH_TIMER), *self._flush(port)]
        return [StartTimer(DTMF_FLUSH_TIMER, self.config.flush_after_s)]

    def on_timer(self, port: CallPort, name: str, rel: float) -> list[Action]:
        return self._flush(port) if name == DTMF_FLUSH_TIMER else []

    def _flush(self, port: CallPort) -> list[Action]:
        digits, self.digits = self.digits, ""
        if not digits or not port.live:
            return []
        return [port.user_text(f"[keypad] The caller pressed: {digits}"), port.respond()]
