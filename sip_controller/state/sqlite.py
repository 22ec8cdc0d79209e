"""The embedded store: one SQLite file (``state.path``) in WAL mode, for one process.

**Driver: the standard ``sqlite3`` module on one dedicated thread, not aiosqlite.** Every store method hands ONE
function to that thread, which runs the whole transaction there (``BEGIN IMMEDIATE`` … ``COMMIT``) and hands back
plain data: one thread hop per store call, and no other coroutine's statement can slip into the transaction.
aiosqlite is also ``sqlite3`` on a thread of its own, but it hops once per ``execute``, ``fetch`` and ``commit``
and shares its one connection between every task: a transaction spanning several awaits would need a lock of our
own around it to stay atomic. Measured on the ring path (claim the webhook-id, claim the call_id, create the call
row with the capacity check; 3,000 rings after 200 of warm-up, WAL on local disk, four paired runs on this 2-core
machine while other test runs loaded it):

    ==============================  ============  ============
    SQLite ring path, four runs     median        p99
    ==============================  ============  ============
    sqlite3 on one thread (this)    0.40-0.46 ms  5.7-6.8 ms
    aiosqlite 0.22, same SQL        0.46-0.59 ms  6.3-7.1 ms
    ==============================  ============  ============

So it is a little faster, atomic by construction, and spares the project a dependency. Since #18 the small writes
on a call's path (claims, ``admit``, ``append``, ``finish_call``, ``record_finished``) run on the event loop's
thread itself, on a second connection that never waits for a lock, when the write lock is free: the hop cost
~80 µs of CPU per call against ~5 µs for a statement. While the file is locked (another process writing, or the
store's thread in a transaction) they go to the thread as before, which waits (``_inline``). The connection lives on its
thread from open to close; calls queue in order on it, so a slow history page delays the next claim by its own time
(history queries are indexed and paged). ``python -m sip_controller.bench.store`` measures the ring path through
this store.

**Durability**: ``journal_mode=WAL`` and ``synchronous=NORMAL``: a committed transaction survives the process
being killed (SIGKILL, OOM, a crash): it is in the WAL, which the next open replays. A power cut or kernel panic
may lose the last transactions (they were not yet fsynced); run PostgreSQL where that matters. ``busy_timeout``
lets a second process on the same file (``sipctl migrate`` beside ``sipctl serve``, or a second store in tests)
wait for the write lock instead of failing. Several processes on one file work, but the file is for one host: use
PostgreSQL (:mod:`.postgres`) for replicas.

**Checkpoints off the ring path (#18)**: SQLite checkpoints the WAL (copies it into the file, then fsyncs both) in
whichever commit crosses 1,000 pages by default: about one commit in a hundred on the ring path then waited for
a checkpoint, milliseconds (commit p99 9.2 ms against 0.8 ms without, on this machine). The store's connection
does not checkpoint by itself (``wal_autocheckpoint`` only past ``FALLBACK_CHECKPOINT_PAGES``, a bound in case
the thread below cannot keep up); a thread of its own with its own connection runs a ``PASSIVE`` checkpoint every
``checkpoint_s`` (it never blocks a writer, and SQLite lets go of the GIL while it copies and syncs). Durability
is unchanged: a commit is in the WAL when it returns, whenever the checkpoint comes.

Writes take the write lock at ``BEGIN IMMEDIATE``, so read-then-write transactions (capacity, rate limit, the
outbox claim) are serialised across every connection to the file: one winner per race.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, TypeVar

from sip_controller.state import migrations
from sip_controller.state.analyses import SQLiteAnalyses
from sip_controller.state.batches import SQLiteBatches
from sip_controller.state.console_sessions import SQLiteConsoleSessions
from sip_controller.state.history import SQLiteHistory, finish_columns
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

T = TypeVar("T")
Conn = sqlite3.Connection

#: every column of ``calls`` but the report
CALL_COLUMNS = (
    "call_id, owner, epoch, state, profile, inputs, caller, dialed, received_at, accepted_at, deadlines, cost_usd, "
    "wake_at, takeovers, takeover_gap_s, entry_count, updated_at, ended_at, ended_reason"
)
OUTBOX_COLUMNS = "id, key, destination, event, payload, call_id, created_at, due_at, attempts, last_error"
COMMAND_COLUMNS = "id, call_id, kind, args, created_at, taken_by, taken_at, done_at, outcome"
#: the store's own connection checkpoints only past this many WAL pages (the checkpoint thread normally keeps the
#: WAL far below it): a bound on the WAL, not the way it is checkpointed
FALLBACK_CHECKPOINT_PAGES = 20_000
#: a lapsed process is forgotten this long after its lease ended (once it owns no live call)
FORGET_PROCESS_S = 86_400.0


def _call_row(row: sqlite3.Row) -> CallRow:
    return call_row(row, json.loads)


def _outbox_row(row: sqlite3.Row) -> OutboxRow:
    return outbox_row(row, json.loads)


def _command_row(row: sqlite3.Row) -> CommandRow:
    return command_row(row, json.loads)


def _fenced_reason(conn: Conn, fence: Fence) -> Literal["stale_owner", "finished", "unknown_call"] | None:
    row = conn.execute("SELECT owner, epoch, ended_at FROM calls WHERE call_id = ?", (fence.call_id,)).fetchone()
    if row is None:
        return "unknown_call"
    if (row["owner"], row["epoch"]) != (fence.owner, fence.epoch):
        return "stale_owner"
    if row["ended_at"] is not None:
        return "finished"
    return None


class SQLiteStore(SQLiteHistory, SQLiteAnalyses, SQLiteBatches, SQLiteConsoleSessions, Store):
    """The :class:`~sip_controller.state.store.Store` on one SQLite file. Build it with :meth:`open`."""

    backend = "sqlite"

    def __init__(
        self,
        path: str | Path,
        *,
        clock: Callable[[], float] = time.time,
        busy_timeout_s: float = 5.0,
        checkpoint_s: float = 0.5,
    ):
        self.path = Path(path)
        self._clock = clock
        self._busy_timeout_ms = int(busy_timeout_s * 1000)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sipctl-sqlite")
        self._conn: Conn | None = None
        self._closed = False
        self._checkpoint_s = checkpoint_s
        self._checkpointer: threading.Thread | None = None
        self._checkpoint_conn: Conn | None = None
        self._checkpoint_lock = threading.Lock()
        self._stop = threading.Event()
        #: the connection of the writes run on the loop's thread (:meth:`_inline`)
        self._loop_conn: Conn | None = None
        #: how many store calls ran on the loop's thread, and how many went to the store's thread
        self.inline_ops = 0
        self.threaded_ops = 0

    @classmethod
    async def open(
        cls,
        path: str | Path,
        *,
        migrate: bool | None = True,
        clock: Callable[[], float] = time.time,
        busy_timeout_s: float = 5.0,
        checkpoint_s: float = 0.5,
    ) -> SQLiteStore:
        """Open (creating the file and its parent folder if needed) and apply pending migrations; with
        ``migrate=False`` refuse a schema that is not exactly this code's (:class:`SchemaError`); with None, neither
        (for ``sipctl migrate``, which then calls :meth:`migrate` or :meth:`check_schema` itself). ``checkpoint_s``:
        how often the checkpoint thread checkpoints the WAL."""
        store = cls(path, clock=clock, busy_timeout_s=busy_timeout_s, checkpoint_s=checkpoint_s)
        try:
            await store._run(store._connect)
            if migrate:
                await store.migrate()
            elif migrate is not None:
                await store.check_schema()
            store._start_checkpoints()
            store._loop_conn = store._open_loop_conn()
        except (sqlite3.Error, OSError) as exc:
            await store.aclose()
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise StoreError(
                f"cannot use the state file {str(store.path)!r} ({why}); set state.path (SIPCTL_STATE__PATH) to a "
                "file in a writable folder"
            ) from exc
        except BaseException:
            await store.aclose()
            raise
        return store

    def _connect(self, _: None) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=self._busy_timeout_ms / 1000)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
            mode = self._enter_wal(conn)
            if mode != "wal":
                raise StoreError(f"{self.path}: SQLite could not use WAL mode here (got {mode})")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute(f"PRAGMA wal_autocheckpoint = {FALLBACK_CHECKPOINT_PAGES}")  # the thread checkpoints
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _open_loop_conn(self) -> Conn:
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=0)
        conn.row_factory = sqlite3.Row
        for pragma in ("busy_timeout = 0", "synchronous = NORMAL", "foreign_keys = ON"):
            conn.execute(f"PRAGMA {pragma}")
        conn.execute(f"PRAGMA wal_autocheckpoint = {FALLBACK_CHECKPOINT_PAGES}")
        return conn

    # ---- the checkpoint thread ------------------------------------------------------------------------------

    def _start_checkpoints(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 0")  # PASSIVE never waits anyway; nothing here should
        self._checkpoint_conn = conn
        self._checkpointer = threading.Thread(
            target=self._checkpoint_loop, name="sipctl-sqlite-checkpoint", daemon=True
        )
        self._checkpointer.start()

    def _checkpoint_loop(self) -> None:
        while not self._stop.wait(self._checkpoint_s):
            self._checkpoint_now()

    def _checkpoint_now(self) -> None:
        with self._checkpoint_lock:
            if self._checkpoint_conn is None:
                return
            # busy (another process checkpointing) or the file going away: the next round tries again
            with contextlib.suppress(sqlite3.Error):
                self._checkpoint_conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    async def checkpoint(self) -> None:
        """Checkpoint the WAL now (``PASSIVE``), on the checkpoint thread's connection: what the thread does every
        ``checkpoint_s``."""
        await asyncio.get_running_loop().run_in_executor(None, self._checkpoint_now)

    def _enter_wal(self, conn: Conn) -> str:
        """Switch the file to WAL (a no-op once it is). Switching needs the file to itself, and SQLite answers
        "database is locked" at once, without its busy handler, while another process opens the same new file,
        so retry within the busy timeout."""
        deadline = time.monotonic() + self._busy_timeout_ms / 1000
        pause = 0.005
        while True:
            try:
                mode = str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower()
                if mode == "wal":
                    return mode
                return str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]).lower()
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                if time.monotonic() >= deadline:
                    raise
                time.sleep(pause)
                pause = min(pause * 2, 0.1)

    # ---- the thread -----------------------------------------------------------------------------------------

    async def _run(self, fn: Callable[[Any], T]) -> T:
        if self._closed:
            raise StoreError("the store is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._on_thread, fn)

    def _on_thread(self, fn: Callable[[Any], T]) -> T:
        return fn(self._conn)

    @staticmethod
    def _transaction(conn: Conn, fn: Callable[[Conn], T]) -> T:
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result

    async def _write(self, fn: Callable[[Conn], T], *, inline: bool = False) -> T:
        """``fn`` in one write transaction (rolled back if it raises). ``inline``: a small bounded transaction on a
        call's path, run right here on the loop's thread when the write lock is free (:meth:`_inline`)."""
        if inline:
            done, result = self._inline(lambda conn: self._transaction(conn, fn))
            if done:
                return result  # type: ignore[return-value]
        self.threaded_ops += 1
        return await self._run(lambda conn: self._transaction(conn, fn))

    def _inline(self, transaction: Callable[[Conn], T]) -> tuple[bool, T | None]:
        """Run ``transaction`` on the loop's own connection, which never waits for a lock (``busy_timeout`` 0):
        (True, its result), or (False, None) when the file was locked (another process writing, or this store's
        thread in a transaction of its own); it was rolled back, so the caller runs it on the thread, which waits.
        A thread hop cost ~80 µs of CPU per store call against ~5 µs for the statement itself (#18), and a call's
        writes are a few small statements and a commit that never checkpoints (the checkpoint thread does): tens
        of microseconds on the loop. Each runs start to finish without an await, so it is atomic for the loop."""
        conn = self._loop_conn
        if conn is None or self._closed:
            return False, None
        try:
            result = transaction(conn)
        except sqlite3.OperationalError as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if "locked" in str(exc) or "busy" in str(exc):
                return False, None
            raise
        self.inline_ops += 1
        return True, result

    async def _read(self, fn: Callable[[Conn], T]) -> T:
        """``fn`` in one read transaction (a consistent snapshot across its statements)."""

        def transaction(conn: Conn) -> T:
            conn.execute("BEGIN")
            try:
                return fn(conn)
            finally:
                conn.execute("COMMIT")

        return await self._run(transaction)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True

        def close(_: None) -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        if self._loop_conn is not None:
            self._loop_conn.close()
            self._loop_conn = None
        self._stop.set()
        if self._checkpointer is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._checkpointer.join)
        with self._checkpoint_lock:
            if self._checkpoint_conn is not None:
                self._checkpoint_conn.close()
                self._checkpoint_conn = None
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._on_thread, close)
        finally:
            self._executor.shutdown(wait=True)

    # ---- migrations -----------------------------------------------------------------------------------------

    async def migrate(self) -> list[int]:
        """Apply the pending migrations, each in its own transaction; the versions applied."""
        known = migrations.available("sqlite")
        applied: list[int] = []
        while True:
            version = await self._write(lambda conn: self._migrate_one(conn, known))
            if version is None:
                return applied
            applied.append(version)

    def _migrate_one(self, conn: Conn, known: tuple[migrations.Migration, ...]) -> int | None:
        conn.execute(migrations.BOOTSTRAP["sqlite"])
        todo = migrations.pending(self._applied(conn), known)
        if not todo:
            return None
        migration = todo[0]
        try:
            for statement in migrations.sqlite_statements(migration.sql):
                conn.execute(statement)
        except sqlite3.Error as exc:
            raise SchemaError(migrations.failed(migration, exc)) from exc
        conn.execute(
            "INSERT INTO schema_migrations (version, name, checksum, applied_at) VALUES (?, ?, ?, ?)",
            (migration.version, migration.name, migration.checksum, self._clock()),
        )
        return migration.version

    @staticmethod
    def _applied(conn: Conn) -> list[migrations.Applied]:
        exists = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'")
        if exists.fetchone() is None:
            return []
        rows = conn.execute("SELECT version, name, checksum FROM schema_migrations").fetchall()
        return [migrations.Applied(r["version"], r["name"], r["checksum"]) for r in rows]

    async def check_schema(self) -> None:
        todo = await self._read(lambda conn: migrations.pending(self._applied(conn), migrations.available("sqlite")))
        if todo:
            raise SchemaError(
                f"{len(todo)} schema migration(s) not applied (up to {todo[-1].version:04d}); run `sipctl migrate`"
            )

    async def schema_version(self) -> int:
        return await self._read(lambda conn: max((a.version for a in self._applied(conn)), default=0))

    # ---- claims -------------------------------------------------------------------------------------------

    async def claim(self, key: str, ttl_s: float) -> bool:
        now = self._clock()

        def op(conn: Conn) -> bool:
            rows = conn.execute(
                "INSERT INTO claims (key, expires_at) VALUES (?, ?) ON CONFLICT (key) DO UPDATE "
                "SET expires_at = excluded.expires_at WHERE claims.expires_at <= ? RETURNING key",
                (key, now + ttl_s, now),
            ).fetchall()
            return bool(rows)

        return await self._write(op, inline=True)

    async def release(self, key: str) -> None:
        await self._run(lambda conn: conn.execute("DELETE FROM claims WHERE key = ?", (key,)))

    async def sweep(
        self,
        *,
        limit: int = 1000,
        keep_delivered_s: float = 86_400.0,
        keep_twilio_calls_s: float = KEEP_TWILIO_CALLS_S,
        keep_batches_s: float | None = None,
    ) -> SweepCounts:
        now = self._clock()

        def op(conn: Conn) -> SweepCounts:
            def delete(sql: str, *args: object) -> int:
                return conn.execute(sql, (*args, limit)).rowcount

            batch_rows, batches = self._sweep_batches(conn, keep_batches_s, limit)
            return SweepCounts(
                claims=delete(
                    "DELETE FROM claims WHERE key IN (SELECT key FROM claims WHERE expires_at <= ? LIMIT ?)", now
                ),
                batch_rows=batch_rows,
                batches=batches,
                caller_hits=delete(
                    "DELETE FROM caller_hits WHERE rowid IN "
                    "(SELECT rowid FROM caller_hits WHERE expires_at <= ? LIMIT ?)",
                    now,
                ),
                outbox=delete(
                    "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox "
                    "WHERE coalesce(delivered_at, gave_up_at) <= ? LIMIT ?)",
                    now - keep_delivered_s,
                ),
                processes=delete(
                    "DELETE FROM processes WHERE process_id IN (SELECT p.process_id FROM processes p "
                    "WHERE p.lease_until <= ? AND NOT EXISTS (SELECT 1 FROM calls c "
                    "WHERE c.owner = p.process_id AND c.ended_at IS NULL) LIMIT ?)",
                    now - FORGET_PROCESS_S,
                ),
                commands=delete(
                    "DELETE FROM call_commands WHERE id IN (SELECT id FROM call_commands WHERE created_at <= ? "
                    "LIMIT ?)",
                    now - keep_delivered_s,
                ),
                twilio_calls=delete(
                    "DELETE FROM twilio_calls WHERE id IN (SELECT id FROM twilio_calls WHERE created_at <= ? LIMIT ?)",
                    now - keep_twilio_calls_s,
                ),
                console_sessions=delete(
                    "DELETE FROM console_sessions WHERE key IN "
                    "(SELECT key FROM console_sessions WHERE expires_at <= ? LIMIT ?)",
                    now,
                ),
                login_failures=delete(
                    "DELETE FROM login_failures WHERE client IN "
                    "(SELECT client FROM login_failures WHERE forget_at <= ? LIMIT ?)",
                    now,
                ),
            )

        return await self._write(op)

    # ---- processes ------------------------------------------------------------------------------------------

    async def heartbeat(self, process_id: str, lease_s: float, info: dict[str, object] | None = None) -> bool:
        now = self._clock()
        info_json = dumps(info) if info is not None else None

        def op(conn: Conn) -> bool:
            row = conn.execute("SELECT lease_until FROM processes WHERE process_id = ?", (process_id,)).fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO processes (process_id, started_at, heartbeat_at, lease_until, info) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (process_id, now, now, now + lease_s, info_json or "{}"),
                )
                return True
            conn.execute(
                "UPDATE processes SET heartbeat_at = ?, lease_until = ?, info = coalesce(?, info) WHERE process_id = ?",
                (now, now + lease_s, info_json, process_id),
            )
            return bool(row["lease_until"] > now)

        return await self._write(op)

    async def end_lease(self, process_id: str) -> None:
        now = self._clock()
        await self._run(
            lambda conn: conn.execute(
                "UPDATE processes SET lease_until = min(lease_until, ?) WHERE process_id = ?", (now, process_id)
            )
        )

    async def lapsed_processes(self) -> list[ProcessRow]:
        now = self._clock()

        def op(conn: Conn) -> list[ProcessRow]:
            rows = conn.execute(
                "SELECT * FROM processes WHERE lease_until <= ? ORDER BY heartbeat_at, process_id", (now,)
            ).fetchall()
            return [
                ProcessRow(r["process_id"], r["started_at"], r["heartbeat_at"], r["lease_until"], json.loads(r["info"]))
                for r in rows
            ]

        return await self._run(op)

    # ---- calls ----------------------------------------------------------------------------------------------

    async def create_call(
        self, call: NewCall, *, max_live: int | None = None, outbox: Sequence[OutboxItem] = ()
    ) -> CallRow | None:
        now = self._clock()
        values = (
            call.call_id, call.owner, call.state, call.profile, dumps(call.inputs), call.caller, call.dialed,
            call.received_at, call.accepted_at, dumps(call.deadlines), call.cost_usd, now,
        )  # fmt: skip

        def op(conn: Conn) -> CallRow | None:
            if max_live is not None:
                live = conn.execute("SELECT count(*) FROM calls WHERE ended_at IS NULL").fetchone()[0]
                if live >= max_live:
                    return None
            rows = conn.execute(
                "INSERT INTO calls (call_id, owner, state, profile, inputs, caller, dialed, received_at, "
                "accepted_at, deadlines, cost_usd, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                f"ON CONFLICT (call_id) DO NOTHING RETURNING {CALL_COLUMNS}",
                values,
            ).fetchall()
            if not rows:
                raise CallExists(f"call {call.call_id} already exists")
            self._enqueue(conn, outbox, now)
            return _call_row(rows[0])

        return await self._write(op)

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
        values = None
        if call is not None:
            values = (
                call.call_id, call.owner, call.state, call.profile, dumps(call.inputs), call.caller, call.dialed,
                call.received_at, call.accepted_at, dumps(call.deadlines), call.cost_usd, now,
            )  # fmt: skip
        limit = caller if caller is not None and caller.limit > 0 else None

        def op(conn: Conn) -> Admission:
            for key in keys:
                held = conn.execute("SELECT 1 FROM claims WHERE key = ? AND expires_at > ?", (key, now)).fetchone()
                if held is not None:
                    return Admission("duplicate", held=key)  # nothing written yet: the transaction ends clean
            conn.executemany(
                "INSERT INTO claims (key, expires_at) VALUES (?, ?) ON CONFLICT (key) DO UPDATE "
                "SET expires_at = excluded.expires_at",
                [(key, now + ttl_s) for key in keys],
            )
            if call is None or values is None:
                return Admission("claimed")
            if limit is not None:
                seen = conn.execute(
                    "SELECT count(*) FROM caller_hits WHERE key = ? AND at > ?", (limit.key, now - limit.window_s)
                ).fetchone()[0]
                if seen >= limit.limit:
                    return Admission("rate_limited")
            live = "SELECT count(*) FROM calls WHERE ended_at IS NULL"
            if max_live is not None and conn.execute(live).fetchone()[0] >= max_live:
                return Admission("at_capacity")
            inserted = conn.execute(
                "INSERT INTO calls (call_id, owner, state, profile, inputs, caller, dialed, received_at, "
                "accepted_at, deadlines, cost_usd, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (call_id) DO NOTHING",
                values,
            ).rowcount
            if not inserted:
                return Admission("exists")
            if limit is not None:
                conn.execute(
                    "INSERT INTO caller_hits (key, at, expires_at) VALUES (?, ?, ?)",
                    (limit.key, now, now + limit.window_s),
                )
            self._enqueue(conn, outbox, now)
            return Admission("admitted", row=new_call_row(call, now))

        return await self._write(op, inline=True)

    async def get_call(self, call_id: str) -> CallRow | None:
        def op(conn: Conn) -> CallRow | None:
            row = conn.execute(f"SELECT {CALL_COLUMNS} FROM calls WHERE call_id = ?", (call_id,)).fetchone()
            return None if row is None else _call_row(row)

        return await self._run(op)

    async def verify(self, fence: Fence) -> None:
        reason = await self._run(lambda conn: _fenced_reason(conn, fence))
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
        changes = call_changes(dumps, state, cost_usd, accepted_at, deadlines, wake_at)
        rows = [(e.kind, e.at, dumps(e.data)) for e in entries]
        now = self._clock()
        return await self._write(lambda conn: self._record(conn, fence, rows, changes, now), inline=True)

    def _record(
        self, conn: Conn, fence: Fence, entries: list[tuple[str, float, str]], changes: dict[str, Any], now: float
    ) -> int:
        """The fenced update of the call row (which also numbers the entries), then the entries."""
        sets = "".join(f", {column} = ?" for column in changes)
        found = conn.execute(
            f"UPDATE calls SET entry_count = entry_count + ?, updated_at = ?{sets} "
            "WHERE call_id = ? AND owner = ? AND epoch = ? AND ended_at IS NULL RETURNING entry_count",
            (len(entries), now, *changes.values(), fence.call_id, fence.owner, fence.epoch),
        ).fetchall()
        if not found:
            raise Fenced(fence, _fenced_reason(conn, fence) or "stale_owner")
        count: int = found[0][0]
        first = count - len(entries) + 1
        conn.executemany(
            "INSERT INTO call_entries (call_id, seq, kind, at, data) VALUES (?, ?, ?, ?, ?)",
            [(fence.call_id, first + i, kind, at, data) for i, (kind, at, data) in enumerate(entries)],
        )
        return count

    async def read_entries(self, call_id: str, *, after_seq: int = 0) -> list[StoredEntry]:
        def op(conn: Conn) -> list[StoredEntry]:
            rows = conn.execute(
                "SELECT seq, kind, at, data FROM call_entries WHERE call_id = ? AND seq > ? ORDER BY seq",
                (call_id, after_seq),
            ).fetchall()
            return [StoredEntry(r["seq"], r["kind"], r["at"], json.loads(r["data"])) for r in rows]

        return await self._run(op)

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
            "report": dumps(report),
            "wake_at": None,
        }
        if cost_usd is not None:
            changes["cost_usd"] = cost_usd
        summary, text = finish_columns(report, cost_usd or 0.0)
        changes.update(summary)
        rows = [(e.kind, e.at, dumps(e.data)) for e in entries]

        def op(conn: Conn) -> None:
            self._record(conn, fence, rows, changes, now)
            self._index_text(conn, fence.call_id, text)
            self._enqueue(conn, outbox, now)

        await self._write(op, inline=True)

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
        values = (
            call.call_id, call.owner, call.state, call.profile, dumps(call.inputs), call.caller, call.dialed,
            call.received_at, call.accepted_at, dumps(call.deadlines), call.cost_usd, now, len(entries),
            now if ended_at is None else ended_at, ended_reason, dumps(report), summary["model_usd"],
            summary["transcription_usd"],
        )  # fmt: skip
        rows = [(call.call_id, seq, e.kind, e.at, dumps(e.data)) for seq, e in enumerate(entries, start=1)]

        def op(conn: Conn) -> None:
            inserted = conn.execute(
                "INSERT INTO calls (call_id, owner, state, profile, inputs, caller, dialed, received_at, "
                "accepted_at, deadlines, cost_usd, updated_at, entry_count, ended_at, ended_reason, report, "
                "model_usd, transcription_usd) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (call_id) DO NOTHING",
                values,
            ).rowcount
            if not inserted:
                raise CallExists(f"call {call.call_id} already exists")
            conn.executemany("INSERT INTO call_entries (call_id, seq, kind, at, data) VALUES (?, ?, ?, ?, ?)", rows)
            self._index_text(conn, call.call_id, text)
            self._enqueue(conn, outbox, now)

        await self._write(op, inline=True)

    async def get_report(self, call_id: str) -> dict[str, object] | None:
        def op(conn: Conn) -> dict[str, object] | None:
            row = conn.execute(
                "SELECT report FROM calls WHERE call_id = ? AND ended_at IS NOT NULL", (call_id,)
            ).fetchone()
            if row is None or row["report"] is None:
                return None
            report: dict[str, object] = json.loads(row["report"])
            return report

        return await self._run(op)

    async def merge_report(self, call_id: str, fields: Mapping[str, Any]) -> bool:
        def op(conn: Conn) -> bool:
            row = conn.execute(
                "SELECT report FROM calls WHERE call_id = ? AND ended_at IS NOT NULL", (call_id,)
            ).fetchone()
            if row is None or row["report"] is None:
                return False
            report = {**json.loads(row["report"]), **fields}
            conn.execute("UPDATE calls SET report = ? WHERE call_id = ?", (dumps(report), call_id))
            return True

        return await self._write(op)

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
            ended_reason=ended_reason, report=dumps(report), summary=summary, cost_usd=cost_usd, ended_at=ended_at,
            now=now,
        )  # fmt: skip
        sets = ", ".join(f"{column} = ?" for column in changes)
        sql = f"UPDATE calls SET {sets} WHERE call_id = ? AND state = 'ended' AND ended_reason = ?"

        def op(conn: Conn) -> bool:
            if not conn.execute(sql, (*changes.values(), call_id, PARKED)).rowcount:
                return False
            # the parked leg's own transcript leaves the index (its trigger deletes the text); the call's goes in
            conn.execute("DELETE FROM call_search WHERE call_id = ?", (call_id,))
            self._index_text(conn, call_id, text)
            self._enqueue(conn, outbox, now)
            return True

        return await self._write(op)

    async def list_live(self, *, owner: str | None = None, limit: int = 10_000) -> list[CallRow]:
        where, args = ("AND owner = ?", (owner,)) if owner is not None else ("", ())
        sql = f"SELECT {CALL_COLUMNS} FROM calls WHERE ended_at IS NULL {where} ORDER BY received_at, call_id LIMIT ?"
        return await self._run(lambda conn: [_call_row(r) for r in conn.execute(sql, (*args, limit)).fetchall()])

    async def count_live(self, *, state: str | None = None) -> int:
        where, args = ("AND state = ?", (state,)) if state is not None else ("", ())
        sql = f"SELECT count(*) FROM calls WHERE ended_at IS NULL {where}"
        return await self._run(lambda conn: int(conn.execute(sql, args).fetchone()[0]))

    async def orphaned_calls(self, *, limit: int = 100) -> list[CallRow]:
        now = self._clock()
        sql = (
            f"SELECT {CALL_COLUMNS} FROM calls c WHERE c.ended_at IS NULL AND NOT EXISTS "
            "(SELECT 1 FROM processes p WHERE p.process_id = c.owner AND p.lease_until > ?) "
            "ORDER BY c.received_at, c.call_id LIMIT ?"
        )
        return await self._run(lambda conn: [_call_row(r) for r in conn.execute(sql, (now, limit)).fetchall()])

    async def take_over(self, call_id: str, new_owner: str, *, expected_epoch: int) -> CallRow | None:
        now = self._clock()

        def op(conn: Conn) -> CallRow | None:
            rows = conn.execute(
                "UPDATE calls SET owner = ?, epoch = epoch + 1, takeovers = takeovers + 1, "
                "takeover_gap_s = max(0.0, ? - coalesce((SELECT p.heartbeat_at FROM processes p "
                "WHERE p.process_id = calls.owner), calls.updated_at)), updated_at = ? "
                "WHERE call_id = ? AND epoch = ? AND ended_at IS NULL AND NOT EXISTS (SELECT 1 FROM processes p "
                f"WHERE p.process_id = calls.owner AND p.lease_until > ?) RETURNING {CALL_COLUMNS}",
                (new_owner, now, now, call_id, expected_epoch, now),
            ).fetchall()
            return _call_row(rows[0]) if rows else None

        return await self._write(op)

    async def hanging_up_calls(self, *, limit: int = 100) -> list[CallRow]:
        now = self._clock()
        sql = (
            f"SELECT {CALL_COLUMNS} FROM calls WHERE ended_at IS NULL AND state = ? "
            "AND (wake_at IS NULL OR wake_at <= ?) ORDER BY coalesce(wake_at, updated_at), call_id LIMIT ?"
        )
        return await self._run(
            lambda conn: [_call_row(r) for r in conn.execute(sql, (HANGING_UP, now, limit)).fetchall()]
        )

    # ---- operator commands ----------------------------------------------------------------------------------

    async def post_command(self, call_id: str, kind: str, args: Mapping[str, Any] | None = None) -> int | None:
        if kind not in COMMAND_KINDS:
            raise ValueError(f"unknown command kind {kind!r}; one of: {', '.join(COMMAND_KINDS)}")
        now = self._clock()
        values = (call_id, kind, dumps(args or {}), now, call_id)

        def op(conn: Conn) -> int | None:
            row = conn.execute(
                "INSERT INTO call_commands (call_id, kind, args, created_at) SELECT ?, ?, ?, ? "
                "WHERE EXISTS (SELECT 1 FROM calls WHERE call_id = ? AND ended_at IS NULL) RETURNING id",
                values,
            ).fetchone()
            return None if row is None else int(row[0])

        return await self._write(op)

    async def take_commands(self, owner: str, *, limit: int = 50) -> list[CommandRow]:
        now = self._clock()
        sql = (
            "UPDATE call_commands SET taken_by = ?, taken_at = ? WHERE id IN (SELECT cc.id FROM call_commands cc "
            "JOIN calls c ON c.call_id = cc.call_id WHERE c.owner = ? AND c.ended_at IS NULL AND cc.done_at IS NULL "
            "AND (cc.taken_by IS NULL OR cc.taken_by <> ?) ORDER BY cc.id LIMIT ?) "
            f"RETURNING {COMMAND_COLUMNS}"
        )

        def op(conn: Conn) -> list[CommandRow]:
            rows = conn.execute(sql, (owner, now, owner, owner, limit)).fetchall()
            return sorted((_command_row(r) for r in rows), key=lambda r: r.id)

        return await self._write(op)

    async def command_done(self, command_id: int, outcome: str) -> bool:
        now = self._clock()
        sql = "UPDATE call_commands SET done_at = ?, outcome = ? WHERE id = ? AND done_at IS NULL"
        return bool(await self._write(lambda conn: conn.execute(sql, (now, outcome[:200], command_id)).rowcount))

    # ---- outbox ---------------------------------------------------------------------------------------------

    @staticmethod
    def _enqueue(conn: Conn, items: Sequence[OutboxItem], now: float) -> int:
        added = 0
        for item in items:
            added += conn.execute(
                "INSERT INTO outbox (key, call_id, destination, event, payload, created_at, due_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO NOTHING",
                (
                    item.key, item.call_id, item.destination, item.event, dumps(item.payload), now,
                    now if item.due_at is None else item.due_at,
                ),
            ).rowcount  # fmt: skip
        return added

    async def enqueue(self, items: Sequence[OutboxItem]) -> int:
        now = self._clock()
        return await self._write(lambda conn: self._enqueue(conn, items, now))

    async def claim_outbox(
        self, worker: str, *, limit: int = 50, lease_s: float = 30.0, destination: str | None = None
    ) -> list[OutboxRow]:
        now = self._clock()
        where, args = ("AND destination = ?", (destination,)) if destination is not None else ("", ())
        sql = (
            "UPDATE outbox SET lease_owner = ?, lease_until = ?, attempts = attempts + 1 WHERE id IN "
            "(SELECT id FROM outbox WHERE delivered_at IS NULL AND gave_up_at IS NULL AND due_at <= ? "
            f"AND (lease_until IS NULL OR lease_until <= ?) {where} ORDER BY due_at, id LIMIT ?) "
            f"RETURNING {OUTBOX_COLUMNS}"
        )

        def op(conn: Conn) -> list[OutboxRow]:
            rows = conn.execute(sql, (worker, now + lease_s, now, now, *args, limit)).fetchall()
            return sorted((_outbox_row(r) for r in rows), key=lambda r: (r.due_at, r.id))

        return await self._write(op)

    async def mark_delivered(self, ids: Sequence[int]) -> int:
        if not ids:
            return 0
        now = self._clock()
        marks = ", ".join("?" * len(ids))
        sql = (
            "UPDATE outbox SET delivered_at = ?, lease_owner = NULL, lease_until = NULL "
            f"WHERE id IN ({marks}) AND delivered_at IS NULL"
        )
        return await self._write(lambda conn: conn.execute(sql, (now, *ids)).rowcount)

    async def mark_failed(self, worker: str, row_id: int, *, next_attempt_at: float | None, error: str) -> bool:
        now = self._clock()
        if next_attempt_at is None:
            sql, args = "gave_up_at = ?", (now,)
        else:
            sql, args = "due_at = ?", (next_attempt_at,)
        statement = (
            f"UPDATE outbox SET lease_owner = NULL, lease_until = NULL, last_error = ?, {sql} "
            "WHERE id = ? AND lease_owner = ? AND delivered_at IS NULL AND gave_up_at IS NULL"
        )
        changed = await self._write(
            lambda conn: conn.execute(statement, (error[:1000], *args, row_id, worker)).rowcount
        )
        return bool(changed)

    async def outbox_stats(self) -> OutboxStats:
        now = self._clock()

        def op(conn: Conn) -> OutboxStats:
            pending, oldest = conn.execute(
                "SELECT count(*), min(created_at) FROM outbox WHERE delivered_at IS NULL AND gave_up_at IS NULL"
            ).fetchone()
            gave_up = conn.execute(
                "SELECT count(*) FROM outbox WHERE gave_up_at IS NOT NULL AND delivered_at IS NULL"
            ).fetchone()[0]
            return OutboxStats(pending, gave_up, None if oldest is None else max(0.0, now - oldest))

        return await self._read(op)

    # ---- cluster counts -------------------------------------------------------------------------------------

    async def allow_caller(self, key: str, limit: int, *, window_s: float = 60.0) -> bool:
        if limit <= 0:
            return True
        now = self._clock()

        def op(conn: Conn) -> bool:
            seen = conn.execute(
                "SELECT count(*) FROM caller_hits WHERE key = ? AND at > ?", (key, now - window_s)
            ).fetchone()[0]
            if seen >= limit:
                return False
            conn.execute("INSERT INTO caller_hits (key, at, expires_at) VALUES (?, ?, ?)", (key, now, now + window_s))
            return True

        return await self._write(op)

    async def caller_count(self, key: str, *, window_s: float = 60.0) -> int:
        now = self._clock()
        sql = "SELECT count(*) FROM caller_hits WHERE key = ? AND at > ?"
        return await self._run(lambda conn: int(conn.execute(sql, (key, now - window_s)).fetchone()[0]))

    # ---- Twilio calls (#16) ---------------------------------------------------------------------------------

    async def create_twilio_call(self, call: NewTwilioCall) -> tuple[TwilioCallRow, bool]:
        now = self._clock()
        values = (
            call.id, call.correlation, call.direction, call.call_sid, call.idempotency_key, call.request_hash,
            call.profile, call.from_number, call.to_number, dumps(dict(call.variables)), call.status, now, now,
        )  # fmt: skip

        def op(conn: Conn) -> tuple[TwilioCallRow, bool]:
            row = conn.execute(
                "INSERT INTO twilio_calls (id, correlation, direction, call_sid, idempotency_key, request_hash, "
                "profile, from_number, to_number, variables, status, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT DO NOTHING RETURNING " + TWILIO_CALL_COLUMNS,
                values,
            ).fetchone()
            if row is not None:
                return twilio_call_row(row, json.loads), True
            existing = conn.execute(
                f"SELECT {TWILIO_CALL_COLUMNS} FROM twilio_calls WHERE idempotency_key = ? OR call_sid = ? "
                "OR id = ? OR correlation = ? LIMIT 1",
                (call.idempotency_key, call.call_sid, call.id, call.correlation),
            ).fetchone()
            if existing is None:  # pragma: no cover - a conflict always leaves the row it conflicted with
                raise StoreError(f"twilio call {call.id}: refused and not found")
            return twilio_call_row(existing, json.loads), False

        return await self._write(op)

    async def get_twilio_call(
        self, *, id: str | None = None, correlation: str | None = None, call_sid: str | None = None
    ) -> TwilioCallRow | None:
        column, value = twilio_lookup(id, correlation, call_sid)
        sql = f"SELECT {TWILIO_CALL_COLUMNS} FROM twilio_calls WHERE {column} = ?"
        row = await self._run(lambda conn: conn.execute(sql, (value,)).fetchone())
        return None if row is None else twilio_call_row(row, json.loads)

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
        finals = ", ".join(f"'{s}'" for s in TWILIO_FINAL_STATUSES)
        sql = (
            "UPDATE twilio_calls SET call_sid = coalesce(?, call_sid), "
            f"status = CASE WHEN ? IS NULL OR status IN ({finals}) THEN status ELSE ? END, "
            "answered_by = coalesce(?, answered_by), error_code = coalesce(?, error_code), "
            "events = CASE WHEN ? IS NULL THEN events ELSE json_insert(events, '$[#]', json(?)) END, updated_at = ? "
            f"WHERE id = ? RETURNING {TWILIO_CALL_COLUMNS}"
        )
        encoded = None if event is None else dumps(dict(event))
        args = (call_sid, status, status, answered_by, error_code, encoded, encoded, now, id)
        row = await self._write(lambda conn: conn.execute(sql, args).fetchone())
        return None if row is None else twilio_call_row(row, json.loads)

    async def link_twilio_call(self, correlation: str, call_id: str) -> TwilioCallRow | None:
        now = self._clock()
        sql = (
            "UPDATE twilio_calls SET call_id = ?, updated_at = ? WHERE correlation = ? "
            f"AND (call_id IS NULL OR call_id = ?) RETURNING {TWILIO_CALL_COLUMNS}"
        )
        row = await self._write(lambda conn: conn.execute(sql, (call_id, now, correlation, call_id)).fetchone())
        return None if row is None else twilio_call_row(row, json.loads)

    async def set_twilio_park(
        self, id: str, park: Mapping[str, Any] | None, *, correlation: str | None = None,
        expect_status: str | None = None,
    ) -> TwilioCallRow | None:
        now = self._clock()
        expected = "" if expect_status is None else "AND json_extract(park, '$.status') = ? "
        sql = (
            "UPDATE twilio_calls SET park = ?, correlation = coalesce(?, correlation), "
            "call_id = CASE WHEN ? IS NULL THEN call_id END, updated_at = ? "
            f"WHERE id = ? {expected}RETURNING {TWILIO_CALL_COLUMNS}"
        )
        args: tuple[Any, ...] = (None if park is None else dumps(park), correlation, correlation, now, id)
        if expect_status is not None:
            args += (expect_status,)

        def op(conn: Conn) -> sqlite3.Row | None:
            try:
                row: sqlite3.Row | None = conn.execute(sql, args).fetchone()
            except sqlite3.IntegrityError as exc:  # correlation is UNIQUE
                raise CorrelationTaken(f"twilio call {id}: another Twilio call has that correlation id") from exc
            return row

        row = await self._write(op)
        return None if row is None else twilio_call_row(row, json.loads)
