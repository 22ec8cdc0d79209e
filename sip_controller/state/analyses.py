"""The post-call analyses the store keeps (#17): one row per analysed call, pending until a process has asked the
Responses API and stored the result (or given up, saying why).

A row is claimed with a lease like an outbox row (``claim_analyses``): whichever replica claims it runs it; a
process that dies mid-analysis leaves the lease to pass, and the next claim (any replica) runs it again. Each
claim counts an attempt. ``finish_analysis`` and ``fail_analysis`` write the outcome together with the outbox
rows that deliver it (``call.analyzed``), in one transaction, and only while the caller still holds the lease.

The SQL is in :class:`SQLiteAnalyses` and :class:`PostgresAnalyses`, mixed into the two backends.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from sip_controller.state.records import OutboxItem, analysis_outcome, dumps

AnalysisStatus = Literal["pending", "done", "failed"]
ANALYSIS_COLUMNS = (
    "call_id, profile, status, attempts, created_at, due_at, lease_owner, lease_until, last_error, result, "
    "cost_usd, finished_at"
)
T = TypeVar("T")


@dataclass(frozen=True)
class AnalysisRow:
    """One call's analysis. ``attempts`` counts the claims (the one in progress too); ``result`` is the stored
    analysis document (``done``, or ``failed`` with why); ``last_error`` the latest failure."""

    call_id: str
    profile: str
    status: AnalysisStatus
    attempts: int
    created_at: float
    due_at: float
    lease_owner: str | None
    lease_until: float | None
    last_error: str | None
    result: dict[str, Any] | None
    cost_usd: float | None
    finished_at: float | None


def analysis_row(row: Any, load: Callable[[Any], Any]) -> AnalysisRow:
    result = row["result"]
    return AnalysisRow(
        call_id=row["call_id"],
        profile=row["profile"],
        status=row["status"],
        attempts=row["attempts"],
        created_at=row["created_at"],
        due_at=row["due_at"],
        lease_owner=row["lease_owner"],
        lease_until=row["lease_until"],
        last_error=row["last_error"],
        result=None if result is None else dict(load(result)),
        cost_usd=row["cost_usd"],
        finished_at=row["finished_at"],
    )


def analysis_columns(status: str, result: Mapping[str, Any] | None, cost_usd: float | None) -> dict[str, Any] | None:
    """The call history's columns (#17) an analysis writes on its call once settled (``done`` or ``failed``: its
    verdict, summary and cost); None while it is pending (a retry)."""
    if status == "pending":
        return None
    outcome, summary = analysis_outcome(result)
    return {"outcome": outcome, "analysis_summary": summary, "analysis_usd": cost_usd}


def _as_is(value: Any) -> Any:
    return value


# ---- SQLite ------------------------------------------------------------------------------------------------------


class _Settling:
    """``finish_analysis`` and ``fail_analysis``, the same on both backends: each is one ``_settle`` (the backend's
    fenced update of the row with its outbox rows, in one transaction)."""

    async def _settle(
        self,
        worker: str,
        call_id: str,
        status: AnalysisStatus,
        result: Mapping[str, Any] | None,
        cost_usd: float | None,
        error: str | None,
        due_at: float | None,
        outbox: Sequence[OutboxItem],
    ) -> bool:
        raise NotImplementedError

    async def finish_analysis(
        self,
        worker: str,
        call_id: str,
        *,
        result: Mapping[str, Any],
        cost_usd: float | None,
        outbox: Sequence[OutboxItem] = (),
    ) -> bool:
        return await self._settle(worker, call_id, "done", result, cost_usd, None, None, outbox)

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
        status: AnalysisStatus = "failed" if next_attempt_at is None else "pending"
        return await self._settle(worker, call_id, status, result, None, error, next_attempt_at, outbox)


class SQLiteAnalyses(_Settling):
    """The analysis methods of :class:`~sip_controller.state.sqlite.SQLiteStore` (mixed in)."""

    if TYPE_CHECKING:
        import sqlite3

        _clock: Callable[[], float]

        async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...

        async def _run(self, fn: Callable[[Any], T]) -> T: ...

        @staticmethod
        def _enqueue(conn: sqlite3.Connection, items: Sequence[OutboxItem], now: float) -> int: ...

    async def create_analysis(self, call_id: str, profile: str, *, due_at: float | None = None) -> bool:
        now = self._clock()
        sql = (
            "INSERT INTO call_analyses (call_id, profile, status, created_at, due_at) VALUES (?, ?, 'pending', ?, ?) "
            "ON CONFLICT (call_id) DO NOTHING"
        )
        args = (call_id, profile, now, now if due_at is None else due_at)
        return bool(await self._write(lambda conn: conn.execute(sql, args).rowcount))

    async def claim_analyses(self, worker: str, *, limit: int = 10, lease_s: float = 300.0) -> list[AnalysisRow]:
        now = self._clock()
        sql = (
            "UPDATE call_analyses SET lease_owner = ?, lease_until = ?, attempts = attempts + 1 WHERE call_id IN "
            "(SELECT call_id FROM call_analyses WHERE status = 'pending' AND due_at <= ? "
            "AND (lease_until IS NULL OR lease_until <= ?) ORDER BY due_at, call_id LIMIT ?) "
            f"RETURNING {ANALYSIS_COLUMNS}"
        )

        def op(conn: Any) -> list[AnalysisRow]:
            rows = conn.execute(sql, (worker, now + lease_s, now, now, limit)).fetchall()
            return sorted((analysis_row(r, json.loads) for r in rows), key=lambda r: (r.due_at, r.call_id))

        return await self._write(op)

    async def _settle(
        self,
        worker: str,
        call_id: str,
        status: AnalysisStatus,
        result: Mapping[str, Any] | None,
        cost_usd: float | None,
        error: str | None,
        due_at: float | None,
        outbox: Sequence[OutboxItem],
    ) -> bool:
        now = self._clock()
        finished = None if status == "pending" else now
        sql = (
            "UPDATE call_analyses SET status = ?, result = coalesce(?, result), cost_usd = coalesce(?, cost_usd), "
            "last_error = coalesce(?, last_error), due_at = coalesce(?, due_at), finished_at = ?, "
            "lease_owner = NULL, lease_until = NULL "
            "WHERE call_id = ? AND status = 'pending' AND lease_owner = ?"
        )
        encoded = None if result is None else dumps(result)
        cut = None if error is None else error[:1000]
        args = (status, encoded, cost_usd, cut, due_at, finished, call_id, worker)

        summary = analysis_columns(status, result, cost_usd)

        def op(conn: Any) -> bool:
            if not conn.execute(sql, args).rowcount:
                return False
            if summary is not None:  # the call history's columns (#17), in the same transaction
                sets = ", ".join(f"{name} = ?" for name in summary)
                conn.execute(f"UPDATE calls SET {sets} WHERE call_id = ?", (*summary.values(), call_id))
            self._enqueue(conn, outbox, now)
            return True

        return await self._write(op)

    async def release_analysis(self, worker: str, call_id: str) -> bool:
        sql = (
            "UPDATE call_analyses SET lease_owner = NULL, lease_until = NULL, attempts = max(0, attempts - 1) "
            "WHERE call_id = ? AND status = 'pending' AND lease_owner = ?"
        )
        return bool(await self._write(lambda conn: conn.execute(sql, (call_id, worker)).rowcount))

    async def get_analysis(self, call_id: str) -> AnalysisRow | None:
        sql = f"SELECT {ANALYSIS_COLUMNS} FROM call_analyses WHERE call_id = ?"

        def op(conn: Any) -> AnalysisRow | None:
            row = conn.execute(sql, (call_id,)).fetchone()
            return None if row is None else analysis_row(row, json.loads)

        return await self._run(op)


# ---- PostgreSQL --------------------------------------------------------------------------------------------------


class PostgresAnalyses(_Settling):
    """The analysis methods of :class:`~sip_controller.state.postgres.PostgresStore` (mixed in)."""

    if TYPE_CHECKING:
        _clock: Callable[[], float]

        def _tx(self) -> AbstractAsyncContextManager[Any]: ...

        def _conn(self) -> AbstractAsyncContextManager[Any]: ...

        async def _enqueue_outbox(self, conn: Any, items: Sequence[OutboxItem], now: float) -> int: ...

    async def create_analysis(self, call_id: str, profile: str, *, due_at: float | None = None) -> bool:
        now = self._clock()
        async with self._conn() as conn:
            status = await conn.execute(
                "INSERT INTO call_analyses (call_id, profile, status, created_at, due_at) "
                "VALUES ($1, $2, 'pending', $3, $4) ON CONFLICT (call_id) DO NOTHING",
                call_id, profile, now, now if due_at is None else due_at,
            )  # fmt: skip
        return bool(_count(status))

    async def claim_analyses(self, worker: str, *, limit: int = 10, lease_s: float = 300.0) -> list[AnalysisRow]:
        now = self._clock()
        async with self._tx() as conn:
            rows = await conn.fetch(
                "UPDATE call_analyses SET lease_owner = $1, lease_until = $2, attempts = attempts + 1 WHERE call_id IN "
                "(SELECT call_id FROM call_analyses WHERE status = 'pending' AND due_at <= $3 "
                "AND (lease_until IS NULL OR lease_until <= $3) ORDER BY due_at, call_id LIMIT $4 "
                f"FOR UPDATE SKIP LOCKED) RETURNING {ANALYSIS_COLUMNS}",
                worker, now + lease_s, now, limit,
            )  # fmt: skip
        return sorted((analysis_row(r, _as_is) for r in rows), key=lambda r: (r.due_at, r.call_id))

    async def _settle(
        self,
        worker: str,
        call_id: str,
        status: AnalysisStatus,
        result: Mapping[str, Any] | None,
        cost_usd: float | None,
        error: str | None,
        due_at: float | None,
        outbox: Sequence[OutboxItem],
    ) -> bool:
        now = self._clock()
        async with self._tx() as conn:
            changed = await conn.execute(
                "UPDATE call_analyses SET status = $1, result = coalesce($2::jsonb, result), "
                "cost_usd = coalesce($3, cost_usd), last_error = coalesce($4, last_error), "
                "due_at = coalesce($5, due_at), finished_at = $6, lease_owner = NULL, lease_until = NULL "
                "WHERE call_id = $7 AND status = 'pending' AND lease_owner = $8",
                status, None if result is None else dict(result), cost_usd,
                None if error is None else error[:1000], due_at, None if status == "pending" else now,
                call_id, worker,
            )  # fmt: skip
            if not _count(changed):
                return False
            summary = analysis_columns(status, result, cost_usd)
            if summary is not None:  # the call history's columns (#17), in the same transaction
                await conn.execute(
                    "UPDATE calls SET outcome = $1, analysis_summary = $2, analysis_usd = $3 WHERE call_id = $4",
                    summary["outcome"], summary["analysis_summary"], summary["analysis_usd"], call_id,
                )  # fmt: skip
            await self._enqueue_outbox(conn, outbox, now)
        return True

    async def release_analysis(self, worker: str, call_id: str) -> bool:
        async with self._conn() as conn:
            status = await conn.execute(
                "UPDATE call_analyses SET lease_owner = NULL, lease_until = NULL, attempts = greatest(0, attempts - 1) "
                "WHERE call_id = $1 AND status = 'pending' AND lease_owner = $2",
                call_id, worker,
            )  # fmt: skip
        return bool(_count(status))

    async def get_analysis(self, call_id: str) -> AnalysisRow | None:
        async with self._conn() as conn:
            row = await conn.fetchrow(f"SELECT {ANALYSIS_COLUMNS} FROM call_analyses WHERE call_id = $1", call_id)
        return None if row is None else analysis_row(row, _as_is)


def _count(status: str) -> int:
    """The row count of an asyncpg command status (``UPDATE 1``, ``INSERT 0 1``)."""
    return int(status.rsplit(" ", 1)[-1])
