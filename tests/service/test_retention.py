"""The call history's retention job (#17) on both backends, with an injected clock and sleep: old calls deleted,
transcripts stripped first when they are kept for less, each pass bounded by ``purge_batch`` (a full pass is
followed by the next soon, a partial one after ``purge_every_s``), ``history.purged`` logged with the counts, and
a failing store never ending the loop."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import structlog

from sip_controller.config import History
from sip_controller.service import retention
from sip_controller.state.records import HistoryQuery, NewCall, Purged
from sip_controller.state.store import Store
from tests.service.history_stores import store_fixture  # noqa: F401 (the fixture `store`: both backends)
from tests.service.test_history import admin_api

pytestmark = pytest.mark.anyio

NOW = 1_735_689_600.0  # 2025-01-01T00:00:00Z
DAY = 86_400.0


async def ended(store: Store, call_id: str, days_ago: float) -> None:
    at = NOW - days_ago * DAY
    row = await store.create_call(NewCall(call_id=call_id, owner="p", profile="default", inputs={}, received_at=at))
    assert row is not None
    report: dict[str, object] = {
        "call_id": call_id,
        "transcript": [{"role": "caller", "text": f"secret words {call_id}"}],
    }
    await store.finish_call(row.fence, state="ended", ended_reason="caller_hangup", report=report, ended_at=at)


class StopAfter(Exception):
    pass


def fake_sleep(pauses: list[float], passes: int) -> Any:
    async def sleep(seconds: float) -> None:
        pauses.append(seconds)
        if len(pauses) >= passes:
            raise StopAfter

    return sleep


async def test_passes_are_bounded_and_transcripts_go_first(store: Store) -> None:
    for i in range(5):
        await ended(store, f"old_{i}", 40 + i)  # past retain_days
    for i in range(3):
        await ended(store, f"mid_{i}", 10 + i)  # past transcript_retain_days only
    await ended(store, "new", 1)
    settings = History(retain_days=30, transcript_retain_days=7, purge_batch=2, purge_every_s=600)
    pauses: list[float] = []
    with structlog.testing.capture_logs() as logs, pytest.raises(StopAfter):
        await retention.retention_loop(store, settings, clock=lambda: NOW, sleep=fake_sleep(pauses, 6))
    # 2 + 2 + 1 old calls (and one transcript in that pass), then 2 transcripts, then nothing to do
    assert pauses == [retention.CATCH_UP_S] * 4 + [600.0, 600.0]
    purged = [(e["calls"], e["transcripts"]) for e in logs if e["event"] == "history.purged"]
    assert purged == [(2, 0), (2, 0), (1, 1), (0, 2)]
    left = await store.list_finished(HistoryQuery())
    assert [c.call_id for c in left.calls] == ["new", "mid_0", "mid_1", "mid_2"]
    assert (await store.get_report("mid_2") or {}).get("transcript") == []
    assert (await store.get_report("new") or {}).get("transcript") != []
    assert [c.call_id for c in (await store.list_finished(HistoryQuery(text="secret"))).calls] == ["new"]


async def test_only_transcripts_or_nothing_configured(store: Store) -> None:
    await ended(store, "old", 400)
    transcripts_only = History(transcript_retain_days=7)
    assert await retention.purge_pass(store, transcripts_only, NOW) == Purged(transcripts=1)
    assert await store.get_call("old") is not None  # calls kept forever
    assert not retention.enabled(History())
    await asyncio.wait_for(retention.retention_loop(store, History()), 1)  # returns at once: nothing to do


async def test_a_failing_store_is_logged_and_tried_again(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(**_: Any) -> Purged:
        raise OSError("the database is away")

    monkeypatch.setattr(store, "purge", broken)
    pauses: list[float] = []
    with structlog.testing.capture_logs() as logs, pytest.raises(StopAfter):
        await retention.retention_loop(store, History(retain_days=1), clock=lambda: NOW, sleep=fake_sleep(pauses, 2))
    assert pauses == [3600.0, 3600.0]
    assert [e["error"] for e in logs if e["event"] == "history.purge_failed"] == ["OSError", "OSError"]


async def test_the_app_runs_the_job_once_the_store_is_open(store: Store) -> None:
    await ended(store, "ancient", 40)  # 2024: far past 30 days on the real clock
    async with admin_api(store, retain_days=30):
        for _ in range(100):  # bounded: the first pass runs as the app starts
            if await store.get_call("ancient") is None:
                break
            await asyncio.sleep(0.02)
        assert await store.get_call("ancient") is None
        assert any(t.get_name() == "store:retention" for t in asyncio.all_tasks())
