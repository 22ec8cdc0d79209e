"""The shared store for several replicas: PostgreSQL at ``SIPCTL_DATABASE_URL`` (``postgresql://…``).

**Driver: asyncpg.** Both asyncpg and psycopg 3 were measured on the ring path's SQL (claim the webhook-id, claim
the call_id, insert the call row: three prepared statements on one pooled connection, PostgreSQL 15 on loopback,
3,000 rings after 200 of warm-up, six paired runs on this 2-core machine, some while other test runs loaded it):

    ==================================  ============  ============
    ring path SQL, six runs             median        p99
    ==================================  ============  ============
    asyncpg 0.32 (its pool)             0.78-1.28 ms  1.6-14 ms
    psycopg 3.3 + psycopg_pool (binary) 0.94-1.77 ms  1.7-17 ms
    ==================================  ============  ============

asyncpg had the lower median in five runs of six and the lower p99 in all six (it speaks the protocol itself,
binary, with a statement cache per connection; psycopg goes through libpq), and its pool is part of it.
psycopg's inline types are the one thing it lacks; ``asyncpg-stubs`` (a dev dependency) fills that gap for mypy.
Behind PgBouncer in transaction mode, asyncpg's prepared statements need ``statement_cache_size=0``: not supported
here yet; point sipctl at PostgreSQL itself or at session pooling.

The ring path through this store (two ``claim`` and a ``create_call`` with the capacity check: three round trips)
is measured by ``python -m sip_controller.bench.store``: median 1.6-2.8 ms, p99 8.5-16 ms in five runs on this
machine at a load average of 1.5 to 3 (the bare three statements above showed the same tails under that load).

Concurrency: every statement that decides between racers is a single conditional ``UPDATE``/``INSERT … ON
CONFLICT`` (claims, fencing, takeover: PostgreSQL re-checks the condition on the row it waited for), a ``FOR UPDATE
SKIP LOCKED`` pick (the outbox), or runs under a transaction-scoped advisory lock (capacity and the per-caller
window, which count then insert, are two small PL/pgSQL functions of the schema so that each is one round trip;
migrations). Advisory lock keys include ``current_schema()``, so stores in different
schemas of one database never block each other.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Literal

import asyncpg

from sip_controller.state import migrations
from sip_controller.state.analyses import PostgresAnalyses
from sip_controller.state.batches import PostgresBatches
from sip_controller.state.console_sessions import PostgresConsoleSessions
from sip_controller.state.history import PostgresHistory, finish_columns
from sip_controller.state.records import (
    COMMAND_KINDS,
    HANGING_UP,
    Admission,
    CallerLimit,
    CallExists,
    CallRow,
    CommandRow,
    Entry,
    Fence,
    Fenced,
    NewCall,
    OutboxItem,
    OutboxRow,
    OutboxStats,
    ProcessRow,
    SchemaError,
    StoredEntry,
    StoreError,
    SweepCounts,
    as_is,
    call_row,
    command_row,
    dumps,
    new_call_row,
    outbox_row,
)
from sip_controller.state.store import UNSET, Store, _Unset, call_changes
from sip_controller.state.twilio_calls import FINAL_STATUSES as TWILIO_FINAL_STATUSES
from sip_controller.state.twilio_calls import (
    KEEP_TWILIO_CALLS_S,
    PARKED,
    TWILIO_CALL_COLUMNS,
    CorrelationTaken,
    NewTwilioCall,
    TwilioCallRow,
    closing_changes,
    twilio_call_row,
)
from sip_controller.state.twilio_calls import lookup as twilio_lookup

Conn = Any  # an asyncpg connection (or the pool's proxy for one)

CALL_COLUMNS = (
    "call_id, owner, epoch, state, profile, inputs, caller, dialed, received_at, accepted_at, deadlines, cost_usd, "
    "wake_at, takeovers, takeover_gap_s, entry_count, updated_at, ended_at, ended_reason"
)
OUTBOX_COLUMNS = "id, key, destination, event, payload, call_id, created_at, due_at, attempts, last_error"
COMMAND_COLUMNS = "id, call_id, kind, args, created_at, taken_by, taken_at, done_at, outcome"
FORGET_PROCESS_S = 86_400.0


def _lock_key(what: str) -> str:
    """An advisory-lock key (bigint) for ``what`` in the current schema, as SQL."""
    return f"hashtextextended('sipctl:{what}:' || current_schema(), 0)"


def _call_row(row: Any) -> CallRow:
    return call_row(row, as_is)


def _outbox_row(row: Any) -> OutboxRow:
    return outbox_row(row, as_is)


def _command_row(row: Any) -> CommandRow:
    return command_row(row, as_is)


def _count(status: str) -> int:
    """The row count of a command status (``UPDATE 3``, ``INSERT 0 1``, ``DELETE 0``)."""
    return int(status.rsplit(" ", 1)[-1])


async def _init_connection(conn: Conn) -> None:
    """jsonb in and out as Python values (text format: json.dumps/json.loads)."""
    await conn.set_type_codec("jsonb", encoder=dumps, decoder=json.loads, schema="pg_catalog", format="text")


async def _keep_session(conn: Conn) -> None:
    """The pool's ``reset``: nothing to undo, so no round trip when a connection goes back to the pool (#18).

    asyncpg's default sends ``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`` on every release: one
    more round trip per store call (it was a sixth of the store's time on the ring path). None of it has anything to
    undo here: this store never takes a session-level advisory lock (only ``pg_advisory_xact_lock``, released when
    its statement or transaction ends), never opens a cursor, never LISTENs and never SETs a session setting (the
    search path and application name are connection parameters, fixed at connect). An open transaction is still
    rolled back on release: the pool does that itself before calling ``reset``. ``tests/state/test_postgres.py``
    holds the store to this."""


async def _fenced_reason(conn: Conn, fence: Fence) -> Literal["stale_owner", "finished", "unknown_call"] | None:
    row = await conn.fetchrow("SELECT owner, epoch, ended_at FROM calls WHERE call_id = $1", fence.call_id)
    if row is None:
        return "unknown_call"
    if (row["owner"], row["epoch"]) != (fence.owner, fence.epoch):
        return "stale_owner"
    if row["ended_at"] is not None:
        return "finished"
    return None


async def _enqueue(conn: Conn, items: Sequence[OutboxItem], now: float) -> int:
    added = 0
    for item in items:
        status = await conn.execute(
            "INSERT INTO outbox (key, call_id, destination, event, payload, created_at, due_at) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (key) DO NOTHING",
            item.key, item.call_id, item.destination, item.event, dict(item.payload), now,
            now if item.due_at is None else item.due_at,
        )  # fmt: skip
        added += _count(status)
    return added


class PostgresStore(PostgresHistory, PostgresAnalyses, PostgresBatches, PostgresConsoleSessions, Store):
    """The :class:`~sip_controller.state.store.Store` on PostgreSQL. Build it with :meth:`open`."""

    backend = "postgresql"

    def __init__(self, pool: Any, *, clock: Callable[[], float] = time.time) -> None:
        self._pool = pool
        self._clock = clock
        self._closed = False

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        migrate: bool | None = True,
        clock: Callable[[], float] = time.time,
        pool_size: int = 10,
        schema: str | None = None,
        connect_timeout_s: float = 10.0,
    ) -> PostgresStore:
        """Connect a pool of up to ``pool_size`` connections to ``url`` (``schema``: put it first on the search
        path, for tests and for sharing one database between deployments) and apply pending migrations; with
        ``migrate=False`` refuse a schema that is not exactly this code's (:class:`SchemaError`); with None, neither
        (for ``sipctl migrate``). Connection errors
        are :class:`StoreError` naming the server but never the URL (it may hold a password)."""
        settings = {"application_name": "sipctl"}
        if schema is not None:
            settings["search_path"] = schema
        try:
            pool = await asyncpg.create_pool(
                url,
                min_size=1,
                max_size=pool_size,
                init=_init_connection,
                reset=_keep_session,
                server_settings=settings,
                timeout=connect_timeout_s,
            )
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreError(f"cannot connect to PostgreSQL: {type(exc).__name__}: {_safe(exc, url)}") from None
        store = cls(pool, clock=clock)
        try:
            if migrate:
                await store.migrate()
            elif migrate is not None:
                await store.check_schema()
        except asyncpg.PostgresError as exc:
            await store.aclose()
            raise StoreError(f"PostgreSQL: {type(exc).__name__}: {exc}") from exc
        except BaseException:
            await store.aclose()
            raise
        return store

    async def _enqueue_outbox(self, conn: Conn, items: Sequence[OutboxItem], now: float) -> int:
        """The outbox insert for the mixed-in analysis methods (``state/analyses.py``), in their transaction."""
        return await _enqueue(conn, items, now)

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[Conn]:
        if self._closed:
            raise StoreError("the store is closed")
        async with self._pool.acquire() as conn, conn.transaction():
            yield conn

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[Conn]:
        if self._closed:
            raise StoreError("the store is closed")
        async with self._pool.acquire() as conn:
            yield conn

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._pool.close()

    # ---- migrations -----------------------------------------------------------------------------------------

    async def migrate(self) -> list[int]:
        known = migrations.available("postgresql")
        applied: list[int] = []
        while True:
            async with self._tx() as conn:
                await conn.execute(f"SELECT pg_advisory_xact_lock({_lock_key('migrate')})")
                await conn.execute(migrations.BOOTSTRAP["postgresql"])
                todo = migrations.pending(await self._applied(conn), known)
                if not todo:
                    return applied
                migration = todo[0]
                try:
                    await conn.execute(migration.sql)
                except asyncpg.PostgresError as exc:
                    raise SchemaError(migrations.failed(migration, exc)) from exc
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum, applied_at) VALUES ($1, $2, $3, $4)",
                    migration.version, migration.name, migration.checksum, self._clock(),
                )  # fmt: skip
                applied.append(migration.version)

    @staticmethod
    async def _applied(conn: Conn) -> list[migrations.Applied]:
        if await conn.fetchval("SELECT to_regclass('schema_migrations')") is None:
            return []
        rows = await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
        return [migrations.Applied(r["version"], r["name"], r["checksum"]) for r in rows]

    async def check_schema(self) -> None:
        async with self._conn() as conn:
            todo = migrations.pending(await self._applied(conn), migrations.available("postgresql"))
        if todo:
            raise SchemaError(
                f"{len(todo)} schema migration(s) not applied (up to {todo[-1].version:04d}); run `sipctl migrate`"
            )

    async def schema_version(self) -> int:
        async with self._conn() as conn:
            return max((a.version for a in await self._applied(conn)), default=0)

    # ---- claims -------------------------------------------------------------------------------------------

    async def claim(self, key: str, ttl_s: float) -> bool:
        now = self._clock()
        async with self._conn() as conn:
            won = await conn.fetchval(
                "INSERT INTO claims (key, expires_at) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE "
                "SET expires_at = excluded.expires_at WHERE claims.expires_at <= $3 RETURNING true",
                key, now + ttl_s, now,
            )  # fmt: skip
        return bool(won)

    async def release(self, key: str) -> None:
        async with self._conn() as conn:
            await conn.execute("DELETE FROM claims WHERE key = $1", key)

    async def sweep(
        self,
        *,
        limit: int = 1000,
        keep_delivered_s: float = 86_400.0,
        keep_twilio_calls_s: float = KEEP_TWILIO_CALLS_S,
        keep_batches_s: float | None = None,
    ) -> SweepCounts:
        now = self._clock()
        async with self._conn() as conn:

            async def delete(sql: str, *args: object) -> int:
                return _count(await conn.execute(sql, *args, limit))

            batch_rows, batches = await self._sweep_batches(conn, keep_batches_s, limit)
            return SweepCounts(
                claims=await delete(
                    "DELETE FROM claims WHERE key IN (SELECT key FROM claims WHERE expires_at <= $1 LIMIT $2)", now
                ),
                batch_rows=batch_rows,
                batches=batches,
                caller_hits=await delete(
                    "DELETE FROM caller_hits WHERE ctid IN "
                    "(SELECT ctid FROM caller_hits WHERE expires_at <= $1 LIMIT $2)",
                    now,
                ),
                outbox=await delete(
                    "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox "
                    "WHERE coalesce(delivered_at, gave_up_at) <= $1 LIMIT $2)",
                    now - keep_delivered_s,
                ),
                processes=await delete(
                    "DELETE FROM processes WHERE process_id IN (SELECT p.process_id FROM processes p "
                    "WHERE p.lease_until <= $1 AND NOT EXISTS (SELECT 1 FROM calls c "
                    "WHERE c.owner = p.process_id AND c.ended_at IS NULL) LIMIT $2)",
                    now - FORGET_PROCESS_S,
                ),
                commands=await delete(
                    "DELETE FROM call_commands WHERE id IN (SELECT id FROM call_commands WHERE created_at <= $1 "
                    "LIMIT $2)",
                    now - keep_delivered_s,
                ),
                twilio_calls=await delete(
                    "DELETE FROM twilio_calls WHERE id IN (SELECT id FROM twilio_calls WHERE created_at <= $1 "
                    "LIMIT $2)",
                    now - keep_twilio_calls_s,
                ),
                console_sessions=await delete(
                    "DELETE FROM console_sessions WHERE key IN "
                    "(SELECT key FROM console_sessions WHERE expires_at <= $1 LIMIT $2)",
                    now,
                ),
                login_failures=await delete(
                    "DELETE FROM login_failures WHERE client IN "
                    "(SELECT client FROM login_failures WHERE forget_at <= $1 LIMIT $2)",
                    now,
                ),
            )

    # ---- processes ------------------------------------------------------------------------------------------

    async def heartbeat(self, process_id: str, lease_s: float, info: dict[str, object] | None = None) -> bool:
        now = self._clock()
        async with self._conn() as conn:
            previous = await conn.fetchrow(
                "WITH old AS (SELECT lease_until FROM processes WHERE process_id = $1) "
                "INSERT INTO processes (process_id, started_at, heartbeat_at, lease_until, info) "
                "VALUES ($1, $2, $2, $3, coalesce($4, '{}'::jsonb)) ON CONFLICT (process_id) DO UPDATE "
                "SET heartbeat_at = $2, lease_until = $3, info = coalesce($4, processes.info) "
                "RETURNING (SELECT lease_until FROM old) AS lease_until",
                process_id, now, now + lease_s, info,
            )  # fmt: skip
        old = previous["lease_until"] if previous is not None else None
        return old is None or bool(old > now)

    async def end_lease(self, process_id: str) -> None:
        now = self._clock()
        async with self._conn() as conn:
            await conn.execute(
                "UPDATE processes SET lease_until = least(lease_until, $1) WHERE process_id = $2", now, process_id
            )

    async def lapsed_processes(self) -> list[ProcessRow]:
        now = self._clock()
        async with self._conn() as conn:
            rows = await conn.fetch(
                "SELECT * FROM processes WHERE lease_until <= $1 ORDER BY heartbeat_at, process_id", now
            )
        return [
            ProcessRow(r["process_id"], r["started_at"], r["heartbeat_at"], r["lease_until"], r["info"]) for r in rows
        ]

    # ---- calls ----------------------------------------------------------------------------------------------

    async def create_call(
        self, call: NewCall, *, max_live: int | None = None, outbox: Sequence[OutboxItem] = ()
    ) -> CallRow | None:
        now = self._clock()
        values = (
            call.call_id, call.owner, call.state, call.profile, dict(call.inputs), call.caller, call.dialed,
            call.received_at, call.accepted_at, dict(call.deadlines), call.cost_usd, now,
        )  # fmt: skip
        if max_live is None:
            sql = (
                "INSERT INTO calls (call_id, owner, state, profile, inputs, caller, dialed, received_at, accepted_at, "
                "deadlines, cost_usd, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) "
                f"ON CONFLICT (call_id) DO NOTHING RETURNING {CALL_COLUMNS}"
            )
            args: tuple[object, ...] = values
        else:  # lock, count and insert in one round trip (0001_init.sql)
            sql = (
                f"SELECT {CALL_COLUMNS} FROM sipctl_create_call($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
            )
            args = (*values, max_live)
        # a transaction only when outbox rows go with the call; alone, the statement is its own
        async with self._tx() if outbox else self._conn() as conn:
            row = await conn.fetchrow(sql, *args)
            if row is None:
                if await conn.fetchval("SELECT 1 FROM calls WHERE call_id = $1", call.call_id):
                    raise CallExists(f"call {call.call_id} already exists")
                return None  # at capacity
            await _enqueue(conn, outbox, now)
        return _call_row(row)

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
        now = self._clock()
        keys = list(dict.fromkeys(claims))
        limit = caller if caller is not None and caller.limit > 0 else None
        items = list(outbox) if call is not None else []
        async with self._conn() as conn:  # one statement, one round trip (0004_admit.sql)
            row = await conn.fetchrow(
                "SELECT outcome, held FROM sipctl_admit($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, "
                "$15, $16, $17, $18, $19, $20, $21, $22, $23, $24)",
                keys, now + ttl_s, now,
                *(
                    (call.call_id, call.owner, call.state, call.profile, dict(call.inputs), call.caller, call.dialed,
                     call.received_at, call.accepted_at, dict(call.deadlines), call.cost_usd)
                    if call is not None else (None,) * 11
                ),
                max_live, limit.key if limit else None, limit.limit if limit else 0, limit.window_s if limit else 0.0,
                [i.key for i in items], [i.call_id for i in items], [i.destination for i in items],
                [i.event for i in items], [dumps(i.payload) for i in items],
                [now if i.due_at is None else i.due_at for i in items],
            )  # fmt: skip
        outcome = row["outcome"]
        if outcome == "admitted":
            assert call is not None
            return Admission("admitted", row=new_call_row(call, now))
        return Admission(outcome, held=row["held"])

    async def get_call(self, call_id: str) -> CallRow | None:
        async with self._conn() as conn:
            row = await conn.fetchrow(f"SELECT {CALL_COLUMNS} FROM calls WHERE call_id = $1", call_id)
        return None if row is None else _call_row(row)

    async def verify(self, fence: Fence) -> None:
        async with self._conn() as conn:
            reason = await _fenced_reason(conn, fence)
        if reason is not None:
            raise Fenced(fence, reason)

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
        changes = call_changes(dict, state, cost_usd, accepted_at, deadlines, wake_at)
        return await self._record(fence, entries, changes, (), self._clock())

    async def _record(
        self,
        fence: Fence,
        entries: Sequence[Entry],
        changes: dict[str, Any],
        outbox: Sequence[OutboxItem],
        now: float,
        text: str = "",
    ) -> int:
        """The fenced update of the call row (which also numbers the entries), its entries and ``outbox`` rows, as
        ONE statement (#18): atomic by itself, so one round trip and no BEGIN/COMMIT. The inserts select from the
        update's row, so a stale fence writes nothing at all."""
        args: list[Any] = [len(entries), now, fence.call_id, fence.owner, fence.epoch]
        sets = ""
        for column, value in changes.items():
            args.append(value)
            sets += f", {column} = ${len(args)}"
        sql = (
            f"WITH u AS (UPDATE calls SET entry_count = entry_count + $1, updated_at = $2{sets} "
            "WHERE call_id = $3 AND owner = $4 AND epoch = $5 AND ended_at IS NULL RETURNING entry_count)"
        )
        if entries:
            n = len(args)
            args += [[e.kind for e in entries], [e.at for e in entries], [dumps(e.data) for e in entries]]
            sql += (
                ", e AS (INSERT INTO call_entries (call_id, seq, kind, at, data) "
                "SELECT $3, u.entry_count - $1 + e.n, e.kind, e.at, e.data::jsonb FROM u, unnest("
                f"${n + 1}::text[], ${n + 2}::float8[], ${n + 3}::text[]) WITH ORDINALITY AS e(kind, at, data, n))"
            )
        if outbox:
            n = len(args)
            args += [
                [i.key for i in outbox], [i.call_id for i in outbox], [i.destination for i in outbox],
                [i.event for i in outbox], [dumps(i.payload) for i in outbox],
                [now if i.due_at is None else i.due_at for i in outbox],
            ]  # fmt: skip
            sql += (
                ", o AS (INSERT INTO outbox (key, call_id, destination, event, payload, created_at, due_at) "
                "SELECT o.key, o.call_id, o.destination, o.event, o.payload::jsonb, $2, o.due_at FROM u, "
                f"unnest(${n + 1}::text[], ${n + 2}::text[], ${n + 3}::text[], ${n + 4}::text[], ${n + 5}::text[], "
                f"${n + 6}::float8[]) AS o(key, call_id, destination, event, payload, due_at) "
                "ON CONFLICT (key) DO NOTHING)"
            )
        if text:  # a finishing call's transcript, into the full-text index (#17)
            args.append(text)
            sql += (
                f", s AS (INSERT INTO call_search (call_id, body) SELECT $3, to_tsvector('simple', ${len(args)}) "
                "FROM u)"
            )
        async with self._conn() as conn:
            count = await conn.fetchval(sql + " SELECT entry_count FROM u", *args)
            if count is None:
                raise Fenced(fence, await _fenced_reason(conn, fence) or "stale_owner")
        return int(count)

    async def read_entries(self, call_id: str, *, after_seq: int = 0) -> list[StoredEntry]:
        async with self._conn() as conn:
            rows = await conn.fetch(
                "SELECT seq, kind, at, data FROM call_entries WHERE call_id = $1 AND seq > $2 ORDER BY seq",
                call_id, after_seq,
            )  # fmt: skip
        return [StoredEntry(r["seq"], r["kind"], r["at"], r["data"]) for r in rows]

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
        now = self._clock()
        changes: dict[str, Any] = {
            "state": state,
            "ended_reason": ended_reason,
            "ended_at": now if ended_at is None else ended_at,
            "report": report,
            "wake_at": None,
        }
        if cost_usd is not None:
            changes["cost_usd"] = cost_usd
        summary, text = finish_columns(report, cost_usd or 0.0)
        changes.update(summary)
        await self._record(fence, entries, changes, outbox, now, text)

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
        now = self._clock()
        summary, text = finish_columns(report, call.cost_usd)
        async with self._conn() as conn:  # one statement: the row, then its entries, outbox and text rows from it
            inserted = await conn.fetchval(
                "WITH c AS (INSERT INTO calls (call_id, owner, state, profile, inputs, caller, dialed, received_at, "
                "accepted_at, deadlines, cost_usd, updated_at, entry_count, ended_at, ended_reason, report, "
                "model_usd, transcription_usd) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $26, $27) "
                "ON CONFLICT (call_id) DO NOTHING RETURNING call_id), "
                "s AS (INSERT INTO call_search (call_id, body) SELECT c.call_id, to_tsvector('simple', $28) FROM c "
                "WHERE $28 <> ''), "
                "e AS (INSERT INTO call_entries (call_id, seq, kind, at, data) "
                "SELECT c.call_id, e.n, e.kind, e.at, e.data::jsonb FROM c, "
                "unnest($17::text[], $18::float8[], $19::text[]) WITH ORDINALITY AS e(kind, at, data, n)), "
                "o AS (INSERT INTO outbox (key, call_id, destination, event, payload, created_at, due_at) "
                "SELECT o.key, o.call_id, o.destination, o.event, o.payload::jsonb, $12, o.due_at FROM c, "
                "unnest($20::text[], $21::text[], $22::text[], $23::text[], $24::text[], $25::float8[]) "
                "AS o(key, call_id, destination, event, payload, due_at) ON CONFLICT (key) DO NOTHING) "
                "SELECT count(*) FROM c",
                call.call_id, call.owner, call.state, call.profile, dict(call.inputs), call.caller, call.dialed,
                call.received_at, call.accepted_at, dict(call.deadlines), call.cost_usd, now, len(entries),
                now if ended_at is None else ended_at, ended_reason, report,
                [e.kind for e in entries], [e.at for e in entries], [dumps(e.data) for e in entries],
                [i.key for i in outbox], [i.call_id for i in outbox], [i.destination for i in outbox],
                [i.event for i in outbox], [dumps(i.payload) for i in outbox],
                [now if i.due_at is None else i.due_at for i in outbox],
                summary["model_usd"], summary["transcription_usd"], text,
            )  # fmt: skip
        if not inserted:
            raise CallExists(f"call {call.call_id} already exists")

    async def get_report(self, call_id: str) -> dict[str, object] | None:
        async with self._conn() as conn:
            report = await conn.fetchval(
                "SELECT report FROM calls WHERE call_id = $1 AND ended_at IS NOT NULL", call_id
            )
        return report if isinstance(report, dict) else None

    async def merge_report(self, call_id: str, fields: Mapping[str, Any]) -> bool:
        async with self._conn() as conn:
            status = await conn.execute(
                "UPDATE calls SET report = report || $2::jsonb WHERE call_id = $1 AND ended_at IS NOT NULL "
                "AND report IS NOT NULL",
                call_id, dict(fields),
            )  # fmt: skip
        return _count(status) > 0

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
        summary, text = finish_columns(report, cost_usd or 0.0)
        now = self._clock()
        changes = closing_changes(
            ended_reason=ended_reason, report=dict(report), summary=summary, cost_usd=cost_usd, ended_at=ended_at,
            now=now,
        )  # fmt: skip
        sets = ", ".join(f"{column} = ${n}" for n, column in enumerate(changes, start=3))
        async with self._tx() as conn:
            closed = await conn.fetchval(
                f"UPDATE calls SET {sets} WHERE call_id = $1 AND state = 'ended' AND ended_reason = $2 "
                "RETURNING call_id",
                call_id, PARKED, *changes.values(),
            )  # fmt: skip
            if closed is None:
                return False
            # the call's transcript replaces the parked leg's own in the full-text index
            if text:
                await conn.execute(
                    "INSERT INTO call_search (call_id, body) VALUES ($1, to_tsvector('simple', $2)) "
                    "ON CONFLICT (call_id) DO UPDATE SET body = excluded.body",
                    call_id, text,
                )  # fmt: skip
            else:
                await conn.execute("DELETE FROM call_search WHERE call_id = $1", call_id)
            await _enqueue(conn, outbox, now)
        return True

    async def list_live(self, *, owner: str | None = None, limit: int = 10_000) -> list[CallRow]:
        where, args = ("AND owner = $2", (owner,)) if owner is not None else ("", ())
        async with self._conn() as conn:
            rows = await conn.fetch(
                f"SELECT {CALL_COLUMNS} FROM calls WHERE ended_at IS NULL {where} "
                "ORDER BY received_at, call_id LIMIT $1",
                limit, *args,
            )  # fmt: skip
        return [_call_row(r) for r in rows]

    async def count_live(self, *, state: str | None = None) -> int:
        where, args = ("AND state = $1", (state,)) if state is not None else ("", ())
        async with self._conn() as conn:
            return int(await conn.fetchval(f"SELECT count(*) FROM calls WHERE ended_at IS NULL {where}", *args))

    async def orphaned_calls(self, *, limit: int = 100) -> list[CallRow]:
        now = self._clock()
        async with self._conn() as conn:
            rows = await conn.fetch(
                f"SELECT {CALL_COLUMNS} FROM calls c WHERE c.ended_at IS NULL AND NOT EXISTS "
                "(SELECT 1 FROM processes p WHERE p.process_id = c.owner AND p.lease_until > $1) "
                "ORDER BY c.received_at, c.call_id LIMIT $2",
                now, limit,
            )  # fmt: skip
        return [_call_row(r) for r in rows]

    async def take_over(self, call_id: str, new_owner: str, *, expected_epoch: int) -> CallRow | None:
        now = self._clock()
        async with self._conn() as conn:
            row = await conn.fetchrow(
                "UPDATE calls SET owner = $1, epoch = epoch + 1, takeovers = takeovers + 1, "
                "takeover_gap_s = greatest(0.0, $2 - coalesce((SELECT p.heartbeat_at FROM processes p "
                "WHERE p.process_id = calls.owner), calls.updated_at)), updated_at = $2 "
                "WHERE call_id = $3 AND epoch = $4 AND ended_at IS NULL AND NOT EXISTS (SELECT 1 FROM processes p "
                f"WHERE p.process_id = calls.owner AND p.lease_until > $2) RETURNING {CALL_COLUMNS}",
                new_owner, now, call_id, expected_epoch,
            )  # fmt: skip
        return None if row is None else _call_row(row)

    async def hanging_up_calls(self, *, limit: int = 100) -> list[CallRow]:
        now = self._clock()
        async with self._conn() as conn:
            rows = await conn.fetch(
                f"SELECT {CALL_COLUMNS} FROM calls WHERE ended_at IS NULL AND state = $1 "
                "AND (wake_at IS NULL OR wake_at <= $2) ORDER BY coalesce(wake_at, updated_at), call_id LIMIT $3",
                HANGING_UP, now, limit,
            )  # fmt: skip
        return [_call_row(r) for r in rows]

    # ---- operator commands ----------------------------------------------------------------------------------

    async def post_command(self, call_id: str, kind: str, args: Mapping[str, Any] | None = None) -> int | None:
        if kind not in COMMAND_KINDS:
            raise ValueError(f"unknown command kind {kind!r}; one of: {', '.join(COMMAND_KINDS)}")
        now = self._clock()
        async with self._conn() as conn:
            command_id = await conn.fetchval(
                "INSERT INTO call_commands (call_id, kind, args, created_at) SELECT $1, $2, $3, $4 "
                "WHERE EXISTS (SELECT 1 FROM calls WHERE call_id = $1 AND ended_at IS NULL) RETURNING id",
                call_id, kind, dict(args or {}), now,
            )  # fmt: skip
        return None if command_id is None else int(command_id)

    async def take_commands(self, owner: str, *, limit: int = 50) -> list[CommandRow]:
        now = self._clock()
        async with self._conn() as conn:
            rows = await conn.fetch(
                "WITH picked AS (SELECT cc.id FROM call_commands cc JOIN calls c ON c.call_id = cc.call_id "
                "WHERE c.owner = $1 AND c.ended_at IS NULL AND cc.done_at IS NULL "
                "AND (cc.taken_by IS NULL OR cc.taken_by <> $1) ORDER BY cc.id LIMIT $3 FOR UPDATE OF cc SKIP LOCKED) "
                "UPDATE call_commands cc SET taken_by = $1, taken_at = $2 FROM picked WHERE cc.id = picked.id "
                f"RETURNING {', '.join('cc.' + c for c in COMMAND_COLUMNS.split(', '))}",
                owner, now, limit,
            )  # fmt: skip
        return sorted((_command_row(r) for r in rows), key=lambda r: r.id)

    async def command_done(self, command_id: int, outcome: str) -> bool:
        now = self._clock()
        async with self._conn() as conn:
            status = await conn.execute(
                "UPDATE call_commands SET done_at = $1, outcome = $2 WHERE id = $3 AND done_at IS NULL",
                now, outcome[:200], command_id,
            )  # fmt: skip
        return _count(status) > 0

    # ---- outbox ---------------------------------------------------------------------------------------------

    async def enqueue(self, items: Sequence[OutboxItem]) -> int:
        now = self._clock()
        async with self._tx() as conn:
            return await _enqueue(conn, items, now)

    async def claim_outbox(
        self, worker: str, *, limit: int = 50, lease_s: float = 30.0, destination: str | None = None
    ) -> list[OutboxRow]:
        now = self._clock()
        where, args = ("AND destination = $5", (destination,)) if destination is not None else ("", ())
        async with self._conn() as conn:
            rows = await conn.fetch(
                "WITH picked AS (SELECT id FROM outbox WHERE delivered_at IS NULL AND gave_up_at IS NULL "
                f"AND due_at <= $3 AND (lease_until IS NULL OR lease_until <= $3) {where} "
                "ORDER BY due_at, id LIMIT $4 FOR UPDATE SKIP LOCKED) "
                "UPDATE outbox o SET lease_owner = $1, lease_until = $2, attempts = o.attempts + 1 FROM picked "
                f"WHERE o.id = picked.id RETURNING {', '.join('o.' + c for c in OUTBOX_COLUMNS.split(', '))}",
                worker, now + lease_s, now, limit, *args,
            )  # fmt: skip
        return sorted((_outbox_row(r) for r in rows), key=lambda r: (r.due_at, r.id))

    async def mark_delivered(self, ids: Sequence[int]) -> int:
        if not ids:
            return 0
        now = self._clock()
        async with self._conn() as conn:
            status = await conn.execute(
                "UPDATE outbox SET delivered_at = $1, lease_owner = NULL, lease_until = NULL "
                "WHERE id = ANY($2::bigint[]) AND delivered_at IS NULL",
                now, list(ids),
            )  # fmt: skip
        return _count(status)

    async def mark_failed(self, worker: str, row_id: int, *, next_attempt_at: float | None, error: str) -> bool:
        now = self._clock()
        column, value = ("gave_up_at", now) if next_attempt_at is None else ("due_at", next_attempt_at)
        async with self._conn() as conn:
            status = await conn.execute(
                f"UPDATE outbox SET lease_owner = NULL, lease_until = NULL, last_error = $1, {column} = $2 "
                "WHERE id = $3 AND lease_owner = $4 AND delivered_at IS NULL AND gave_up_at IS NULL",
                error[:1000], value, row_id, worker,
            )  # fmt: skip
        return _count(status) > 0

    async def outbox_stats(self) -> OutboxStats:
        now = self._clock()
        async with self._conn() as conn:
            row = await conn.fetchrow(
                "SELECT count(*) FILTER (WHERE gave_up_at IS NULL) AS pending, "
                "min(created_at) FILTER (WHERE gave_up_at IS NULL) AS oldest, "
                "count(*) FILTER (WHERE gave_up_at IS NOT NULL) AS gave_up FROM outbox WHERE delivered_at IS NULL"
            )
        oldest = row["oldest"]
        return OutboxStats(row["pending"], row["gave_up"], None if oldest is None else max(0.0, now - oldest))

    # ---- cluster counts -------------------------------------------------------------------------------------

    async def allow_caller(self, key: str, limit: int, *, window_s: float = 60.0) -> bool:
        if limit <= 0:
            return True
        now = self._clock()
        async with self._conn() as conn:  # lock, count and insert in one round trip (0001_init.sql)
            allowed = await conn.fetchval("SELECT sipctl_allow_caller($1, $2, $3, $4)", key, limit, now, window_s)
        return bool(allowed)

    async def caller_count(self, key: str, *, window_s: float = 60.0) -> int:
        now = self._clock()
        async with self._conn() as conn:
            return int(
                await conn.fetchval("SELECT count(*) FROM caller_hits WHERE key = $1 AND at > $2", key, now - window_s)
            )

    # ---- Twilio calls (#16) ---------------------------------------------------------------------------------

    async def create_twilio_call(self, call: NewTwilioCall) -> tuple[TwilioCallRow, bool]:
        now = self._clock()
        async with self._tx() as conn:
            row = await conn.fetchrow(
                "INSERT INTO twilio_calls (id, correlation, direction, call_sid, idempotency_key, request_hash, "
                "profile, from_number, to_number, variables, status, created_at, updated_at) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12) "
                "ON CONFLICT DO NOTHING RETURNING " + TWILIO_CALL_COLUMNS,
                call.id, call.correlation, call.direction, call.call_sid, call.idempotency_key, call.request_hash,
                call.profile, call.from_number, call.to_number, dict(call.variables), call.status, now,
            )  # fmt: skip
            if row is not None:
                return twilio_call_row(row, as_is), True
            existing = await conn.fetchrow(
                f"SELECT {TWILIO_CALL_COLUMNS} FROM twilio_calls WHERE idempotency_key = $1 OR call_sid = $2 "
                "OR id = $3 OR correlation = $4 LIMIT 1",
                call.idempotency_key, call.call_sid, call.id, call.correlation,
            )  # fmt: skip
        if existing is None:  # pragma: no cover - a conflict always leaves the row it conflicted with
            raise StoreError(f"twilio call {call.id}: refused and not found")
        return twilio_call_row(existing, as_is), False

    async def get_twilio_call(
        self, *, id: str | None = None, correlation: str | None = None, call_sid: str | None = None
    ) -> TwilioCallRow | None:
        column, value = twilio_lookup(id, correlation, call_sid)
        async with self._conn() as conn:
            row = await conn.fetchrow(f"SELECT {TWILIO_CALL_COLUMNS} FROM twilio_calls WHERE {column} = $1", value)
        return None if row is None else twilio_call_row(row, as_is)

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
        now = self._clock()
        async with self._conn() as conn:
            row = await conn.fetchrow(
                "UPDATE twilio_calls SET call_sid = coalesce($1, call_sid), "
                "status = CASE WHEN $2::text IS NULL OR status = ANY($3::text[]) THEN status ELSE $2 END, "
                "answered_by = coalesce($4, answered_by), error_code = coalesce($5, error_code), "
                "events = CASE WHEN $6::jsonb IS NULL THEN events ELSE events || $6::jsonb END, updated_at = $7 "
                f"WHERE id = $8 RETURNING {TWILIO_CALL_COLUMNS}",
                call_sid, status, list(TWILIO_FINAL_STATUSES), answered_by, error_code,
                None if event is None else [dict(event)], now, id,
            )  # fmt: skip
        return None if row is None else twilio_call_row(row, as_is)

    async def link_twilio_call(self, correlation: str, call_id: str) -> TwilioCallRow | None:
        now = self._clock()
        async with self._conn() as conn:
            row = await conn.fetchrow(
                "UPDATE twilio_calls SET call_id = $1, updated_at = $2 WHERE correlation = $3 "
                f"AND (call_id IS NULL OR call_id = $1) RETURNING {TWILIO_CALL_COLUMNS}",
                call_id, now, correlation,
            )  # fmt: skip
        return None if row is None else twilio_call_row(row, as_is)

    async def set_twilio_park(
        self, id: str, park: Mapping[str, Any] | None, *, correlation: str | None = None,
        expect_status: str | None = None,
    ) -> TwilioCallRow | None:
        now = self._clock()
        try:
            async with self._conn() as conn:
                row = await conn.fetchrow(
                    "UPDATE twilio_calls SET park = $1::jsonb, correlation = coalesce($2, correlation), "
                    "call_id = CASE WHEN $2::text IS NULL THEN call_id END, updated_at = $3 "
                    "WHERE id = $4 AND ($5::text IS NULL OR park->>'status' = $5::text) "
                    f"RETURNING {TWILIO_CALL_COLUMNS}",
                    None if park is None else dict(park), correlation, now, id, expect_status,
                )  # fmt: skip
        except asyncpg.UniqueViolationError as exc:  # correlation is UNIQUE
            raise CorrelationTaken(f"twilio call {id}: another Twilio call has that correlation id") from exc
        return None if row is None else twilio_call_row(row, as_is)


def _safe(exc: BaseException, url: str) -> str:
    """The exception's message with the URL (and its password) cut out."""
    text = str(exc)
    if url:
        text = text.replace(url, "<SIPCTL_DATABASE_URL>")
    return text[:300]
