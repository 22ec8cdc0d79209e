"""The shipped example operator tool."""

from __future__ import annotations

import pytest

from sip_controller.agent.example_tools import opening_hours
from sip_controller.agent.operator_tools import ToolCall

pytestmark = pytest.mark.anyio
CALL = ToolCall(call_id="rtc_1", profile="default", caller=None, dialed=None, twilio_call_sid=None)


async def test_known_days_and_unknown_input() -> None:
    assert await opening_hours({"day": "Thursday"}, CALL) == {"day": "thursday", "hours": "9:00-19:00"}
    assert await opening_hours({"day": "sunday"}, CALL) == {"day": "sunday", "hours": "closed"}
    assert "error" in await opening_hours({"day": "someday"}, CALL)
