"""Commands for a call's owner (calls/commands.py): Twilio's answering-machine verdict (#16) routed to the replica
that owns the call, through the store, and carried out there as the call's ``MachineDetection`` input."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest

from sip_controller.calls import commands
from sip_controller.calls.inputs import MachineDetection
from sip_controller.calls.supervisor import CallSupervisor
from sip_controller.state.records import CommandRow
from sip_controller.state.sqlite import SQLiteStore
from tests.state.test_contract import live_call

pytestmark = pytest.mark.anyio


class FakeSupervisor:
    def __init__(self) -> None:
        self.posted: list[object] = []

    def post(self, event: object) -> None:
        self.posted.append(event)


class FakeRegistry:
    """The registry's surface the routing uses: live supervisors, and the verdicts kept for calls starting."""

    def __init__(self, live: dict[str, FakeSupervisor] | None = None) -> None:
        self.live = live or {}
        self.kept: dict[str, str] = {}

    def supervisor(self, call_id: str) -> CallSupervisor | None:
        return cast("CallSupervisor | None", self.live.get(call_id))

    def machine_detected(self, call_id: str, answered_by: str) -> bool:
        if call_id in self.live:
            self.live[call_id].post(MachineDetection(answered_by))
            return True
        self.kept[call_id] = answered_by
        return False


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    async with await SQLiteStore.open(tmp_path / "st.db") as opened:
        yield opened


async def test_a_verdict_for_a_call_live_here_goes_to_its_supervisor(store: SQLiteStore) -> None:
    supervisor = FakeSupervisor()
    await live_call(store, "rtc_1", "here")
    routed = await commands.route_machine_detection(store, FakeRegistry({"rtc_1": supervisor}), "rtc_1", "human")
    assert routed == commands.HERE
    assert supervisor.posted == [MachineDetection("human")]
    assert await store.take_commands("here") == []  # nothing through the store


async def test_a_verdict_for_a_call_owned_elsewhere_becomes_the_owner_s_command(store: SQLiteStore) -> None:
    await live_call(store, "rtc_1", "owner")
    here = FakeRegistry()
    assert await commands.route_machine_detection(store, here, "rtc_1", "machine_end_beep") == commands.TO_OWNER
    assert here.kept == {}
    supervisor = FakeSupervisor()
    owner = FakeRegistry({"rtc_1": supervisor})
    assert await commands.poll_commands_once(store, owner, "owner") == 1
    assert supervisor.posted == [MachineDetection("machine_end_beep")]


async def test_a_verdict_for_a_call_not_live_anywhere_is_kept_for_a_call_starting_here(store: SQLiteStore) -> None:
    registry = FakeRegistry()
    assert await commands.route_machine_detection(store, registry, "rtc_new", "fax") == commands.KEPT
    assert registry.kept == {"rtc_new": "fax"}


def _command(args: dict[str, Any]) -> CommandRow:
    return CommandRow(id=1, call_id="rtc_1", kind="machine_detected", args=args, created_at=0.0, taken_by="p",
                      taken_at=0.0, done_at=None, outcome=None)  # fmt: skip


def test_the_owner_refuses_a_verdict_twilio_never_sends() -> None:
    supervisor = FakeSupervisor()
    registry = FakeRegistry({"rtc_1": supervisor})
    assert commands.carry_out(_command({"answered_by": "robot"}), registry).startswith("refused")
    assert commands.carry_out(_command({}), registry).startswith("refused")
    assert supervisor.posted == []
    assert commands.carry_out(_command({"answered_by": "unknown"}), registry) == commands.POSTED
    assert commands.carry_out(_command({"answered_by": "human"}), FakeRegistry()) == commands.NO_LIVE_CALL
