"""The store protocol: state that must outlive a process (design principle 6).

:class:`StateStore` is the claim part the webhook intake uses today (``claim``/``release``); :class:`Store` is the
whole protocol, which both real backends implement: :class:`~sip_controller.state.sqlite.SQLiteStore` (the
embedded default, one process) and :class:`~sip_controller.state.postgres.PostgresStore` (several replicas).
:func:`~sip_controller.state.factory.open_store` picks one from the settings. :class:`MemoryStore` is the
process-local claim store the app falls back to when it is given no store.

Every method is async, and every write is one transaction: it happened entirely or not at all, and once the
call returns it is durable (SQLite in WAL mode survives the process being killed; PostgreSQL is PostgreSQL).
A cancelled call may still have committed. Values in and out are plain data (:mod:`.records`).

The rules the wiring relies on:

- **Claims** (``claim``/``release``/``sweep``): one winner per key across every process sharing the store, until
  the TTL passes. The webhook intake claims ``webhook:<webhook-id>`` and ``call:<call_id>`` with
  ``limits.dedupe_ttl_s`` (config refuses less than the 300 s signature tolerance).
- **Processes** (``heartbeat``/``end_lease``/``lapsed_processes``): a process renews its lease every
  ``state.heartbeat_s`` for ``state.lease_s``. Its live calls are orphans once the lease lapses.
- **Calls** (``create_call`` … ``take_over``): each live call has one owner and an ``epoch``; the pair is the
  call's :class:`~.records.Fence`. Every write about a live call carries the fence, and a write whose fence is
  stale raises :class:`~.records.Fenced`: its writer must stop acting for that call. ``take_over`` moves an
  orphan to a new owner with ``epoch + 1``, so the old owner, if it wakes up, is fenced out.
- **Entries** (``append``/``read_entries``): a call's transcript lines, tool calls, usage and timeline marks,
  appended in batches (one transaction per batch), read back in order by a taker.
- **Finish** (``finish_call``): the final state, reason, report and the outbox rows for its deliveries, in one
  transaction. Deliveries are driven from the outbox (``claim_outbox``/``mark_delivered``/``mark_failed``).
- **History and counts** (``list_finished``, ``get_call``, ``get_report``, ``count_live``, ``allow_caller``):
  cluster-wide, whichever replica asks.
- **Parked Twilio calls** (``set_twilio_park``/``close_parked``, #16): a Twilio call on a long hold whose OpenAI
  leg ended (``ended_reason`` ``parked``, left out of the history) keeps its park state on its ``twilio_calls`` row,
  and a fresh correlation id that the next leg links through; a call that ends while parked closes the parked
  leg's row with the final report and its deliveries, once.
- **Operator commands** (``post_command``/``take_commands``/``command_done``): any replica queues a hangup or a
  transfer for a live call; only the call's owner takes it (each command once, re-offered after a takeover) and
  feeds it to the call's supervisor (:mod:`sip_controller.calls.commands`).
- **Post-call analyses** (``create_analysis`` … ``get_analysis``, #17): one row per analysed call, claimed with a
  lease like the outbox, its result (or why it failed for good) written with its ``call.analyzed`` outbox rows.
- **Outbound batches** (``create_batch`` … ``in_flight_batch_rows``, #16): a batch's rows claimed with a lease by
  any replica's dialler, paced cluster-wide (:mod:`.batches`).
- **Console sessions and the sign-in throttle** (``create_console_session`` … ``login_failed``, #13): the operator
  console's sessions, by the SHA-256 of the cookie's id (never the id), and wrong tokens per client, so that
  every replica accepts a session, a sign-out revokes it everywhere, and the throttle holds cluster-wide
  (:mod:`.console_sessions`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Protocol, Self

from sip_controller.state.analyses import AnalysisRow
from sip_controller.state.batches import BatchAction, BatchCallRow, BatchRecord, InFlight, NewBatch
from sip_controller.state.console_sessions import TOUCH_AFTER_S, ConsoleSession, LoginBackoff, LoginFailures
from sip_controller.state.records import (
    Admission,
    CallerLimit,
    CallRow,
    CommandRow,
    Entry,
    Fence,
    HistoryQuery,
    NewCall,
    OutboxItem,
    OutboxRow,
    OutboxStats,
    Overview,
    Page,
    ProcessRow,
    Purged,
    StoredEntry,
    SweepCounts,
)
from sip_controller.state.twilio_calls import KEEP_TWILIO_CALLS_S, NewTwilioCall, TwilioCallRow


class StateStore(Protocol):
    async def claim(self, key: str, ttl_s: float) -> bool:
        """Set ``key`` if absent (atomically) and return True; False when it was already set."""
        ...

    async def release(self, key: str) -> None:
        """Forget ``key`` (e.g. a claim whose work could not start)."""
        ...


class _Unset:
    """The type of :data:`UNSET`: "leave this column as it is"."""

    def __repr__(self) -> str:
        return "UNSET"


#: the default of ``update_call``'s and ``append``'s optional changes
UNSET = _Unset()


def call_changes(
    encode_json: Callable[[dict[str, float]], Any],
    state: str | _Unset,
    cost_usd: float | _Unset,
    accepted_at: float | _Unset | None,
    deadlines: dict[str, float] | _Unset,
    wake_at: float | _Unset | None,
) -> dict[str, Any]:
    """The columns an update sets, by name (a fixed set: column names never come from input), for the backends."""
    out: dict[str, Any] = {}
    if not isinstance(state, _Unset):
        out["state"] = state
    if not isinstance(cost_usd, _Unset):
        out["cost_usd"] = cost_usd
    if not isinstance(accepted_at, _Unset):
        out["accepted_at"] = accepted_at
    if not isinstance(deadlines, _Unset):
        out["deadlines"] = encode_json(deadlines)
    if not isinstance(wake_at, _Unset):
        out["wake_at"] = wake_at
    return out


class Store(StateStore, Protocol):
    """The whole store. Both backends subclass it (so a method they lack is an error, and they share the few
    methods written here) and pass ``tests/state/test_contract.py``; read it for the exact behaviour."""

    #: ``sqlite`` or ``postgresql``
    backend: str

    async def aclose(self) -> None:
        """Close the connections (after the calls in progress return). The store cannot be used again."""
        ...

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def schema_version(self) -> int:
        """The highest migration applied (0 for an empty database)."""
        ...

    async def migrate(self) -> list[int]:
        """Apply the pending migrations (:mod:`.migrations`), each in its own transaction, under a lock that makes
        replicas starting together take turns; the versions applied (empty: nothing to do). SchemaError for a
        database newer than this code or with an applied migration that differs from its file."""
        ...

    async def check_schema(self) -> None:
        """SchemaError unless the database is exactly at this code's schema."""
        ...

    # ---- claims ---------------------------------------------------------------------------------------------

    async def sweep(
        self,
        *,
        limit: int = 1000,
        keep_delivered_s: float = 86_400.0,
        keep_twilio_calls_s: float = KEEP_TWILIO_CALLS_S,
        keep_batches_s: float | None = None,
    ) -> SweepCounts:
        """Delete at most ``limit`` rows of each kind that nobody needs any more: expired claims, caller hits out
        of their window, outbox rows delivered (or given up) more than ``keep_delivered_s`` ago, processes
        whose lease lapsed over a day ago and that own no live call, Twilio calls made more than
        ``keep_twilio_calls_s`` ago, console sessions past their expiry (revoked ones too), throttle rows past
        their ``forget_at``, and outbound batches done or canceled over ``keep_batches_s`` ago (by the batch clock;
        None keeps them) with no row in flight: their rows first, then each batch whose rows are all gone. Call it
        every few seconds from one task on each replica: it is bounded, so it never holds the store for long; when a
        count equals ``limit`` there is more to do, so call it again soon."""
        ...

    # ---- processes --------------------------------------------------------------------------------------------

    async def heartbeat(self, process_id: str, lease_s: float, info: dict[str, object] | None = None) -> bool:
        """Register or renew ``process_id``'s lease until now + ``lease_s`` (``info``: JSON-able details such as
        the host name and version, kept from the first heartbeat unless given again). False when the process's
        previous lease had already lapsed: some of its calls may have been taken over meanwhile, so it must treat
        every :class:`~.records.Fenced` as final (it is)."""
        ...

    async def end_lease(self, process_id: str) -> None:
        """Let the lease lapse now (a clean exit that leaves live calls behind): survivors take them over at once
        instead of after ``lease_s``."""
        ...

    async def lapsed_processes(self) -> list[ProcessRow]:
        """Processes whose lease has lapsed, oldest heartbeat first."""
        ...

    # ---- calls ------------------------------------------------------------------------------------------------

    async def create_call(
        self, call: NewCall, *, max_live: int | None = None, outbox: Sequence[OutboxItem] = ()
    ) -> CallRow | None:
        """Write a new live call owned by ``call.owner`` at epoch 1, with ``outbox`` rows (e.g. ``call.started``)
        in the same transaction. With ``max_live``, only while fewer than ``max_live`` calls are live across the
        cluster (checked and written atomically): None when at capacity. Raises :class:`~.records.CallExists`
        for a ``call_id`` already written."""
        ...

    async def admit(
        self,
        claims: Sequence[str],
        *,
        ttl_s: float,
        call: NewCall | None = None,
        max_live: int | None = None,
        caller: CallerLimit | None = None,
        outbox: Sequence[OutboxItem] = (),
    ) -> Admission:
        """The whole admission of a new call in ONE transaction (#18: one write on the ring path, not four): claim
        every key of ``claims`` for ``ttl_s`` (all or none, like ``claim``: one winner per key across the cluster);
        then, given a ``call``, the ``caller``'s sliding window (as ``allow_caller``), the cluster-wide capacity
        ``max_live`` (as ``create_call``), the call row at epoch 1 and its ``outbox`` rows. The outcome says which
        step stopped it (:data:`~.records.AdmissionOutcome`): ``duplicate`` writes nothing; ``rate_limited``,
        ``at_capacity`` and ``exists`` keep the claims (the webhook is answered) but neither the call nor a caller
        hit; ``admitted`` counts the caller and returns the row."""
        ...

    async def get_call(self, call_id: str) -> CallRow | None:
        """The call, live or finished, or None."""
        ...

    async def verify(self, fence: Fence) -> None:
        """Raise :class:`~.records.Fenced` unless ``fence`` still holds (the call is live, owned by
        ``fence.owner`` at ``fence.epoch``). Ask before a REST action whose effect outlives this process (a
        hangup, a refer) when the lease may have lapsed."""
        ...

    async def update_call(
        self,
        fence: Fence,
        *,
        state: str | _Unset = UNSET,
        cost_usd: float | _Unset = UNSET,
        accepted_at: float | _Unset | None = UNSET,
        deadlines: dict[str, float] | _Unset = UNSET,
        wake_at: float | _Unset | None = UNSET,
    ) -> None:
        """Change the given columns of a live call under ``fence`` (:class:`~.records.Fenced` when it no longer
        holds). ``deadlines`` replaces the whole mapping. The same as an ``append`` of no entries."""
        await self.append(
            fence, (), state=state, cost_usd=cost_usd, accepted_at=accepted_at, deadlines=deadlines, wake_at=wake_at
        )

    async def append(
        self,
        fence: Fence,
        entries: Sequence[Entry],
        *,
        state: str | _Unset = UNSET,
        cost_usd: float | _Unset = UNSET,
        accepted_at: float | _Unset | None = UNSET,
        deadlines: dict[str, float] | _Unset = UNSET,
        wake_at: float | _Unset | None = UNSET,
    ) -> int:
        """Append ``entries`` (in order) and apply the given changes, in one transaction under ``fence``. Returns
        the call's entry count after it. Batch: a busy call writes once per batch, not once per event."""
        ...

    async def read_entries(self, call_id: str, *, after_seq: int = 0) -> list[StoredEntry]:
        """The call's entries after ``after_seq``, in the order they were appended."""
        ...

    async def record_finished(
        self,
        call: NewCall,
        *,
        ended_reason: str,
        report: dict[str, object],
        outbox: Sequence[OutboxItem] = (),
        entries: Sequence[Entry] = (),
        ended_at: float | None = None,
    ) -> None:
        """A call that was never live (a rejected call, #18): its row written already finished (state
        ``call.state``, ``ended_reason``, ``ended_at`` (default now), the ``report``), its ``entries`` and
        ``outbox`` rows, in ONE transaction: what ``create_call`` then ``finish_call`` wrote in two. Raises
        :class:`~.records.CallExists` (nothing written) for a ``call_id`` already written."""
        ...

    async def finish_call(
        self,
        fence: Fence,
        *,
        state: str,
        ended_reason: str,
        report: dict[str, object],
        outbox: Sequence[OutboxItem] = (),
        entries: Sequence[Entry] = (),
        cost_usd: float | None = None,
        ended_at: float | None = None,
    ) -> None:
        """End the call once: its last ``entries``, final ``state``, ``ended_reason``, ``ended_at`` (default now),
        cost, the ``report`` document, and the ``outbox`` rows that deliver it, all in one transaction.
        :class:`~.records.Fenced` (``finished``) when it was already finished: nothing is written twice."""
        ...

    async def get_report(self, call_id: str) -> dict[str, object] | None:
        """The finished call's report document, or None (unknown or still live)."""
        ...

    async def merge_report(self, call_id: str, fields: Mapping[str, Any]) -> bool:
        """Set top-level ``fields`` of a finished call's stored report (what arrived after it was written, e.g.
        Twilio's recording); False when the call is unknown or still live. Deliveries already sent are not
        touched: the caller enqueues what tells the endpoints."""
        ...

    async def close_parked(
        self,
        call_id: str,
        *,
        ended_reason: str,
        report: Mapping[str, Any],
        outbox: Sequence[OutboxItem] = (),
        cost_usd: float | None = None,
        ended_at: float | None = None,
    ) -> bool:
        """Close a parked leg (#16) whose Twilio call ended while parked, in ONE transaction: only when the call
        ``call_id`` is ``ended`` with ``ended_reason`` ``parked``, replace its ``ended_reason`` and ``report`` (the
        report of the whole call), its history summary and full-text row as ``finish_call`` writes them, its
        ``cost_usd`` when given, and enqueue ``outbox`` (keys already present skipped): True. Otherwise (unknown,
        live, not parked, or closed already) nothing is written: False, so a second close is a no-op. ``ended_at``:
        when the call really ended (the history lists it by then; None keeps when the leg was parked). ValueError
        for ``ended_reason`` ``parked``."""
        ...

    async def list_live(self, *, owner: str | None = None, limit: int = 10_000) -> list[CallRow]:
        """Live calls across the cluster (or of one ``owner``), oldest first."""
        ...

    async def count_live(self, *, state: str | None = None) -> int:
        """How many calls are live across the cluster (in ``state``, e.g. ``hanging_up``, when given)."""
        ...

    async def orphaned_calls(self, *, limit: int = 100) -> list[CallRow]:
        """Live calls whose owner's lease has lapsed (or whose owner never heartbeat), oldest first: the ones to
        ``take_over``."""
        ...

    async def take_over(self, call_id: str, new_owner: str, *, expected_epoch: int) -> CallRow | None:
        """Make ``new_owner`` the owner of an orphaned call, atomically: epoch + 1, ``takeovers`` + 1 and the gap
        since the lost owner's last heartbeat. None (nothing changed) when the call is not at ``expected_epoch``
        any more, finished, or its owner's lease is alive: another replica won, or the owner came back."""
        ...

    async def hanging_up_calls(self, *, limit: int = 100) -> list[CallRow]:
        """Live calls in ``hanging_up`` whose ``wake_at`` has come (or is unset), across the cluster, most overdue
        first: hangups to retry. Act through the owner (or ``take_over`` an orphan) so the fence holds."""
        ...

    async def list_finished(self, query: HistoryQuery) -> Page:
        """Finished calls matching ``query``, newest ``ended_at`` first, ``query.limit`` at a time (keyset paging:
        pass ``next_cursor`` back as ``query.cursor``), each with its history summary (``outcome``,
        ``analysis_summary``). ``query.text`` searches the transcripts' words (SQLite FTS5, PostgreSQL
        ``websearch_to_tsquery('simple', …)`` over a GIN index); ``query.outcome`` ``unknown`` is a call without a
        verdict. ValueError for a bad cursor, limit, outcome, or a search without a word."""
        ...

    async def overview(self, since: float, until: float, *, bucket_s: int) -> Overview:
        """The call history's aggregates over the calls that ended in ``[since, until)`` (#17): calls per bucket
        (``bucket_s`` 3600 or 86400, UTC-aligned, empty buckets as 0), the ``ended_reason`` mix, cost per UTC day
        split model / transcription / analysis, ring-to-answer p50/p95 (ms), average handle time (accepted to
        ended, s), transfer and success rates (:class:`~.records.Overview`). Aggregate SQL on the store (a grouped
        pass and a sorted one over an index of finished calls), never the calls loaded into memory. ValueError for
        another bucket, an empty range or one over 400 days."""
        ...

    async def purge(self, *, before: float, transcripts_before: float | None, limit: int) -> Purged:
        """One bounded retention pass, oldest first, at most ``limit`` calls in all, in one transaction: finished
        calls that ended before ``before`` are deleted (the row, its entries, analysis and full-text row); then,
        within what is left of ``limit``, calls that ended before ``transcripts_before`` (None: none) lose their
        transcript (the report's ``transcript`` emptied, the ``transcript`` entries and the full-text row deleted;
        marked so that the next pass skips them). Live calls are never touched. Call it again until it returns
        fewer than ``limit``."""
        ...

    # ---- operator commands ----------------------------------------------------------------------------------

    async def post_command(self, call_id: str, kind: str, args: Mapping[str, Any] | None = None) -> int | None:
        """Queue an operator command (``kind`` one of :data:`~.records.COMMAND_KINDS`, ``args`` its JSON-able
        details) for the live call ``call_id``, whichever replica owns it; the command's id, or None when the call
        is not live (unknown or finished), checked in the same transaction. ValueError for an unknown kind."""
        ...

    async def take_commands(self, owner: str, *, limit: int = 50) -> list[CommandRow]:
        """The commands waiting for live calls that ``owner`` owns, oldest first, marked taken by ``owner``: no
        other taker gets them. A command taken but not done by a process that has lost the call since (a takeover)
        is offered again to the new owner. Poll it every second or so on each replica."""
        ...

    async def command_done(self, command_id: int, outcome: str) -> bool:
        """Record what the taker did with a command (``posted``, ``no_live_call``, …). False when it was already
        done (nothing changed)."""
        ...

    # ---- outbox -------------------------------------------------------------------------------------------

    async def enqueue(self, items: Sequence[OutboxItem]) -> int:
        """Add outbox rows outside a call's transaction; keys already present are skipped. Returns how many were
        added."""
        ...

    async def claim_outbox(
        self, worker: str, *, limit: int = 50, lease_s: float = 30.0, destination: str | None = None
    ) -> list[OutboxRow]:
        """Lease up to ``limit`` due rows (to ``destination`` only, when given) to ``worker`` for ``lease_s``,
        counting an attempt on each: no other worker gets them until the lease passes. Oldest due first."""
        ...

    async def mark_delivered(self, ids: Sequence[int]) -> int:
        """Record rows as delivered (whoever delivered them). Returns how many were still undelivered."""
        ...

    async def mark_failed(self, worker: str, row_id: int, *, next_attempt_at: float | None, error: str) -> bool:
        """Give back a row ``worker`` holds: due again at ``next_attempt_at``, or given up for good when None.
        False when ``worker`` no longer holds the row (its lease passed and another worker took it)."""
        ...

    async def outbox_stats(self) -> OutboxStats:
        """The backlog for ``/metrics``."""
        ...

    # ---- cluster counts --------------------------------------------------------------------------------------

    async def allow_caller(self, key: str, limit: int, *, window_s: float = 60.0) -> bool:
        """The cluster-wide sliding-window rate limit: True, and counted, while fewer than ``limit`` calls from
        ``key`` (a caller number, or the anonymous bucket) were allowed in the last ``window_s``; False (not
        counted) otherwise. ``limit`` 0 or less: always True, nothing counted."""
        ...

    async def caller_count(self, key: str, *, window_s: float = 60.0) -> int:
        """How many calls from ``key`` were allowed in the last ``window_s``."""
        ...

    # ---- Twilio calls (#16) ----------------------------------------------------------------------------------

    async def create_twilio_call(self, call: NewTwilioCall) -> tuple[TwilioCallRow, bool]:
        """Write a Twilio call; ``(row, True)``. A call whose ``idempotency_key`` or ``call_sid`` is known already is
        not written again: ``(the existing row, False)`` (a repeated request, a voice webhook Twilio retried)."""
        ...

    async def get_twilio_call(
        self, *, id: str | None = None, correlation: str | None = None, call_sid: str | None = None
    ) -> TwilioCallRow | None:
        """The Twilio call with this id, correlation id or CallSid (exactly one of them)."""
        ...

    async def update_twilio_call(
        self,
        id: str,
        *,
        call_sid: str | None = None,
        status: str | None = None,
        answered_by: str | None = None,
        error_code: int | None = None,
        event: Mapping[str, Any] | None = None,
    ) -> TwilioCallRow | None:
        """Set what is given (a final status is never replaced by another status: callbacks arrive unordered) and
        append ``event``; the row after, or None for an unknown id."""
        ...

    async def link_twilio_call(self, correlation: str, call_id: str) -> TwilioCallRow | None:
        """Tie the Twilio call with this correlation id to ``call_id``, once: None when the id is unknown or already
        tied to another call (the same header replayed on a second call gets nothing)."""
        ...

    async def set_twilio_park(
        self, id: str, park: Mapping[str, Any] | None, *, correlation: str | None = None,
        expect_status: str | None = None,
    ) -> TwilioCallRow | None:
        """Set the park state of the Twilio call ``id`` (opaque JSON: what the controller needs while the call waits
        on a hold with no OpenAI leg, #16), or clear it with None; ``updated_at`` now. With ``correlation``, also
        give the row that correlation id and clear its ``call_id``, in the same statement: the next OpenAI leg,
        bridged with the new id in its header, then links through ``link_twilio_call``, and the old id finds no row
        (a replayed header links nothing). ``expect_status``: only when the park's ``status`` still is this one (a
        compare-and-set: a final status callback may have closed the call meanwhile). The row after, or None for an
        unknown id or another status (nothing written). Raises :class:`~.twilio_calls.CorrelationTaken` (nothing
        written) when another Twilio call has ``correlation``."""
        ...

    # ---- post-call analyses (#17) ----------------------------------------------------------------------------

    async def create_analysis(self, call_id: str, profile: str, *, due_at: float | None = None) -> bool:
        """A pending analysis of the (finished) call ``call_id``, due at ``due_at`` (default now); False (nothing
        written) when the call has one already."""
        ...

    async def claim_analyses(self, worker: str, *, limit: int = 10, lease_s: float = 300.0) -> list[AnalysisRow]:
        """Lease up to ``limit`` due pending analyses to ``worker`` for ``lease_s``, counting an attempt on each
        (oldest due first): no other worker gets them until the lease passes (a worker that died mid-analysis)."""
        ...

    async def finish_analysis(
        self,
        worker: str,
        call_id: str,
        *,
        result: Mapping[str, Any],
        cost_usd: float | None,
        outbox: Sequence[OutboxItem] = (),
    ) -> bool:
        """Store the analysis ``result`` and its cost (``done``) and the ``outbox`` rows that deliver it, in one
        transaction. False (nothing written) unless ``worker`` holds the analysis's lease."""
        ...

    async def fail_analysis(
        self,
        worker: str,
        call_id: str,
        *,
        error: str,
        next_attempt_at: float | None,
        result: Mapping[str, Any] | None = None,
        outbox: Sequence[OutboxItem] = (),
    ) -> bool:
        """Record a failed attempt (``error``): due again at ``next_attempt_at``, or failed for good when None (with
        ``result`` saying why, and ``outbox`` rows delivering that), in one transaction. False unless ``worker``
        holds the lease."""
        ...

    async def release_analysis(self, worker: str, call_id: str) -> bool:
        """Give back an analysis ``worker`` holds without counting the attempt (a clean shutdown): due at once
        for any worker. False unless ``worker`` holds the lease."""
        ...

    async def get_analysis(self, call_id: str) -> AnalysisRow | None:
        """The call's analysis (pending, done or failed), or None."""
        ...

    # ---- outbound batches (#16) ------------------------------------------------------------------------------

    async def create_batch(self, batch: NewBatch) -> tuple[BatchRecord, bool]:
        """The batch and its rows (all ``queued``), in one transaction; with the batch's Idempotency-Key used
        before, the batch it made and False (nothing written)."""
        ...

    async def get_batch(self, batch_id: str) -> BatchRecord | None:
        """The batch with its rows counted by state and outcome, or None."""
        ...

    async def list_batch_rows(self, batch_id: str, *, after_row: int = 0, limit: int = 1000) -> list[BatchCallRow]:
        """The batch's rows numbered after ``after_row``, in order."""
        ...

    async def list_batches(self, *, limit: int = 50) -> list[BatchRecord]:
        """The newest ``limit`` batches (by when they were made), each with its rows counted by state and outcome:
        the console's batch panel."""
        ...

    async def set_batch_status(self, batch_id: str, action: BatchAction) -> tuple[BatchRecord | None, bool]:
        """Pause, resume or cancel (its queued rows then ``canceled``); the batch after and whether it changed.
        A finished batch (canceled or done) does not change; None for an unknown id."""
        ...

    async def claim_batch_rows(self, worker: str, *, limit: int = 50, lease_s: float = 60.0) -> list[BatchCallRow]:
        """Lease up to ``limit`` rows of running batches to ``worker`` for ``lease_s`` (``placing``): rows due, and
        rows whose lease passed; per batch no more than its pacing and ``max_in_flight`` allow, cluster-wide."""
        ...

    async def placed_batch_row(self, worker: str, batch_id: str, row: int, twilio_id: str) -> bool:
        """The row's call is with Twilio (``in_flight``, its ``twilio_calls`` id). False unless ``worker`` holds it."""
        ...

    async def defer_batch_row(self, worker: str, batch_id: str, row: int, *, due_at: float) -> bool:
        """Give a claimed row back, due at ``due_at`` (calling hours closed). False unless ``worker`` holds it."""
        ...

    async def settle_batch_row(
        self,
        batch_id: str,
        row: int,
        *,
        outcome: str,
        retry_at: float | None = None,
        error: str | None = None,
        worker: str | None = None,
        twilio_id: str | None = None,
    ) -> bool:
        """The row's attempt ended with ``outcome``: queued again at ``retry_at`` (the next attempt; not in a
        canceled batch) or ``done``; the batch ``done`` once no row is left. As the lease holder of a ``placing``
        row (``worker``) or for the ``in_flight`` row of the call ``twilio_id``; False (nothing written) otherwise."""
        ...

    async def in_flight_batch_rows(self, *, stale_s: float = 3600.0, limit: int = 100) -> list[InFlight]:
        """In-flight rows whose Twilio call is over, gone, or never confirmed placed after ``stale_s``."""
        ...

    # ---- console sessions and the sign-in throttle (#13) -----------------------------------------------------

    async def create_console_session(
        self, key: str, csrf: str, *, ttl_s: float, max_sessions: int | None = None
    ) -> tuple[ConsoleSession, int]:
        """A new console session kept by ``key`` (the SHA-256 of the cookie's id: never pass the id itself) with its
        ``csrf`` token, live for ``ttl_s`` from now. With ``max_sessions``, the oldest live sessions beyond that
        many (this one counted) are revoked in the same transaction. The session and how many were revoked."""
        ...

    async def find_console_session(self, key: str, *, touch_after_s: float = TOUCH_AFTER_S) -> ConsoleSession | None:
        """The session kept by ``key`` if it is live (not expired, not revoked), whichever replica made it; None
        otherwise. One primary-key read; ``last_seen_at`` is written only when older than ``touch_after_s``."""
        ...

    async def revoke_console_session(self, key: str) -> bool:
        """End the session kept by ``key`` for every replica (sign-out). False when it was not live."""
        ...

    async def login_wait(self, client: str) -> float:
        """Seconds ``client`` (an address, an IPv6 /64) must still wait before a token of its is looked at (0:
        go ahead), across the cluster. One primary-key read."""
        ...

    async def login_failed(self, client: str, backoff: LoginBackoff) -> LoginFailures:
        """Count a wrong token from ``client`` (atomically: replicas counting at once lose none), starting again
        from one once it was quiet for ``backoff.forget_s``; block it for ``backoff.wait`` of its count (never
        shortening a block). Its count and the wait it now has."""
        ...


class MemoryStore:
    """A process-local StateStore. Expired keys are swept as new keys arrive, so memory stays bounded."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, sweep_every: int = 1024) -> None:
        self._clock = clock
        self._expires: dict[str, float] = {}
        self._sweep_every = sweep_every
        self._writes = 0

    def __len__(self) -> int:
        return len(self._expires)

    async def claim(self, key: str, ttl_s: float) -> bool:
        now = self._clock()
        expires = self._expires.get(key)
        if expires is not None and expires > now:
            return False
        self._expires[key] = now + ttl_s
        self._writes += 1
        if self._writes % self._sweep_every == 0:
            self._sweep(now)
        return True

    async def release(self, key: str) -> None:
        self._expires.pop(key, None)

    def _sweep(self, now: float) -> None:
        for key in [k for k, exp in self._expires.items() if exp <= now]:
            del self._expires[key]
