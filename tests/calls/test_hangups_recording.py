"""A bridged call's Twilio recording on the report the hangup janitor writes (#16), on real stores (SQLite, and
PostgreSQL: skipped without a server, failing under CI=true): a recording whose callback came while the call was
still live (left ``hanging_up``, so kept only on the Twilio call's row) goes into the report; one that comes while
the janitor writes goes out once as a late ``call.recording``. Late recordings through the registry's own
``late_recording`` (what the callback's route calls)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import respx

from sip_controller.calls.hangups import hangup_pass, leave_hanging_up
from sip_controller.calls.outbox import report_items
from sip_controller.calls.registry import CallRegistry
from sip_controller.config import Reports, Settings
from sip_controller.realtime.rest import RealtimeCalls
from sip_controller.realtime.sideband import FakeConnector
from sip_controller.state.records import HANGING_UP, NewCall, OutboxItem, OutboxRow
from sip_controller.state.store import Store
from sip_controller.state.twilio_calls import NewTwilioCall
from sip_controller.telephony.callbacks import RecordingCallback
from tests.servicekit import mocked_api, openai_router
from tests.state.conftest import Cluster

pytestmark = pytest.mark.anyio

OWNER = "proc-a"
TWILIO_ID = "tw_rec1"
CALL_SID = "CA" + "1" * 32
RECORDING_SID = "RE" + "4" * 32
CALLBACK = RecordingCallback.parse({
    "CallSid": CALL_SID, "RecordingSid": RECORDING_SID, "RecordingStatus": "completed",
    "RecordingUrl": f"https://api.twilio.com/2010-04-01/Accounts/AC1/Recordings/{RECORDING_SID}",
    "RecordingDuration": "42", "RecordingChannels": "2", "RecordingSource": "DialVerb",
})  # fmt: skip
RECORDING = CALLBACK.report()
TWILIO_PART = {"id": TWILIO_ID, "direction": "inbound", "call_sid": CALL_SID, "status": "in-progress"}


@pytest.fixture
async def api() -> AsyncIterator[RealtimeCalls]:
    router: respx.Router = openai_router()  # hangups answer 200: confirmed
    async with mocked_api(router) as client:
        yield client


def settings(tmp_path: Path) -> Settings:
    return Settings(reports=Reports(jsonl_path=str(tmp_path / "calls.jsonl")))


def deliveries(tmp_path: Path) -> Any:
    """The janitor's ``outbox_for``, as the app builds it: the report's call-log line."""

    def outbox_for(document: Mapping[str, Any]) -> Sequence[OutboxItem]:
        return report_items(document, settings(tmp_path).reports, at=0.0)

    return outbox_for


def registry(store: Store, api: RealtimeCalls, tmp_path: Path) -> CallRegistry:
    """Only for its ``late_recording`` (what the route and the janitor send late recordings with)."""
    return CallRegistry(settings(tmp_path), api, FakeConnector(), store=store, owner=OWNER)


async def bridged_call_left_hanging_up(store: Store, call_id: str = "rtc_rec", *, pending: bool = True) -> None:
    """A call bridged through Twilio (its Twilio row, no recording yet) that its owner left ``hanging_up`` with
    the report it would have sent (``pending``), or without one (it crashed: only the call row's inputs)."""
    await store.heartbeat(OWNER, 60.0)
    await store.create_twilio_call(
        NewTwilioCall(TWILIO_ID, "c" * 24, "inbound", "in-progress", call_sid=CALL_SID, profile="default")
    )
    row = await store.create_call(NewCall(call_id, OWNER, "default", {"twilio": TWILIO_PART}, received_at=0.0))
    assert row is not None
    if pending:
        report = {"call_id": call_id, "profile": "default", "twilio_call_sid": CALL_SID, "twilio": TWILIO_PART,
                  "ended_reason": "operator_hangup", "state": HANGING_UP, "hangup_confirmed": False,
                  "recording": None}  # fmt: skip
        await leave_hanging_up(store, row.fence, report, wake_at=0.0)
    else:
        await store.append(row.fence, [], state=HANGING_UP, wake_at=0.0)


async def recording_callback(store: Store, late: CallRegistry) -> bool:
    """What ``POST /twilio/recording`` does with a completed recording: keep it on the row, then send it late if
    the report is stored without it."""
    row = await store.update_twilio_call(TWILIO_ID, event=CALLBACK.event())
    assert row is not None
    assert row.call_id is None or row.call_id == "rtc_rec"
    return await late.late_recording("rtc_rec", CALLBACK.report())


async def outbox(store: Store) -> list[OutboxRow]:
    return await store.claim_outbox("w", limit=50)


@pytest.mark.parametrize("pending", [True, False], ids=["report left", "owner crashed"])
async def test_a_recording_that_came_while_the_call_was_hanging_up_is_in_the_report_the_janitor_writes(
    cluster: Cluster, api: RealtimeCalls, tmp_path: Path, pending: bool
) -> None:
    store = await cluster.open()
    await bridged_call_left_hanging_up(store, pending=pending)
    late = registry(store, api, tmp_path)
    assert not await recording_callback(store, late)  # the call is still live: the recording stays on the row
    done = await hangup_pass(
        store, api, OWNER, clock=cluster.clock, outbox_for=deliveries(tmp_path), late_recording=late.late_recording
    )  # ours, with no supervisor: a restart's leftover
    assert done.confirmed == 1
    report = await store.get_report("rtc_rec")
    assert report is not None
    assert report["recording"] == RECORDING
    assert report["hangup_confirmed"] is True
    (item,) = await outbox(store)  # the report with its recording, and no call.recording besides
    assert (item.key, item.payload["line"]["recording"]) == ("call.ended:rtc_rec:jsonl", RECORDING)
    assert not await recording_callback(store, late)  # Twilio retried its callback: the report has it already
    assert await outbox(store) == []


async def test_a_recording_that_comes_while_the_janitor_writes_goes_out_once_as_a_late_call_recording(
    cluster: Cluster, api: RealtimeCalls, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await cluster.open()
    await bridged_call_left_hanging_up(store)
    late = registry(store, api, tmp_path)
    finish_call = store.finish_call
    routed: list[bool] = []

    async def racing(*args: Any, **kwargs: Any) -> None:
        """The callback comes after the janitor read the Twilio row, and its route looks before the report is
        stored: it leaves the recording to the writer."""
        routed.append(await recording_callback(store, late))
        await finish_call(*args, **kwargs)

    monkeypatch.setattr(store, "finish_call", racing)
    done = await hangup_pass(
        store, api, OWNER, clock=cluster.clock, outbox_for=deliveries(tmp_path), late_recording=late.late_recording
    )
    assert done.confirmed == 1
    assert routed == [False]
    items = await outbox(store)
    assert sorted(item.key for item in items) == ["call.ended:rtc_rec:jsonl", "call.recording:rtc_rec:jsonl"]
    ended = next(item for item in items if item.event == "call.ended")
    assert ended.payload["line"]["recording"] is None  # written before the recording was there
    recorded = next(item for item in items if item.event == "call.recording")
    assert recorded.payload["line"]["recording"] == RECORDING
    stored = await store.get_report("rtc_rec")
    assert stored is not None
    assert stored["recording"] == RECORDING  # merged into the stored report too
    assert not await recording_callback(store, late)  # Twilio retried: nothing more
    assert await outbox(store) == []


async def test_without_late_recording_the_janitor_still_puts_what_the_row_has_in_the_report(
    cluster: Cluster, api: RealtimeCalls, tmp_path: Path
) -> None:
    store = await cluster.open()
    await bridged_call_left_hanging_up(store)
    await store.update_twilio_call(TWILIO_ID, event=CALLBACK.event())
    done = await hangup_pass(store, api, OWNER, clock=cluster.clock, outbox_for=deliveries(tmp_path))
    assert done.confirmed == 1
    (item,) = await outbox(store)
    assert item.payload["line"]["recording"] == RECORDING
