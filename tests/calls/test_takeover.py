"""Tests for sip_controller.calls.takeover: a call taken over while ``ending`` ends with the reason its lost owner
was ending it with (stored with the ``ending`` state), not a generic ``session_error``; a call muted by live control
or waiting on hold is taken over so (a ``turns`` entry, written when either changes, on both stores)."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from sip_controller.agent.profile import AgentProfile
from sip_controller.calls import parking
from sip_controller.calls.inputs import OperatorHangup, OperatorMute
from sip_controller.calls.journal import TURNS, CallJournal
from sip_controller.calls.report import CallRecord
from sip_controller.calls.states import CallState
from sip_controller.calls.takeover import pending_reason, rebuild_record
from sip_controller.state.records import NewCall
from sip_controller.state.sqlite import SQLiteStore
from sip_controller.state.store import Store
from tests.callkit import Call, fc, heard, response_done, session_updated
from tests.state.conftest import Cluster

T0 = 1_760_000_000.0


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    async with await SQLiteStore.open(tmp_path / "state.db", clock=lambda: T0) as opened:
        yield opened


def test_the_machine_keeps_the_reason_a_call_is_ending_with_on_its_record() -> None:
    c = Call()
    c.greeted()
    c.feed(OperatorHangup())
    assert c.state() == CallState.ENDING
    assert c.record.ending_reason == "operator_hangup"


async def _ending_call_in_the_store(store: SQLiteStore, reason: str | None) -> CallRecord:
    row = await store.create_call(
        NewCall(
            call_id="rtc_end", owner="p1", profile="default", inputs={}, received_at=T0, caller=None, dialed=None,
            deadlines={},
        )
    )  # fmt: skip
    assert row is not None
    received = datetime.fromtimestamp(T0, UTC)
    journal = CallJournal(store, row.fence, received_at=received, wall_clock=lambda: T0 + 5)
    record = CallRecord(call_id="rtc_end", profile="default", received_at=received)
    record.state = "attached"
    journal.observe(record)
    record.state = "ending"
    record.ending_reason = reason
    journal.observe(record)
    await journal.flush()
    stored = await store.get_call("rtc_end")
    assert stored is not None
    assert stored.state == "ending"
    return rebuild_record(stored, await store.read_entries("rtc_end"))


@pytest.mark.anyio
async def test_the_reason_survives_the_store_and_a_takeover_ends_the_call_with_it(store: SQLiteStore) -> None:
    rebuilt = await _ending_call_in_the_store(store, "agent_end_call")
    assert rebuilt.ending_reason == "agent_end_call"
    assert pending_reason(rebuilt) == "agent_end_call"


@pytest.mark.anyio
async def test_without_a_stored_reason_the_call_ends_as_a_session_error(store: SQLiteStore) -> None:
    rebuilt = await _ending_call_in_the_store(store, None)
    assert rebuilt.ending_reason is None
    assert pending_reason(rebuilt) == "session_error"


def test_a_reason_that_is_not_an_ended_reason_is_not_trusted() -> None:
    record = CallRecord(call_id="rtc_x", profile="default", received_at=datetime.fromtimestamp(T0, UTC))
    record.ending_reason = "made_up"
    assert pending_reason(record) == "session_error"


# ---- mute and hold survive a takeover (#13, #17) ----------------------------------------------------------------


def test_the_features_keep_mute_and_hold_on_the_record() -> None:
    profile = AgentProfile.model_validate({"tools": ["end_call", "wait_on_hold"]})
    c = Call(profile=profile)
    c.greeted()
    c.feed(OperatorMute(True, source="api"))
    assert c.record.muted is True
    c.now = 140.0
    c.feed(response_done("r1", output=[fc("c1", "wait_on_hold", "{}")]))
    assert c.record.on_hold_since_s == pytest.approx(40.0)  # seconds from the call's start (100.0)
    c.feed(session_updated())
    c.feed(session_updated())
    c.feed(heard("Thank you for holding, how can I help?"))  # phrases or a check: a check here
    c.feed(response_done("r_chk", output=[{"type": "message", "role": "assistant",
                                           "content": [{"type": "output_text", "text": "yes"}]}],
                         metadata={"sipctl": "hold_check", "n": "9"}))  # fmt: skip
    assert c.record.on_hold_since_s is None
    assert c.record.muted is True
    c.feed(OperatorMute(False, source="console"))
    assert c.record.muted is False


async def _journalled(store: Store, record: CallRecord, *changes: tuple[bool, float | None, float]) -> CallJournal:
    """A live call's journal that sees the record go through ``changes`` (muted, on hold since, hold time), each
    followed by a few inputs that change nothing of them."""
    received = datetime.fromtimestamp(T0, UTC)
    row = await store.create_call(
        NewCall(
            call_id=record.call_id, owner="p1", profile="default", inputs={}, received_at=T0, caller=None,
            dialed=None, deadlines={},
        )
    )  # fmt: skip
    assert row is not None
    journal = CallJournal(store, row.fence, received_at=received, wall_clock=lambda: T0 + 5, flush_s=60.0)
    record.state = "attached"
    journal.observe(record)
    await journal.flush()
    for muted, since, hold_s in changes:
        record.muted, record.on_hold_since_s, record.hold_s = muted, since, hold_s
        journal.observe(record)
        assert journal._flushing is not None  # written at once, like a state change: not within flush_s
        await journal._flushing
        for _ in range(3):
            record.mark(50.0, "an event")
            journal.observe(record)
        await journal.flush()
    return journal


async def _turns_entries(store: Store, call_id: str) -> list[dict[str, Any]]:
    return [e.data for e in await store.read_entries(call_id) if e.kind == TURNS]


@pytest.mark.anyio
async def test_mute_and_hold_are_written_when_they_change_and_read_back_by_a_takeover(cluster: Cluster) -> None:
    store = await cluster.open()
    record = CallRecord(call_id="rtc_turns", profile="default", received_at=datetime.fromtimestamp(T0, UTC))
    await _journalled(store, record, (True, None, 0.0), (True, 40.5, 0.0))
    assert await _turns_entries(store, "rtc_turns") == [  # one entry per change, never one per event
        {"muted": True, "on_hold": False, "since": None, "hold_s": 0.0},
        {"muted": True, "on_hold": True, "since": 40.5, "hold_s": 0.0},
    ]
    row = await store.get_call("rtc_turns")
    assert row is not None
    rebuilt = rebuild_record(row, await store.read_entries("rtc_turns"))
    assert rebuilt.muted is True
    assert rebuilt.on_hold_since_s == 40.5


@pytest.mark.anyio
async def test_the_last_change_wins_and_the_hold_time_of_a_hold_that_ended_is_kept(cluster: Cluster) -> None:
    store = await cluster.open()
    record = CallRecord(call_id="rtc_back", profile="default", received_at=datetime.fromtimestamp(T0, UTC))
    await _journalled(store, record, (True, None, 0.0), (True, 40.0, 0.0), (True, None, 22.5), (False, None, 22.5))
    row = await store.get_call("rtc_back")
    assert row is not None
    rebuilt = rebuild_record(row, await store.read_entries("rtc_back"))
    assert (rebuilt.muted, rebuilt.on_hold_since_s, rebuilt.hold_s) == (False, None, 22.5)


@pytest.mark.anyio
async def test_a_journal_of_a_call_taken_over_does_not_write_the_state_it_was_given_again(cluster: Cluster) -> None:
    store = await cluster.open()
    record = CallRecord(call_id="rtc_again", profile="default", received_at=datetime.fromtimestamp(T0, UTC))
    first = await _journalled(store, record, (True, 12.0, 3.0))
    first.cancel()
    row = await store.get_call("rtc_again")
    assert row is not None
    taken = rebuild_record(row, await store.read_entries("rtc_again"))
    journal = CallJournal(store, row.fence, received_at=taken.received_at, wall_clock=lambda: T0 + 9, taken=taken)
    record = copy.deepcopy(taken)
    record.mark(60.0, "taken over: re-attaching the sideband")
    journal.observe(record)
    await journal.flush()
    assert len(await _turns_entries(store, "rtc_again")) == 1
    record.muted = False
    journal.observe(record)
    await journal.flush()
    assert (await _turns_entries(store, "rtc_again"))[-1] == {
        "muted": False, "on_hold": True, "since": 12.0, "hold_s": 3.0
    }  # fmt: skip


@pytest.mark.anyio
async def test_a_parked_calls_next_leg_keeps_its_earlier_legs_through_a_takeover(store: SQLiteStore) -> None:
    """#16: the replica that takes the next leg over reports the whole call, so the legs before it are in its row."""
    earlier = CallRecord(call_id="rtc_leg1", profile="default", received_at=datetime.fromtimestamp(T0, UTC))
    record = CallRecord(call_id="rtc_leg2", profile="default", received_at=datetime.fromtimestamp(T0 + 600, UTC))
    record.earlier_legs = [parking.leg_document(earlier, mask_caller=True)]
    record.park_spells = [{"from": T0 + 60, "to": T0 + 600, "listens": 36, "checks": 2, "heard": "Hello?"}]
    row = await store.create_call(
        NewCall(
            call_id="rtc_leg2", owner="p1", profile="default", inputs=parking.leg_inputs(record), received_at=T0 + 600,
            caller=None, dialed=None, deadlines={},
        )
    )  # fmt: skip
    assert row is not None
    rebuilt = rebuild_record(row, [])
    assert rebuilt.earlier_legs == record.earlier_legs
    assert rebuilt.park_spells == record.park_spells
    assert parking.leg_inputs(CallRecord(call_id="x", profile="default", received_at=record.received_at)) == {}
