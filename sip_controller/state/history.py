"""The call history the store answers (#17): finished calls listed with filters and full-text search, the
overview's aggregates, and the retention purge.

What they read is written when a call finishes and when its analysis lands (migration 0008): summary columns on
``calls`` (``outcome``, ``model_usd``, ``transcription_usd``, ``analysis_usd``, ``analysis_summary``) and the
transcript's words (SQLite: the FTS5 table ``call_text``; PostgreSQL: a ``tsvector`` in ``call_search`` with a GIN
index). The overview is aggregate SQL over an index of the finished calls: one grouped pass (per bucket and
``ended_reason``) and one sorted pass for the ring-to-answer percentiles, never the calls themselves.

The SQL is in :class:`SQLiteHistory` and :class:`PostgresHistory`, mixed into the two backends; the rows they
write on the finishing path are built by :func:`finish_columns` here, the same for both.

A parked leg (#16: ``ended_reason`` ``parked``, an OpenAI leg that ended while its Twilio call waits on a hold) is
not a call of its own: the list (its search and export) and the overview leave it out (:data:`LISTED`). When a
person comes back, the next leg's row covers the whole call; when the call ends while parked, ``close_parked``
gives the parked leg's row the call's reason and final report, and it is listed from then on. ``get_call`` and
``get_report`` still return a parked leg, and the retention purge deletes it by age like any finished call.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, TypeVar

from sip_controller.state.records import (
    CallRow,
    HistoryQuery,
    Overview,
    Page,
    Purged,
    as_is,
    check_overview,
    check_query,
    cost_split,
    decode_cursor,
    encode_cursor,
    fts5_query,
    history_row,
    make_overview,
    percentile_ranks,
    search_terms,
    transcript_text,
)
from sip_controller.state.twilio_calls import MERGED, PARKED

T = TypeVar("T")

#: the finished calls history shows: every one but the legs of a parked call (a parked leg not closed yet, and the
#: later legs whose call is reported on its first leg's row); ``ended_reason`` may be NULL on old rows
LISTED = f"ended_at IS NOT NULL AND (ended_reason IS NULL OR ended_reason NOT IN ('{PARKED}', '{MERGED}'))"

#: every column of ``calls`` but the report, and the history summary ``list_finished`` shows
HISTORY_COLUMNS = (
    "call_id, owner, epoch, state, profile, inputs, caller, dialed, received_at, accepted_at, deadlines, cost_usd, "
    "wake_at, takeovers, takeover_gap_s, entry_count, updated_at, ended_at, ended_reason, outcome, analysis_summary"
)


def finish_columns(report: Mapping[str, Any], cost_usd: float) -> tuple[dict[str, float], str]:
    """The summary columns a finishing call writes (its cost split) and its searchable transcript text."""
    model, transcription = cost_split(report, cost_usd)
    return {"model_usd": model, "transcription_usd": transcription}, transcript_text(report)


def _page(calls: list[CallRow], limit: int) -> Page:
    shown = calls[:limit]
    last = shown[-1] if shown else None
    more = len(calls) > limit
    cursor = encode_cursor(last.ended_at, last.call_id) if more and last and last.ended_at is not None else None
    return Page(shown, cursor)


class _Grouped:
    """What the grouped pass counted, folded into the overview's parts."""

    def __init__(self, bucket_s: int) -> None:
        self.bucket_s = bucket_s
        self.buckets: dict[int, int] = {}
        self.reasons: dict[str, int] = {}
        self.days: dict[int, tuple[float, float, float]] = {}
        self.calls = self.transferred = self.judged = self.succeeded = self.answered = 0
        self.handle_sum = 0.0

    def add_reason(self, reason: str, n: int) -> None:
        self.reasons[reason] = self.reasons.get(reason, 0) + n
        if reason == "transferred":
            self.transferred += n

    def add(self, row: Any) -> None:
        """A row of :func:`_grouped_sql`: per bucket and reason, or per bucket only (reason None: the reasons are
        counted apart, :meth:`add_reason`)."""
        bucket, reason, n = int(row[0]), row[1], int(row[2])
        self.calls += n
        self.buckets[bucket] = self.buckets.get(bucket, 0) + n
        if reason is not None:
            self.add_reason(str(reason), n)
        day = bucket * self.bucket_s // 86400
        model, transcription, analysis = self.days.get(day, (0.0, 0.0, 0.0))
        self.days[day] = (model + (row[3] or 0.0), transcription + (row[4] or 0.0), analysis + (row[5] or 0.0))
        self.judged += int(row[6] or 0)
        self.succeeded += int(row[7] or 0)
        self.answered += int(row[8] or 0)
        self.handle_sum += float(row[9] or 0.0)

    def totals(self) -> tuple[int, int, int, int, float | None]:
        handle = self.handle_sum / self.answered if self.answered else None
        return self.calls, self.transferred, self.judged, self.succeeded, handle


