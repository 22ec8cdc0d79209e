"""The store contract of parked Twilio calls (#16), on SQLite and on PostgreSQL (``backend``), real databases both:
the park state on a ``twilio_calls`` row and the correlation swap the next OpenAI leg links through
(``set_twilio_park``), closing a parked leg's ``calls`` row with the final report once (``close_parked``), the
history leaving parked legs out, and migration 0011 over a database at 0010."""

from __future__ import annotations

from typing import Any

import pytest

from sip_controller.state import migrations
from sip_controller.state.records import Entry, HistoryQuery
from sip_controller.state.store import Store
from sip_controller.state.twilio_calls import CorrelationTaken
from tests.state.conftest import T0, Cluster
from tests.state.test_contract import ended as delivery
from tests.state.test_contract import live_call, twilio_call
from tests.state.test_contract_history import search_rows

pytestmark = pytest.mark.anyio

CORR1 = "corr00000000000000000001"
CORR2 = "corr00000000000000000002"
NEW_CORR = "corr-after-park-000000001"
PARK = {"since": T0 + 60, "music": "https://example.com/hold.mp3", "leg": {"call_id": "rtc_a", "n": 1}}


def report(call_id: str, lines: list[str], cost: float, **more: Any) -> dict[str, Any]:
    return {
        "call_id": call_id,
        "transcript": [{"role": "caller", "text": line} for line in lines],
        "cost_usd": cost,
        **more,
    }


async def park_leg(store: Store, call_id: str, *, ended_at: float, lines: list[str] | None = None) -> None:
    """A live OpenAI leg ended as ``parked`` with its own report, as the controller finishes it."""
    fence = await live_call(store, call_id, received_at=ended_at - 120, accepted_at=ended_at - 119)
    await store.finish_call(
        fence, state="ended", ended_reason="parked", ended_at=ended_at, cost_usd=0.05,
        report=report(call_id, lines or ["I need to check with my manager, please hold"], 0.05),
        entries=[Entry("transcript", ended_at - 1, {"role": "caller", "text": "please hold"})],
    )  # fmt: skip


async def listed(store: Store, **query: Any) -> list[str]:
    return [c.call_id for c in (await store.list_finished(HistoryQuery(**query))).calls]


# ---- set_twilio_park -------------------------------------------------------------------------------------------


async def test_park_is_set_read_back_and_cleared(cluster: Cluster, store: Store) -> None:
    created, _ = await store.create_twilio_call(twilio_call(1))
    assert created.park is None
    await store.link_twilio_call(CORR1, "rtc_a")
    cluster.clock.advance(5)
    parked = await store.set_twilio_park("out_1", PARK)
    assert parked is not None
    assert (parked.park, parked.updated_at) == (PARK, T0 + 5)
    assert (parked.correlation, parked.call_id) == (CORR1, "rtc_a")  # without a correlation: both kept
    for key in ({"id": "out_1"}, {"correlation": CORR1}):
        found = await store.get_twilio_call(**key)
        assert found is not None
        assert found.park == PARK
    cluster.clock.advance(5)
    cleared = await store.set_twilio_park("out_1", None)
    assert cleared is not None
    assert (cleared.park, cleared.updated_at, cleared.call_id) == (None, T0 + 10, "rtc_a")
    # a status callback leaves the park state alone
    await store.set_twilio_park("out_1", {"n": 2})
    after = await store.update_twilio_call("out_1", status="in-progress", event={"kind": "status"})
    assert after is not None
    assert after.park == {"n": 2}


async def test_a_new_correlation_unlinks_the_row_and_the_next_leg_links_through_it(store: Store) -> None:
    await store.create_twilio_call(twilio_call(1))
    await store.link_twilio_call(CORR1, "rtc_a")
    swapped = await store.set_twilio_park("out_1", PARK, correlation=NEW_CORR)
    assert swapped is not None
    assert (swapped.correlation, swapped.call_id, swapped.park) == (NEW_CORR, None, PARK)
    assert await store.get_twilio_call(correlation=CORR1) is None
    assert await store.link_twilio_call(CORR1, "rtc_b") is None  # the old header replayed links nothing
    linked = await store.link_twilio_call(NEW_CORR, "rtc_b")
    assert linked is not None
    assert (linked.id, linked.call_id, linked.park) == ("out_1", "rtc_b", PARK)
    assert await store.link_twilio_call(NEW_CORR, "rtc_c") is None  # once, as any correlation id
    back = await store.set_twilio_park("out_1", None)  # the person is back: no longer parked
    assert back is not None
    assert (back.park, back.call_id, back.correlation) == (None, "rtc_b", NEW_CORR)


