"""``sipctl soak --replicas N --kill`` (#13): the chaos soak against real ``sipctl serve`` processes on one store,
one SIGKILLed mid-soak and restarted. Every invariant of the in-process soak holds, and calls were taken over.
SQLite: two replicas on the file. PostgreSQL: three, in a throwaway schema (skipped without a server, a failure
under CI=true)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import asyncpg
import pytest

from sip_controller import cli
from sip_controller.simulator import soak, soak_replicas
from sip_controller.simulator.soak import SoakResult

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

#: the bound on kill -> re-attach: the lease, two heartbeats, the restart pause and slack for a loaded machine
#: (the restart of the one process itself counts with one replica)
TAKEOVER_BOUND_S = soak_replicas.LEASE_S + 2 * soak_replicas.HEARTBEAT_S + soak_replicas.RESTART_AFTER_S + 6.0


def _assert_clean(result: SoakResult, table: str, *, calls: int, replicas: int) -> None:
    assert result.calls == calls, table
    assert result.replicas == replicas
    assert result.faulted_calls >= calls // 10, table
    assert result.ended_once == calls, table
    assert result.never_ended == [], table
    assert result.ended_twice == [], table
    assert result.double_accepts == [], table
    assert result.orphans == [], table
    assert result.late_accepts == [], table
    assert result.reports_written == calls, table
    assert result.missing_reports == [], table
    assert result.webhook_5xx == 0, table
    assert result.webhook_unanswered == 0, table
    assert result.unfinished_sim_calls == [], table
    assert result.sim_task_errors == 0, table
    assert not result.timed_out, table
    # the kill: one, at a quiet moment, with calls on the victim that were all taken over and re-attached
    assert result.kills == 1, table
    assert result.kill_at_quiet, table
    assert result.calls_on_victim > 0, table
    assert len(result.taken_over) >= result.calls_on_victim, table
    assert result.takeover_logs >= len(result.taken_over), table
    assert len(result.takeover_latencies) == result.calls_on_victim, table
    assert 0 < max(result.takeover_latencies) <= TAKEOVER_BOUND_S, table
    assert result.ok, table
    for row in ("ended exactly once", "calls taken over", "takeover latency", "replicas", "result"):
        assert row in table


async def _soak(tmp_path: Path, capsys: pytest.CaptureFixture[str], **kwargs: object) -> tuple[SoakResult, str]:
    out = io.StringIO()
    result = await soak_replicas.run_soak_replicas(
        kill=True, fault_rate=0.2, seed=20251122, max_wall_s=60, workdir=tmp_path, out=out, **kwargs  # type: ignore[arg-type]
    )
    table = out.getvalue()
    with capsys.disabled():
        print("\n" + table)
    return result, table


async def test_two_replicas_on_sqlite_one_killed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    reports = tmp_path / "reports.jsonl"
    result, table = await _soak(tmp_path, capsys, replicas=2, calls=30, reports=reports)
    _assert_clean(result, table, calls=30, replicas=2)
    assert "SQLite" in result.store
    assert result.wall_s < 60
    lines = [json.loads(line) for line in reports.read_text(encoding="utf-8").splitlines()]
    assert len(lines) == 30
    assert all(line["ended_reason"] for line in lines)
    assert sum(1 for line in lines if line["takeovers"]) == len(result.taken_over)


async def _soak_schemas(url: str) -> set[str]:
    conn = await asyncpg.connect(url, timeout=3)
    try:
        rows = await conn.fetch("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'sipctl_soak_%'")
    finally:
        await conn.close()
    return {row["nspname"] for row in rows}


async def test_three_replicas_on_postgresql_one_killed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], pg_url: str
) -> None:
    before = await _soak_schemas(pg_url)
    result, table = await _soak(tmp_path, capsys, replicas=3, calls=30, database_url=pg_url)
    _assert_clean(result, table, calls=30, replicas=3)
    assert "PostgreSQL" in result.store
    assert "postgres@" not in table  # the URL's user (or password) is never printed
    schema = result.store.split("schema ", 1)[1].split(" ", 1)[0]
    assert schema.startswith("sipctl_soak_")
    assert schema not in await _soak_schemas(pg_url)  # the throwaway schema is gone
    assert await _soak_schemas(pg_url) <= before


def test_the_replica_plan_straddles_a_kill() -> None:
    """Every call has the quiet step (the kill lands in it), and the caller stays on the line long enough for it,
    a takeover and the last turn; the calls, scripts and faults are those of the in-process soak."""
    quiet = soak_replicas.QUIET
    with_quiet = soak.plan(60, 0.2, seed=5, quiet=quiet, max_call_seconds=soak_replicas.MAX_CALL_SECONDS)
    plain = soak.plan(60, 0.2, seed=5)
    assert [k for _, k in with_quiet] == [k for _, k in plain]
    assert [s.caller for s, _ in with_quiet] == [s.caller for s, _ in plain]
    for spec, _ in with_quiet:
        waits = sum(step.wait or 0.0 for step in spec.steps)
        assert waits >= quiet, spec.name
        assert spec.max_call_seconds >= waits + 100, spec.name


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["soak", "--replicas", "0"], "--replicas must be at least 1"),
        (["soak", "--replicas", "-2", "--kill"], "--replicas must be at least 1"),
        (["soak", "--kill"], "need --replicas N"),
        (["soak", "--database-url", "postgresql://x@127.0.0.1/db"], "need --replicas N"),
        (["soak", "--replicas", "2", "--database-url", "mysql://x@127.0.0.1/db"], "not a PostgreSQL URL"),
        (["soak", "--replicas", "9"], "replicas must be 1..8"),
        (["soak", "--replicas", "2", "--calls", "0"], "calls must be 1..100000"),
    ],
)
def test_sipctl_soak_replica_arguments_are_checked(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SIPCTL_DATABASE_URL", raising=False)
    monkeypatch.delenv("SIPCTL_CONFIG", raising=False)
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_sipctl_soak_replica_flags_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    args = cli._parser().parse_args(["soak", "--replicas", "1", "--kill", "--calls", "30"])
    assert (args.replicas, args.kill, args.calls, args.database_url) == (1, True, 30, None)
    defaults = cli._parser().parse_args(["soak"])
    assert (defaults.replicas, defaults.kill, defaults.database_url) == (None, False, None)
    monkeypatch.setenv("SIPCTL_DATABASE_URL", "postgresql://u@127.0.0.1/db")
    assert soak_replicas.database_url_from(None) == "postgresql://u@127.0.0.1/db"
    assert soak_replicas.database_url_from("postgresql://other@127.0.0.1/x") == "postgresql://other@127.0.0.1/x"
    monkeypatch.setenv("SIPCTL_DATABASE_URL", " ")
    assert soak_replicas.database_url_from(None) is None
