"""The cluster's calls for the admin API: ``GET /v1/calls`` filters, summaries of stored calls, the overview
(``GET /v1/overview``, #17), and the store a runtime shares with the other replicas.

``GET /v1/calls`` takes ``since``/``until`` (RFC 3339 with an offset, or epoch seconds; they bound ``ended_at``),
``ended_reason``, ``profile``, ``caller`` (E.164), ``outcome`` (``succeeded``, ``failed``, ``unknown``), ``q`` (a
full-text search of the transcripts: words, ``"a phrase"``, ``-word``), ``limit`` (1 to :data:`MAX_LIMIT`) and
``cursor`` (the ``next_cursor`` of the previous page). A bad value is a :class:`BadParameter` that names the
parameter (400). The export (:mod:`.history_export`) takes the same filters.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, get_args

from sip_controller.calls.report import CallRecord, mask_number
from sip_controller.calls.states import EndedReason
from sip_controller.state.records import (
    MAX_OVERVIEW_DAYS,
    OUTCOMES,
    CallRow,
    HistoryQuery,
    Outcome,
    Overview,
    decode_cursor,
    search_terms,
)
from sip_controller.state.store import Store

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
#: at most this many live calls of the cluster in one answer
MAX_LIVE = 1000
ENDED_REASONS: tuple[str, ...] = get_args(EndedReason)
#: the filters of the list and of the export
FILTERS = ("since", "until", "ended_reason", "profile", "caller", "outcome", "q")
PARAMETERS = (*FILTERS, "limit", "cursor")
OVERVIEW_PARAMETERS = ("since", "until", "bucket")
#: ``GET /v1/overview``'s buckets
BUCKETS = {"hour": 3600, "day": 86_400}

_E164 = re.compile(r"\+[1-9][0-9]{1,14}")
_EPOCH = re.compile(r"[0-9]{1,12}(\.[0-9]{1,9})?")
_WORD = re.compile(r"\w+")


class BadParameter(ValueError):
    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"`{name}`: {message}")
        self.name = name


@dataclass(frozen=True)
class ListQuery:
    """``GET /v1/calls``'s query. Live calls (first page only) match ``profile`` and ``caller``; ``since``,
    ``until`` and ``ended_reason`` are about how a call ended, so live calls are left out when one is given."""

    history: HistoryQuery

    @property
    def include_live(self) -> bool:
        h = self.history
        return (
            h.cursor is None
            and h.since is None
            and h.until is None
            and h.ended_reason is None
            and h.outcome is None
            and h.text is None
        )

    def matches_live(self, profile: str, caller: str | None) -> bool:
        h = self.history
        return (h.profile is None or h.profile == profile) and (h.caller is None or h.caller == caller)

    def matches_finished(
        self, profile: str, caller: str | None, ended_reason: str | None, ended_at: float, transcript: str = ""
    ) -> bool:
        """For a call of this process's memory (no store): it has no analysis (``outcome`` ``unknown``); ``q`` is
        matched on its ``transcript`` as the stores match it (words, phrases, ``-word``)."""
        h = self.history
        return (
            self.matches_live(profile, caller)
            and (h.ended_reason is None or h.ended_reason == ended_reason)
            and (h.since is None or ended_at >= h.since)
            and (h.until is None or ended_at < h.until)
            and h.outcome in (None, "unknown")
            and (h.text is None or text_matches(h.text, transcript))
        )


def text_matches(search: str, transcript: str) -> bool:
    """Whether ``transcript`` matches a search the way the stores' full-text indexes do: every term's words in
    order (a phrase) somewhere in it, none of the ``-`` terms; a search of negations only matches nothing."""
    words = [w.lower() for w in _WORD.findall(transcript)]
    joined = " " + " ".join(words) + " "
    terms = search_terms(search)
    if not any(not negated for negated, _ in terms):
        return False
    return all((" " + " ".join(phrase) + " " in joined) != negated for negated, phrase in terms)


#: the latest time a parameter may name (9000-01-01T00:00:00Z): days and buckets computed from it stay in the range
#: of Python's datetime (an epoch of 12 digits reaches year 33658)
LATEST_S = 221845392000.0


def parse_time(name: str, value: str) -> float:
    """RFC 3339 with an offset (``2025-01-31T12:00:00Z``) or epoch seconds, as epoch seconds."""
    if _EPOCH.fullmatch(value):
        seconds = float(value)
        if seconds >= LATEST_S:
            raise BadParameter(name, "must be before 9000-01-01T00:00:00Z")
        return seconds
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise BadParameter(name, "use RFC 3339 (2025-01-31T12:00:00Z) or epoch seconds") from None
    if moment.tzinfo is None:
        raise BadParameter(name, "an RFC 3339 time needs its offset (Z or +HH:MM)")
    seconds = moment.timestamp()
    if not math.isfinite(seconds) or seconds < 0:
        raise BadParameter(name, "must be after 1970-01-01T00:00:00Z")
    if seconds >= LATEST_S:
        raise BadParameter(name, "must be before 9000-01-01T00:00:00Z")
    return seconds


def _known(params: Mapping[str, str], known: tuple[str, ...]) -> None:
    """Refuse a parameter the route does not know (a typo would widen the answer)."""
    for name in params:
        if name not in known:
            raise BadParameter(name[:40], f"unknown parameter; use: {', '.join(known)}")


def _text(params: Mapping[str, str], name: str) -> str | None:
    value = params.get(name)
    if value is None:
        return None
    if not value or len(value) > 200:
        raise BadParameter(name, "must be 1 to 200 characters")
    return value


def parse_list_query(params: Mapping[str, str], *, known: tuple[str, ...] = PARAMETERS) -> ListQuery:
    """The query of ``GET /v1/calls`` (and the filters of the export, which has ``known`` parameters of its own); a
    parameter it does not know is refused (a typo would widen the answer)."""
    _known(params, known)

    def text(name: str) -> str | None:
        return _text(params, name)

    since = None if (raw := text("since")) is None else parse_time("since", raw)
    until = None if (raw := text("until")) is None else parse_time("until", raw)
    if since is not None and until is not None and since >= until:
        raise BadParameter("until", "must be after `since`")
    ended_reason = text("ended_reason")
    if ended_reason is not None and ended_reason not in ENDED_REASONS:
        raise BadParameter("ended_reason", f"one of: {', '.join(ENDED_REASONS)}")
    caller = text("caller")
    if caller is not None and not _E164.fullmatch(caller):
        raise BadParameter("caller", "an E.164 number such as +14155550123 (+ and up to 15 digits)")
    limit = DEFAULT_LIMIT
    if (raw := text("limit")) is not None:
        if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
            raise BadParameter("limit", f"a whole number from 1 to {MAX_LIMIT}")
        limit = int(raw)
    cursor = text("cursor")
    if cursor is not None:
        try:
            decode_cursor(cursor)
        except ValueError:
            raise BadParameter("cursor", "not a cursor from this API; pass back `next_cursor` as it came") from None
    outcome: Outcome | None = None
    if (raw := text("outcome")) is not None:
        if raw not in OUTCOMES:
            raise BadParameter("outcome", f"one of: {', '.join(OUTCOMES)}")
        outcome = raw
    search = text("q")
    if search is not None and not any(not negated for negated, _ in search_terms(search)):
        raise BadParameter("q", "search for at least one word (letters or digits), e.g. q=refund")
    query = HistoryQuery(
        since=since, until=until, ended_reason=ended_reason, profile=text("profile"), caller=caller, limit=limit,
        cursor=cursor, text=search, outcome=outcome,
    )  # fmt: skip
    return ListQuery(query)


@dataclass(frozen=True)
class OverviewQuery:
    since: float
    until: float
    bucket: str

    @property
    def bucket_s(self) -> int:
        return BUCKETS[self.bucket]


def parse_overview_query(params: Mapping[str, str], now: float) -> OverviewQuery:
    """``GET /v1/overview``'s query: ``since``/``until`` (default: the last 24 h up to now; at most
    :data:`~sip_controller.state.records.MAX_OVERVIEW_DAYS` days apart) and ``bucket`` (``hour``, the default, or
    ``day``)."""
    _known(params, OVERVIEW_PARAMETERS)
    until = now if (raw := _text(params, "until")) is None else parse_time("until", raw)
    since = until - 86_400 if (raw := _text(params, "since")) is None else parse_time("since", raw)
    if since >= until:
        raise BadParameter("until", "must be after `since`")
    if until - since > MAX_OVERVIEW_DAYS * 86_400:
        raise BadParameter("since", f"the range is at most {MAX_OVERVIEW_DAYS} days")
    bucket = _text(params, "bucket") or "hour"
    if bucket not in BUCKETS:
        raise BadParameter("bucket", f"one of: {', '.join(BUCKETS)}")
    return OverviewQuery(since, until, bucket)


def overview_json(overview: Overview, bucket: str) -> dict[str, Any]:
    """``GET /v1/overview``'s answer."""
    return {
        "since": iso(overview.since),
        "until": iso(overview.until),
        "bucket": bucket,
        "calls": overview.calls,
        "per_bucket": [{"start": iso(start), "calls": n} for start, n in overview.per_bucket],
        "ended_reasons": overview.ended_reasons,
        "cost_per_day": [
            {
                "day": d.day,
                "model_usd": d.model_usd,
                "transcription_usd": d.transcription_usd,
                "analysis_usd": d.analysis_usd,
            }
            for d in overview.cost_per_day
        ],
        "ring_to_answer_ms": {"p50": overview.ring_p50_ms, "p95": overview.ring_p95_ms},
        "avg_handle_s": overview.avg_handle_s,
        "transfer_rate": overview.transfer_rate,
        "success_rate": overview.success_rate,
    }


