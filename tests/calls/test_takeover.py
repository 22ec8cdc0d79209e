"""Tests for sip_controller.calls.takeover: a call taken over while ``ending`` ends with the reason its lost owner
was ending it with (stored with the ``ending`` state), not a generic ``session_error``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sip_controller.calls.inputs import OperatorHangup
from sip_controller.calls.journal import CallJournal
from sip_controller.calls.report import CallRecord
from sip_controller.calls.states import CallState
from sip_controller.calls.takeover import pending_reason, rebuild_record
from sip_controller.state.records import NewCall
from sip_controller.state.sqlite import SQLiteStore
from tests.callkit import Call

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
