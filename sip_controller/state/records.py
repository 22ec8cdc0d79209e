"""What goes into the store and what comes out of it: plain frozen dataclasses of JSON-able values.

Times are wall-clock seconds since the epoch (floats), taken from the store's ``clock`` (``time.time`` by default)
so that every replica compares them on one scale. JSON columns (``inputs``, ``deadlines``, entry data, reports,
outbox payloads) are ``dict[str, Any]`` that ``json.dumps`` accepts; the store never looks inside them except
where a column says so.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import astuple, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal


class StoreError(Exception):
    """Anything the store refuses (its subclasses say what)."""


class Fenced(StoreError):
    """A write under a :class:`Fence` that no longer holds: another process took the call over (``stale_owner``),
    the call is finished (``finished``), or there is no such call (``unknown_call``). The writer must stop acting
    for this call at once: no REST request, no sideband event, no report."""

    def __init__(self, fence: Fence, reason: Literal["stale_owner", "finished", "unknown_call"]) -> None:
        super().__init__(f"call {fence.call_id}: refused for {fence.owner} (epoch {fence.epoch}): {reason}")
        self.fence = fence
        self.reason = reason


class CallExists(StoreError):
    """``create_call`` for a ``call_id`` that already has a row."""


class Duplicate(StoreError):
    """An admission (``Store.admit``) found one of its claim keys already held: a webhook delivered again, or a call
    another replica (or this process, before a restart) already took. ``key`` is that key."""

    def __init__(self, key: str) -> None:
        super().__init__(f"already claimed: {key}")
        self.key = key


class SchemaError(StoreError):
    """The database's schema does not fit this code: newer than the code knows, a migration changed after it was
    applied, or migrations not yet applied where the caller asked not to apply them."""


@dataclass(frozen=True)
class Fence:
    """The right to act for one call: its id, the owning process, and the owner epoch. Every write about a live
    call carries it; the store refuses the write (:class:`Fenced`) once the epoch has moved on (a takeover)."""

    call_id: str
    owner: str
    epoch: int


@dataclass(frozen=True)
class NewCall:
    """A call row as it is first written (``create_call``), before the accept is sent."""

    call_id: str
    owner: str
    profile: str
    #: everything that built the call's session (the incoming call, the rendered instructions, the profile's
    #: settings as used): what a taker needs to resume supervision without the webhook
    inputs: Mapping[str, Any]
    received_at: float
    state: str = "received"
    caller: str | None = None
    dialed: str | None = None
    accepted_at: float | None = None
    #: named deadlines in wall-clock seconds (e.g. ``{"max_duration": 1700000600.0}``), measured from the
    #: original start so that a takeover keeps them
    deadlines: Mapping[str, float] = field(default_factory=dict)
    cost_usd: float = 0.0


@dataclass(frozen=True)
class CallerLimit:
    """The per-caller sliding window an admission checks (``Store.admit``): at most ``limit`` calls from ``key``
    (a caller number, or the anonymous bucket) in ``window_s``; 0 or less turns it off."""

    key: str
    limit: int
    window_s: float = 60.0


#: what ``Store.admit`` decided: the call written (``admitted``); the claims only, no call given (``claimed``);
#: a claim already held, nothing written (``duplicate``); claims written but the call refused: the caller over its
#: window (``rate_limited``), the cluster at ``max_live`` (``at_capacity``), or the call_id already has a row
#: (``exists``)
AdmissionOutcome = Literal["admitted", "claimed", "duplicate", "rate_limited", "at_capacity", "exists"]


@dataclass(frozen=True)
class Admission:
    outcome: AdmissionOutcome
    #: the call as written (``admitted``)
    row: CallRow | None = None
    #: the claim key found held (``duplicate``)
    held: str | None = None


@dataclass(frozen=True)
class CallRow:
    """A call as the store holds it (``report`` is read separately: ``get_report``)."""

    call_id: str
    owner: str
    epoch: int
    state: str
    profile: str
    inputs: dict[str, Any]
    caller: str | None
    dialed: str | None
    received_at: float
    accepted_at: float | None
    deadlines: dict[str, float]
    cost_usd: float
    #: when the call next needs attention from whoever holds it (e.g. the next hangup retry), or None
    wake_at: float | None
    #: how many times the call was taken over, and the last gap (from the lost owner's last heartbeat)
    takeovers: int
    takeover_gap_s: float | None
    #: how many entries (transcript lines, tool calls, usage, marks) it has recorded
    entry_count: int
    updated_at: float
    ended_at: float | None
    ended_reason: str | None
    #: the call history's summary (#17), read by ``list_finished`` only (None elsewhere): the analysis's verdict
    #: (``succeeded``, ``failed``, None = unknown) and its short summary
    outcome: str | None = None
    analysis_summary: str | None = None

    @property
    def fence(self) -> Fence:
        return Fence(self.call_id, self.owner, self.epoch)

    @property
    def live(self) -> bool:
        return self.ended_at is None


def new_call_row(call: NewCall, now: float) -> CallRow:
    """The row ``call`` makes when it is inserted at ``now`` (the schema's defaults for the rest): what an admission
    returns without reading the row back (its JSON columns are the caller's own values)."""
    return CallRow(
        call_id=call.call_id,
        owner=call.owner,
        epoch=1,
        state=call.state,
        profile=call.profile,
        inputs=dict(call.inputs),
        caller=call.caller,
        dialed=call.dialed,
        received_at=call.received_at,
        accepted_at=call.accepted_at,
        deadlines=dict(call.deadlines),
        cost_usd=call.cost_usd,
        wake_at=None,
        takeovers=0,
        takeover_gap_s=None,
        entry_count=0,
        updated_at=now,
        ended_at=None,
        ended_reason=None,
    )


@dataclass(frozen=True)
class Entry:
    """One thing a call recorded as it happened. ``kind`` is the caller's word (``transcript``, ``tool_call``,
    ``usage``, ``mark``, …); ``data`` its JSON-able content."""

    kind: str
    at: float
    data: Mapping[str, Any]


@dataclass(frozen=True)
class StoredEntry:
    """An :class:`Entry` read back, with its position in the call (1, 2, 3, … in the order appended)."""

    seq: int
    kind: str
    at: float
    data: dict[str, Any]


@dataclass(frozen=True)
class ProcessRow:
    process_id: str
    started_at: float
    heartbeat_at: float
    lease_until: float
    info: dict[str, Any]


@dataclass(frozen=True)
class OutboxItem:
    """A delivery to make once the transaction that wrote it commits. ``key`` is unique across the outbox (e.g.
    ``call.ended:<call_id>:<destination>``): enqueuing the same key again is a no-op, so a retried or taken-over
    finish never delivers twice. ``destination`` names the sink (an endpoint URL, or ``jsonl``); ``payload`` is
    the unsigned body: sign at delivery time (a signature carries its own timestamp)."""

    key: str
    destination: str
    event: str
    payload: Mapping[str, Any]
    call_id: str | None = None
    #: not before this time (None: at once)
    due_at: float | None = None


@dataclass(frozen=True)
class OutboxRow:
    """An outbox row claimed for delivery. ``attempts`` counts this attempt too."""

    id: int
    key: str
    destination: str
    event: str
    payload: dict[str, Any]
    call_id: str | None
    created_at: float
    due_at: float
    attempts: int
    last_error: str | None


@dataclass(frozen=True)
class OutboxStats:
    """For ``/metrics``: rows waiting (due or not), rows given up, and the oldest waiting row's age."""

    pending: int
    gave_up: int
    oldest_age_s: float | None


#: the analysis's verdict on a call's success criteria, as the history filters it (#17): ``unknown`` is a call not
#: analysed, an analysis that failed, or one without success criteria
Outcome = Literal["succeeded", "failed", "unknown"]
OUTCOMES: tuple[Outcome, ...] = ("succeeded", "failed", "unknown")


@dataclass(frozen=True)
class HistoryQuery:
    """Filters of ``list_finished``; all optional. ``since``/``until`` bound ``ended_at`` (``since`` inclusive,
    ``until`` exclusive); ``caller`` matches the stored number exactly; ``text`` is a full-text search over the
    call's transcript (words, not substrings: every word must be in it; ``"a phrase"`` in quotes and ``-word`` to
    leave out, as PostgreSQL's ``websearch_to_tsquery``); ``outcome`` the analysis's verdict."""

    since: float | None = None
    until: float | None = None
    ended_reason: str | None = None
    profile: str | None = None
    caller: str | None = None
    limit: int = 50
    #: ``Page.next_cursor`` of the previous page
    cursor: str | None = None
    text: str | None = None
    outcome: Outcome | None = None


@dataclass(frozen=True)
class Page:
    """Finished calls, newest ``ended_at`` first; ``next_cursor`` is None on the last page."""

    calls: list[CallRow]
    next_cursor: str | None


@dataclass(frozen=True)
class DayCost:
    """What the calls that ended on one UTC day cost, split (USD)."""

    day: str  # YYYY-MM-DD
    model_usd: float
    transcription_usd: float
    analysis_usd: float


@dataclass(frozen=True)
class Overview:
    """Aggregates over the calls that ended in ``[since, until)`` (``Store.overview``). ``per_bucket`` holds every
    bucket of the range (start epoch seconds, calls; empty ones as 0), aligned on UTC multiples of ``bucket_s``;
    ``cost_per_day`` every UTC day of the range. Ring-to-answer (received to accepted, ms; nearest-rank
    percentiles) and handle time (accepted to ended, s) count answered calls only; ``transfer_rate`` is the share
    of calls that ended ``transferred``; ``success_rate`` the share of ``succeeded`` among calls with a verdict.
    None where nothing was there to measure."""

    since: float
    until: float
    bucket_s: int
    calls: int
    per_bucket: list[tuple[float, int]]
    ended_reasons: dict[str, int]
    cost_per_day: list[DayCost]
    ring_p50_ms: float | None
    ring_p95_ms: float | None
    avg_handle_s: float | None
    transfer_rate: float | None
    success_rate: float | None


@dataclass(frozen=True)
class Purged:
    """What one bounded ``Store.purge`` pass did: calls deleted, and calls whose transcript was stripped."""

    calls: int = 0
    transcripts: int = 0


#: what an operator can ask of a live call from any replica (``post_command``), and ``machine_detected``: Twilio's
#: answering-machine verdict that reached a replica not owning the call (#16), for its owner
CommandKind = Literal["hangup", "transfer", "say", "context", "mute", "unmute", "machine_detected"]
COMMAND_KINDS: tuple[CommandKind, ...] = ("hangup", "transfer", "say", "context", "mute", "unmute", "machine_detected")


@dataclass(frozen=True)
class CommandRow:
    """An operator command for a live call (``post_command``), as its owner takes it (``take_commands``).
    ``args`` is the kind's JSON-able details (``{"now": true}`` for a hangup, ``{"target": "sales"}`` for a
    transfer); ``taken_by`` is the process that took it last, ``outcome`` what it did (``command_done``)."""

    id: int
    call_id: str
    kind: str
    args: dict[str, Any]
    created_at: float
    taken_by: str | None
    taken_at: float | None
    done_at: float | None
    outcome: str | None


@dataclass(frozen=True)
class SweepCounts:
    """What one bounded ``sweep`` deleted."""

    claims: int = 0
    caller_hits: int = 0
    outbox: int = 0
    processes: int = 0
    #: operator commands older than ``keep_delivered_s`` (done or not: nobody acts on them any more)
    commands: int = 0
    #: Twilio calls (#16) made over ``keep_twilio_calls_s`` ago: over long since, their idempotency keys expired
    twilio_calls: int = 0
    #: console sessions past their expiry (revoked ones included) (#13)
    console_sessions: int = 0
    #: throttle rows of clients quiet for the backoff's forget period (#13)
    login_failures: int = 0
    #: rows of outbound batches (#16) finished or canceled over ``keep_batches_s`` ago, then those batches, once
    #: their rows are gone (a batch's rows go first, ``limit`` at a time: a batch holds up to 10,000)
    batch_rows: int = 0
    batches: int = 0

    @property
    def total(self) -> int:
        return sum(astuple(self))


#: the call states the store itself looks for (the rest are the caller's words)
HANGING_UP = "hanging_up"


# ---- helpers shared by the backends -----------------------------------------------------------------------


def encode_cursor(ended_at: float, call_id: str) -> str:
    raw = json.dumps([ended_at, call_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    """The position a cursor stands for; ValueError for anything that is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        ended_at, call_id = json.loads(raw)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise ValueError("not a history cursor") from exc
    if not isinstance(ended_at, int | float) or not isinstance(call_id, str):
        raise ValueError("not a history cursor")
    return float(ended_at), call_id


#: one encoder for every JSON column: ``json.dumps`` with any option builds a new encoder on each call (#18: the
#: store's share of the CPU per new call counted it on every entry)
_ENCODE = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def dumps(value: Mapping[str, Any]) -> str:
    """Compact JSON for a JSON column (``allow_nan=False``: PostgreSQL's jsonb refuses NaN, so both backends do)."""
    return _ENCODE(value)


def check_query(query: HistoryQuery) -> None:
    if not 1 <= query.limit <= 1000:
        raise ValueError("limit must be between 1 and 1000")
    if query.outcome is not None and query.outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of: {', '.join(OUTCOMES)}")
    if query.text is not None and not search_terms(query.text):
        raise ValueError("text must hold at least one word to search for")


# ---- the call history (#17) -------------------------------------------------------------------------------------

_TERM = re.compile(r'(-?)"([^"]*)"?|(-?)([^\s"]+)')
_WORD = re.compile(r"\w+")
#: at most this many words of a search are used (a search is a few words, not a document)
MAX_SEARCH_WORDS = 32
#: the stored analysis summary is cut to this many characters
SUMMARY_CHARS = 500


def search_terms(text: str) -> list[tuple[bool, list[str]]]:
    """A search as ``websearch_to_tsquery`` reads it: ``(negated, words)`` per term, a quoted phrase being one
    term of several words; punctuation is not a word. Terms without words are dropped."""
    terms: list[tuple[bool, list[str]]] = []
    count = 0
    for match in _TERM.finditer(text):
        negated = bool(match.group(1) or match.group(3))
        words = _WORD.findall(match.group(2) if match.group(2) is not None else match.group(4))
        words = [w.lower() for w in words][: max(0, MAX_SEARCH_WORDS - count)]
        if words:
            terms.append((negated, words))
            count += len(words)
    return terms


def fts5_query(text: str) -> str | None:
    """The FTS5 MATCH expression of a search (:func:`search_terms`): words quoted (never FTS5 syntax), all of them
    required, a phrase in order, ``-word`` left out. None for a search of negations only: it matches nothing (on
    both backends)."""
    terms = search_terms(text)
    positive = ['"' + " ".join(words) + '"' for negated, words in terms if not negated]
    negative = ['"' + " ".join(words) + '"' for negated, words in terms if negated]
    if not positive:
        return None
    return " AND ".join(positive) + "".join(f" NOT {n}" for n in negative)


def transcript_text(report: Mapping[str, Any]) -> str:
    """The searchable text of a report: its transcript's lines, one a line."""
    lines = report.get("transcript")
    if not isinstance(lines, list):
        return ""
    return "\n".join(str(line["text"]) for line in lines if isinstance(line, dict) and line.get("text"))


def cost_split(report: Mapping[str, Any], cost_usd: float) -> tuple[float, float]:
    """``(model_usd, transcription_usd)`` of a finished call: the report's ``transcription_cost_usd`` (0 when it
    has none) and the rest of its ``cost_usd`` (``cost_usd`` of the row when the report has none)."""
    raw_total = report.get("cost_usd")
    total = float(raw_total) if isinstance(raw_total, int | float) else cost_usd
    raw = report.get("transcription_cost_usd")
    transcription = float(raw) if isinstance(raw, int | float) else 0.0
    return total - transcription, transcription


def analysis_outcome(result: Mapping[str, Any] | None) -> tuple[str | None, str | None]:
    """``(outcome, summary)`` of a stored analysis document: ``succeeded``/``failed`` from its ``success`` (None =
    unknown), and its ``summary`` cut to :data:`SUMMARY_CHARS`."""
    if result is None:
        return None, None
    success = result.get("success")
    outcome = "succeeded" if success is True else "failed" if success is False else None
    summary = result.get("summary")
    return outcome, summary[:SUMMARY_CHARS] if isinstance(summary, str) and summary else None


def bucket_starts(since: float, until: float, bucket_s: int) -> list[float]:
    """The starts of the ``bucket_s`` buckets (UTC multiples) that ``[since, until)`` touches."""
    first = math.floor(since / bucket_s) * bucket_s
    return [float(t) for t in range(int(first), math.ceil(until), bucket_s)] if until > since else []


def utc_day(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%d")


def check_overview(since: float, until: float, bucket_s: int) -> None:
    if bucket_s not in (3600, 86400):
        raise ValueError("bucket_s must be 3600 (an hour) or 86400 (a day)")
    if not until > since:
        raise ValueError("until must be after since")
    if until - since > MAX_OVERVIEW_DAYS * 86400:
        raise ValueError(f"the range is at most {MAX_OVERVIEW_DAYS} days")


#: the longest range an overview covers
MAX_OVERVIEW_DAYS = 400


def make_overview(
    since: float,
    until: float,
    bucket_s: int,
    buckets: Mapping[int, int],
    reasons: Mapping[str, int],
    days: Mapping[int, tuple[float, float, float]],
    totals: tuple[int, int, int, int, float | None],
    ring: tuple[float | None, float | None],
) -> Overview:
    """The :class:`Overview` from what the backends' queries counted: calls per bucket number (``floor(ended_at /
    bucket_s)``), per ended_reason, cost per day number; ``totals`` = (calls, transferred, with a verdict,
    succeeded, average handle s); ``ring`` = (p50, p95) ms."""
    calls, transferred, judged, succeeded, handle = totals
    day_list = []
    for start in bucket_starts(since, until, 86400):
        number = int(start // 86400)
        model, transcription, analysis = days.get(number, (0.0, 0.0, 0.0))
        day_list.append(DayCost(utc_day(start), round(model, 6), round(transcription, 6), round(analysis, 6)))
    return Overview(
        since=since,
        until=until,
        bucket_s=bucket_s,
        calls=calls,
        per_bucket=[(start, buckets.get(int(start // bucket_s), 0)) for start in bucket_starts(since, until, bucket_s)],
        ended_reasons=dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))),
        cost_per_day=day_list,
        ring_p50_ms=None if ring[0] is None else round(ring[0], 1),
        ring_p95_ms=None if ring[1] is None else round(ring[1], 1),
        avg_handle_s=None if handle is None else round(handle, 3),
        transfer_rate=round(transferred / calls, 4) if calls else None,
        success_rate=round(succeeded / judged, 4) if judged else None,
    )


def percentile_ranks(n: int) -> tuple[int, int]:
    """The 1-based ranks of the nearest-rank p50 and p95 among ``n`` sorted values (``percentile_disc``)."""
    return max(1, math.ceil(0.5 * n)), max(1, math.ceil(0.95 * n))


# ---- rows as the backends read them ------------------------------------------------------------------------
# Both drivers give rows that are read by column name (sqlite3.Row, asyncpg.Record); JSON columns come back as
# text from SQLite (``load`` = json.loads) and already decoded from PostgreSQL's jsonb (``load`` = as_is).


def as_is(value: Any) -> Any:
    return value


def history_row(row: Any, load: Callable[[Any], Any]) -> CallRow:
    """A row of ``list_finished`` (the call's columns and its history summary)."""
    return replace(call_row(row, load), outcome=row["outcome"], analysis_summary=row["analysis_summary"])


def call_row(row: Any, load: Callable[[Any], Any]) -> CallRow:
    return CallRow(
        call_id=row["call_id"],
        owner=row["owner"],
        epoch=row["epoch"],
        state=row["state"],
        profile=row["profile"],
        inputs=load(row["inputs"]),
        caller=row["caller"],
        dialed=row["dialed"],
        received_at=row["received_at"],
        accepted_at=row["accepted_at"],
        deadlines=load(row["deadlines"]),
        cost_usd=row["cost_usd"],
        wake_at=row["wake_at"],
        takeovers=row["takeovers"],
        takeover_gap_s=row["takeover_gap_s"],
        entry_count=row["entry_count"],
        updated_at=row["updated_at"],
        ended_at=row["ended_at"],
        ended_reason=row["ended_reason"],
    )


def outbox_row(row: Any, load: Callable[[Any], Any]) -> OutboxRow:
    return OutboxRow(
        id=row["id"],
        key=row["key"],
        destination=row["destination"],
        event=row["event"],
        payload=load(row["payload"]),
        call_id=row["call_id"],
        created_at=row["created_at"],
        due_at=row["due_at"],
        attempts=row["attempts"],
        last_error=row["last_error"],
    )


def command_row(row: Any, load: Callable[[Any], Any]) -> CommandRow:
    return CommandRow(
        id=row["id"],
        call_id=row["call_id"],
        kind=row["kind"],
        args=load(row["args"]),
        created_at=row["created_at"],
        taken_by=row["taken_by"],
        taken_at=row["taken_at"],
        done_at=row["done_at"],
        outcome=row["outcome"],
    )