async def test_an_unknown_twilio_call_is_none(store: Store) -> None:
    assert await store.set_twilio_park("out_9", PARK) is None
    assert await store.set_twilio_park("out_9", None, correlation=NEW_CORR) is None
    assert await store.get_twilio_call(correlation=NEW_CORR) is None


async def test_a_correlation_another_call_has_is_refused_and_nothing_written(store: Store) -> None:
    await store.create_twilio_call(twilio_call(1))
    await store.create_twilio_call(twilio_call(2))
    await store.link_twilio_call(CORR1, "rtc_a")
    await store.set_twilio_park("out_1", {"n": 1})
    with pytest.raises(CorrelationTaken, match="out_1"):
        await store.set_twilio_park("out_1", PARK, correlation=CORR2)
    row = await store.get_twilio_call(id="out_1")
    assert row is not None
    assert (row.correlation, row.call_id, row.park) == (CORR1, "rtc_a", {"n": 1})
    same = await store.set_twilio_park("out_1", PARK, correlation=CORR1)  # its own id again is no conflict
    assert same is not None
    assert (same.correlation, same.call_id) == (CORR1, None)


# ---- close_parked ----------------------------------------------------------------------------------------------


async def test_a_parked_leg_is_closed_once_with_the_final_report(cluster: Cluster, store: Store) -> None:
    await park_leg(store, "rtc_a", ended_at=T0 + 200)
    cluster.clock.advance(600)
    final = report("rtc_a", ["Sorry for the wait", "No problem, thanks for the refund"], 0.3,
                   transcription_cost_usd=0.04, parked_s=400)  # fmt: skip
    closed = await store.close_parked("rtc_a", ended_reason="caller_hangup", report=final, outbox=[delivery("rtc_a")],
                                      cost_usd=0.3)  # fmt: skip
    assert closed is True
    assert await store.get_report("rtc_a") == final
    row = await store.get_call("rtc_a")
    assert row is not None
    assert (row.state, row.ended_reason, row.cost_usd, row.ended_at) == ("ended", "caller_hangup", 0.3, T0 + 200)
    claimed = await store.claim_outbox("w")
    assert [(r.key, r.call_id) for r in claimed] == [(delivery("rtc_a").key, "rtc_a")]
    # the history's summary columns and full-text row are the final report's
    overview = await store.overview(T0, T0 + 86_400, bucket_s=3600)
    assert (overview.calls, overview.ended_reasons) == (1, {"caller_hangup": 1})
    cost = sum(d.model_usd for d in overview.cost_per_day), sum(d.transcription_usd for d in overview.cost_per_day)
    assert cost == pytest.approx((0.26, 0.04))
    assert await listed(store, text="refund") == ["rtc_a"]
    assert await listed(store, text="manager") == []  # the parked leg's own words left the index
    assert (await search_rows(cluster))["call_search"] == 1

    again = await store.close_parked("rtc_a", ended_reason="operator_hangup", report={"call_id": "rtc_a"},
                                     outbox=[delivery("rtc_a", "https://other.example.com/hook")])  # fmt: skip
    assert again is False
    assert await store.get_report("rtc_a") == final
    assert (await store.outbox_stats()).pending == 1


async def test_close_keeps_the_row_cost_without_one_and_skips_outbox_keys_present(store: Store) -> None:
    await park_leg(store, "rtc_a", ended_at=T0 + 200)
    await store.enqueue([delivery("rtc_a")])
    final = {"call_id": "rtc_a", "transcript": []}
    assert await store.close_parked("rtc_a", ended_reason="no_answer", report=final, outbox=[delivery("rtc_a")])
    row = await store.get_call("rtc_a")
    assert row is not None
    assert (row.ended_reason, row.cost_usd) == ("no_answer", 0.05)
    assert (await store.outbox_stats()).pending == 1
    assert await listed(store, text="hold") == []  # a report without words leaves nothing to search


