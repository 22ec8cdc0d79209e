"""End to end: a call through the real controller and the simulator produces signed ``call.started`` and
``call.ended`` events at the operator's endpoint and one line in the JSONL call log."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks import Webhook, WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sip_controller.config import Callers, ReportEndpoint, Reports, Settings
from sip_controller.service.loopback import RunningServer, serve
from sip_controller.service.notifier import ReportNotifier
from sip_controller.simulator import CallSpec, Expectation, harness, new_webhook_secret

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

SCALE = 0.05
SECRET_ENV = "SIPCTL_E2E_REPORT_SECRET"


class Operator:
    """The operator's report endpoint: keeps verified events, counts forged ones."""

    def __init__(self, secret: str) -> None:
        self.webhook = Webhook(secret)
        self.events: list[dict[str, Any]] = []
        self.bad_signatures = 0

    async def receive(self, request: Request) -> Response:
        body = await request.body()
        try:
            event = self.webhook.verify(body, dict(request.headers))
        except WebhookVerificationError:
            self.bad_signatures += 1
            return Response(status_code=401)
        assert request.headers["webhook-id"] == event["id"]
        assert request.headers["content-type"] == "application/json"
        self.events.append(event)
        return Response(status_code=204)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/calls", self.receive, methods=["POST"])])


@pytest.fixture
async def operator(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Operator, RunningServer]]:
    secret = new_webhook_secret()
    monkeypatch.setenv(SECRET_ENV, secret)
    op = Operator(secret)
    async with serve(op.app()) as server:
        yield op, server


def settings_for(server: RunningServer, log_path: Path, **kwargs: Any) -> Settings:
    reports = Reports(
        jsonl_path=str(log_path),
        endpoints=(ReportEndpoint(url=f"{server.url}/calls", secret_env=SECRET_ENV),),
        timeout_s=5,
        max_attempts=3,
    )
    return Settings(reports=reports, **kwargs)


def goodbye_call() -> CallSpec:
    return CallSpec.model_validate(
        {
            "name": "goodbye",
            "steps": [
                {"say": "What time do you open?", "reply": "We open at nine."},
                {
                    "say": "Thanks, bye!",
                    "tool": {"name": "end_call", "arguments": {"reason": "caller said goodbye"}},
                    "then": "Thank you for calling, goodbye!",
                },
            ],
            "expect": Expectation(ended_reason="agent_end_call"),
        }
    )


async def test_a_call_is_reported_signed_and_logged(operator: tuple[Operator, RunningServer], tmp_path: Path) -> None:
    op, server = operator
    log_path = tmp_path / "reports" / "calls.jsonl"
    spec = goodbye_call()
    async with harness.running_stack(settings_for(server, log_path), time_scale=SCALE) as stack:
        notifier: ReportNotifier = stack.app.state.notifier
        outcome = await harness.run_call(stack, spec, timeout=20)
    # the lifespan has closed: what was queued is delivered and written
    assert outcome.problems == []
    assert outcome.record is not None
    call_id = outcome.sim.call_id
    assert op.bad_signatures == 0
    types = sorted(e["type"] for e in op.events)
    assert types == ["call.ended", "call.started"]
    by_type = {e["type"]: e for e in op.events}
    started = by_type["call.started"]["data"]
    ended = by_type["call.ended"]["data"]
    assert started["call_id"] == ended["call_id"] == call_id
    assert started["caller"] == ended["caller"] == "+1415***0123"
    assert "transcript" not in started
    assert ended["ended_reason"] == "agent_end_call"
    assert ended["schema_version"] == 1
    assert [t["name"] for t in ended["tool_calls"]] == ["end_call"]
    assert ended["tool_calls"][0]["arguments"] == {"reason": "caller said goodbye"}
    assert ended["usage"]["responses"] >= 3
    assert ended["timestamps"]["received_at"] is not None
    assert ended["timestamps"]["ended_at"] is not None
    assert ended["timings"]["duration_s"] > 0

    lines = log_path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1
    logged = json.loads(lines[0])
    assert logged == ended
    assert spec.caller not in lines[0]
    said = [(t["role"], t["text"]) for t in logged["transcript"]]
    expected = [(t.role, t.text) for t in sorted(outcome.record.transcripts, key=lambda t: t.at_s)]
    assert said == expected
    assert ("caller", "Thanks, bye!") in said
    assert [t["at_s"] for t in logged["transcript"]] == sorted(t["at_s"] for t in logged["transcript"])
    assert notifier.stats.delivered == 2
    assert notifier.stats.written == 1
    assert notifier.stats.failed == notifier.stats.dropped == 0


async def test_a_rejected_call_is_reported_too(operator: tuple[Operator, RunningServer], tmp_path: Path) -> None:
    op, server = operator
    log_path = tmp_path / "calls.jsonl"
    settings = settings_for(server, log_path, callers=Callers(deny=("+1415*",)))
    spec = CallSpec(name="denied", expect=Expectation(ended_reason="rejected"))
    async with harness.running_stack(settings, time_scale=SCALE) as stack:
        outcome = await harness.run_call(stack, spec, timeout=20)
    assert outcome.record is not None
    assert outcome.record.ended_reason == "rejected"
    assert op.bad_signatures == 0
    ended = [e["data"] for e in op.events if e["type"] == "call.ended"]
    assert len(ended) == 1
    assert ended[0]["ended_reason"] == "rejected"
    assert ended[0]["transcript"] == []
    assert ended[0]["timings"]["talk_s"] is None
    assert json.loads(log_path.read_text(encoding="utf-8"))["ended_reason"] == "rejected"
