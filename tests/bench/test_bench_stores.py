"""The bench on two stores: where PostgreSQL comes from (and how it is skipped), the per-store targets, the
takeover arithmetic on the peer's stamps, and the CLI flag."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from sip_controller import cli
from sip_controller.bench import database, runner
from sip_controller.bench.peer import PeerCall

pytestmark = pytest.mark.anyio

#: nothing listens on port 1 of loopback: a connection there is refused at once
NOBODY = "postgresql://postgres:hunter2@127.0.0.1:1/test"


def test_the_url_gets_the_schema_and_is_named_without_its_secrets() -> None:
    assert database.with_search_path("postgresql://u@h/db", "s1") == "postgresql://u@h/db?search_path=s1"
    assert database.with_search_path("postgresql://u@h/db?sslmode=disable", "s1").endswith(
        "?sslmode=disable&search_path=s1"
    )
    assert database.describe(NOBODY) == "127.0.0.1:1/test"
    assert database.describe("postgresql://u:pw@db.internal/") == "db.internal:5432/(default)"


async def test_postgres_that_does_not_answer_is_skipped_with_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(database.ENV, raising=False)
    found = await database.find(NOBODY)
    assert found.url is None
    assert found.source == "--database-url"
    assert found.skipped is not None
    assert "127.0.0.1:1/test" in found.skipped
    assert "hunter2" not in found.skipped

    monkeypatch.setenv(database.ENV, NOBODY)
    from_env = await database.find(None)
    assert (from_env.url, from_env.source) == (None, database.ENV)


async def test_a_throwaway_schema_is_made_and_dropped() -> None:
    found = await database.find(None)
    if found.url is None:
        pytest.skip(found.skipped or "no PostgreSQL")
    async with database.throwaway_schema(found.url, prefix="sipctl_benchtest") as url:
        schema = url.rsplit("search_path=", 1)[1]
        conn = await asyncpg.connect(url)
        try:
            assert await conn.fetchval("SELECT current_schema()") == schema
        finally:
            await conn.close()
    admin = await asyncpg.connect(found.url)
    try:
        assert await admin.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname = $1", schema) == 0
    finally:
        await admin.close()


def _ring(p99: float, ratio: float) -> dict[str, Any]:
    return {"rate": 100, "p99_ms": p99, "noise": {}, "controller_over_floor_p50": {"median": ratio}}


def test_each_store_is_judged_by_the_ring_rule_and_the_takeover_bound() -> None:
    results = {
        "ring_to_answer_by_store": {"sqlite": _ring(4.0, 2.5), "postgresql": _ring(7.5, 3.5)},
        "takeover": {
            "sqlite": {"calls": 20, "reattached": 20, "max_s": 7.9},
            "postgresql": {"calls": 20, "reattached": 19, "max_s": 8.1},
        },
    }
    targets = {t["name"]: t for t in runner.evaluate_targets(results)}
    assert targets["ring_to_answer_p99_at_100_sqlite"]["met"] is True
    assert targets["ring_p50_over_floor_at_100_sqlite"]["met"] is True
    assert targets["ring_to_answer_p99_at_100_postgresql"]["met"] is False
    assert targets["ring_p50_over_floor_at_100_postgresql"]["met"] is False
    assert targets["takeover_max_s_sqlite"]["met"] is True
    # one call never re-attached: the target is missed whatever the others took
    assert targets["takeover_max_s_postgresql"]["met"] is False

    results["takeover"] = {"sqlite": {"calls": 5, "reattached": 0, "max_s": None}, "postgresql": {"skipped": "x"}}
    results["ring_to_answer_by_store"]["postgresql"] = {"rate": 100, "skipped": "no server"}
    targets = {t["name"]: t for t in runner.evaluate_targets(results)}
    assert (targets["takeover_max_s_sqlite"]["value"], targets["takeover_max_s_sqlite"]["met"]) == ("0 of 5", False)
    assert targets["takeover_max_s_postgresql"]["met"] is None
    assert targets["ring_to_answer_p99_at_100_postgresql"]["met"] is None
    assert targets["ring_to_answer_p99_at_100_postgresql"]["skipped"] == "no server"


def test_takeover_latency_is_taken_from_the_kill_to_the_second_sideband() -> None:
    killed = 10_000_000_000
    calls = [PeerCall(f"rtc_{i}") for i in range(3)]
    calls[0].attached_ns = [killed - 5 * 10**8, killed + 7_200_000_000]
    calls[1].attached_ns = [killed - 4 * 10**8, killed + 7_600_000_000]
    calls[2].attached_ns = [killed - 3 * 10**8]  # never re-attached
    for call in calls:
        call.dropped_ns = killed + 20_000_000
    run = runner._takeover_run(calls, 3, killed, 0, {})
    assert (run["calls"], run["reattached"]) == (3, 2)
    assert run["latencies_s"] == [7.2, 7.6]
    assert (run["p50_s"], run["max_s"], run["drop_seen_p50_s"]) == (7.4, 7.6, 0.02)
    merged = runner._merge_takeover([run, {**run, "latencies_s": [6.1], "calls": 1, "reattached": 1}])
    assert (merged["calls"], merged["reattached"], merged["min_s"], merged["max_s"]) == (4, 3, 6.1, 7.6)
    assert merged["p50_s"] == 7.2


def test_the_takeover_uses_the_default_lease_unless_the_plan_sets_one() -> None:
    assert runner.Bench(runner.QUICK).lease() == (6.0, 2.0, {})
    lease, beat, env = runner.Bench(runner.SMOKE).lease()
    assert (lease, beat) == (1.5, 0.5)
    assert env == {"SIPCTL_STATE__LEASE_S": "1.5", "SIPCTL_STATE__HEARTBEAT_S": "0.5"}


def test_sipctl_bench_takes_a_database_url() -> None:
    args = cli._parser().parse_args(["bench", "--quick", "--database-url", "postgresql://u@127.0.0.1/x"])
    assert (args.bench_mode, args.database_url) == ("quick", "postgresql://u@127.0.0.1/x")
    assert cli._parser().parse_args(["bench"]).database_url is None
