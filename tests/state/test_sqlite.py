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


def _wal_frames(path: Path) -> int:
    wal = path.with_name(path.name + "-wal")
    return (wal.stat().st_size - 32) // (4096 + 24) if wal.exists() else 0


@anyio
async def test_commits_never_checkpoint_the_wal_a_thread_of_its_own_does(tmp_path: Path) -> None:
    """#18: a checkpoint (the WAL copied into the file, then fsynced) ran inside whichever commit crossed SQLite's
    1,000-page mark: that ring waited milliseconds. The store's connection no longer checkpoints by itself; a
    background thread with its own connection does, every ``checkpoint_s``, so the WAL stays bounded."""
    path = tmp_path / "state.db"
    store = await SQLiteStore.open(path, checkpoint_s=3600)  # the background checkpoint far away
    try:
        for i in range(600):  # a few pages a commit: well past SQLite's own 1,000-page mark
            assert await store.claim(f"webhook:wh_{i}", 60)
        grown = _wal_frames(path)
        assert grown > 1000  # no commit checkpointed on its own
        await store.checkpoint()
        check = sqlite3.connect(path)
        try:  # everything was copied into the file already: a full checkpoint
            busy, frames, done = check.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        finally:
            check.close()
        assert (busy, frames) == (0, done)
    finally:
        await store.aclose()
    quick = await SQLiteStore.open(path, checkpoint_s=0.05)
    try:
        for round_ in range(6):
            for i in range(100):
                assert await quick.claim(f"call:rtc_{round_}_{i}", 60)
            await asyncio.sleep(0.3)  # the thread checkpoints; the next commit starts the WAL over
        assert _wal_frames(path) < 1000  # 600 commits, yet the WAL never grew past a few rounds' worth
    finally:
        await quick.aclose()


@anyio
async def test_call_path_writes_run_inline_and_wait_on_the_thread_while_the_file_is_locked(tmp_path: Path) -> None:
    """#18: the writes on a call's path (claims, the admission, appends, the finish) run on the event loop's thread
    when the write lock is free (no thread hop); while another connection holds it they wait on the store's thread,
    never on the loop."""
    path = tmp_path / "state.db"
    store = await SQLiteStore.open(path)
    try:
        threaded = store.threaded_ops  # opening (the migrations) ran on the thread
        assert await store.claim("webhook:wh_1", 60)
        assert (store.inline_ops, store.threaded_ops) == (1, threaded)
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        holder.execute("INSERT INTO claims (key, expires_at) VALUES ('held', 1e12)")
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        async def release() -> None:
            await asyncio.sleep(0.3)
            holder.execute("COMMIT")
            holder.close()

        ticker = asyncio.create_task(tick())
        releasing = asyncio.create_task(release())
        assert await store.claim("webhook:wh_2", 60)  # waited for the lock on the thread
        await releasing
        ticker.cancel()
        assert ticks >= 10  # the loop went on meanwhile
        assert (store.inline_ops, store.threaded_ops) == (1, threaded + 1)
        assert await store.claim("held", 60) is False  # the other connection's write is there
        assert store.inline_ops == 2
    finally:
        await store.aclose()
