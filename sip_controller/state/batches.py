"""Outbound call batches the store keeps (#16): a batch's settings and its rows, each row a number to call.

A row goes ``queued`` → ``placing`` (claimed with a lease by one replica's dialler) → ``in_flight`` (Twilio has the
call: ``twilio_id`` names its ``twilio_calls`` row) → ``done`` with an ``outcome``; or back to ``queued`` (a retry
after ``no_answer``/``busy``, or calling hours not open yet). A ``placing`` row whose lease passed (its process died)
is claimed again; the attempt's Idempotency-Key (``batch:<id>:<row>:<attempt>``) makes that claim find the Twilio
call the dead process may have placed instead of placing another.

Pacing is the store's, so it holds across every replica: ``claim_batch_rows`` takes, per running batch and in one
transaction (the batch row locked on PostgreSQL), no more rows than its pacing slots allow (``next_slot_at``
advances by ``1 / calls_per_second`` per row) and no more than ``max_in_flight`` minus its rows placing or in
flight.

The SQL is in :class:`SQLiteBatches` and :class:`PostgresBatches`, mixed into the two backends.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from sip_controller.state.records import dumps

BatchStatus = Literal["running", "paused", "canceled", "done"]
BatchAction = Literal["pause", "resume", "cancel"]
RowState = Literal["queued", "placing", "in_flight", "done", "canceled"]
ROW_STATES: tuple[RowState, ...] = ("queued", "placing", "in_flight", "done", "canceled")
#: how far behind ``now`` a batch's pacing slot may lag: after an idle spell at most ``calls_per_second + 1`` calls
#: start at once; over any W seconds at most ``calls_per_second * (W + 1) + 1``
BURST_S = 1.0
#: how many running batches one claim looks at
BATCHES_PER_CLAIM = 20
BATCH_COLUMNS = (
    "id, idempotency_key, request_hash, profile, status, calls_per_second, max_in_flight, next_slot_at, options, "
    "rejected, created_at, updated_at"
)
ROW_COLUMNS = (
    "batch_id, row_no, to_number, variables, timezone, state, outcome, attempt, claims, due_at, lease_owner, "
    "lease_until, twilio_id, last_error, updated_at"
)
T = TypeVar("T")


@dataclass(frozen=True)
class NewBatchRow:
    """A validated row: ``row`` is its 1-based number in the request; ``due_at`` when it may first be called."""

    row: int
    to_number: str
    variables: Mapping[str, str]
    due_at: float
    timezone: str | None = None


@dataclass(frozen=True)
class NewBatch:
    id: str
    profile: str
    calls_per_second: float
    max_in_flight: int
    rows: Sequence[NewBatchRow]
    #: the rest of the settings (calling hours, retries), as the dialler reads them back
    options: Mapping[str, Any] = field(default_factory=dict)
    #: the rows refused at creation: ``{"row": n, "error": "..."}``
    rejected: Sequence[Mapping[str, Any]] = ()
    idempotency_key: str | None = None
    request_hash: str | None = None


@dataclass(frozen=True)
class BatchRecord:
    id: str
    idempotency_key: str | None
    request_hash: str | None
    profile: str
    status: BatchStatus
    calls_per_second: float
    max_in_flight: int
    next_slot_at: float
    options: dict[str, Any]
    rejected: list[dict[str, Any]]
    created_at: float
    updated_at: float
    #: the rows by state (every state listed, 0 when none)
    states: dict[str, int] = field(default_factory=dict)
    #: the finished rows by outcome, and the latest outcome of rows waiting for a retry
    outcomes: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.states.values())


@dataclass(frozen=True)
class BatchCallRow:
    batch_id: str
    row: int
    to_number: str
    variables: dict[str, str]
    timezone: str | None
    state: RowState
    #: the final outcome (``done``), or the last attempt's while it waits for a retry
    outcome: str | None
    #: the number of the current (or next) attempt, from 0: retries add one
    attempt: int
    #: how many times the row was claimed (a claim that found calling hours closed counts too)
    claims: int
    due_at: float
    lease_owner: str | None
    lease_until: float | None
    twilio_id: str | None
    last_error: str | None
    updated_at: float

    @property
    def idempotency_key(self) -> str:
        """The Idempotency-Key of this attempt's call: the same after a crash, another for a retry."""
        return f"batch:{self.batch_id}:{self.row}:{self.attempt}"


