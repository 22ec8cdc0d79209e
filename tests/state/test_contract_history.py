"""The store contract of the call history (#17), on SQLite and on PostgreSQL (``backend``), real databases both:
full-text search and the outcome filter on ``list_finished`` (with the other filters and keyset paging), the
overview's figures against values computed by hand for a seeded set, the bounded retention purge, and migration
0008 over a database at 0007 that already holds finished calls (backfill)."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import asyncpg
import pytest

from sip_controller.state import migrations
from sip_controller.state.records import Entry, HistoryQuery, Purged
from sip_controller.state.store import Store
from tests.state.conftest import Cluster
from tests.state.test_contract import live_call, new_call

pytestmark = pytest.mark.anyio

#: a UTC midnight (2023-11-15T00:00:00Z): the seeded calls end on it and on the next day
B = 1_700_006_400.0
DAY = 86_400.0


def report(call_id: str, lines: list[str], cost: float, transcription: float | None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "call_id": call_id,
        "transcript": [{"role": "caller" if i % 2 == 0 else "assistant", "text": t} for i, t in enumerate(lines)],
        "cost_usd": cost,
    }
    if transcription is not None:
        doc["transcription_cost_usd"] = transcription
    return doc


async def analyse(store: Store, call_id: str, success: bool | None, cost: float | None) -> None:
    await store.create_analysis(call_id, "default")
    assert [r.call_id for r in await store.claim_analyses("w", limit=1)] == [call_id]
    if success is None:  # failed for good: no verdict
        failed = {"status": "failed", "summary": None, "success": None, "error": "boom"}
        assert await store.fail_analysis("w", call_id, error="boom", next_attempt_at=None, result=failed)
        return
    result: dict[str, Any] = {"status": "completed", "summary": f"summary of {call_id}", "success": success}
    assert await store.finish_analysis("w", call_id, result=result, cost_usd=cost)


async def seed(store: Store) -> None:
    """Five finished calls (and one live): c1-c4 end on day B, c5 the next day.

    ========  ========  ========  ==============  =====  =============  ========  =========
    call      ring ms   handle s  ended_reason    cost   transcription  analysis  verdict
    ========  ========  ========  ==============  =====  =============  ========  =========
    c1        500       59.5      agent_end_call  0.10   0.02           0.01      succeeded
    c2        1000      99        transferred     0.20   0.05           0.02      failed
    c3        200       99.8      caller_hangup   0.05   (none)         -         unknown
    c4        -         -         rejected        0      -              -         unknown
    c5        2000      58        agent_end_call  0.30   0.10           failed    unknown
    ========  ========  ========  ==============  =====  =============  ========  =========
    """
    calls = [
        ("c1", "sales", B + 100, 0.5, B + 160, "agent_end_call", 0.10, 0.02,
         ["Hello, I'd like to book a table", "Sure, for how many?"]),
        ("c2", "support", B + 3600, 1.0, B + 3700, "transferred", 0.20, 0.05,
         ["I want to speak to a human", "Transferring you now"]),
        ("c3", "sales", B + 3650, 0.2, B + 3750, "caller_hangup", 0.05, None,
         ["What are your opening hours?", "We open at nine"]),
        ("c5", "sales", B + DAY + 10, 2.0, B + DAY + 70, "agent_end_call", 0.30, 0.10,
         ["Book me a room for Friday", "Done: Friday, one room"]),
    ]  # fmt: skip
    for call_id, profile, received, ring, ended, reason, cost, transcription, lines in calls:
        fence = await live_call(store, call_id, profile=profile, received_at=received, accepted_at=received + ring)
        entries = [Entry("transcript", ended - 1, {"role": "caller", "text": lines[0]}), Entry("mark", ended, {})]
        await store.finish_call(
            fence, state="ended", ended_reason=reason, report=report(call_id, lines, cost, transcription),
            entries=entries, cost_usd=cost, ended_at=ended,
        )  # fmt: skip
    await store.record_finished(
        new_call("c4", state="rejected", received_at=B + 7300),
        ended_reason="rejected",
        report={"call_id": "c4", "transcript": []},
        ended_at=B + 7300,
    )
    await live_call(store, "live", received_at=B)
    await analyse(store, "c1", True, 0.01)
    await analyse(store, "c2", False, 0.02)
    await analyse(store, "c5", None, None)


async def ids(store: Store, **query: Any) -> list[str]:
    return [c.call_id for c in (await store.list_finished(HistoryQuery(**query))).calls]


async def search_rows(cluster: Cluster) -> dict[str, int]:
    """How many rows the full-text tables hold, read around the store."""
    if cluster.backend == "sqlite":
        assert cluster.path is not None
        conn = sqlite3.connect(cluster.path)
        try:
            return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("call_search", "call_text")}
        finally:
            conn.close()
    pg = await asyncpg.connect(cluster.url, server_settings={"search_path": str(cluster.schema)})
    try:
        return {"call_search": int(await pg.fetchval("SELECT count(*) FROM call_search"))}
    finally:
        await pg.close()


# ---- search and filters ------------------------------------------------------------------------------------------


async def test_text_search_matches_words_newest_first(store: Store) -> None:
    await seed(store)
    assert await ids(store, text="book") == ["c5", "c1"]  # case-insensitive, words of either party
    assert await ids(store, text="BOOK table") == ["c1"]  # every word
    assert await ids(store, text="boo") == []  # words, not substrings
    assert await ids(store, text="bicycle") == []
    assert await ids(store, text='"a table"') == ["c1"]  # a phrase
    assert await ids(store, text='"table a"') == []
    assert await ids(store, text="book -table") == ["c5"]
    assert await ids(store, text="-table") == []  # negations only match nothing, on both backends
    assert await ids(store, text="I'd") == ["c1"]  # punctuation is no word: i, d
    assert await ids(store, text="nine OR") == []  # no syntax of the backend leaks through: OR is a word
    with pytest.raises(ValueError, match="word"):
        await store.list_finished(HistoryQuery(text="?! -"))


async def test_text_search_with_filters_and_paging(store: Store) -> None:
    await seed(store)
    assert await ids(store, text="book", profile="sales", ended_reason="agent_end_call") == ["c5", "c1"]
    assert await ids(store, text="book", since=B, until=B + DAY) == ["c1"]
    assert await ids(store, text="book", outcome="succeeded") == ["c1"]
    first = await store.list_finished(HistoryQuery(text="book", limit=1))
    assert [c.call_id for c in first.calls] == ["c5"]
    assert first.next_cursor is not None
    rest = await store.list_finished(HistoryQuery(text="book", limit=1, cursor=first.next_cursor))
    assert [c.call_id for c in rest.calls] == ["c1"]
    assert rest.next_cursor is None


async def test_outcome_filter_and_the_summary_on_each_row(store: Store) -> None:
    await seed(store)
    assert await ids(store, outcome="succeeded") == ["c1"]
    assert await ids(store, outcome="failed") == ["c2"]
    assert await ids(store, outcome="unknown") == ["c5", "c4", "c3"]
    assert await ids(store, outcome="unknown", profile="sales", limit=1) == ["c5"]
    rows = {c.call_id: c for c in (await store.list_finished(HistoryQuery())).calls}
    assert (rows["c1"].outcome, rows["c1"].analysis_summary) == ("succeeded", "summary of c1")
    assert (rows["c2"].outcome, rows["c5"].outcome, rows["c5"].analysis_summary) == ("failed", None, None)
    with pytest.raises(ValueError, match="outcome"):
        await store.list_finished(HistoryQuery(outcome="maybe"))  # type: ignore[arg-type]


# ---- the overview --------------------------------------------------------------------------------------------------


async def test_overview_figures_by_hand(store: Store) -> None:
    await seed(store)
    days = await store.overview(B, B + 2 * DAY, bucket_s=86_400)
    assert days.calls == 5
    assert days.per_bucket == [(B, 4), (B + DAY, 1)]
    assert days.ended_reasons == {"agent_end_call": 2, "caller_hangup": 1, "rejected": 1, "transferred": 1}
    assert [d.day for d in days.cost_per_day] == ["2023-11-15", "2023-11-16"]
    costs = [[d.model_usd, d.transcription_usd, d.analysis_usd] for d in days.cost_per_day]
    assert costs[0] == pytest.approx([0.08 + 0.15 + 0.05, 0.07, 0.03])
    assert costs[1] == pytest.approx([0.20, 0.10, 0.0])
    assert (days.ring_p50_ms, days.ring_p95_ms) == (500.0, 2000.0)  # nearest rank of 200, 500, 1000, 2000
    assert days.avg_handle_s == pytest.approx((59.5 + 99 + 99.8 + 58) / 4, abs=1e-3)
    assert (days.transfer_rate, days.success_rate) == (0.2, 0.5)

    hours = await store.overview(B, B + DAY, bucket_s=3600)
    assert len(hours.per_bucket) == 24
    assert hours.per_bucket[0] == (B, 1)
    assert [n for _, n in hours.per_bucket[:4]] == [1, 2, 1, 0]
    assert [d.day for d in hours.cost_per_day] == ["2023-11-15"]

    window = await store.overview(B + 3600, B + 7200, bucket_s=3600)
    assert (window.calls, window.ring_p50_ms, window.ring_p95_ms) == (2, 200.0, 1000.0)
    assert (window.transfer_rate, window.success_rate) == (0.5, 0.0)

    empty = await store.overview(B - DAY, B, bucket_s=86_400)
    assert (empty.calls, empty.per_bucket, empty.ended_reasons) == (0, [(B - DAY, 0)], {})
    assert (empty.ring_p50_ms, empty.avg_handle_s, empty.transfer_rate, empty.success_rate) == (None,) * 4
    for since, until, bucket in ((B, B, 3600), (B, B + 1, 60), (B, B + 401 * DAY, 86_400)):
        with pytest.raises(ValueError, match=r"bucket_s|until|range"):
            await store.overview(since, until, bucket_s=bucket)


# ---- retention -----------------------------------------------------------------------------------------------------


async def test_purge_deletes_old_calls_then_strips_transcripts_bounded(cluster: Cluster, store: Store) -> None:
    await seed(store)
    before = await search_rows(cluster)
    assert before["call_search"] == 4
    assert await store.purge(before=B + 3701, transcripts_before=B + DAY, limit=2) == Purged(calls=2)
    assert await store.get_report("c1") is None
    assert await store.get_analysis("c1") is None
    assert await store.read_entries("c2") == []
    assert await store.get_call("c2") is None
    assert await store.purge(before=B + 3701, transcripts_before=B + DAY, limit=2) == Purged(transcripts=2)
    assert await store.purge(before=B + 3701, transcripts_before=B + DAY, limit=2) == Purged()  # c5 is younger
    c3 = await store.get_report("c3")
    assert c3 is not None
    assert c3["transcript"] == []
    assert c3["cost_usd"] == 0.05
    assert [e.kind for e in await store.read_entries("c3")] == ["mark"]
    assert await ids(store) == ["c5", "c4", "c3"]
    assert await ids(store, text="hours") == []
    assert await ids(store, text="book") == ["c5"]
    after = await search_rows(cluster)
    assert set(after.values()) == {1}  # c5's text only: the deleted and the stripped calls' rows are gone
    assert (await store.get_call("live")) is not None  # never a live call
    assert await store.purge(before=B + 10 * DAY, transcripts_before=None, limit=1000) == Purged(calls=3)
    assert await ids(store) == []
    assert set((await search_rows(cluster)).values()) == {0}
    assert await store.get_call("live") is not None
    with pytest.raises(ValueError, match="limit"):
        await store.purge(before=B, transcripts_before=None, limit=0)


# ---- migration 0008 over existing rows -----------------------------------------------------------------------------


async def test_migration_0008_backfills_calls_finished_before_it(
    cluster: Cluster, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    dialect: migrations.Dialect = "sqlite" if backend == "sqlite" else "postgresql"
    before = tuple(m for m in migrations.available(dialect) if m.version < 8)
    monkeypatch.setattr(migrations, "available", lambda _: before)
    old = await cluster.open()
    assert await old.schema_version() == 7
    await old.aclose()
    rows = [
        ("o1", B + 100, "agent_end_call", report("o1", ["Please book a taxi", "Booked"], 0.4, 0.1)),
        ("o2", B + 200, "caller_hangup", report("o2", ["Wrong number, sorry"], 0.1, None)),
        ("o3", B + 300, "rejected", {"call_id": "o3"}),
    ]
    for call_id, ended, reason, doc in rows:
        await cluster.sql(
            "INSERT INTO calls (call_id, owner, state, profile, inputs, received_at, accepted_at, cost_usd, "
            "updated_at, ended_at, ended_reason, report) VALUES (?, 'p1', 'ended', 'default', '{}', ?, ?, ?, ?, ?, ?, "
            f"{'?' if backend == 'sqlite' else 'CAST(? AS jsonb)'})",
            call_id, ended - 60, ended - 59, float(doc.get("cost_usd", 0.0)), ended, ended, reason, json.dumps(doc),
        )  # fmt: skip
    result = json.dumps({"status": "completed", "summary": "taxi booked", "success": True})
    await cluster.sql(
        "INSERT INTO call_analyses (call_id, profile, status, created_at, due_at, result, cost_usd, finished_at) "
        f"VALUES ('o1', 'default', 'done', ?, ?, {'?' if backend == 'sqlite' else 'CAST(? AS jsonb)'}, 0.05, ?)",
        B, B, result, B,
    )  # fmt: skip
    monkeypatch.undo()
    store = await cluster.open()
    assert await store.schema_version() == migrations.latest(dialect)
    assert await ids(store, text="book") == ["o1"]
    assert await ids(store, text="wrong number") == ["o2"]
    assert await ids(store, outcome="succeeded") == ["o1"]
    page = await store.list_finished(HistoryQuery(outcome="succeeded"))
    assert page.calls[0].analysis_summary == "taxi booked"
    view = await store.overview(B, B + DAY, bucket_s=86_400)
    assert view.calls == 3
    assert view.success_rate == 1.0
    cost = view.cost_per_day[0]
    assert [cost.model_usd, cost.transcription_usd, cost.analysis_usd] == pytest.approx([0.3 + 0.1, 0.1, 0.05])
    assert (view.ring_p50_ms, view.ring_p95_ms) == (1000.0, 1000.0)
