"""The operator console's sign-in sessions and the wrong-token throttle, in the store (#13, #14.11): every replica
accepts a session another one started, a sign-out on one revokes it everywhere, and wrong tokens are counted
cluster-wide.

A session is kept by its **key**, the SHA-256 of the opaque id in the browser's cookie: the id itself is never
written, so a copy of the table holds no usable cookie. A lookup is one primary-key read; ``last_seen_at`` is
written only when it is older than ``touch_after_s`` (once a minute by default), not on every request. Sign-out
sets ``revoked_at``; the row stays (revoked) until it expires, and the sweep deletes expired rows.

The throttle keeps one row per client key (an address, an IPv6 /64): its wrong tokens, the time before which none
of its tokens is looked at (``blocked_until``), and ``forget_at``, after which a quiet client starts again from
nothing (and the sweep deletes the row). The backoff itself (free failures, then 1 s doubling up to a cap) is
:class:`LoginBackoff`, the same for the store and the in-memory throttle of a store-less unit test.

The SQL is in :class:`SQLiteConsoleSessions` and :class:`PostgresConsoleSessions`, mixed into the two backends.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

T = TypeVar("T")

SESSION_COLUMNS = "key, csrf, created_at, expires_at, last_seen_at"
#: how stale ``last_seen_at`` may be before a lookup writes it again
TOUCH_AFTER_S = 60.0


@dataclass(frozen=True, slots=True)
class ConsoleSession:
    """A live console session (neither expired nor revoked). ``key`` is the SHA-256 of the cookie's id."""

    key: str
    csrf: str
    created_at: float
    expires_at: float
    last_seen_at: float


@dataclass(frozen=True, slots=True)
class LoginBackoff:
    """How wrong tokens are throttled per client: ``free_failures`` are let through, then each further one makes
    the client wait ``first_wait_s``, doubling, at most ``max_wait_s``. A client quiet for ``forget_after_s`` (at
    least ``max_wait_s``) after its last wrong token starts again from nothing."""

    free_failures: int = 5
    first_wait_s: float = 1.0
    max_wait_s: float = 300.0
    forget_after_s: float = 900.0

    @property
    def forget_s(self) -> float:
        return max(self.forget_after_s, self.max_wait_s)

    def wait(self, failures: int) -> float:
        """The wait after the ``failures``-th wrong token in a row (0 while within the free ones)."""
        over = failures - self.free_failures
        if over <= 0:
            return 0.0
        return float(min(self.max_wait_s, self.first_wait_s * 2 ** min(over - 1, 32)))


class LoginFailures(NamedTuple):
    """A client's wrong tokens after one more (``failures``, counted from its last fresh start) and the seconds it
    must now wait before its next token is looked at (``wait_s``, 0 while within the free ones)."""

    failures: int
    wait_s: float


def _session(row: Any) -> ConsoleSession:
    return ConsoleSession(row["key"], row["csrf"], row["created_at"], row["expires_at"], row["last_seen_at"])


def _blocked(now: float, failures: int, previous_until: float, backoff: LoginBackoff) -> float:
    """``blocked_until`` after a wrong token: never shortened by one that raced past a block on another replica."""
    return max(previous_until, now + backoff.wait(failures))


# ---- SQLite ------------------------------------------------------------------------------------------------------