async def test_only_a_parked_leg_is_closed_and_nothing_else_is_written(cluster: Cluster, store: Store) -> None:
    fence = await live_call(store, "rtc_done")
    done = report("rtc_done", ["Goodbye"], 0.1)
    await store.finish_call(fence, state="ended", ended_reason="caller_hangup", report=done, cost_usd=0.1)
    await live_call(store, "rtc_live")
    final = report("x", ["Something else"], 0.9)
    for call_id in ("rtc_done", "rtc_live", "rtc_unknown"):
        assert await store.close_parked(call_id, ended_reason="operator_hangup", report=final,
                                        outbox=[delivery(call_id)], cost_usd=0.9) is False  # fmt: skip
    assert await store.get_report("rtc_done") == done
    row = await store.get_call("rtc_done")
    assert row is not None
    assert (row.ended_reason, row.cost_usd) == ("caller_hangup", 0.1)
    live = await store.get_call("rtc_live")
    assert live is not None
    assert (live.live, live.ended_reason) == (True, None)
    assert await store.get_call("rtc_unknown") is None
    assert (await store.outbox_stats()).pending == 0
    assert await listed(store, text="something") == []
    assert await listed(store, text="goodbye") == ["rtc_done"]


async def test_closing_with_the_reason_parked_is_refused(store: Store) -> None:
    await park_leg(store, "rtc_a", ended_at=T0 + 200)
    with pytest.raises(ValueError, match="parked"):
        await store.close_parked("rtc_a", ended_reason="parked", report={"call_id": "rtc_a"})
    assert (await store.get_report("rtc_a") or {}).get("cost_usd") == 0.05


# ---- history -----------------------------------------------------------------------------------------------------


async def test_history_leaves_a_parked_leg_out_until_it_is_closed(cluster: Cluster, store: Store) -> None:
    await park_leg(store, "rtc_a", ended_at=T0 + 200)
    # a person came back: the next leg (a new OpenAI call) covers the whole call, the parked leg stays out
    fence = await live_call(store, "rtc_b", received_at=T0 + 500, accepted_at=T0 + 501)
    whole = report("rtc_b", ["Thanks for holding, your manager approved it"], 0.2)
    await store.finish_call(fence, state="ended", ended_reason="agent_end_call", report=whole, cost_usd=0.2,
                            ended_at=T0 + 700)  # fmt: skip
    await park_leg(store, "rtc_c", ended_at=T0 + 800, lines=["Hold on, the manager is busy"])

    assert await listed(store) == ["rtc_b"]
    assert await listed(store, text="manager") == ["rtc_b"]
    assert await listed(store, ended_reason="parked") == []
    assert await listed(store, outcome="unknown") == ["rtc_b"]
    overview = await store.overview(T0, T0 + 86_400, bucket_s=3600)
    assert (overview.calls, overview.ended_reasons) == (1, {"agent_end_call": 1})
    assert (overview.ring_p50_ms, overview.avg_handle_s) == (1000.0, 199.0)
    assert sum(d.model_usd for d in overview.cost_per_day) == pytest.approx(0.2)
    # still there for whoever asks for it by id
    parked = await store.get_call("rtc_c")
    assert parked is not None
    assert parked.ended_reason == "parked"
    assert (await store.get_report("rtc_c") or {}).get("call_id") == "rtc_c"

    cluster.clock.advance(3600)
    final = report("rtc_c", ["Hold on, the manager is busy", "Call me back tomorrow"], 0.4)
    assert await store.close_parked("rtc_c", ended_reason="caller_hangup", report=final, cost_usd=0.4)
    assert await listed(store) == ["rtc_c", "rtc_b"]
    assert await listed(store, text="tomorrow") == ["rtc_c"]
    overview = await store.overview(T0, T0 + 86_400, bucket_s=3600)
    assert (overview.calls, overview.ended_reasons) == (2, {"agent_end_call": 1, "caller_hangup": 1})


