"""Tests for sip_controller.state.sqlite that only the SQLite backend has: opening the file."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from sip_controller.state.sqlite import SQLiteStore

anyio = pytest.mark.anyio


@anyio
async def test_open_waits_while_another_process_holds_the_new_file(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("CREATE TABLE held (x)")

    async def release() -> None:
        await asyncio.sleep(0.3)
        holder.execute("COMMIT")
        holder.close()

    releasing = asyncio.create_task(release())
    store = await SQLiteStore.open(path, busy_timeout_s=5.0)
    await releasing
    try:
        assert store.path == path
        with sqlite3.connect(path) as check:
            assert check.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        await store.aclose()


@anyio
async def test_many_opens_of_one_new_file_all_succeed(tmp_path: Path) -> None:
    """Replicas starting together: while one switches the new file to WAL, SQLite can answer another "database is
    locked" at once, without its busy handler (to avoid a deadlock); before the retry this failed about one round
    in thirty on a loaded machine."""
    for round_ in range(10):
        path = tmp_path / f"state-{round_}.db"
        stores = await asyncio.gather(*(SQLiteStore.open(path) for _ in range(5)))
        for store in stores:
            await store.aclose()