class SQLiteConsoleSessions:
    """The console-session and throttle methods of :class:`~sip_controller.state.sqlite.SQLiteStore` (mixed in)."""

    if TYPE_CHECKING:
        import sqlite3

        _clock: Callable[[], float]

        async def _write(self, fn: Callable[[sqlite3.Connection], T], *, inline: bool = False) -> T: ...

        async def _run(self, fn: Callable[[Any], T]) -> T: ...

        def _inline(self, transaction: Callable[[sqlite3.Connection], T]) -> tuple[bool, T | None]: ...

    async def _lookup(self, fn: Callable[[Any], T]) -> T:
        """A one-statement read on the loop's own connection (WAL: a reader never waits for the writer), or on the
        store's thread when that connection cannot be used: a console request costs no thread hop."""
        done, result = self._inline(fn)
        if done:
            return result  # type: ignore[return-value]
        return await self._run(fn)

    async def create_console_session(
        self, key: str, csrf: str, *, ttl_s: float, max_sessions: int | None = None
    ) -> tuple[ConsoleSession, int]:
        now = self._clock()
        session = ConsoleSession(key, csrf, now, now + ttl_s, now)

        def op(conn: Any) -> int:
            conn.execute(
                "INSERT INTO console_sessions (key, csrf, created_at, expires_at, last_seen_at) VALUES (?, ?, ?, ?, ?)",
                (key, csrf, now, session.expires_at, now),
            )
            if max_sessions is None:
                return 0
            return int(conn.execute(
                "UPDATE console_sessions SET revoked_at = ? WHERE key IN (SELECT key FROM console_sessions "
                "WHERE revoked_at IS NULL AND expires_at > ? AND key <> ? ORDER BY created_at DESC, key DESC "
                "LIMIT -1 OFFSET ?)",
                (now, now, key, max(0, max_sessions - 1)),
            ).rowcount)  # fmt: skip

        return session, await self._write(op)

    async def find_console_session(self, key: str, *, touch_after_s: float = TOUCH_AFTER_S) -> ConsoleSession | None:
        now = self._clock()
        sql = (
            f"SELECT {SESSION_COLUMNS} FROM console_sessions WHERE key = ? AND revoked_at IS NULL AND expires_at > ?"
        )
        row = await self._lookup(lambda conn: conn.execute(sql, (key, now)).fetchone())
        if row is None:
            return None
        session = _session(row)
        if session.last_seen_at > now - touch_after_s:
            return session
        touch = "UPDATE console_sessions SET last_seen_at = ? WHERE key = ? AND last_seen_at < ?"
        await self._write(lambda conn: conn.execute(touch, (now, key, now)).rowcount, inline=True)
        return ConsoleSession(session.key, session.csrf, session.created_at, session.expires_at, now)

    async def revoke_console_session(self, key: str) -> bool:
        now = self._clock()
        sql = "UPDATE console_sessions SET revoked_at = ? WHERE key = ? AND revoked_at IS NULL AND expires_at > ?"
        return bool(await self._write(lambda conn: conn.execute(sql, (now, key, now)).rowcount, inline=True))

    async def login_wait(self, client: str) -> float:
        now = self._clock()
        sql = "SELECT blocked_until FROM login_failures WHERE client = ? AND forget_at > ?"
        row = await self._lookup(lambda conn: conn.execute(sql, (client, now)).fetchone())
        return 0.0 if row is None else max(0.0, float(row[0]) - now)

    async def login_failed(self, client: str, backoff: LoginBackoff) -> LoginFailures:
        now = self._clock()

        def op(conn: Any) -> LoginFailures:
            row = conn.execute(
                "SELECT failures, blocked_until, forget_at FROM login_failures WHERE client = ?", (client,)
            ).fetchone()
            fresh = row is None or row["forget_at"] <= now
            failures = 1 if fresh else int(row["failures"]) + 1
            until = _blocked(now, failures, now if fresh else float(row["blocked_until"]), backoff)
            conn.execute(
                "INSERT INTO login_failures (client, failures, last_failed_at, blocked_until, forget_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (client) DO UPDATE SET failures = excluded.failures, "
                "last_failed_at = excluded.last_failed_at, blocked_until = excluded.blocked_until, "
                "forget_at = excluded.forget_at",
                (client, failures, now, until, now + backoff.forget_s),
            )
            return LoginFailures(failures, max(0.0, until - now))

        return await self._write(op, inline=True)


# ---- PostgreSQL --------------------------------------------------------------------------------------------------