async def test_retention_purges_parked_legs_by_age(cluster: Cluster, store: Store) -> None:
    await park_leg(store, "rtc_old", ended_at=T0 + 100)
    await park_leg(store, "rtc_new", ended_at=T0 + 5000)
    purged = await store.purge(before=T0 + 1000, transcripts_before=T0 + 6000, limit=10)
    assert (purged.calls, purged.transcripts) == (1, 1)
    assert await store.get_call("rtc_old") is None
    assert (await store.get_report("rtc_new") or {}).get("transcript") == []
    assert await store.read_entries("rtc_new") == []
    # a parked leg closed after its transcript was stripped keeps the final report's for the usual time again
    final = report("rtc_new", ["Are you still there?"], 0.1)
    assert await store.close_parked("rtc_new", ended_reason="caller_hangup", report=final)
    assert await store.get_report("rtc_new") == final
    assert await listed(store, text="still") == ["rtc_new"]
    purged = await store.purge(before=T0, transcripts_before=T0 + 6000, limit=10)
    assert (purged.calls, purged.transcripts) == (0, 1)
    assert await listed(store, text="still") == []


# ---- migration 0011 over an existing database ---------------------------------------------------------------------


async def test_migration_0011_adds_park_to_twilio_calls_made_before_it(
    cluster: Cluster, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    dialect: migrations.Dialect = "sqlite" if backend == "sqlite" else "postgresql"
    before = tuple(m for m in migrations.available(dialect) if m.version < 11)
    monkeypatch.setattr(migrations, "available", lambda _: before)
    old = await cluster.open()
    assert await old.schema_version() == 10
    await old.aclose()
    await cluster.sql(
        "INSERT INTO twilio_calls (id, correlation, direction, status, call_id, created_at, updated_at) "
        "VALUES (?, ?, 'inbound', 'in-progress', ?, ?, ?)",
        "in_1", CORR1, "rtc_a", T0, T0,
    )  # fmt: skip
    monkeypatch.undo()
    store = await cluster.open()
    assert await store.schema_version() == migrations.latest(dialect) >= 11
    row = await store.get_twilio_call(id="in_1")
    assert row is not None
    assert (row.park, row.call_id, row.variables, row.events) == (None, "rtc_a", {}, [])
    parked = await store.set_twilio_park("in_1", PARK, correlation=NEW_CORR)
    assert parked is not None
    assert (parked.park, parked.correlation, parked.call_id) == (PARK, NEW_CORR, None)


async def test_a_later_legs_merged_row_is_out_of_the_history_and_the_first_leg_lists_the_call(store: Store) -> None:
    """How the controller writes a call that went on after a park: the whole call's report on the first leg's row,
    ended when the call ended (``ended_at``), and the later leg's row ``merged``."""
    await park_leg(store, "rtc_m1", ended_at=T0 + 200)
    whole = report("rtc_m1", ["Hold on, please", "Thanks for holding, it is approved"], 0.3)
    assert await store.close_parked("rtc_m1", ended_reason="agent_end_call", report=whole, cost_usd=0.3,
                                    outbox=[delivery("rtc_m1")], ended_at=T0 + 2600)  # fmt: skip
    fence = await live_call(store, "rtc_m2", received_at=T0 + 2400, accepted_at=T0 + 2401)
    await store.finish_call(fence, state="ended", ended_reason="merged", report=report("rtc_m2", ["approved"], 0.1),
                            cost_usd=0.1, ended_at=T0 + 2600)  # fmt: skip
    assert await listed(store) == ["rtc_m1"]
    assert await listed(store, text="approved") == ["rtc_m1"]
    first = await store.get_call("rtc_m1")
    assert first is not None
    assert (first.ended_reason, first.ended_at) == ("agent_end_call", T0 + 2600)
    overview = await store.overview(T0, T0 + 86_400, bucket_s=3600)
    assert (overview.calls, overview.ended_reasons) == (1, {"agent_end_call": 1})


async def test_a_park_is_written_only_while_its_status_is_the_expected_one(store: Store) -> None:
    await store.create_twilio_call(twilio_call(1))
    await store.set_twilio_park("out_1", {"status": "parked", "listens": 1})
    written = await store.set_twilio_park("out_1", {"status": "parked", "listens": 2}, expect_status="parked")
    assert written is not None
    assert written.park == {"status": "parked", "listens": 2}
    await store.set_twilio_park("out_1", {"status": "closed", "listens": 2})
    # a round that read "parked" before the call was closed writes nothing, the correlation included
    assert await store.set_twilio_park("out_1", {"status": "bridging"}, correlation=NEW_CORR,
                                       expect_status="parked") is None  # fmt: skip
    row = await store.get_twilio_call(id="out_1")
    assert row is not None
    assert (row.park, row.correlation) == ({"status": "closed", "listens": 2}, CORR1)