@dataclass(frozen=True)
class InFlight:
    """An in-flight row with its Twilio call's state (``twilio_status`` None: the Twilio call row is gone)."""

    row: BatchCallRow
    twilio_status: str | None
    answered_by: str | None
    error_code: int | None
    twilio_updated_at: float | None


def batch_record(row: Any, load: Callable[[Any], Any], counts: Sequence[Any] = ()) -> BatchRecord:
    states: dict[str, int] = dict.fromkeys(ROW_STATES, 0)
    outcomes: dict[str, int] = {}
    for count in counts:
        states[count["state"]] = states.get(count["state"], 0) + int(count["n"])
        if count["outcome"] is not None and count["state"] in ("done", "canceled"):
            outcomes[count["outcome"]] = outcomes.get(count["outcome"], 0) + int(count["n"])
    return BatchRecord(
        id=row["id"],
        idempotency_key=row["idempotency_key"],
        request_hash=row["request_hash"],
        profile=row["profile"],
        status=row["status"],
        calls_per_second=row["calls_per_second"],
        max_in_flight=row["max_in_flight"],
        next_slot_at=row["next_slot_at"],
        options=dict(load(row["options"])),
        rejected=list(load(row["rejected"])),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        states=states,
        outcomes=dict(sorted(outcomes.items())),
    )


def batch_call_row(row: Any, load: Callable[[Any], Any]) -> BatchCallRow:
    return BatchCallRow(
        batch_id=row["batch_id"],
        row=row["row_no"],
        to_number=row["to_number"],
        variables=dict(load(row["variables"])),
        timezone=row["timezone"],
        state=row["state"],
        outcome=row["outcome"],
        attempt=row["attempt"],
        claims=row["claims"],
        due_at=row["due_at"],
        lease_owner=row["lease_owner"],
        lease_until=row["lease_until"],
        twilio_id=row["twilio_id"],
        last_error=row["last_error"],
        updated_at=row["updated_at"],
    )


def pace(
    next_slot_at: float, now: float, calls_per_second: float, busy: int, max_in_flight: int, limit: int
) -> tuple[int, float]:
    """How many rows of a batch may start now, and the pacing slot the first one takes (the batch's
    ``next_slot_at`` becomes ``base + n / calls_per_second``). ``busy``: its rows placing or in flight now."""
    base = max(next_slot_at, now - BURST_S)
    if base > now:
        return 0, base
    by_slots = math.floor((now - base) * calls_per_second) + 1
    return max(0, min(limit, max_in_flight - busy, by_slots)), base


def transition(status: str, action: BatchAction) -> BatchStatus | None:
    """The batch's status after ``action``, or None when the action does not apply (a finished batch)."""
    if status in ("canceled", "done"):
        return None
    if action == "cancel":
        return "canceled"
    return "paused" if action == "pause" else "running"


def _dump_list(items: Sequence[Mapping[str, Any]]) -> str:
    return json.dumps([dict(item) for item in items], separators=(",", ":"), allow_nan=False)


def _as_is(value: Any) -> Any:
    return value


def _count(status: str) -> int:
    return int(status.rsplit(" ", 1)[-1])


ACTIVE = "('queued', 'placing', 'in_flight')"
FINAL_TWILIO = ("completed", "busy", "no-answer", "canceled", "failed")
#: the batches ``sweep`` may delete (their rows first): done or canceled by the cutoff (``{}``: its placeholder), no
#: row still queued, placing or in flight
SWEEPABLE = (
    "SELECT b.id FROM outbound_batches b WHERE b.status IN ('done', 'canceled') AND b.updated_at <= {} AND NOT EXISTS "
    f"(SELECT 1 FROM outbound_batch_rows a WHERE a.batch_id = b.id AND a.state IN {ACTIVE})"
)


# ---- SQLite ------------------------------------------------------------------------------------------------------