def _grouped_sql(mark: Callable[[int], str], *, by_reason: bool = True) -> str:
    """One pass over the finished calls of a range, grouped by bucket number and ``ended_reason`` (or by bucket
    only: then in the index's order, without a sort)."""
    reason = "coalesce(ended_reason, 'unknown')" if by_reason else "NULL"
    return (
        f"SELECT CAST(floor(ended_at / {mark(1)}) AS BIGINT) AS b, {reason} AS r, count(*), "
        "sum(model_usd), sum(transcription_usd), sum(analysis_usd), count(outcome), "
        "sum(CASE WHEN outcome = 'succeeded' THEN 1 ELSE 0 END), count(accepted_at), "
        "sum(CASE WHEN accepted_at IS NOT NULL THEN ended_at - accepted_at END) "
        f"FROM calls WHERE {LISTED} AND ended_at >= {mark(2)} AND ended_at < {mark(3)} "
        f"GROUP BY {'b, r' if by_reason else 'b'}"
    )


def _filters(query: HistoryQuery, mark: Callable[[int], str]) -> tuple[list[str], list[object]]:
    """The WHERE terms of ``query``'s column filters and outcome, and their arguments; ``mark(n)`` is the n-th
    argument's placeholder (``?`` or ``$n``). The text search and the cursor are each backend's own."""
    where = [LISTED]
    args: list[object] = []
    for column, op, value in (
        ("ended_at", ">=", query.since),
        ("ended_at", "<", query.until),
        ("ended_reason", "=", query.ended_reason),
        ("profile", "=", query.profile),
        ("caller", "=", query.caller),
    ):
        if value is not None:
            args.append(value)
            where.append(f"{column} {op} {mark(len(args))}")
    if query.outcome == "unknown":
        where.append("outcome IS NULL")
    elif query.outcome is not None:
        args.append(query.outcome)
        where.append(f"outcome = {mark(len(args))}")
    return where, args


# ---- SQLite ------------------------------------------------------------------------------------------------------


