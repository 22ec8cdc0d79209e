"""Verified transfers: say the handoff line, wait until the caller heard it, ``/refer``, and count it only if
the call then leaves OpenAI (the sideband closes) within the profile's window — a 200 from ``/refer`` proves
nothing. Otherwise tell the caller and fall back (the next target, or a polite end).

On a call Twilio bridged into OpenAI (#16) the supervisor carries the ``Refer`` out through Twilio instead (the
Calls API redirects the Twilio call to TwiML dialling the target, which hangs the OpenAI leg up): the same
verification holds, since the call leaves OpenAI when Twilio takes it.

The handoff line is one of the controller's lines (``calls/lines.py``). When the caller talks over it, the model
answers them first (told that the transfer goes ahead), then the line is asked for again and the refer follows
it; past ``lines.MAX_BARGE_INS`` the refer goes out at once. A handoff line that fails is asked for once more;
failing again, the refer goes out without it: a model that cannot speak is the best reason to hand the caller to
a person.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sip_controller.agent.profile import Transfer as TransferConfig
from sip_controller.agent.tools import TransferArgs
from sip_controller.calls import lines
from sip_controller.calls.actions import Action, CancelTimer, Refer, StartTimer
from sip_controller.calls.features.port import CallPort
from sip_controller.calls.report import BargeIn, ToolCallRecord
from sip_controller.calls.tags import TOOL_RESULT, Tag, answers, request_tag
from sip_controller.realtime import events as ev

TRANSFER_ANNOUNCE_TIMER = "transfer_announce"
TRANSFER_VERIFY_TIMER = "transfer_verify"
#: the caller talked over the handoff line: it is said again once the model has answered them (or when this
#: timer, ``lines.ANSWER_WAIT_MAX_S``, fires first)
TRANSFER_AGAIN_TIMER = "transfer_again"

#: ``answering``: the caller talked over the handoff line; the model answers them before it is said again
Phase = Literal["announcing", "answering", "referring", "verifying"]


def _barge_in_note(target: str) -> str:
    return (
        f"The caller spoke while you were telling them about the transfer to {target}. Answer what they said in "
        "one or two short sentences. Do not announce the transfer again and do not call any tool: you will be "
        "asked to announce it right after, and then the transfer goes ahead."
    )


@dataclass(slots=True)
class Attempt:
    """The target being tried now."""

    target: str
    uri: str
    #: the targets tried in this transfer so far, this one included
    tried: list[str]
    phase: Phase = "announcing"
    #: the response that says the handoff line (None until its response.created)
    response_id: str | None = None
    #: the metadata tag of the request for the handoff line: its response echoes it
    tag: Tag | None = None
    #: the handoff line, and how often its response failed (asked for again ``lines.LINE_RETRIES`` times)
    line: str = ""
    failures: int = 0


@dataclass(slots=True)
class Transfer:
    """A call's transfers. ``attempt`` is None while no transfer is under way."""

    config: TransferConfig
    #: how long the handoff line may take before the refer goes out anyway
    announce_timeout_s: float
    attempt: Attempt | None = None
    #: times the caller talked over a handoff line in this call (``lines.MAX_BARGE_INS``)
    barge_ins: int = 0

    @property
    def leaving(self) -> bool:
        """A refer went out: the sideband closing now means the call left OpenAI."""
        return self.attempt is not None and self.attempt.phase in ("referring", "verifying")

    def start(self, port: CallPort, target: str, rel: float) -> list[Action]:
        """Begin a transfer to an allow-listed target (from the tool, the keypad or an operator)."""
        if self.attempt is not None or not port.live:
            return []
        return self._announce(port, target, rel)

    def on_operator(self, port: CallPort, target: str, rel: float) -> list[Action]:
        if target not in self.config.targets:
            return []
        port.record.mark(rel, f"operator transfer to {target}")
        return self.start(port, target, rel)

    def on_tool(self, port: CallPort, record: ToolCallRecord, args: TransferArgs, rel: float) -> list[Action]:
        targets = self.config.targets
        if args.target not in targets:
            record.outcome = "invalid_arguments"
            record.detail = f"unknown target {args.target!r}"
            error = {"error": f"{args.target!r} is not a transfer target; use one of: {', '.join(targets) or 'none'}"}
            return [port.tool_output(record.call_id, error), port.respond(TOOL_RESULT)]
        if self.attempt is not None:
            record.outcome, record.detail = "ignored", "a transfer is already under way"
            return [port.tool_output(record.call_id, {"error": "a transfer is already under way"})]
        record.result = f"transferring to {args.target}"
        output = port.tool_output(record.call_id, {"status": "transferring", "target": args.target})
        return [output, *self.start(port, args.target, rel)]

    def on_response_created(self, resp: ev.Response) -> None:
        a = self.attempt
        if a is not None and a.phase == "announcing" and a.response_id is None and answers(resp, a.tag):
            a.response_id = resp.id

    def on_audio_done(self, port: CallPort, response_id: str | None, rel: float, *, cleared: bool = False) -> list[
        Action
    ]:
        """A response's audio stopped (heard in full) or was cleared (the caller talked over it)."""
        a = self.attempt
        if a is not None and a.phase == "announcing" and a.response_id is not None and response_id == a.response_id:
            if cleared:
                return self._interrupted(port, rel)
            return self._refer(port, rel, "handoff line heard")
        return []

    def on_response_done(self, port: CallPort, resp: ev.Response, rel: float) -> list[Action]:
        a = self.attempt
        if a is not None and a.phase == "announcing" and a.response_id is None and answers(resp, a.tag):
            a.response_id = resp.id  # its response.created was missed
        if a is None or a.phase != "announcing" or resp.id != a.response_id:
            return []
        heard = resp.id in port.audio_started or resp.id in port.spoken or resp.has_audio()
        result = lines.outcome(resp, heard=heard)
        if result == "interrupted":
            return self._interrupted(port, rel)
        if result == "failed":
            if a.failures < lines.LINE_RETRIES and port.live:
                a.failures += 1
                port.record.mark(rel, f"transfer to {a.target}: handoff line failed, asking for it once more")
                return [CancelTimer(TRANSFER_ANNOUNCE_TIMER), *self._say_line(port)]
            return self._refer(port, rel, f"handoff line failed {a.failures + 1} times: transferring without it")
        if result == "silent":
            return self._refer(port, rel, "handoff line had no audio")
        if resp.id in port.audio_stopped:
            return self._refer(port, rel, "handoff line heard")
        return []

    def on_refer_ok(self, port: CallPort, rel: float, *, via: str = "openai") -> list[Action]:
        """The refer was handed over (``via`` OpenAI's ``/refer``, or Twilio's redirect of the call it bridged)."""
        a = self.attempt
        if a is None or a.phase != "referring":
            return []
        a.phase = "verifying"
        if via == "twilio":
            port.record.mark(rel, f"transfer to {a.target}: Twilio is dialling it, waiting for the call to leave")
        else:
            port.record.mark(rel, f"transfer to {a.target}: refer accepted, waiting for the call to leave")
        return [StartTimer(TRANSFER_VERIFY_TIMER, self.config.verify_window_s)]

    def on_refer_failed(self, port: CallPort, detail: str, rel: float) -> list[Action]:
        if self.attempt is None or self.attempt.phase != "referring":
            return []
        port.record.errors.append(f"refer failed: {detail}")
        return self._failed(port, rel, "refer refused")

    def on_call_left(self, port: CallPort, rel: float) -> list[Action]:
        """The sideband closed after the refer: the transfer worked. The machine finishes the call."""
        a = self.attempt
        assert a is not None
        port.record.transfer_outcome = "transferred"
        port.record.mark(rel, f"transfer to {a.target}: the call left OpenAI")
        return [CancelTimer(TRANSFER_VERIFY_TIMER)]

    def on_timer(self, port: CallPort, name: str, rel: float) -> list[Action]:
        a = self.attempt
        if a is None:
            return []
        if name == TRANSFER_ANNOUNCE_TIMER and a.phase == "announcing":
            return self._refer(port, rel, "handoff line did not finish in time")
        if name == TRANSFER_AGAIN_TIMER and a.phase == "answering" and port.live:
            a.phase = "announcing"
            port.record.mark(rel, f"transfer to {a.target}: after the caller's turn, the handoff line again")
            return self._say_line(port)
        if name == TRANSFER_VERIFY_TIMER and a.phase == "verifying":
            port.record.errors.append(f"transfer to {a.target}: the call did not leave within the verify window")
            return self._failed(port, rel, "not verified")
        return []

    def _announce(self, port: CallPort, target: str, rel: float, *, preface: str = "") -> list[Action]:
        tried = self.attempt.tried if self.attempt is not None else []
        self.attempt = Attempt(target=target, uri=self.config.targets[target], tried=[*tried, target])
        port.record.transfer_target = target
        port.record.mark(rel, f"transfer to {target}: announcing")
        line = f"Tell the caller in one short sentence that you are transferring them to {target} now."
        self.attempt.line = preface + line
        return self._say_line(port)

    def _say_line(self, port: CallPort) -> list[Action]:
        """Ask for the handoff line (again): a new request, recognised by its own tag."""
        a = self.attempt
        assert a is not None
        request = port.say(a.line, purpose="transfer")
        a.tag, a.response_id = request_tag(request), None
        return [request, StartTimer(TRANSFER_ANNOUNCE_TIMER, self.announce_timeout_s)]

    def _interrupted(self, port: CallPort, rel: float) -> list[Action]:
        """The caller talked over the handoff line: the model answers them, then the line is said again; past
        ``lines.MAX_BARGE_INS`` (or when the call is no longer live) the refer goes out at once."""
        a = self.attempt
        assert a is not None
        self.barge_ins += 1
        if self.barge_ins > lines.MAX_BARGE_INS or not port.live:
            port.record.add_barge_in(BargeIn("transfer", round(rel, 3), "referred"))
            return self._refer(port, rel, f"the caller talked over the handoff line ({self.barge_ins} times)")
        a.phase, a.response_id, a.tag = "answering", None, None
        port.record.add_barge_in(BargeIn("transfer", round(rel, 3), "answered"))
        port.record.mark(rel, f"transfer to {a.target}: the caller talked over the handoff line, answering them")
        return [
            CancelTimer(TRANSFER_ANNOUNCE_TIMER),
            port.note(_barge_in_note(a.target)),
            *port.after_caller_turn(TRANSFER_AGAIN_TIMER, rel),
        ]

    def _refer(self, port: CallPort, rel: float, why: str) -> list[Action]:
        a = self.attempt
        assert a is not None
        if a.phase != "announcing":
            return []
        a.phase = "referring"
        port.record.mark(rel, f"transfer to {a.target}: refer ({why})")
        return [CancelTimer(TRANSFER_ANNOUNCE_TIMER), Refer(a.uri)]

    def _failed(self, port: CallPort, rel: float, why: str) -> list[Action]:
        a = self.attempt
        assert a is not None
        port.record.transfer_outcome = "failed"
        port.record.mark(rel, f"transfer to {a.target} failed ({why})")
        sorry = f"The transfer to {a.target} did not go through. Apologise briefly to the caller. "
        if self.config.on_failure == "next_target":
            remaining = [name for name in self.config.targets if name not in a.tried]
            if remaining:
                preface = sorry + f"Then say you will try {remaining[0]}. "
                return self._announce(port, remaining[0], rel, preface=preface)
        self.attempt = None
        goodbye = sorry + "Then tell them to call back later and say goodbye in one sentence. Do not call any tool."
        return port.begin_ending("transfer_failed", rel, goodbye)
