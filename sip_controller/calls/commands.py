"""Operator commands from any replica, carried out by the call's owner.

The admin API of a replica that does not own a call writes the operator's hangup or transfer to the store
(``post_command``). The owning process polls for commands of its calls (``take_commands``) every ``interval_s``
(one indexed query; by default once a second), hands each to the call's supervisor as an ``OperatorHangup`` or
``OperatorTransfer`` input (live control, #17: ``OperatorSay``, ``OperatorContext``, ``OperatorMute``), and
records the outcome (``command_done``). A command the owner took but did not
finish before it died is offered again to whichever replica takes the call over (the store's rule), so an
operator's hangup for a call whose owner is gone is carried out once the call is taken over.

Twilio's answering-machine verdict (#16) goes the same way: its callback reaches whichever replica Twilio calls,
and one that does not own the call posts it as a ``machine_detected`` command (:func:`route_machine_detection`),
which the owner hands to the call as a ``MachineDetection`` input.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

import structlog

from sip_controller.calls.features import control
from sip_controller.calls.inputs import (
    MachineDetection,
    OperatorContext,
    OperatorHangup,
    OperatorMute,
    OperatorSay,
    OperatorTransfer,
)
from sip_controller.calls.supervisor import CallSupervisor
from sip_controller.state.records import CommandRow
from sip_controller.state.store import Store
from sip_controller.telephony.callbacks import ANSWERED_BY

log = structlog.get_logger("sip_controller.calls.commands")

#: how often the owner looks for commands by default (seconds): an operator's action from another replica waits
#: at most this long before the call's supervisor has it
DEFAULT_INTERVAL_S = 1.0

#: commands taken per poll
BATCH = 50

#: outcomes recorded with ``command_done``
POSTED = "posted"
NO_LIVE_CALL = "no_live_call"


class Supervisors(Protocol):
    """What the poller needs of the registry: the supervisor of a live call of this process."""

    def supervisor(self, call_id: str) -> CallSupervisor | None: ...


class VerdictKeeper(Supervisors, Protocol):
    """What routing a verdict needs of the registry: its supervisors, and the verdicts it keeps for calls starting."""

    def machine_detected(self, call_id: str, answered_by: str) -> bool: ...


#: where :func:`route_machine_detection` sent a verdict
HERE, TO_OWNER, KEPT = "here", "to_owner", "kept"


async def route_machine_detection(store: Store, registry: VerdictKeeper, call_id: str, answered_by: str) -> str:
    """Twilio's answering-machine verdict for the OpenAI call ``call_id``, wherever it is live: posted to its
    supervisor when the call is live here (``here``); else a ``machine_detected`` command for the owner, whichever
    replica that is (``to_owner``; the store checks the call is live in the same transaction); else kept by this
    registry for a call starting here right now (``kept``; one starting elsewhere reads the verdict from its Twilio
    call's row, written before this). The store failing raises :class:`~.records.StoreError`."""
    if registry.supervisor(call_id) is not None:
        registry.machine_detected(call_id, answered_by)
        return HERE
    if await store.post_command(call_id, "machine_detected", {"answered_by": answered_by}) is not None:
        return TO_OWNER
    return HERE if registry.machine_detected(call_id, answered_by) else KEPT


def carry_out(command: CommandRow, supervisors: Supervisors) -> str:
    """Hand one command to its call's supervisor; the outcome to record."""
    supervisor = supervisors.supervisor(command.call_id)
    if supervisor is None:
        return NO_LIVE_CALL
    if command.kind == "hangup":
        supervisor.post(OperatorHangup(now=command.args.get("now") is True))
        return POSTED
    if command.kind == "transfer":
        target = command.args.get("target")
        if not isinstance(target, str) or target not in supervisor.machine.profile.transfer.targets:
            return "refused: unknown transfer target"
        supervisor.post(OperatorTransfer(target))
        return POSTED
    if command.kind == "machine_detected":
        answered_by = command.args.get("answered_by")
        if answered_by not in ANSWERED_BY:
            return "refused: answered_by is not one of Twilio's AnsweredBy values"
        supervisor.post(MachineDetection(str(answered_by)))
        return POSTED
    if command.kind in control.KINDS:
        return _carry_out_control(command, supervisor)
    return f"refused: unknown kind {command.kind!r}"


def _carry_out_control(command: CommandRow, supervisor: CallSupervisor) -> str:
    """Live control (#17): checked again here (the call may have started ending since it was posted)."""
    machine = supervisor.machine
    kind = command.kind
    assert kind in control.KINDS
    why = machine.control.refusal(machine, kind)
    if why is not None:
        return f"refused: {why}"
    if kind in ("mute", "unmute"):
        supervisor.post(OperatorMute(kind == "mute"))
        return POSTED
    limit = control.MAX_SAY_CHARS if kind == "say" else control.MAX_CONTEXT_CHARS
    try:
        text = control.check_text(command.args.get("text"), limit=limit)
    except ValueError as exc:
        return f"refused: text {exc}"
    if kind == "context":
        supervisor.post(OperatorContext(text))
        return POSTED
    when = command.args.get("when", "now")
    if when not in control.WHENS:
        return "refused: when must be now or next"
    supervisor.post(OperatorSay(text, when))
    return POSTED


async def poll_commands_once(store: Store, supervisors: Supervisors, process_id: str, *, limit: int = BATCH) -> int:
    """Take this process's waiting commands, carry each out, record the outcomes; how many were taken."""
    commands = await store.take_commands(process_id, limit=limit)
    for command in commands:
        outcome = carry_out(command, supervisors)
        log.info("command.carried_out", call_id=command.call_id, kind=command.kind, outcome=outcome)
        await store.command_done(command.id, outcome)
    return len(commands)


async def run_command_poller(
    store: Store, supervisors: Supervisors, process_id: str, interval_s: float = DEFAULT_INTERVAL_S
) -> None:
    """Poll for this process's commands until cancelled (run it as a task the app owns). A failing poll (the
    database away for a moment) is logged and tried again at the next tick; a full batch is followed at once by
    the next one."""
    while True:
        taken = 0
        try:
            taken = await poll_commands_once(store, supervisors, process_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("command.poll_failed", error=f"{type(exc).__name__}: {exc}"[:300])
        if taken < BATCH:
            await asyncio.sleep(interval_s)
