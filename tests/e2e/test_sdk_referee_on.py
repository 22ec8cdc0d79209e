"""The end-to-end suite runs under the openai SDK referee, client side included (tests/e2e/conftest.py)."""

from __future__ import annotations

import pytest

from sip_controller.config import Settings
from sip_controller.simulator import CallSpec, harness, observe
from tests.sdk_referee import SdkReferee

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


async def test_the_referee_sees_both_sides_of_a_call() -> None:
    (referee,) = [o for o in observe._process_observers if isinstance(o, SdkReferee)]
    assert referee.check_clients is True
    spec = CallSpec.model_validate({"name": "seen", "steps": [{"say": "Hi!", "reply": "Hello!"}, {"hangup": True}]})
    async with harness.running_stack(Settings(), time_scale=0.05) as stack:
        outcome = await harness.run_call(stack, spec, timeout=20)
    assert outcome.record is not None
    assert outcome.record.ended_reason == "caller_hangup"
    assert {"webhook", "rest_request", "server_event", "client_event"} <= set(referee.seen)
    assert referee.problems == []
