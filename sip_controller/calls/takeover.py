"""Takeover (#13): the live calls of a process whose lease lapsed, resumed by a survivor (or the next process on
the same host).

Each heartbeat tick the app calls :func:`take_over_orphans`: for every call ``orphaned_calls()`` lists (except those
left ``hanging_up``: the hangup janitor, ``calls/hangups.py``, finishes those), ``take_over(call_id, me,
expected_epoch=row.epoch)``; a call won (epoch + 1: the lost owner is fenced out) is rebuilt from the store
(:func:`rebuild_record`: the row and its entries) and handed to the registry, which resumes its supervision
(``CallRegistry.resume``: re-attach the sideband by call_id, a new journal on the new fence). A call another replica
won (None) is left alone. When the resume itself fails, the call is left ``hanging_up`` for the janitor: hung up
through REST rather than left unsupervised.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol, cast, get_args

import structlog

from sip_controller.calls.journal import TURNS
from sip_controller.calls.report import CallRecord, ToolCallRecord, TranscriptEntry, TranscriptionUsage, UsageTotals
from sip_controller.calls.states import EndedReason
from sip_controller.state.records import HANGING_UP, CallRow, Fenced, StoredEntry
from sip_controller.state.store import Store

log = structlog.get_logger("sip_controller.calls.takeover")

#: the entry kind recording one takeover (``CallRecord.takeovers``), read back by a later taker
TAKEOVER = "takeover"


class Resumer(Protocol):
    """What the takeover needs of the registry."""

    @property
    def draining(self) -> bool: ...

    async def resume(self, row: CallRow, entries: Sequence[StoredEntry]) -> None: ...


def _received_at(row: CallRow) -> datetime:
    incoming = row.inputs.get("incoming")
    if isinstance(incoming, dict) and isinstance(incoming.get("received_at"), str):
        return datetime.fromisoformat(incoming["received_at"])
    return datetime.fromtimestamp(row.received_at, UTC)


def _twilio_sid(row: CallRow) -> str | None:
    incoming = row.inputs.get("incoming")
    headers = incoming.get("headers") if isinstance(incoming, dict) else None
    for header in headers if isinstance(headers, list) else []:
        if isinstance(header, dict) and str(header.get("name", "")).lower() == "x-twilio-callsid":
            value = header.get("value")
            return value if isinstance(value, str) else None
    return None


def _mark_s(record: CallRecord, what: str) -> float | None:
    return next((at for at, mark in record.timeline if mark == what), None)


def pending_reason(record: CallRecord) -> EndedReason:
    """The reason a call taken over while ``ending`` ends with: the one its lost owner stored when it started
    ending (``session_error`` when none was stored, e.g. a row written before the reason was kept)."""
    reason = record.ending_reason
    return cast("EndedReason", reason) if reason in get_args(EndedReason) else "session_error"


def rebuild_record(row: CallRow, entries: Sequence[StoredEntry]) -> CallRecord:
    """The call's record as the store holds it: the row (profile, caller, state, accept time, cost) and its
    entries in order (transcript lines, timeline marks, tool calls at their latest outcome, the last usage
    snapshot, earlier takeovers, and the last ``turns``: ``muted``, ``on_hold_since_s`` and the hold time so far).
    Times are seconds from the original arrival, as the lost owner had them."""
    received = _received_at(row)
    base = received.timestamp()
    record = CallRecord(
        call_id=row.call_id,
        profile=row.profile,
        received_at=received,
        caller=row.caller,
        dialed=row.dialed,
        twilio_call_sid=_twilio_sid(row),
        state=row.state,
    )
    twilio, outbound = row.inputs.get("twilio"), row.inputs.get("outbound")
    if isinstance(twilio, dict):  # a call Twilio bridged in (#16): its Twilio side and the request that placed it
        record.twilio = dict(twilio)
        record.twilio_call_sid = twilio.get("call_sid") if isinstance(twilio.get("call_sid"), str) else None
    if isinstance(outbound, dict):
        record.outbound = dict(outbound)
    legs = row.inputs.get("legs")
    if isinstance(legs, dict):  # the next leg of a parked call (#16): the legs and parks before it
        record.earlier_legs = [dict(d) for d in legs.get("earlier") or () if isinstance(d, dict)]
        record.park_spells = [dict(s) for s in legs.get("spells") or () if isinstance(s, dict)]
    tools: dict[str, ToolCallRecord] = {}
    usage: dict[str, Any] | None = None
    for entry in entries:
        data = entry.data
        if entry.kind == "transcript":
            record.transcripts.append(TranscriptEntry(data["role"], data["text"], round(entry.at - base, 3)))
        elif entry.kind == "mark":
            record.timeline.append((float(data["at_s"]), str(data["what"])))
        elif entry.kind == "tool_call":
            tools[str(data["call_id"])] = ToolCallRecord(**data)
        elif entry.kind == "usage":
            usage = data
        elif entry.kind == TAKEOVER:
            record.takeovers.append(dict(data))
        elif entry.kind == TURNS:
            since = data.get("since")
            record.muted = data.get("muted") is True
            record.on_hold_since_s = float(since) if data.get("on_hold") and isinstance(since, int | float) else None
            record.hold_s = float(data.get("hold_s") or 0.0)
        elif entry.kind == "state" and data.get("state") == "ending" and isinstance(data.get("reason"), str):
            record.ending_reason = data["reason"]
    record.tool_calls = list(tools.values())
    if usage is not None:
        record.usage = UsageTotals(**usage["usage"])
        record.hold_usage = UsageTotals(**usage.get("hold_usage", {}))
        record.transcription = TranscriptionUsage(**usage.get("transcription", {}))
        record.hold_transcription = TranscriptionUsage(**usage.get("hold_transcription", {}))
        record.hold_cost_usd = float(usage.get("hold_cost_usd", 0.0))
        record.transcription_cost_usd = float(usage.get("transcription_cost_usd", 0.0))
    record.cost_usd = row.cost_usd
    if row.accepted_at is not None:
        record.accepted_s = round(row.accepted_at - row.received_at, 3)
    record.attached_s = _mark_s(record, "attached")
    return record


async def take_over_orphans(
    store: Store,
    registry: Resumer,
    process_id: str,
    *,
    limit: int = 100,
    clock: Callable[[], float] = time.time,
) -> int:
    """Take over the orphaned live calls this process wins and resume them; how many were won."""
    if registry.draining:
        return 0  # a process on its way out takes nothing: the other replicas will
    won = 0
    for row in await store.orphaned_calls(limit=limit):
        if row.state == HANGING_UP:
            continue  # only a hangup is left to do: the hangup janitor's
        taken = await store.take_over(row.call_id, process_id, expected_epoch=row.epoch)
        if taken is None:
            continue  # another replica won it, or its owner came back
        won += 1
        log.warning("call.taken_over", call_id=row.call_id, lost_owner=row.owner, gap_s=taken.takeover_gap_s,
                    state=row.state)  # fmt: skip
        try:
            await registry.resume(taken, await store.read_entries(row.call_id))
        except Fenced as exc:
            log.info("call.takeover_fenced", call_id=row.call_id, why=exc.reason)
        except Exception:
            log.exception("call.resume_failed", call_id=row.call_id)
            with contextlib.suppress(Fenced):  # hang it up through REST (the janitor): never left unsupervised
                await store.update_call(taken.fence, state=HANGING_UP, wake_at=clock())
    return won
