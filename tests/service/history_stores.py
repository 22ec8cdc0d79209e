"""A real store on each backend for the call history's service tests (#17): SQLite in ``tmp_path``, PostgreSQL in
a throwaway schema (skipped, saying why, without a server; failed under ``CI=true``). Import ``store_fixture``: it
is the fixture ``store``."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from sip_controller.state.postgres import PostgresStore
from sip_controller.state.sqlite import SQLiteStore
from sip_controller.state.store import Store
from tests.state.conftest import PG_URL, _probe


@pytest.fixture(name="store", params=["sqlite", "postgresql"])
async def store_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        async with await SQLiteStore.open(tmp_path / "state.db") as sqlite:
            yield sqlite
        return
    reason = await _probe(PG_URL)
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI must run the PostgreSQL tests")
        pytest.skip(reason)
    schema = f"sipctl_test_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(PG_URL)
    try:
        await admin.execute(f"CREATE SCHEMA {schema}")
        try:
            async with await PostgresStore.open(PG_URL, schema=schema, pool_size=2) as pg:
                yield pg
        finally:
            await admin.execute(f"DROP SCHEMA {schema} CASCADE")
    finally:
        await admin.close()
