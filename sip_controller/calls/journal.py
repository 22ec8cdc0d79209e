"""What a live call records, written to the store in batches (design principle 6: memory is a cache).

The supervisor calls :meth:`CallJournal.observe` after every input the machine handled; the journal compares the
call's record with what it has already taken and buffers the difference as store entries: ``transcript`` lines,
``tool_call`` outcomes (when one is asked for and again when it settles), timeline ``mark``s, a ``usage`` snapshot
(at most one per batch), ``state`` changes, and ``turns`` changes: whether live control muted the agent and since
when the call waits on hold (the turn detection the session is left with, which a takeover restores). A batch is
written in ONE transaction (``Store.append``, with the call's state, cost and accept time) every ``flush_s`` seconds,
as soon as ``max_batch`` entries wait, and at once on a state or a ``turns`` change: never one write per event. The
last entries go into the finishing transaction (:meth:`take`).

A write refused with :class:`~sip_controller.state.records.Fenced` means another process owns the call now (or it
is finished): the journal stops writing, logs ``call.fenced`` and calls ``on_fenced`` (the registry cancels the
call's tasks, and no report comes from this process). Any other store error is logged and the batch is kept for
the next try (bounded: past ``max_buffered`` entries the oldest are dropped and counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime
from typing import Any

import structlog

from sip_controller.calls.report import CallRecord
from sip_controller.state.records import Entry, Fence, Fenced
from sip_controller.state.store import UNSET, Store

log = structlog.get_logger("sip_controller.calls.journal")

#: states worth writing at once (the rest ride with the next batch)
_PROMPT_STATES = frozenset({"accepted", "attached", "ending", "hanging_up"})
#: the entry kind of a mute or hold change (``{muted, on_hold, since, hold_s}``), read back by a takeover
TURNS = "turns"


class CallJournal:
    def __init__(
        self,
        store: Store,
        fence: Fence,
        *,
        received_at: datetime,
        wall_clock: Callable[[], float] = time.time,
        flush_s: float = 0.5,
        max_batch: int = 32,
        max_buffered: int = 10_000,
        on_fenced: Callable[[], None] | None = None,
        taken: CallRecord | None = None,
    ) -> None:
        """``taken``: the record as the store already holds it (a call taken over, rebuilt from its entries):
        only what it gains from now on is written."""
        self.store = store
        self.fence = fence
        self._wall_clock = wall_clock
        self._received = received_at.timestamp()
        self._flush_s = flush_s
        self._max_batch = max_batch
        self._max_buffered = max_buffered
        self.on_fenced = on_fenced
        self._buffer: list[Entry] = []
        self._changes: dict[str, Any] = {}
        self._state = "received"
        self._transcripts = 0
        self._marks = 0
        self._tools: dict[int, str] = {}
        self._responses = -1
        self._cost = 0.0
        #: the mute and hold last taken (``CallRecord.muted``, ``on_hold_since_s``)
        self._turns: tuple[bool, float | None] = (False, None)
        self._record: CallRecord | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._flushing: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.fenced = False
        self.closed = False
        #: what was written and what was lost to the bound, for tests and logs
        self.written = 0
        self.writes = 0
        self.dropped = 0
        if taken is not None:
            self._state = taken.state
            self._transcripts = len(taken.transcripts)
            self._marks = len(taken.timeline)
            self._tools = {i: t.outcome for i, t in enumerate(taken.tool_calls)}
            self._responses = taken.usage.responses
            self._cost = taken.cost_usd
            self._turns = (taken.muted, taken.on_hold_since_s)

    # ---- taking what the record gained --------------------------------------------------------------------

    def _at(self, at_s: float) -> float:
        return self._received + at_s

    def _collect(self, record: CallRecord) -> bool:
        """Buffer what ``record`` gained since the last look; True when the state changed in a way that matters."""
        now = self._wall_clock()
        out = self._buffer
        for entry in record.transcripts[self._transcripts :]:
            out.append(Entry("transcript", self._at(entry.at_s), {"role": entry.role, "text": entry.text}))
        self._transcripts = len(record.transcripts)
        for at_s, what in record.timeline[self._marks :]:
            out.append(Entry("mark", self._at(at_s), {"at_s": at_s, "what": what}))
        self._marks = len(record.timeline)
        for i, tool in enumerate(record.tool_calls):
            if self._tools.get(i) != tool.outcome:
                self._tools[i] = tool.outcome
                out.append(Entry("tool_call", self._at(tool.at_s), asdict(tool)))
        if record.cost_usd != self._cost:
            self._cost = record.cost_usd
            self._changes["cost_usd"] = record.cost_usd
        prompt = False
        turns = (record.muted, record.on_hold_since_s)
        if turns != self._turns:  # a takeover restores them: written at once, like a state change
            self._turns = turns
            muted, since = turns
            data = {"muted": muted, "on_hold": since is not None, "since": since, "hold_s": record.hold_s}
            out.append(Entry(TURNS, now, data))
            prompt = True
        if record.state != self._state:
            self._state = record.state
            stored: dict[str, Any] = {"state": record.state}
            if record.state == "ending" and record.ending_reason is not None:
                stored["reason"] = record.ending_reason  # a takeover ends the call with it
            out.append(Entry("state", now, stored))
            self._changes["state"] = record.state
            if record.state == "accepted" and record.accepted_s is not None:
                self._changes["accepted_at"] = self._at(record.accepted_s)
            prompt = prompt or record.state in _PROMPT_STATES
        if len(out) > self._max_buffered:
            cut = len(out) - self._max_buffered
            del out[:cut]
            self.dropped += cut
            log.warning("call.journal_dropped", call_id=self.fence.call_id, entries=cut)
        return prompt

    def _usage(self, record: CallRecord) -> None:
        if record.usage.responses != self._responses:
            self._responses = record.usage.responses
            data: dict[str, Any] = {
                "usage": asdict(record.usage),
                "hold_usage": asdict(record.hold_usage),
                "transcription": asdict(record.transcription),
                "hold_transcription": asdict(record.hold_transcription),
                "cost_usd": record.cost_usd,
                "hold_cost_usd": record.hold_cost_usd,
                "transcription_cost_usd": record.transcription_cost_usd,
            }
            self._buffer.append(Entry("usage", self._wall_clock(), data))

    def observe(self, record: CallRecord) -> None:
        """After an input: buffer what changed and schedule the write (now, or within ``flush_s``)."""
        if self.fenced or self.closed:
            return
        prompt = self._collect(record)
        self._record = record
        if not self._buffer and not self._changes:
            return
        if prompt or len(self._buffer) >= self._max_batch:
            self._kick()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._flush_s, self._kick)

    def _kick(self) -> None:
        self._timer = None
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.get_running_loop().create_task(
                self.flush(), name=f"{self.fence.call_id}:journal"
            )

    async def flush(self) -> None:
        """Write what waits, as one batch (under a lock: batches land in order)."""
        async with self._lock:
            if self._record is not None and not self.fenced:
                self._usage(self._record)
            if self.fenced or self.closed or not (self._buffer or self._changes):
                return
            batch, changes = list(self._buffer), dict(self._changes)
            self._buffer.clear()
            self._changes.clear()
            try:
                await self.store.append(
                    self.fence,
                    batch,
                    state=changes.get("state", UNSET),
                    cost_usd=changes.get("cost_usd", UNSET),
                    accepted_at=changes.get("accepted_at", UNSET),
                )
            except Fenced as exc:
                self._fenced(exc)
            except Exception as exc:  # the store away for a moment: keep the batch for the next write
                self._buffer[:0] = batch
                self._changes = {**changes, **self._changes}
                log.warning("call.journal_failed", call_id=self.fence.call_id, error=type(exc).__name__)
                if self._timer is None and not self.closed:
                    self._timer = asyncio.get_running_loop().call_later(self._flush_s * 2, self._kick)
            else:
                self.written += len(batch)
                self.writes += 1

    def _fenced(self, exc: Fenced) -> None:
        self.fenced = True
        log.warning("call.fenced", call_id=self.fence.call_id, reason=exc.reason, epoch=self.fence.epoch)
        if self.on_fenced is not None:
            self.on_fenced()

    def fenced_by(self, exc: Fenced) -> None:
        """A write elsewhere (the finish) was fenced: stop as if a batch had been."""
        if not self.fenced:
            self._fenced(exc)

    async def take(self, record: CallRecord) -> list[Entry]:
        """For the finishing transaction: stop the timer, let a batch in flight land, and hand over what waits
        (the last changes of the record included). The journal writes nothing after this."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._flushing is not None and not self._flushing.done():
            with contextlib.suppress(Exception):
                await asyncio.shield(self._flushing)
        async with self._lock:
            self.closed = True
            if self.fenced:
                return []
            self._collect(record)
            self._usage(record)
            out = list(self._buffer)
            self._buffer.clear()
            self._changes.clear()
            return out

    def cancel(self) -> None:
        """Stop scheduling writes (the call is over or abandoned)."""
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