class SQLiteBatches:
    """The batch methods of :class:`~sip_controller.state.sqlite.SQLiteStore` (mixed in)."""

    if TYPE_CHECKING:
        _clock: Callable[[], float]

        async def _write(self, fn: Callable[[Any], T]) -> T: ...

        async def _run(self, fn: Callable[[Any], T]) -> T: ...

    #: the clock of batch times (created, due, pacing slots, settled; epoch seconds), the dialler's (``None``: the
    #: store's own); ``sipctl simulate`` sets a simulated one so calling hours pass in seconds
    batch_clock: Callable[[], float] | None = None

    def _batch_now(self) -> float:
        return (self.batch_clock or self._clock)()

    def _sweep_batches(self, conn: Any, keep_s: float | None, limit: int) -> tuple[int, int]:
        """Part of ``sweep``, in its transaction: at most ``limit`` rows of batches finished over ``keep_s`` ago
        (by the batch clock), then at most ``limit`` of those batches whose rows are all gone."""
        if keep_s is None:
            return 0, 0
        cutoff = self._batch_now() - keep_s
        rows = conn.execute(
            "DELETE FROM outbound_batch_rows WHERE (batch_id, row_no) IN (SELECT batch_id, row_no FROM "
            f"outbound_batch_rows WHERE batch_id IN ({SWEEPABLE.format('?')}) LIMIT ?)",
            (cutoff, limit),
        ).rowcount
        batches = conn.execute(
            f"DELETE FROM outbound_batches WHERE id IN ({SWEEPABLE.format('?')} AND NOT EXISTS (SELECT 1 FROM "
            "outbound_batch_rows r WHERE r.batch_id = b.id) LIMIT ?)",
            (cutoff, limit),
        ).rowcount
        return int(rows), int(batches)

    @staticmethod
    def _batch(conn: Any, batch_id: str) -> BatchRecord | None:
        row = conn.execute(f"SELECT {BATCH_COLUMNS} FROM outbound_batches WHERE id = ?", (batch_id,)).fetchone()
        if row is None:
            return None
        counts = conn.execute(
            "SELECT state, outcome, count(*) AS n FROM outbound_batch_rows WHERE batch_id = ? GROUP BY state, outcome",
            (batch_id,),
        ).fetchall()
        return batch_record(row, json.loads, counts)

    async def create_batch(self, batch: NewBatch) -> tuple[BatchRecord, bool]:
        now = self._batch_now()

        def op(conn: Any) -> tuple[BatchRecord, bool]:
            if batch.idempotency_key is not None:
                found = conn.execute(
                    "SELECT id FROM outbound_batches WHERE idempotency_key = ?", (batch.idempotency_key,)
                ).fetchone()
                if found is not None:
                    existing = self._batch(conn, found["id"])
                    assert existing is not None
                    return existing, False
            conn.execute(
                f"INSERT INTO outbound_batches ({BATCH_COLUMNS}) VALUES (?, ?, ?, ?, 'running', ?, ?, ?, ?, ?, ?, ?)",
                (batch.id, batch.idempotency_key, batch.request_hash, batch.profile, batch.calls_per_second,
                 batch.max_in_flight, now, dumps(batch.options), _dump_list(batch.rejected), now, now),
            )  # fmt: skip
            conn.executemany(
                "INSERT INTO outbound_batch_rows (batch_id, row_no, to_number, variables, timezone, state, due_at, "
                "updated_at) VALUES (?, ?, ?, ?, ?, 'queued', ?, ?)",
                [(batch.id, r.row, r.to_number, dumps(dict(r.variables)), r.timezone, r.due_at, now)
                 for r in batch.rows],
            )  # fmt: skip
            created = self._batch(conn, batch.id)
            assert created is not None
            return created, True

        return await self._write(op)

    async def get_batch(self, batch_id: str) -> BatchRecord | None:
        return await self._run(lambda conn: self._batch(conn, batch_id))

    async def list_batches(self, *, limit: int = 50) -> list[BatchRecord]:
        def op(conn: Any) -> list[BatchRecord]:
            rows = conn.execute(
                f"SELECT {BATCH_COLUMNS} FROM outbound_batches ORDER BY created_at DESC, id DESC LIMIT ?", (limit,)
            ).fetchall()
            if not rows:
                return []
            ids = [r["id"] for r in rows]
            counts = conn.execute(
                "SELECT batch_id, state, outcome, count(*) AS n FROM outbound_batch_rows WHERE batch_id IN "
                f"({', '.join('?' * len(ids))}) GROUP BY batch_id, state, outcome",
                ids,
            ).fetchall()
            return [batch_record(r, json.loads, [c for c in counts if c["batch_id"] == r["id"]]) for r in rows]

        return await self._run(op)

    async def list_batch_rows(self, batch_id: str, *, after_row: int = 0, limit: int = 1000) -> list[BatchCallRow]:
        sql = f"SELECT {ROW_COLUMNS} FROM outbound_batch_rows WHERE batch_id = ? AND row_no > ? ORDER BY row_no LIMIT ?"

        def op(conn: Any) -> list[BatchCallRow]:
            return [batch_call_row(r, json.loads) for r in conn.execute(sql, (batch_id, after_row, limit))]

        return await self._run(op)

    async def set_batch_status(self, batch_id: str, action: BatchAction) -> tuple[BatchRecord | None, bool]:
        now = self._batch_now()

        def op(conn: Any) -> tuple[BatchRecord | None, bool]:
            current = self._batch(conn, batch_id)
            if current is None:
                return None, False
            status = transition(current.status, action)
            if status is None:
                return current, False
            conn.execute("UPDATE outbound_batches SET status = ?, updated_at = ? WHERE id = ?", (status, now, batch_id))
            if status == "canceled":
                conn.execute(
                    "UPDATE outbound_batch_rows SET state = 'canceled', outcome = 'canceled', updated_at = ? "
                    "WHERE batch_id = ? AND state = 'queued'",
                    (now, batch_id),
                )
            return self._batch(conn, batch_id), status != current.status

        return await self._write(op)

    async def claim_batch_rows(self, worker: str, *, limit: int = 50, lease_s: float = 60.0) -> list[BatchCallRow]:
        now = self._batch_now()

        def op(conn: Any) -> list[BatchCallRow]:
            batches = conn.execute(
                "SELECT id, calls_per_second, max_in_flight, next_slot_at FROM outbound_batches b "
                "WHERE status = 'running' AND EXISTS (SELECT 1 FROM outbound_batch_rows r WHERE r.batch_id = b.id "
                "AND ((r.state = 'queued' AND r.due_at <= ?) OR (r.state = 'placing' AND r.lease_until <= ?))) "
                "ORDER BY next_slot_at, id LIMIT ?",
                (now, now, BATCHES_PER_CLAIM),
            ).fetchall()
            claimed: list[BatchCallRow] = []
            for batch in batches:
                busy = conn.execute(
                    "SELECT count(*) FROM outbound_batch_rows WHERE batch_id = ? AND (state = 'in_flight' "
                    "OR (state = 'placing' AND lease_until > ?))",
                    (batch["id"], now),
                ).fetchone()[0]
                n, base = pace(batch["next_slot_at"], now, batch["calls_per_second"], busy, batch["max_in_flight"],
                               limit - len(claimed))  # fmt: skip
                if n <= 0:
                    continue
                rows = conn.execute(
                    "UPDATE outbound_batch_rows SET state = 'placing', lease_owner = ?, lease_until = ?, "
                    "claims = claims + 1, updated_at = ? WHERE batch_id = ? AND row_no IN (SELECT row_no FROM "
                    "outbound_batch_rows WHERE batch_id = ? AND ((state = 'queued' AND due_at <= ?) OR "
                    "(state = 'placing' AND lease_until <= ?)) ORDER BY due_at, row_no LIMIT ?) "
                    f"RETURNING {ROW_COLUMNS}",
                    (worker, now + lease_s, now, batch["id"], batch["id"], now, now, n),
                ).fetchall()
                conn.execute(
                    "UPDATE outbound_batches SET next_slot_at = ? WHERE id = ?",
                    (base + len(rows) / batch["calls_per_second"], batch["id"]),
                )
                claimed += sorted((batch_call_row(r, json.loads) for r in rows), key=lambda r: (r.due_at, r.row))
                if len(claimed) >= limit:
                    break
            return claimed

        return await self._write(op)

    async def placed_batch_row(self, worker: str, batch_id: str, row: int, twilio_id: str) -> bool:
        sql = (
            "UPDATE outbound_batch_rows SET state = 'in_flight', twilio_id = ?, lease_owner = NULL, "
            "lease_until = NULL, updated_at = ? WHERE batch_id = ? AND row_no = ? AND state = 'placing' "
            "AND lease_owner = ?"
        )
        args = (twilio_id, self._batch_now(), batch_id, row, worker)
        return bool(await self._write(lambda conn: conn.execute(sql, args).rowcount))

    async def defer_batch_row(self, worker: str, batch_id: str, row: int, *, due_at: float) -> bool:
        sql = (
            "UPDATE outbound_batch_rows SET state = 'queued', due_at = ?, lease_owner = NULL, lease_until = NULL, "
            "updated_at = ? WHERE batch_id = ? AND row_no = ? AND state = 'placing' AND lease_owner = ?"
        )
        args = (due_at, self._batch_now(), batch_id, row, worker)
        return bool(await self._write(lambda conn: conn.execute(sql, args).rowcount))

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
        now = self._batch_now()
        if (worker is None) == (twilio_id is None):
            raise ValueError("settle a row either as its lease holder (worker) or by its call (twilio_id)")

        def op(conn: Any) -> bool:
            status = conn.execute("SELECT status FROM outbound_batches WHERE id = ?", (batch_id,)).fetchone()
            if status is None:
                return False
            again = retry_at is not None and status["status"] != "canceled"
            guard = ("state = 'placing' AND lease_owner = ?", worker) if worker is not None else (
                "state = 'in_flight' AND twilio_id = ?", twilio_id)  # fmt: skip
            changed = conn.execute(
                "UPDATE outbound_batch_rows SET state = ?, outcome = ?, due_at = coalesce(?, due_at), "
                "attempt = attempt + ?, last_error = coalesce(?, last_error), twilio_id = NULL, lease_owner = NULL, "
                f"lease_until = NULL, updated_at = ? WHERE batch_id = ? AND row_no = ? AND {guard[0]}",
                ("queued" if again else "done", outcome, retry_at if again else None, 1 if again else 0,
                 None if error is None else error[:500], now, batch_id, row, guard[1]),
            ).rowcount  # fmt: skip
            if changed and not again:
                conn.execute(
                    "UPDATE outbound_batches SET status = 'done', updated_at = ? WHERE id = ? AND status IN "
                    f"('running', 'paused') AND NOT EXISTS (SELECT 1 FROM outbound_batch_rows WHERE batch_id = ? "
                    f"AND state IN {ACTIVE})",
                    (now, batch_id, batch_id),
                )
            return bool(changed)

        return await self._write(op)

    async def in_flight_batch_rows(self, *, stale_s: float = 3600.0, limit: int = 100) -> list[InFlight]:
        """In-flight rows whose Twilio call is over (a final status), gone, or still ``requested`` (never confirmed
        placed) after ``stale_s``: the rows the dialler can settle now."""
        now = self._clock()
        finals = ", ".join("?" * len(FINAL_TWILIO))
        sql = (
            f"SELECT {', '.join('r.' + c.strip() for c in ROW_COLUMNS.split(','))}, t.status AS twilio_status, "
            "t.answered_by, t.error_code, t.updated_at AS twilio_updated_at FROM outbound_batch_rows r "
            "LEFT JOIN twilio_calls t ON t.id = r.twilio_id WHERE r.state = 'in_flight' AND (t.id IS NULL OR "
            f"t.status IN ({finals}) OR (t.status = 'requested' AND t.updated_at <= ?)) ORDER BY r.updated_at LIMIT ?"
        )

        def op(conn: Any) -> list[InFlight]:
            rows = conn.execute(sql, (*FINAL_TWILIO, now - stale_s, limit)).fetchall()
            return [InFlight(batch_call_row(r, json.loads), r["twilio_status"], r["answered_by"], r["error_code"],
                             r["twilio_updated_at"]) for r in rows]  # fmt: skip

        return await self._run(op)


