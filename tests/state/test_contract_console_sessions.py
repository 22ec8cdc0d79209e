"""The store contract of the console's sessions and sign-in throttle (#13, #14.11), on SQLite and on PostgreSQL
(``backend``), real databases both, two stores ("replicas") on one database: a session made by one is found by
the other, expires, is revoked everywhere by a sign-out on either, and the table holds the id's hash only; wrong
tokens are counted across the replicas, with the backoff, and forgotten after a quiet period; the sweep deletes
what has expired."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

import asyncpg
import pytest

from sip_controller.service.sessions import Sessions, StoreSessions, session_key
from sip_controller.state.console_sessions import LoginBackoff, LoginFailures
from sip_controller.state.jobs import sweep_once
from tests.state.conftest import T0, Cluster

pytestmark = pytest.mark.anyio

BACKOFF = LoginBackoff(free_failures=3, first_wait_s=1.0, max_wait_s=8.0, forget_after_s=900.0)


async def rows(cluster: Cluster, table: str) -> list[dict[str, Any]]:
    """Every row of ``table``, read around the store."""
    if cluster.backend == "sqlite":
        assert cluster.path is not None
        conn = sqlite3.connect(cluster.path)
        conn.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in conn.execute(f"SELECT * FROM {table}")]
        finally:
            conn.close()
    pg = await asyncpg.connect(cluster.url, server_settings={"search_path": str(cluster.schema)})
    try:
        return [dict(r) for r in await pg.fetch(f"SELECT * FROM {table}")]
    finally:
        await pg.close()


async def test_a_session_made_on_one_replica_is_found_on_the_other(cluster: Cluster) -> None:
    a, b = await cluster.open(), await cluster.open()
    made, revoked = await a.create_console_session("k1", "csrf-1", ttl_s=60)
    assert revoked == 0
    assert (made.key, made.csrf, made.created_at, made.expires_at) == ("k1", "csrf-1", T0, T0 + 60)
    assert made.last_seen_at == T0
    assert await b.find_console_session("k1") == made
    assert await b.find_console_session("k2") is None


async def test_a_session_expires(cluster: Cluster) -> None:
    a, b = await cluster.open(), await cluster.open()
    await a.create_console_session("k1", "c", ttl_s=60)
    cluster.clock.advance(59.9)
    assert await b.find_console_session("k1") is not None
    cluster.clock.advance(0.1)
    assert await b.find_console_session("k1") is None
    assert await a.revoke_console_session("k1") is False  # nothing live to revoke


async def test_sign_out_on_one_replica_revokes_the_session_everywhere(cluster: Cluster) -> None:
    a, b = await cluster.open(), await cluster.open()
    await a.create_console_session("k1", "c", ttl_s=60)
    await a.create_console_session("k2", "c", ttl_s=60)
    assert await b.revoke_console_session("k1") is True
    assert await a.find_console_session("k1") is None
    assert await b.find_console_session("k1") is None
    assert await a.revoke_console_session("k1") is False  # once
    assert await a.find_console_session("k2") is not None  # only that one
    (row,) = [r for r in await rows(cluster, "console_sessions") if r["key"] == "k1"]
    assert row["revoked_at"] == T0  # kept, revoked, until the sweep deletes it once expired


async def test_last_seen_is_written_at_most_every_touch_period(cluster: Cluster) -> None:
    store = await cluster.open()
    await store.create_console_session("k1", "c", ttl_s=3600)
    cluster.clock.advance(30)
    found = await store.find_console_session("k1", touch_after_s=60)
    assert found is not None
    assert found.last_seen_at == T0  # fresh enough: not written
    assert [r["last_seen_at"] for r in await rows(cluster, "console_sessions")] == [T0]
    cluster.clock.advance(31)
    found = await store.find_console_session("k1", touch_after_s=60)
    assert found is not None
    assert found.last_seen_at == T0 + 61
    assert [r["last_seen_at"] for r in await rows(cluster, "console_sessions")] == [T0 + 61]
    assert found.expires_at == T0 + 3600  # seen is not extended: a session ends ttl_s after sign-in


async def test_the_oldest_live_sessions_end_when_the_table_is_full(cluster: Cluster) -> None:
    a, b = await cluster.open(), await cluster.open()
    await a.create_console_session("old", "c", ttl_s=10)
    cluster.clock.advance(1)
    for n in (1, 2):
        await b.create_console_session(f"k{n}", "c", ttl_s=1000, max_sessions=3)
        cluster.clock.advance(1)
    cluster.clock.advance(10)  # "old" has expired: it makes room, not the oldest live one
    _, revoked = await a.create_console_session("k3", "c", ttl_s=1000, max_sessions=3)
    assert revoked == 0
    _, revoked = await a.create_console_session("k4", "c", ttl_s=1000, max_sessions=3)  # same instant as k3
    assert revoked == 1
    assert [k for k in ("k1", "k2", "k3", "k4") if await b.find_console_session(k)] == ["k2", "k3", "k4"]
    _, revoked = await b.create_console_session("k5", "c", ttl_s=1000, max_sessions=1)
    assert revoked == 3
    assert [k for k in ("k2", "k3", "k4", "k5") if await a.find_console_session(k)] == ["k5"]


async def test_the_table_holds_the_hash_of_the_cookie_s_id_never_the_id(cluster: Cluster) -> None:
    a, b = await cluster.open(), await cluster.open()
    on_a, on_b = Sessions(StoreSessions(a), ttl_s=60), Sessions(StoreSessions(b), ttl_s=60)
    session_id, session = await on_a.create()
    assert await on_b.find(session_id) == session
    assert await on_b.find(session.key) is None  # the stored key is not a cookie
    (row,) = await rows(cluster, "console_sessions")
    assert row["key"] == session_key(session_id) == session.key
    assert session_id not in repr(row)
    await on_b.revoke(session_id)
    assert await on_a.find(session_id) is None
    assert not await on_a.alive(session)


async def test_wrong_tokens_are_counted_across_replicas_with_the_backoff(cluster: Cluster) -> None:
    a, b = await cluster.open(), await cluster.open()
    assert await a.login_wait("198.51.100.7") == 0
    free = [await (a, b)[n % 2].login_failed("198.51.100.7", BACKOFF) for n in range(3)]
    assert free == [LoginFailures(1, 0), LoginFailures(2, 0), LoginFailures(3, 0)]
    assert await b.login_wait("198.51.100.7") == 0
    waits = []
    for n in range(6):
        failed = await (a, b)[n % 2].login_failed("198.51.100.7", BACKOFF)
        waits.append(failed.wait_s)
        assert await (b, a)[n % 2].login_wait("198.51.100.7") == failed.wait_s  # the other replica holds it too
        cluster.clock.advance(failed.wait_s)
        assert await a.login_wait("198.51.100.7") == 0
    assert waits == [1, 2, 4, 8, 8, 8]
    assert await a.login_wait("198.51.100.8") == 0  # per client
    cluster.clock.advance(900.5)  # quiet for the forget period: a fresh start
    assert await b.login_wait("198.51.100.7") == 0
    assert await b.login_failed("198.51.100.7", BACKOFF) == LoginFailures(1, 0)


async def test_a_block_is_never_shortened_and_racing_failures_are_all_counted(cluster: Cluster) -> None:
    a, b = await cluster.open(), await cluster.open()
    for _ in range(6):
        await a.login_failed("c", BACKOFF)  # 3 free, then 1, 2, 4 s
    assert await b.login_wait("c") == 4
    # a wrong token that raced past the block elsewhere (it checked before the block landed) lengthens it only
    cheap = LoginBackoff(free_failures=100)
    assert await b.login_failed("c", cheap) == LoginFailures(7, 4)
    results = await asyncio.gather(*((a, b)[n % 2].login_failed("d", BACKOFF) for n in range(10)))
    assert sorted(r.failures for r in results) == list(range(1, 11))
    assert max(r.wait_s for r in results) == 8


async def test_the_sweep_deletes_expired_sessions_and_forgotten_clients(cluster: Cluster) -> None:
    store = await cluster.open()
    await store.create_console_session("short", "c", ttl_s=10)
    await store.create_console_session("revoked", "c", ttl_s=10)
    await store.revoke_console_session("revoked")
    await store.create_console_session("long", "c", ttl_s=1000)
    await store.login_failed("quiet", BACKOFF)
    cluster.clock.advance(500)
    await store.login_failed("busy", BACKOFF)
    swept = await sweep_once(store)
    assert (swept.console_sessions, swept.login_failures, swept.total) == (2, 0, 2)
    cluster.clock.advance(401)  # "quiet" was forgotten 900 s after its wrong token
    swept = await sweep_once(store)
    assert (swept.console_sessions, swept.login_failures) == (0, 1)
    assert [r["key"] for r in await rows(cluster, "console_sessions")] == ["long"]
    assert [r["client"] for r in await rows(cluster, "login_failures")] == ["busy"]