class PostgresConsoleSessions:
    """The console-session and throttle methods of :class:`~sip_controller.state.postgres.PostgresStore` (mixed
    in)."""

    if TYPE_CHECKING:
        _clock: Callable[[], float]

        def _tx(self) -> AbstractAsyncContextManager[Any]: ...

        def _conn(self) -> AbstractAsyncContextManager[Any]: ...

    async def create_console_session(
        self, key: str, csrf: str, *, ttl_s: float, max_sessions: int | None = None
    ) -> tuple[ConsoleSession, int]:
        now = self._clock()
        session = ConsoleSession(key, csrf, now, now + ttl_s, now)
        async with self._tx() as conn:
            await conn.execute(
                "INSERT INTO console_sessions (key, csrf, created_at, expires_at, last_seen_at) "
                "VALUES ($1, $2, $3, $4, $3)",
                key, csrf, now, session.expires_at,
            )  # fmt: skip
            if max_sessions is None:
                return session, 0
            status = await conn.execute(
                "UPDATE console_sessions SET revoked_at = $1 WHERE key IN (SELECT key FROM console_sessions "
                "WHERE revoked_at IS NULL AND expires_at > $1 AND key <> $2 ORDER BY created_at DESC, key DESC "
                "OFFSET $3 FOR UPDATE)",
                now, key, max(0, max_sessions - 1),
            )  # fmt: skip
        return session, _count(status)

    async def find_console_session(self, key: str, *, touch_after_s: float = TOUCH_AFTER_S) -> ConsoleSession | None:
        now = self._clock()
        async with self._conn() as conn:
            row = await conn.fetchrow(
                f"SELECT {SESSION_COLUMNS} FROM console_sessions WHERE key = $1 AND revoked_at IS NULL "
                "AND expires_at > $2",
                key, now,
            )  # fmt: skip
            if row is None:
                return None
            session = _session(row)
            if session.last_seen_at > now - touch_after_s:
                return session
            await conn.execute(
                "UPDATE console_sessions SET last_seen_at = $1 WHERE key = $2 AND last_seen_at < $1", now, key
            )
        return ConsoleSession(session.key, session.csrf, session.created_at, session.expires_at, now)

    async def revoke_console_session(self, key: str) -> bool:
        now = self._clock()
        async with self._conn() as conn:
            status = await conn.execute(
                "UPDATE console_sessions SET revoked_at = $1 WHERE key = $2 AND revoked_at IS NULL AND expires_at > $1",
                now, key,
            )  # fmt: skip
        return _count(status) > 0

    async def login_wait(self, client: str) -> float:
        now = self._clock()
        async with self._conn() as conn:
            until = await conn.fetchval(
                "SELECT blocked_until FROM login_failures WHERE client = $1 AND forget_at > $2", client, now
            )
        return 0.0 if until is None else max(0.0, float(until) - now)

    async def login_failed(self, client: str, backoff: LoginBackoff) -> LoginFailures:
        now = self._clock()
        async with self._tx() as conn:
            # the upsert locks the client's row: a wrong token on another replica at the same moment waits for it
            row = await conn.fetchrow(
                "INSERT INTO login_failures AS f (client, failures, last_failed_at, blocked_until, forget_at) "
                "VALUES ($1, 1, $2, $2, $3) ON CONFLICT (client) DO UPDATE SET "
                "failures = CASE WHEN f.forget_at <= $2 THEN 1 ELSE f.failures + 1 END, "
                "blocked_until = CASE WHEN f.forget_at <= $2 THEN $2 ELSE f.blocked_until END, "
                "last_failed_at = $2, forget_at = $3 RETURNING failures, blocked_until",
                client, now, now + backoff.forget_s,
            )  # fmt: skip
            failures = int(row["failures"])
            until = _blocked(now, failures, float(row["blocked_until"]), backoff)
            if until != row["blocked_until"]:
                await conn.execute("UPDATE login_failures SET blocked_until = $1 WHERE client = $2", until, client)
        return LoginFailures(failures, max(0.0, until - now))


def _count(status: str) -> int:
    """The row count of an asyncpg command status (``UPDATE 1``)."""
    return int(status.rsplit(" ", 1)[-1])
