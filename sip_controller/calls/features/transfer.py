"""Verified transfers: say the handoff line, wait until the caller heard it, ``/refer``, and count it only if
the call then leaves OpenAI (the sideband closes) within the profile's window — a 200 from ``/refer`` proves
nothing. Otherwise tell the caller and fall back (the next target, or a polite end)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from sip_controller.calls.io import (
    TRANSFER_ANNOUNCE_TIMER,
    TRANSFER_VERIFY_TIMER,
    Action,
    CancelTimer,
    Refer,
    StartTimer,
)
from sip_controller.calls.report import ToolCallRecord
from sip_controller.realtime import events as ev

if TYPE_CHECKING:
    from sip_controller.agent.tools import TransferArgs
    from sip_controller.calls.machine import CallMachine

Phase = Literal["announcing", "referring", "verifying"]


@dataclass
class TransferState:
    target: str
    uri: str
    phase: Phase = "announcing"
    response_id: str | None = None
    awaiting_created: bool = True
    tried: list[str] = field(default_factory=list)


def _announce(m: CallMachine, target: str, rel: float, *, preface: str = "") -> list[Action]:
    tried = m.transfer.tried if m.transfer is not None else []
    m.transfer = TransferState(target=target, uri=m.profile.transfer.targets[target], tried=[*tried, target])
    m.record.transfer_target = target
    m.record.mark(rel, f"transfer to {target}: announcing")
    line = f"{preface}Tell the caller in one short sentence that you are transferring them to {target} now."
    return [m.say(line), StartTimer(TRANSFER_ANNOUNCE_TIMER, m.profile.goodbye_timeout_s)]


def start(m: CallMachine, target: str, rel: float) -> list[Action]:
    """Begin a transfer to an allow-listed target (from the tool or from a keypad action)."""
    if m.transfer is not None or not m.live:
        return []
    return _announce(m, target, rel)


def on_tool(m: CallMachine, record: ToolCallRecord, args: TransferArgs, rel: float) -> list[Action]:
    targets = m.profile.transfer.targets
    if args.target not in targets:
        record.outcome = "invalid_arguments"
        record.detail = f"unknown target {args.target!r}"
        error = {"error": f"{args.target!r} is not a transfer target; use one of: {', '.join(targets) or 'none'}"}
        return [m.tool_output(record.call_id, error), m.respond()]
    if m.transfer is not None:
        record.outcome, record.detail = "ignored", "a transfer is already under way"
        return [m.tool_output(record.call_id, {"error": "a transfer is already under way"})]
    record.result = f"transferring to {args.target}"
    output = m.tool_output(record.call_id, {"status": "transferring", "target": args.target})
    return [output, *start(m, args.target, rel)]


def on_response_created(m: CallMachine, resp: ev.Response) -> list[Action]:
    t = m.transfer
    if t is not None and t.phase == "announcing" and t.awaiting_created:
        t.awaiting_created = False
        t.response_id = resp.id
    return []


def _refer(m: CallMachine, rel: float, why: str) -> list[Action]:
    t = m.transfer
    assert t is not None
    if t.phase != "announcing":
        return []
    t.phase = "referring"
    m.record.mark(rel, f"transfer to {t.target}: refer ({why})")
    return [CancelTimer(TRANSFER_ANNOUNCE_TIMER), Refer(t.uri)]


def on_audio_done(m: CallMachine, response_id: str | None, rel: float) -> list[Action]:
    t = m.transfer
    if t is not None and t.phase == "announcing" and t.response_id is not None and response_id == t.response_id:
        return _refer(m, rel, "handoff line heard")
    return []


def on_response_done(m: CallMachine, resp: ev.Response, rel: float) -> list[Action]:
    t = m.transfer
    if t is None or t.phase != "announcing" or resp.id != t.response_id:
        return []
    if resp.status != "completed" or not (resp.id in m.audio_started or resp.id in m.spoken or resp.has_audio()):
        return _refer(m, rel, "handoff line had no audio")
    if resp.id in m.audio_stopped:
        return _refer(m, rel, "handoff line heard")
    return []


def on_refer_ok(m: CallMachine, rel: float) -> list[Action]:
    t = m.transfer
    if t is None or t.phase != "referring":
        return []
    t.phase = "verifying"
    m.record.mark(rel, f"transfer to {t.target}: refer accepted, waiting for the call to leave")
    return [StartTimer(TRANSFER_VERIFY_TIMER, m.profile.transfer.verify_window_s)]


def on_refer_failed(m: CallMachine, detail: str, rel: float) -> list[Action]:
    if m.transfer is None or m.transfer.phase != "referring":
        return []
    m.record.errors.append(f"refer failed: {detail}")
    return _failed(m, rel, "refer refused")


def on_call_left(m: CallMachine, rel: float) -> list[Action]:
    t = m.transfer
    assert t is not None
    m.record.transfer_outcome = "transferred"
    m.record.mark(rel, f"transfer to {t.target}: the call left OpenAI")
    return [CancelTimer(TRANSFER_VERIFY_TIMER), *m.finish("transferred", rel)]


def on_timer(m: CallMachine, name: str, rel: float) -> list[Action]:
    t = m.transfer
    if t is None:
        return []
    if name == TRANSFER_ANNOUNCE_TIMER and t.phase == "announcing":
        return _refer(m, rel, "handoff line did not finish in time")
    if name == TRANSFER_VERIFY_TIMER and t.phase == "verifying":
        m.record.errors.append(f"transfer to {t.target}: the call did not leave within the verify window")
        return _failed(m, rel, "not verified")
    return []


def _failed(m: CallMachine, rel: float, why: str) -> list[Action]:
    t = m.transfer
    assert t is not None
    m.record.transfer_outcome = "failed"
    m.record.mark(rel, f"transfer to {t.target} failed ({why})")
    sorry = f"The transfer to {t.target} did not go through. Apologise briefly to the caller. "
    if m.profile.transfer.on_failure == "next_target":
        remaining = [name for name in m.profile.transfer.targets if name not in t.tried]
        if remaining:
            return _announce(m, remaining[0], rel, preface=sorry + f"Then say you will try {remaining[0]}. ")
    m.transfer = None
    goodbye = sorry + "Then tell them to call back later and say goodbye in one sentence. Do not call any tool."
    return m.begin_ending("transfer_failed", rel, goodbye)