class SQLiteHistory:
    """The history methods of :class:`~sip_controller.state.sqlite.SQLiteStore` (mixed in)."""

    if TYPE_CHECKING:
        import sqlite3

        _clock: Callable[[], float]

        async def _write(self, fn: Callable[[sqlite3.Connection], T], *, inline: bool = False) -> T: ...

        async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...

        async def _run(self, fn: Callable[[Any], T]) -> T: ...

    @staticmethod
    def _index_text(conn: Any, call_id: str, text: str) -> None:
        """The finished call's transcript into the full-text index, in the finishing transaction."""
        if not text:
            return
        row = conn.execute("INSERT INTO call_search (call_id) VALUES (?) RETURNING id", (call_id,)).fetchone()
        conn.execute("INSERT INTO call_text (rowid, body) VALUES (?, ?)", (row[0], text))

    @staticmethod
    def _settle_call(conn: Any, call_id: str, columns: Mapping[str, Any] | None) -> None:
        if columns is None:
            return
        sets = ", ".join(f"{name} = ?" for name in columns)
        conn.execute(f"UPDATE calls SET {sets} WHERE call_id = ?", (*columns.values(), call_id))

    async def list_finished(self, query: HistoryQuery) -> Page:
        check_query(query)
        where, args = _filters(query, lambda _: "?")
        if query.text is not None:
            match = fts5_query(query.text)
            if match is None:
                return Page([], None)
            where.append(
                "call_id IN (SELECT s.call_id FROM call_text JOIN call_search s ON s.id = call_text.rowid "
                "WHERE call_text MATCH ?)"
            )
            args.append(match)
        if query.cursor is not None:
            ended_at, call_id = decode_cursor(query.cursor)
            where.append("(ended_at, call_id) < (?, ?)")
            args += [ended_at, call_id]
        sql = (
            f"SELECT {HISTORY_COLUMNS} FROM calls WHERE {' AND '.join(where)} "
            "ORDER BY ended_at DESC, call_id DESC LIMIT ?"
        )
        rows = await self._run(
            lambda conn: [history_row(r, json.loads) for r in conn.execute(sql, (*args, query.limit + 1))]
        )
        return _page(rows, query.limit)

    async def overview(self, since: float, until: float, *, bucket_s: int) -> Overview:
        check_overview(since, until, bucket_s)
        # by bucket in the overview index's order (no sort), the reasons apart (their own index): measured at
        # 100,000 calls, cheaper than one pass grouped by both
        grouped_sql = _grouped_sql(lambda _: "?", by_reason=False).replace("floor(ended_at / ?)", "ended_at / ?")
        reasons_sql = (
            f"SELECT coalesce(ended_reason, 'unknown'), count(*) FROM calls WHERE {LISTED} "
            "AND ended_at >= ? AND ended_at < ? GROUP BY ended_reason"
        )
        # nearest rank, each from the end it is nearer to: the sorter then keeps only the rows up to that rank
        ring_sql = (
            f"SELECT (accepted_at - received_at) * 1000.0 AS r FROM calls WHERE {LISTED} "
            "AND ended_at >= ? AND ended_at < ? AND accepted_at IS NOT NULL ORDER BY r {order} LIMIT 1 OFFSET ?"
        )

        def op(conn: Any) -> Overview:
            grouped = _Grouped(bucket_s)
            for row in conn.execute(grouped_sql, (bucket_s, since, until)):
                grouped.add(row)
            for reason, n in conn.execute(reasons_sql, (since, until)):
                grouped.add_reason(reason, n)
            ring: tuple[float | None, float | None] = (None, None)
            if grouped.answered:
                n = grouped.answered
                found = []
                for rank in percentile_ranks(n):
                    order, offset = ("ASC", rank - 1) if rank <= n - rank else ("DESC", n - rank)
                    row = conn.execute(ring_sql.format(order=order), (since, until, offset)).fetchone()
                    found.append(None if row is None else row[0])
                ring = (found[0], found[1])
            return make_overview(
                since, until, bucket_s, grouped.buckets, grouped.reasons, grouped.days, grouped.totals(), ring
            )

        return await self._read(op)

    async def purge(self, *, before: float, transcripts_before: float | None, limit: int) -> Purged:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        now = self._clock()

        def op(conn: Any) -> Purged:
            doomed = [
                (r[0],)
                for r in conn.execute(
                    "SELECT call_id FROM calls WHERE ended_at IS NOT NULL AND ended_at < ? ORDER BY ended_at LIMIT ?",
                    (before, limit),
                )
            ]
            conn.executemany("DELETE FROM calls WHERE call_id = ?", doomed)  # entries, analyses, text: cascade
            left = limit - len(doomed)
            if transcripts_before is None or left <= 0:
                return Purged(len(doomed), 0)
            stripped = [
                (r[0],)
                for r in conn.execute(
                    "SELECT call_id FROM calls WHERE ended_at IS NOT NULL AND transcript_stripped_at IS NULL "
                    "AND ended_at < ? ORDER BY ended_at LIMIT ?",
                    (transcripts_before, left),
                )
            ]
            conn.executemany(
                "UPDATE calls SET transcript_stripped_at = ?, report = CASE WHEN report IS NULL THEN NULL "
                "ELSE json_set(report, '$.transcript', json('[]')) END WHERE call_id = ?",
                [(now, call_id) for (call_id,) in stripped],
            )
            conn.executemany("DELETE FROM call_entries WHERE call_id = ? AND kind = 'transcript'", stripped)
            conn.executemany("DELETE FROM call_search WHERE call_id = ?", stripped)
            return Purged(len(doomed), len(stripped))

        return await self._write(op)


