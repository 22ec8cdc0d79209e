"""Schema migrations: the ordered-SQL runner alone, and applied to real databases (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sip_controller.state import migrations
from sip_controller.state.migrations import Applied, Migration
from sip_controller.state.records import SchemaError
from tests.state.conftest import Cluster

LATEST = migrations.latest("sqlite")


# ---- the runner --------------------------------------------------------------------------------------------------


def test_both_backends_ship_the_same_numbered_migrations() -> None:
    sqlite = migrations.available("sqlite")
    postgresql = migrations.available("postgresql")
    versions = [m.version for m in sqlite]
    assert versions == sorted(set(versions))
    assert versions[0] == 1
    assert [(m.version, m.name) for m in sqlite] == [(m.version, m.name) for m in postgresql]
    assert sqlite[0].name == "init"
    assert migrations.latest("postgresql") == LATEST >= 1


def test_pending_is_what_is_missing_in_order() -> None:
    known = (Migration(1, "a", "x"), Migration(2, "b", "y"), Migration(3, "c", "z"))
    assert migrations.pending([], known) == list(known)
    assert migrations.pending([Applied(1, "a", known[0].checksum)], known) == list(known[1:])
    assert migrations.pending([Applied(v.version, v.name, v.checksum) for v in known], known) == []


def test_pending_refuses_a_newer_database_or_an_edited_migration() -> None:
    known = (Migration(1, "a", "x"),)
    with pytest.raises(SchemaError, match=r"schema version 2, newer than this sipctl knows \(up to 1\)"):
        migrations.pending([Applied(1, "a", known[0].checksum), Applied(2, "b", "?")], known)
    with pytest.raises(SchemaError, match="was edited"):
        migrations.pending([Applied(1, "a", "not-the-checksum")], known)


def test_sqlite_statements_are_cut_where_sqlite_says() -> None:
    script = """-- a comment line
CREATE TABLE a (x TEXT DEFAULT ';');

CREATE TRIGGER t AFTER INSERT ON a BEGIN
    UPDATE a SET x = 'y;z';
END;
CREATE INDEX a_x ON a (x);
"""
    statements = migrations.sqlite_statements(script)
    assert len(statements) == 3
    assert statements[0] == "CREATE TABLE a (x TEXT DEFAULT ';');"
    assert statements[1].startswith("CREATE TRIGGER")
    assert statements[1].endswith("END;")
    with pytest.raises(SchemaError, match="unfinished"):
        migrations.sqlite_statements("CREATE TABLE b (x")


# ---- applied to real databases ---------------------------------------------------------------------------------


anyio = pytest.mark.anyio


@anyio
async def test_a_fresh_database_is_migrated_and_a_rerun_is_a_no_op(cluster: Cluster) -> None:
    store = await cluster.open()
    assert await store.schema_version() == LATEST
    assert await store.migrate() == []
    await store.check_schema()
    again = await cluster.open()  # a second start: nothing to do
    assert await again.schema_version() == LATEST
    assert await again.claim("k", 60)


@anyio
async def test_replicas_starting_together_migrate_once(cluster: Cluster) -> None:
    stores = await asyncio.gather(*(cluster.open() for _ in range(3)))
    assert [await s.schema_version() for s in stores] == [LATEST] * 3
    for s in stores:
        assert await s.migrate() == []


@anyio
async def test_a_database_newer_than_the_code_is_refused(cluster: Cluster) -> None:
    await (await cluster.open()).aclose()
    await cluster.sql(
        "INSERT INTO schema_migrations (version, name, checksum, applied_at) VALUES (?, ?, ?, ?)",
        LATEST + 1,
        "from_the_future",
        "0" * 64,
        0.0,
    )
    for migrate in (True, False):
        with pytest.raises(SchemaError, match=f"schema version {LATEST + 1}, newer than this sipctl knows"):
            await cluster.open(migrate=migrate)


@anyio
async def test_an_edited_migration_is_refused(cluster: Cluster) -> None:
    await (await cluster.open()).aclose()
    await cluster.sql("UPDATE schema_migrations SET checksum = ? WHERE version = ?", "f" * 64, 1)
    with pytest.raises(SchemaError, match="a released migration was edited"):
        await cluster.open()


@anyio
async def test_without_migrating_a_database_behind_is_refused(cluster: Cluster) -> None:
    with pytest.raises(SchemaError, match=rf"{LATEST} schema migration\(s\) not applied .*sipctl migrate"):
        await cluster.open(migrate=False)
    store = await cluster.open(migrate=None)  # neither applies nor checks (sipctl migrate)
    assert await store.schema_version() == 0
    with pytest.raises(SchemaError, match="not applied"):
        await store.check_schema()
    assert await store.migrate() == list(range(1, LATEST + 1))
    await store.check_schema()


@anyio
async def test_a_failing_migration_leaves_the_previous_version(
    cluster: Cluster, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await (await cluster.open()).aclose()
    real = migrations.available("sqlite" if backend == "sqlite" else "postgresql")
    create = "CREATE TABLE half_done (x integer);\n"
    broken = Migration(LATEST + 1, "broken", create + create)
    monkeypatch.setattr(migrations, "available", lambda dialect: (*real, broken))
    with pytest.raises(SchemaError, match=rf"{LATEST + 1:04d}_broken failed and was rolled back .*half_done"):
        await cluster.open()
    monkeypatch.undo()
    store = await cluster.open()
    assert await store.schema_version() == LATEST
    fixed = Migration(LATEST + 1, "fixed", create)
    monkeypatch.setattr(migrations, "available", lambda dialect: (*real, fixed))
    assert await store.migrate() == [LATEST + 1]  # the failed one left no table behind
    assert await store.schema_version() == LATEST + 1


def test_a_gap_in_the_numbers_is_applied_in_order_and_a_shared_number_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Work done in parallel takes its migration numbers up front: 0001, 0002, 0004 is fine (0003 lands later and
    is applied when it arrives); two files with one number are not."""
    known = (Migration(1, "a", "x"), Migration(2, "b", "y"), Migration(4, "d", "w"))
    assert migrations.pending([Applied(1, "a", known[0].checksum)], known) == [known[1], known[2]]
    later = (*known[:2], Migration(3, "c", "z"), known[2])
    applied = [Applied(m.version, m.name, m.checksum) for m in known]
    assert migrations.pending(applied, later) == [later[2]]

    folder = tmp_path / "pkg"
    (folder / "sqlite").mkdir(parents=True)
    for name in ("0001_init.sql", "0002_b.sql", "0002_c.sql"):
        (folder / "sqlite" / name).write_text("SELECT 1;\n")
    monkeypatch.setattr("sip_controller.state.migrations.resources.files", lambda _package: folder)
    migrations.available.cache_clear()
    try:
        with pytest.raises(SchemaError, match=r"0002_b\.sql and 0002_c\.sql share a number"):
            migrations.available("sqlite")
    finally:
        migrations.available.cache_clear()