# ---- PostgreSQL --------------------------------------------------------------------------------------------------


class PostgresBatches:
    """The batch methods of :class:`~sip_controller.state.postgres.PostgresStore` (mixed in)."""

    if TYPE_CHECKING:
        _clock: Callable[[], float]

        def _tx(self) -> AbstractAsyncContextManager[Any]: ...

        def _conn(self) -> AbstractAsyncContextManager[Any]: ...

    #: the clock of batch times (created, due, pacing slots, settled; epoch seconds), the dialler's (``None``: the
    #: store's own); ``sipctl simulate`` sets a simulated one so calling hours pass in seconds
    batch_clock: Callable[[], float] | None = None

    def _batch_now(self) -> float:
        return (self.batch_clock or self._clock)()

    async def _sweep_batches(self, conn: Any, keep_s: float | None, limit: int) -> tuple[int, int]:
        """Part of ``sweep``: at most ``limit`` rows of batches finished over ``keep_s`` ago (by the batch clock),
        then at most ``limit`` of those batches whose rows are all gone."""
        if keep_s is None:
            return 0, 0
        cutoff = self._batch_now() - keep_s
        rows = _count(await conn.execute(
            "DELETE FROM outbound_batch_rows WHERE (batch_id, row_no) IN (SELECT batch_id, row_no FROM "
            f"outbound_batch_rows WHERE batch_id IN ({SWEEPABLE.format('$1')}) LIMIT $2)",
            cutoff, limit,
        ))  # fmt: skip
        batches = _count(await conn.execute(
            f"DELETE FROM outbound_batches WHERE id IN ({SWEEPABLE.format('$1')} AND NOT EXISTS (SELECT 1 FROM "
            "outbound_batch_rows r WHERE r.batch_id = b.id) LIMIT $2)",
            cutoff, limit,
        ))  # fmt: skip
        return rows, batches

    @staticmethod
    async def _batch(conn: Any, batch_id: str) -> BatchRecord | None:
        row = await conn.fetchrow(f"SELECT {BATCH_COLUMNS} FROM outbound_batches WHERE id = $1", batch_id)
        if row is None:
            return None
        counts = await conn.fetch(
            "SELECT state, outcome, count(*) AS n FROM outbound_batch_rows WHERE batch_id = $1 GROUP BY state, outcome",
            batch_id,
        )
        return batch_record(row, _as_is, counts)

    async def create_batch(self, batch: NewBatch) -> tuple[BatchRecord, bool]:
        now = self._batch_now()
        async with self._tx() as conn:
            inserted = await conn.fetchval(
                f"INSERT INTO outbound_batches ({BATCH_COLUMNS}) "
                "VALUES ($1, $2, $3, $4, 'running', $5, $6, $7, $8, $9, $7, $7) ON CONFLICT DO NOTHING RETURNING id",
                batch.id, batch.idempotency_key, batch.request_hash, batch.profile, batch.calls_per_second,
                batch.max_in_flight, now, dict(batch.options), [dict(r) for r in batch.rejected],
            )  # fmt: skip
            if inserted is None:
                found = await conn.fetchval(
                    "SELECT id FROM outbound_batches WHERE idempotency_key = $1 OR id = $2 LIMIT 1",
                    batch.idempotency_key, batch.id,
                )  # fmt: skip
                existing = await self._batch(conn, found)
                assert existing is not None
                return existing, False
            await conn.executemany(
                "INSERT INTO outbound_batch_rows (batch_id, row_no, to_number, variables, timezone, state, due_at, "
                "updated_at) VALUES ($1, $2, $3, $4, $5, 'queued', $6, $7)",
                [(batch.id, r.row, r.to_number, dict(r.variables), r.timezone, r.due_at, now) for r in batch.rows],
            )
            created = await self._batch(conn, batch.id)
        assert created is not None
        return created, True

    async def get_batch(self, batch_id: str) -> BatchRecord | None:
        async with self._conn() as conn:
            return await self._batch(conn, batch_id)

    async def list_batches(self, *, limit: int = 50) -> list[BatchRecord]:
        async with self._conn() as conn:
            rows = await conn.fetch(
                f"SELECT {BATCH_COLUMNS} FROM outbound_batches ORDER BY created_at DESC, id DESC LIMIT $1", limit
            )
            if not rows:
                return []
            counts = await conn.fetch(
                "SELECT batch_id, state, outcome, count(*) AS n FROM outbound_batch_rows "
                "WHERE batch_id = ANY($1::text[]) GROUP BY batch_id, state, outcome",
                [r["id"] for r in rows],
            )
        return [batch_record(r, _as_is, [c for c in counts if c["batch_id"] == r["id"]]) for r in rows]

    async def list_batch_rows(self, batch_id: str, *, after_row: int = 0, limit: int = 1000) -> list[BatchCallRow]:
        async with self._conn() as conn:
            rows = await conn.fetch(
                f"SELECT {ROW_COLUMNS} FROM outbound_batch_rows WHERE batch_id = $1 AND row_no > $2 "
                "ORDER BY row_no LIMIT $3",
                batch_id, after_row, limit,
            )  # fmt: skip
        return [batch_call_row(r, _as_is) for r in rows]

    async def set_batch_status(self, batch_id: str, action: BatchAction) -> tuple[BatchRecord | None, bool]:
        now = self._batch_now()
        async with self._tx() as conn:
            current = await conn.fetchval("SELECT status FROM outbound_batches WHERE id = $1 FOR UPDATE", batch_id)
            if current is None:
                return None, False
            status = transition(current, action)
            if status is not None:
                await conn.execute(
                    "UPDATE outbound_batches SET status = $1, updated_at = $2 WHERE id = $3", status, now, batch_id
                )
                if status == "canceled":
                    await conn.execute(
                        "UPDATE outbound_batch_rows SET state = 'canceled', outcome = 'canceled', updated_at = $1 "
                        "WHERE batch_id = $2 AND state = 'queued'",
                        now, batch_id,
                    )  # fmt: skip
            record = await self._batch(conn, batch_id)
        return record, status is not None and status != current

    async def claim_batch_rows(self, worker: str, *, limit: int = 50, lease_s: float = 60.0) -> list[BatchCallRow]:
        now = self._batch_now()
        claimed: list[BatchCallRow] = []
        async with self._tx() as conn:
            batches = await conn.fetch(
                "SELECT id, calls_per_second, max_in_flight, next_slot_at FROM outbound_batches b "
                "WHERE status = 'running' AND EXISTS (SELECT 1 FROM outbound_batch_rows r WHERE r.batch_id = b.id "
                "AND ((r.state = 'queued' AND r.due_at <= $1) OR (r.state = 'placing' AND r.lease_until <= $1))) "
                "ORDER BY next_slot_at, id LIMIT $2 FOR UPDATE SKIP LOCKED",
                now, BATCHES_PER_CLAIM,
            )  # fmt: skip
            for batch in batches:
                busy = await conn.fetchval(
                    "SELECT count(*) FROM outbound_batch_rows WHERE batch_id = $1 AND (state = 'in_flight' "
                    "OR (state = 'placing' AND lease_until > $2))",
                    batch["id"], now,
                )  # fmt: skip
                n, base = pace(batch["next_slot_at"], now, batch["calls_per_second"], busy, batch["max_in_flight"],
                               limit - len(claimed))  # fmt: skip
                if n <= 0:
                    continue
                rows = await conn.fetch(
                    "UPDATE outbound_batch_rows SET state = 'placing', lease_owner = $1, lease_until = $2, "
                    "claims = claims + 1, updated_at = $3 WHERE batch_id = $4 AND row_no IN (SELECT row_no FROM "
                    "outbound_batch_rows WHERE batch_id = $4 AND ((state = 'queued' AND due_at <= $3) OR "
                    "(state = 'placing' AND lease_until <= $3)) ORDER BY due_at, row_no LIMIT $5) "
                    f"RETURNING {ROW_COLUMNS}",
                    worker, now + lease_s, now, batch["id"], n,
                )  # fmt: skip
                await conn.execute(
                    "UPDATE outbound_batches SET next_slot_at = $1 WHERE id = $2",
                    base + len(rows) / batch["calls_per_second"], batch["id"],
                )  # fmt: skip
                claimed += sorted((batch_call_row(r, _as_is) for r in rows), key=lambda r: (r.due_at, r.row))
                if len(claimed) >= limit:
                    break
        return claimed

    async def placed_batch_row(self, worker: str, batch_id: str, row: int, twilio_id: str) -> bool:
        async with self._conn() as conn:
            status = await conn.execute(
                "UPDATE outbound_batch_rows SET state = 'in_flight', twilio_id = $1, lease_owner = NULL, "
                "lease_until = NULL, updated_at = $2 WHERE batch_id = $3 AND row_no = $4 AND state = 'placing' "
                "AND lease_owner = $5",
                twilio_id, self._batch_now(), batch_id, row, worker,
            )  # fmt: skip
        return bool(_count(status))

    async def defer_batch_row(self, worker: str, batch_id: str, row: int, *, due_at: float) -> bool:
        async with self._conn() as conn:
            status = await conn.execute(
                "UPDATE outbound_batch_rows SET state = 'queued', due_at = $1, lease_owner = NULL, lease_until = NULL, "
                "updated_at = $2 WHERE batch_id = $3 AND row_no = $4 AND state = 'placing' AND lease_owner = $5",
                due_at, self._batch_now(), batch_id, row, worker,
            )  # fmt: skip
        return bool(_count(status))

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
        now = self._batch_now()
        if (worker is None) == (twilio_id is None):
            raise ValueError("settle a row either as its lease holder (worker) or by its call (twilio_id)")
        async with self._tx() as conn:
            # the batch row locked: a cancel or a claim of this batch waits for this settlement
            status = await conn.fetchval("SELECT status FROM outbound_batches WHERE id = $1 FOR UPDATE", batch_id)
            if status is None:
                return False
            again = retry_at is not None and status != "canceled"
            guard = "state = 'placing' AND lease_owner = $9" if worker is not None else (
                "state = 'in_flight' AND twilio_id = $9")  # fmt: skip
            changed = _count(await conn.execute(
                "UPDATE outbound_batch_rows SET state = $1, outcome = $2, due_at = coalesce($3, due_at), "
                "attempt = attempt + $4, last_error = coalesce($5, last_error), twilio_id = NULL, lease_owner = NULL, "
                f"lease_until = NULL, updated_at = $6 WHERE batch_id = $7 AND row_no = $8 AND {guard}",
                "queued" if again else "done", outcome, retry_at if again else None, 1 if again else 0,
                None if error is None else error[:500], now, batch_id, row, worker if worker is not None else twilio_id,
            ))  # fmt: skip
            if changed and not again:
                await conn.execute(
                    "UPDATE outbound_batches SET status = 'done', updated_at = $1 WHERE id = $2 AND status IN "
                    "('running', 'paused') AND NOT EXISTS (SELECT 1 FROM outbound_batch_rows WHERE batch_id = $2 "
                    f"AND state IN {ACTIVE})",
                    now, batch_id,
                )  # fmt: skip
        return bool(changed)

    async def in_flight_batch_rows(self, *, stale_s: float = 3600.0, limit: int = 100) -> list[InFlight]:
        now = self._clock()
        async with self._conn() as conn:
            rows = await conn.fetch(
                f"SELECT {', '.join('r.' + c.strip() for c in ROW_COLUMNS.split(','))}, t.status AS twilio_status, "
                "t.answered_by, t.error_code, t.updated_at AS twilio_updated_at FROM outbound_batch_rows r "
                "LEFT JOIN twilio_calls t ON t.id = r.twilio_id WHERE r.state = 'in_flight' AND (t.id IS NULL OR "
                "t.status = ANY($1::text[]) OR (t.status = 'requested' AND t.updated_at <= $2)) "
                "ORDER BY r.updated_at LIMIT $3",
                list(FINAL_TWILIO), now - stale_s, limit,
            )  # fmt: skip
        return [InFlight(batch_call_row(r, _as_is), r["twilio_status"], r["answered_by"], r["error_code"],
                         r["twilio_updated_at"]) for r in rows]  # fmt: skip