# ---- PostgreSQL --------------------------------------------------------------------------------------------------


class PostgresHistory:
    """The history methods of :class:`~sip_controller.state.postgres.PostgresStore` (mixed in)."""

    if TYPE_CHECKING:
        _clock: Callable[[], float]

        def _conn(self) -> AbstractAsyncContextManager[Any]: ...

        def _tx(self) -> AbstractAsyncContextManager[Any]: ...

    async def list_finished(self, query: HistoryQuery) -> Page:
        check_query(query)
        where, args = _filters(query, lambda n: f"${n}")
        if query.text is not None:
            if not any(not negated for negated, _ in search_terms(query.text)):
                return Page([], None)  # negations only: nothing, as on SQLite
            args.append(query.text)
            where.append(
                f"call_id IN (SELECT call_id FROM call_search WHERE body @@ websearch_to_tsquery('simple', "
                f"${len(args)}))"
            )
        if query.cursor is not None:
            ended_at, call_id = decode_cursor(query.cursor)
            args += [ended_at, call_id]
            where.append(f"(ended_at, call_id) < (${len(args) - 1}, ${len(args)})")
        args.append(query.limit + 1)
        async with self._conn() as conn:
            rows = await conn.fetch(
                f"SELECT {HISTORY_COLUMNS} FROM calls WHERE {' AND '.join(where)} "
                f"ORDER BY ended_at DESC, call_id DESC LIMIT ${len(args)}",
                *args,
            )
        return _page([history_row(r, as_is) for r in rows], query.limit)

    async def overview(self, since: float, until: float, *, bucket_s: int) -> Overview:
        check_overview(since, until, bucket_s)
        grouped = _Grouped(bucket_s)
        async with self._tx() as conn:  # one snapshot for both passes
            for row in await conn.fetch(_grouped_sql(lambda n: f"${n}"), float(bucket_s), since, until):
                grouped.add(row)
            ring: tuple[float | None, float | None] = (None, None)
            if grouped.answered:
                found = await conn.fetchrow(
                    "SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY r), percentile_disc(0.95) WITHIN GROUP "
                    f"(ORDER BY r) FROM (SELECT (accepted_at - received_at) * 1000.0 AS r FROM calls WHERE {LISTED} "
                    "AND ended_at >= $1 AND ended_at < $2 AND accepted_at IS NOT NULL) x",
                    since, until,
                )  # fmt: skip
                ring = (found[0], found[1])
        return make_overview(
            since, until, bucket_s, grouped.buckets, grouped.reasons, grouped.days, grouped.totals(), ring
        )

    async def purge(self, *, before: float, transcripts_before: float | None, limit: int) -> Purged:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        now = self._clock()
        async with self._tx() as conn:
            deleted = await conn.fetchval(
                "WITH d AS (DELETE FROM calls WHERE call_id IN (SELECT call_id FROM calls WHERE ended_at IS NOT NULL "
                "AND ended_at < $1 ORDER BY ended_at LIMIT $2 FOR UPDATE SKIP LOCKED) RETURNING 1) "
                "SELECT count(*) FROM d",
                before, limit,
            )  # fmt: skip
            left = limit - int(deleted)
            if transcripts_before is None or left <= 0:
                return Purged(int(deleted), 0)
            stripped = await conn.fetch(
                "UPDATE calls SET transcript_stripped_at = $1, report = CASE WHEN report IS NULL THEN NULL "
                "ELSE jsonb_set(report, '{transcript}', '[]'::jsonb) END WHERE call_id IN (SELECT call_id FROM calls "
                "WHERE ended_at IS NOT NULL AND transcript_stripped_at IS NULL AND ended_at < $2 ORDER BY ended_at "
                "LIMIT $3 FOR UPDATE SKIP LOCKED) RETURNING call_id",
                now, transcripts_before, left,
            )  # fmt: skip
            ids = [r["call_id"] for r in stripped]
            if ids:
                await conn.execute(
                    "DELETE FROM call_entries WHERE call_id = ANY($1::text[]) AND kind = 'transcript'", ids
                )
                await conn.execute("DELETE FROM call_search WHERE call_id = ANY($1::text[])", ids)
        return Purged(int(deleted), len(ids))
