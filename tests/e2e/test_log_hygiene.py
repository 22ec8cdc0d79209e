"""Every log line of a full run: no API key, no webhook secret, no caller number or transcript above debug."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from sip_controller.config import Settings
from sip_controller.service.logging import configure_logging
from sip_controller.simulator import harness, load_scenario

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]
DEMO = Path(__file__).parents[2] / "sip_controller" / "simulator" / "scenarios" / "demo.yaml"


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging("debug", "json", stream=stream)
    try:
        yield stream
    finally:
        structlog.reset_defaults()


async def test_logs_never_carry_secrets_or_caller_details_above_debug(captured: io.StringIO) -> None:
    secret_seen: list[str] = []
    async with harness.running_stack(Settings(), time_scale=0.05) as stack:
        secret = stack.sim.webhook_secret
        secret_seen.append(secret)
        outcomes = [await harness.run_call(stack, spec, timeout=20) for spec in load_scenario(DEMO).calls]
    assert all(o.ok for o in outcomes), [o.problems for o in outcomes]
    lines = [json.loads(line) for line in captured.getvalue().splitlines() if line.strip()]
    assert len(lines) > 20
    secret = secret_seen[0]
    forbidden = ["sk-sim-test", secret, secret.removeprefix("whsec_")]
    callers = {o.spec.caller for o in outcomes}
    transcripts = {t.text for o in outcomes if o.record for t in o.record.transcripts}
    assert transcripts
    debug_transcripts = 0
    for line in lines:
        text = json.dumps(line)
        for value in forbidden:
            assert value not in text, line
        if line.get("level") == "debug":
            debug_transcripts += line.get("event") == "call.transcript"
            continue
        for number in callers:
            assert number not in text, line
        for said in transcripts:
            assert said not in text, line
    assert debug_transcripts >= len(transcripts)
    ended = [line for line in lines if line.get("event") == "call.ended"]
    assert len(ended) == len(outcomes)
    assert sorted(line["caller"] for line in ended) == ["+1415***0123", "+1415***0124", "+1415***0125"]
    assert all(line.get("call_id") for line in lines if str(line.get("event", "")).startswith("call."))
