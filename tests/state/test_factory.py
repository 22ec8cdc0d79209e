"""Opening the store from the settings: the ``state:`` block, ``SIPCTL_DATABASE_URL``, ``sipctl migrate``, and a
SQLite file that survives its process being killed."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from pydantic import SecretStr, ValidationError

from sip_controller import cli
from sip_controller.config import ConfigError, Limits, Secrets, Settings, StoreSettings
from sip_controller.state import migrations
from sip_controller.state.factory import describe, new_process_id, open_store
from sip_controller.state.records import StoreError
from sip_controller.state.sqlite import SQLiteStore
from tests.state.conftest import PG_URL

PASSWORD = "s3cret-Pa55"


def settings_at(path: Path) -> Settings:
    return Settings(state=StoreSettings(path=str(path)))


async def _admin(url: str, statement: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture
def pg_schema(pg_url: str) -> Iterator[str]:
    """A throwaway schema (see ``url_for``)."""
    schema = f"sipctl_test_{secrets.token_hex(6)}"
    asyncio.run(_admin(pg_url, f"CREATE SCHEMA {schema}"))
    try:
        yield schema
    finally:
        asyncio.run(_admin(pg_url, f"DROP SCHEMA {schema} CASCADE"))


def url_for(schema: str) -> str:
    return PG_URL.replace("postgres@", f"postgres:{PASSWORD}@", 1) + f"?search_path={schema}"


# ---- settings and secrets ----------------------------------------------------------------------------------------


def test_the_defaults_take_a_dead_process_s_calls_over_within_10_s() -> None:
    state = StoreSettings()
    assert (state.path, state.lease_s, state.heartbeat_s) == ("sipctl-state.db", 6.0, 2.0)
    # lease lapses + the survivor's next check + ~1 s to re-attach
    assert state.lease_s + state.heartbeat_s + 1.0 <= 10.0
    assert Settings().state == state


def test_a_lease_shorter_than_two_heartbeats_is_refused() -> None:
    with pytest.raises(ValidationError, match=r"lease_s \(3\) must be at least twice heartbeat_s \(2\)"):
        StoreSettings(lease_s=3, heartbeat_s=2)
    assert StoreSettings(lease_s=4, heartbeat_s=2).lease_s == 4


def test_a_dedupe_ttl_under_the_signature_tolerance_is_refused() -> None:
    with pytest.raises(ValidationError, match="at least 300"):
        Limits(dedupe_ttl_s=299)
    assert Limits(dedupe_ttl_s=300).dedupe_ttl_s == 300


def test_database_url_from_the_environment_never_shown() -> None:
    url = f"postgresql://sipctl:{PASSWORD}@db.internal:6543/calls"
    secrets_ = Secrets.from_env({"SIPCTL_DATABASE_URL": f"  {url} "})
    assert secrets_.database_url is not None
    assert secrets_.database_url.get_secret_value() == url
    assert PASSWORD not in repr(secrets_)
    assert Secrets.from_env({}).database_url is None
    assert Secrets.from_env({"SIPCTL_DATABASE_URL": "postgres://h/db"}).database_url is not None
    with pytest.raises(ConfigError, match="SIPCTL_DATABASE_URL: not a PostgreSQL URL") as caught:
        Secrets.from_env({"SIPCTL_DATABASE_URL": f"mysql://root:{PASSWORD}@db/x"})
    assert PASSWORD not in str(caught.value)


def test_describe_names_the_store_without_credentials(tmp_path: Path) -> None:
    settings = settings_at(tmp_path / "s.db")
    assert describe(settings, Secrets()) == f"SQLite file {tmp_path / 's.db'}"
    url = f"postgresql://sipctl:{PASSWORD}@db.internal:6543/calls?sslmode=require"
    assert describe(settings, Secrets(database_url=SecretStr(url))) == "PostgreSQL db.internal:6543/calls"
    assert (
        describe(settings, Secrets(database_url=SecretStr("postgresql://h"))) == "PostgreSQL h:5432/(default database)"
    )
    assert describe(settings, Secrets(database_url=SecretStr("postgresql://h:port/x"))) == (
        "PostgreSQL (SIPCTL_DATABASE_URL)"
    )


def test_process_ids_are_unique_per_start() -> None:
    ids = {new_process_id() for _ in range(50)}
    assert len(ids) == 50
    assert all(f"-{os.getpid()}-" in i for i in ids)


# ---- open_store ------------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_open_store_defaults_to_the_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "data" / "state.db"
    async with await open_store(settings_at(path), Secrets()) as store:
        assert store.backend == "sqlite"
        assert await store.schema_version() == migrations.latest("sqlite")
    assert path.is_file()


@pytest.mark.anyio
async def test_open_store_uses_postgresql_when_the_url_is_set(tmp_path: Path, pg_schema: str) -> None:
    secrets_ = Secrets(database_url=SecretStr(url_for(pg_schema)))
    async with await open_store(settings_at(tmp_path / "unused.db"), secrets_) as store:
        assert store.backend == "postgresql"
        assert await store.schema_version() == migrations.latest("postgresql")
        assert await store.claim("k", 60)
    assert not (tmp_path / "unused.db").exists()


@pytest.mark.anyio
async def test_an_unreachable_database_is_one_safe_error(tmp_path: Path) -> None:
    url = f"postgresql://sipctl:{PASSWORD}@127.0.0.1:1/calls"
    with pytest.raises(StoreError, match="cannot connect to PostgreSQL") as caught:
        await open_store(settings_at(tmp_path / "s.db"), Secrets(database_url=SecretStr(url)))
    assert PASSWORD not in str(caught.value)


@pytest.mark.anyio
async def test_an_unusable_sqlite_path_is_one_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(StoreError, match=r"cannot use the state file .* set state\.path"):
        await open_store(settings_at(tmp_path / "file" / "state.db"), Secrets())


# ---- sipctl migrate ----------------------------------------------------------------------------------------------


def test_sipctl_migrate_on_the_sqlite_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SIPCTL_DATABASE_URL", raising=False)
    monkeypatch.delenv("SIPCTL_CONFIG", raising=False)
    monkeypatch.setenv("SIPCTL_STATE__PATH", "var/state.db")
    assert cli.main(["migrate", "--check"]) == 1
    assert "schema migration(s) not applied" in capsys.readouterr().err
    assert cli.main(["migrate"]) == 0
    latest = migrations.latest("sqlite")
    applied = ", ".join(f"{v:04d}" for v in range(1, latest + 1))
    assert capsys.readouterr().out == f"SQLite file var/state.db: applied {applied}; schema version {latest}\n"
    assert cli.main(["migrate"]) == 0
    assert capsys.readouterr().out == f"SQLite file var/state.db: schema version {latest}, nothing to apply\n"
    assert cli.main(["migrate", "--check"]) == 0
    assert "up to date" in capsys.readouterr().out


def test_sipctl_migrate_on_postgresql_never_prints_the_url(
    pg_schema: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SIPCTL_CONFIG", raising=False)
    monkeypatch.setenv("SIPCTL_DATABASE_URL", url_for(pg_schema))
    assert cli.main(["migrate"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("PostgreSQL 127.0.0.1:5432/test: applied 0001")
    assert PASSWORD not in out
    assert not (tmp_path / "sipctl-state.db").exists()
    monkeypatch.setenv("SIPCTL_DATABASE_URL", f"postgresql://u:{PASSWORD}@127.0.0.1:1/x")
    assert cli.main(["migrate"]) == 1
    err = capsys.readouterr().err
    assert "cannot connect to PostgreSQL" in err
    assert PASSWORD not in err


def test_sipctl_migrate_refuses_a_bad_database_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SIPCTL_CONFIG", raising=False)
    monkeypatch.setenv("SIPCTL_DATABASE_URL", "sqlite:///x.db")
    assert cli.main(["migrate"]) == 2
    assert "SIPCTL_DATABASE_URL: not a PostgreSQL URL" in capsys.readouterr().err


# ---- durability ----------------------------------------------------------------------------------------------


WRITER = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    from sip_controller.state.records import Entry, NewCall
    from sip_controller.state.sqlite import SQLiteStore

    async def main() -> None:
        store = await SQLiteStore.open(sys.argv[1])
        await store.heartbeat("p1", 6)
        assert await store.claim("call:rtc_1", 3600)
        row = await store.create_call(NewCall("rtc_1", "p1", "default", {"k": "v"}, 1.0))
        await store.append(row.fence, [Entry("transcript", 2.0, {"text": "hello"})], state="attached")
        print("written", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # no close, no checkpoint: as an OOM kill would leave it

    asyncio.run(main())
    """
)


def test_what_was_committed_survives_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    done = subprocess.run([sys.executable, "-c", WRITER, str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert done.stdout == "written\n"

    async def read_back() -> None:
        async with await SQLiteStore.open(path) as store:
            row = await store.get_call("rtc_1")
            assert row is not None
            assert (row.state, row.entry_count, row.inputs) == ("attached", 1, {"k": "v"})
            assert [e.data for e in await store.read_entries("rtc_1")] == [{"text": "hello"}]
            assert await store.claim("call:rtc_1", 3600) is False

    asyncio.run(read_back())
