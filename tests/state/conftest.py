"""Real stores for the contract suite: SQLite files in ``tmp_path`` and PostgreSQL in a throwaway schema.

PostgreSQL is ``SIPCTL_TEST_DATABASE_URL`` (default: this machine's server, ``postgresql://postgres@127.0.0.1:5432/
test``). Each test gets a schema of its own, created and dropped around it. Without a reachable server the
PostgreSQL tests skip, saying why, except under ``CI=true`` where they fail: CI must run them.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest

from sip_controller.state.postgres import PostgresStore
from sip_controller.state.sqlite import SQLiteStore
from sip_controller.state.store import Store

PG_URL = os.environ.get("SIPCTL_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
BACKENDS = ("sqlite", "postgresql")
#: the fake wall clock's start (a realistic epoch time, so ages and gaps are computed on the real scale)
T0 = 1_700_000_000.0


class FakeClock:
    """One clock shared by every store of a test (the replicas of a cluster see the same time)."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def _probe(url: str) -> str | None:
    """Why PostgreSQL at ``url`` cannot be used, or None."""
    try:
        conn = await asyncpg.connect(url, timeout=3)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        return f"PostgreSQL not reachable at SIPCTL_TEST_DATABASE_URL ({type(exc).__name__}: {exc})"
    try:
        probe = f"sipctl_probe_{secrets.token_hex(4)}"  # its own: test processes may probe at once
        await conn.execute(f"CREATE SCHEMA {probe}; DROP SCHEMA {probe}")
    except asyncpg.PostgresError as exc:
        return f"PostgreSQL at SIPCTL_TEST_DATABASE_URL cannot create schemas ({exc})"
    finally:
        await conn.close()
    return None


@pytest.fixture(scope="session")
def pg_url() -> str:
    """The server's URL, or skip (fail under CI=true) with the reason."""
    reason = asyncio.run(_probe(PG_URL))
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI must run the PostgreSQL tests (.ci/run starts the server)")
        pytest.skip(reason)
    return PG_URL


@dataclass
class Cluster:
    """Opens stores ("replicas") on one database; closes them and drops the database after the test."""

    backend: str
    clock: FakeClock
    path: Path | None = None
    url: str | None = None
    schema: str | None = None
    opened: list[Store] = field(default_factory=list)

    async def open(self, *, migrate: bool | None = True) -> Store:
        store: Store
        if self.backend == "sqlite":
            assert self.path is not None
            store = await SQLiteStore.open(self.path, clock=self.clock, migrate=migrate)
        else:
            assert self.url is not None
            store = await PostgresStore.open(
                self.url, clock=self.clock, schema=self.schema, pool_size=4, migrate=migrate
            )
        self.opened.append(store)
        return store

    async def sql(self, statement: str, *args: object) -> None:
        """Run ``statement`` (``?`` placeholders) on the database directly, around the store (e.g. to fake a newer
        schema)."""
        if self.backend == "sqlite":
            assert self.path is not None
            conn = sqlite3.connect(self.path, isolation_level=None)
            try:
                conn.execute(statement, args)
            finally:
                conn.close()
            return
        numbered = statement.split("?")
        statement = numbered[0] + "".join(f"${i}{part}" for i, part in enumerate(numbered[1:], start=1))
        pg = await asyncpg.connect(self.url, server_settings={"search_path": str(self.schema)})
        try:
            await pg.execute(statement, *args)
        finally:
            await pg.close()

    async def close(self) -> None:
        for store in self.opened:
            await store.aclose()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    if name == "postgresql":
        request.getfixturevalue("pg_url")
    return name


@pytest.fixture
async def cluster(backend: str, tmp_path: Path) -> AsyncIterator[Cluster]:
    clock = FakeClock()
    if backend == "sqlite":
        made = Cluster(backend, clock, path=tmp_path / "state" / "sipctl-state.db")
        try:
            yield made
        finally:
            await made.close()
        return
    schema = f"sipctl_test_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(PG_URL)
    try:
        await admin.execute(f"CREATE SCHEMA {schema}")
        made = Cluster(backend, clock, url=PG_URL, schema=schema)
        try:
            yield made
        finally:
            await made.close()
            await admin.execute(f"DROP SCHEMA {schema} CASCADE")
    finally:
        await admin.close()


@pytest.fixture
async def store(cluster: Cluster) -> Store:
    return await cluster.open()
