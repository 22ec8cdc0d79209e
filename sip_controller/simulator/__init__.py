"""A local stand-in for OpenAI's Realtime-over-SIP side: REST, sideband WebSocket, webhooks, scripted callers.

```python
async with Simulator(webhook_secret=secret, webhook_url=url, time_scale=0.1) as sim:
    call = await sim.place_call(CallSpec(name="hello", steps=[Step(say="Hi", reply="Hello!")]))
    await sim.wait_ended(call.call_id, timeout=10)
    assert check_expectations(call) == []
```
"""

from __future__ import annotations

from .core import Simulator
from .faults import EndpointFaults, Faults, Latency
from .model import DEFAULT_HOLD_MARKERS
from .records import ClientEvent, ResponseRecord, SimCall, check_expectations
from .rules import AudioState, validate_session
from .scenario import (
    CallSpec,
    Expectation,
    HoldMusic,
    Scenario,
    ScenarioError,
    Step,
    ToolCall,
    load_scenario,
    parse_scenario,
)
from .twilio_records import TwilioCall, check_twilio_call
from .twilio_side import TwilioAccount, TwilioNumber, TwilioSide
from .twilio_spec import Callee, InboundCall, OutboundCall, ReportExpectation, TwilioExpectation, TwilioScenario
from .webhook_sender import new_webhook_secret

__all__ = [
    "DEFAULT_HOLD_MARKERS",
    "AudioState",
    "CallSpec",
    "Callee",
    "ClientEvent",
    "EndpointFaults",
    "Expectation",
    "Faults",
    "HoldMusic",
    "InboundCall",
    "Latency",
    "OutboundCall",
    "ReportExpectation",
    "ResponseRecord",
    "Scenario",
    "ScenarioError",
    "SimCall",
    "Simulator",
    "Step",
    "ToolCall",
    "TwilioAccount",
    "TwilioCall",
    "TwilioExpectation",
    "TwilioNumber",
    "TwilioScenario",
    "TwilioSide",
    "check_expectations",
    "check_twilio_call",
    "load_scenario",
    "new_webhook_secret",
    "parse_scenario",
    "validate_session",
]
