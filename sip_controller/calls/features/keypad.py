"""Keypad (DTMF): digits mapped to actions run directly; the others are gathered (until ``#`` or a pause) and
passed to the model as a user message, since the model does not see digits on its own.

Every digit is a ``keypad`` line of the transcript, whatever becomes of it. Digits still gathered when an action
digit is pressed (or when the call stops being live) are dropped, never passed to the model: the action takes the
call away from it, and a late message would only make it talk over the transfer line or the goodbye. The
timeline says how many were dropped and why.
"""

from __future__ import annotations

from dataclasses import dataclass

from sip_controller.agent.profile import Dtmf
from sip_controller.calls.actions import Action, CancelTimer, StartTimer
from sip_controller.calls.features.port import CallPort
from sip_controller.calls.report import TranscriptEntry
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
        if not digit:
            return []
        port.record.transcripts.append(TranscriptEntry("keypad", digit, round(rel, 3)))
        if not port.live:
            return []
        port.record.mark(rel, "keypad digit")
        action = self.config.actions.get(digit)
        if action is not None:
            self._drop(port, rel, f"gathered before action digit {digit} ({action.action})")
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
        if name != DTMF_FLUSH_TIMER:
            return []
        if not port.live:
            self._drop(port, rel, "", why="the call is ending")
            return []
        return self._flush(port)

    def settle(self, port: CallPort, rel: float) -> None:
        """The call is over: digits still gathered are dropped, on record."""
        self._drop(port, rel, "", why="the call ended")

    def _flush(self, port: CallPort) -> list[Action]:
        digits, self.digits = self.digits, ""
        if not digits or not port.live:
            return []
        return [port.user_text(f"[keypad] The caller pressed: {digits}"), port.respond("keypad")]

    def _drop(self, port: CallPort, rel: float, which: str, *, why: str = "") -> None:
        """Forget the digits gathered so far, saying so on the timeline (the digits are in the transcript)."""
        count, self.digits = len(self.digits), ""
        if count:
            what = f"{count} digit{'s' if count != 1 else ''}" + (f" {which}" if which else "")
            port.record.mark(rel, f"keypad: {what} dropped, not passed to the model" + (f" ({why})" if why else ""))