def cluster_store(runtime: Any) -> Store | None:
    """The store this replica shares with the others (None when the app runs with a claim-only store, such as
    :class:`~sip_controller.state.store.MemoryStore`: then only this process's calls are known)."""
    store = getattr(runtime, "store", None)
    if store is None or not hasattr(store, "list_finished") or not hasattr(store, "post_command"):
        return None
    found: Store = store
    return found


def process_id(runtime: Any) -> str | None:
    """This replica's process id in the store (None when it has none)."""
    value = getattr(runtime, "process_id", None) or getattr(getattr(runtime, "registry", None), "owner", None)
    return value if isinstance(value, str) else None


def iso(epoch_s: float | None) -> str | None:
    if epoch_s is None:
        return None
    return datetime.fromtimestamp(epoch_s, UTC).isoformat().replace("+00:00", "Z")


def row_summary(row: CallRow, now: float) -> dict[str, Any]:
    """One row of ``GET /v1/calls`` for a call the store holds: never the transcript, the caller masked."""
    end = now if row.ended_at is None else row.ended_at
    return {
        "call_id": row.call_id,
        "profile": row.profile,
        "state": row.state,
        "live": row.live,
        "started": iso(row.received_at),
        "ended": iso(row.ended_at),
        "duration_s": round(max(0.0, end - row.received_at), 3),
        "caller": mask_number(row.caller),
        "ended_reason": row.ended_reason,
        "cost_usd": round(row.cost_usd, 6),
        "owner": row.owner if row.live else None,
        # the analysis's verdict and summary (#17): finished calls only (a live call has none yet)
        "outcome": None if row.live else row.outcome or "unknown",
        "analysis_summary": row.analysis_summary,
    }


def record_ended_at(record: CallRecord) -> float:
    """When a finished in-memory record ended, in epoch seconds (received + duration)."""
    return record.received_at.timestamp() + (record.duration_s or 0.0)


def masked_report(report: dict[str, Any], *, mask_caller: bool) -> dict[str, Any]:
    """A stored report as the API shows it: the caller masked when the settings say so, whatever was stored."""
    if mask_caller and report.get("caller_masked") is not True:
        caller = report.get("caller")
        return {**report, "caller": mask_number(caller) if isinstance(caller, str) else caller, "caller_masked": True}
    return report
