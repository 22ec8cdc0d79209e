"""Post-call analysis (#17) end to end: calls through the real controller and the simulator, whose
``POST /v1/responses`` answers from the transcript and the schema (or fails as scripted, ``Faults.responses``).

A finished call's ``call.ended`` is delivered first (never waiting for the analysis), then its ``call.analyzed``
(signed, and a JSONL line) with a result valid against the profile's schema and its cost; a Responses API that
fails a few times is retried, one that keeps failing or refuses the request leaves an analysis that says why; an
analysis cut by a shutdown is given back to the store and finished once by the next process; a lease that passes
hands the analysis to another replica, and the late answer of the first is fenced (one ``call.analyzed``)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator
from standardwebhooks import Webhook, WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route as HttpRoute

from sip_controller.agent.analysis import AnalysisSettings, CallAnalysis
from sip_controller.agent.profile import AgentProfile
from sip_controller.calls import analysis as calls_analysis
from sip_controller.calls.pricing import text_cost
from sip_controller.config import Callers, ReportEndpoint, Reports, Route, Settings
from sip_controller.service.analysis import shutdown_wait_s
from sip_controller.service.loopback import RunningServer, serve
from sip_controller.simulator import CallSpec, Expectation, harness, new_webhook_secret
from sip_controller.simulator.faults import Faults, ResponsesFaults
from sip_controller.state.sqlite import SQLiteStore

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

SCALE = 0.05
SECRET_ENV = "SIPCTL_E2E_ANALYSIS_SECRET"
TOKEN = "admin-token-for-the-analysis-tests"
FIELDS = {
    "type": "object",
    "properties": {
        "callback_requested": {"type": "boolean", "description": "the caller asked to be called back"},
        "appointment_date": {"type": ["string", "null"], "description": "the day of the appointment, if any"},
        "sentiment": {"type": "string", "enum": ["positive", "neutral", "negative"]},
    },
    "required": ["callback_requested", "appointment_date", "sentiment"],
    "additionalProperties": False,
}
SPEC = CallAnalysis.model_validate(
    {
        "summary_prompt": "Summarise the call in one sentence.",
        "success_criteria": "The caller's question was answered and the call ended politely.",
        "schema": FIELDS,
    }
)
#: fast retries and polling, so a failing analysis is settled in a second or two
QUICK = AnalysisSettings(retry_initial_s=0.05, retry_max_s=0.2, poll_s=0.1, max_attempts=2, timeout_s=4.0)


class Operator:
    """The operator's report endpoint: keeps verified events in arrival order, with when each came."""

    def __init__(self, secret: str) -> None:
        self.webhook = Webhook(secret)
        self.events: list[dict[str, Any]] = []
        self.arrived: list[float] = []
        self.bad_signatures = 0

    async def receive(self, request: Request) -> Response:
        body = await request.body()
        try:
            event = self.webhook.verify(body, dict(request.headers))
        except WebhookVerificationError:
            self.bad_signatures += 1
            return Response(status_code=401)
        self.events.append(event)
        self.arrived.append(time.monotonic())
        return Response(status_code=204)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]

    def app(self) -> Starlette:
        return Starlette(routes=[HttpRoute("/calls", self.receive, methods=["POST"])])


@pytest.fixture
async def operator(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Operator, RunningServer]]:
    secret = new_webhook_secret()
    monkeypatch.setenv(SECRET_ENV, secret)
    op = Operator(secret)
    async with serve(op.app()) as server:
        yield op, server


def settings_for(
    server: RunningServer,
    log_path: Path,
    *,
    spec: CallAnalysis | None = SPEC,
    analysis: AnalysisSettings = QUICK,
    **kwargs: Any,
) -> Settings:
    reports = Reports(
        jsonl_path=str(log_path),
        endpoints=(ReportEndpoint(url=f"{server.url}/calls", secret_env=SECRET_ENV),),
        timeout_s=5,
        max_attempts=3,
        flush_timeout_s=4.0,
    )
    return Settings(
        profiles={"default": AgentProfile(analysis=spec)}, reports=reports, analysis=analysis, **kwargs
    )  # fmt: skip


def callback_call(name: str = "callback") -> CallSpec:
    return CallSpec.model_validate(
        {
            "name": name,
            "steps": [
                {"say": "Could you arrange a callback about my appointment?", "reply": "Of course, we will call."},
                {
                    "say": "Thanks, bye!",
                    "tool": {"name": "end_call", "arguments": {"reason": "caller said goodbye"}},
                    "then": "Thank you for calling, goodbye!",
                },
            ],
            "expect": Expectation(ended_reason="agent_end_call"),
        }
    )


async def until(check: Callable[[], Awaitable[bool]] | Callable[[], bool], timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while True:
            result = check()
            if result if isinstance(result, bool) else await result:
                return
            await asyncio.sleep(0.02)


def jsonl(log_path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log_path.read_text(encoding="utf-8").splitlines() if line.strip()]


async def test_a_call_is_analysed_after_its_call_ended_valid_against_the_schema_and_priced(
    operator: tuple[Operator, RunningServer], tmp_path: Path
) -> None:
    op, server = operator
    log_path = tmp_path / "calls.jsonl"
    async with harness.running_stack(settings_for(server, log_path), time_scale=SCALE, admin_token=TOKEN) as stack:
        outcome = await harness.run_call(stack, callback_call(), timeout=20)
        call_id = outcome.sim.call_id
        await until(lambda: len(op.of("call.analyzed")) == 1)
        async with httpx.AsyncClient(base_url=stack.server.url) as admin:
            shown = await admin.get(f"/v1/calls/{call_id}", headers={"authorization": f"Bearer {TOKEN}"})
        row = await stack.runtime.store.get_analysis(call_id)
        bodies = list(stack.sim.responses.bodies)
    assert outcome.problems == []
    assert op.bad_signatures == 0
    assert [e["type"] for e in op.events] == ["call.started", "call.ended", "call.analyzed"]
    ended = op.of("call.ended")[0]["data"]
    analyzed = op.of("call.analyzed")[0]["data"]
    assert analyzed["call_id"] == call_id
    assert analyzed["profile"] == "default"
    assert analyzed["ended_reason"] == "agent_end_call"
    result = analyzed["analysis"]
    assert result["status"] == "completed"
    assert result["error"] is None
    assert result["attempts"] == 1
    # the answer is valid against the profile's schema and says what the transcript says
    assert list(Draft202012Validator(FIELDS).iter_errors(result["fields"])) == []
    assert result["fields"]["callback_requested"] is True
    assert result["success"] is True
    assert "arrange a callback" in result["summary"]
    # priced from the answer's usage at the model's text prices; added to the call's cost
    prices = Settings().pricing.for_text_model(result["model"])
    assert prices is not None
    usage = result["usage"]
    expected = round(text_cost(usage["input_tokens"], usage["cached_input_tokens"], usage["output_tokens"], prices), 6)
    assert result["cost_usd"] == expected > 0
    breakdown = analyzed["cost_breakdown"]
    assert breakdown["call_usd"] == round(ended["cost_usd"], 6)
    assert breakdown["analysis_usd"] == expected
    assert breakdown["total_usd"] == pytest.approx(breakdown["call_usd"] + expected, abs=1e-6)
    # stored with the call, and shown with it
    assert row is not None
    assert row.status == "done"
    assert row.cost_usd == expected
    assert row.result == result
    assert shown.status_code == 200
    assert shown.json()["analysis"] == result
    assert shown.json()["cost_breakdown"] == breakdown
    # the call log: the report's line, then the analysis's
    lines = jsonl(log_path)
    assert [line.get("event") for line in lines] == [None, "call.analyzed"]
    assert lines[1]["analysis"] == result
    # what OpenAI was asked: not stored, a strict json_schema format of the profile's fields, the transcript
    assert len(bodies) == 1
    body = bodies[0]
    assert body["store"] is False
    assert body["model"] == QUICK.model
    fmt = body["text"]["format"]
    assert fmt["type"] == "json_schema"
    assert fmt["strict"] is True
    assert fmt["name"] == SPEC.name
    assert fmt["schema"] == calls_analysis.output_schema(SPEC)
    assert fmt["schema"]["properties"]["fields"] == FIELDS
    text = body["input"][0]["content"][0]["text"]
    assert "Caller: Could you arrange a callback about my appointment?" in text
    assert "Caller: Thanks, bye!" in text
    assert "Tool call end_call(" in text
    assert SPEC.summary_prompt in body["instructions"]


async def test_call_ended_is_not_delayed_by_a_slow_analysis(
    operator: tuple[Operator, RunningServer], tmp_path: Path
) -> None:
    op, server = operator
    log_path = tmp_path / "calls.jsonl"
    async with harness.running_stack(settings_for(server, log_path), time_scale=SCALE) as stack:
        stack.sim.faults = Faults(responses=ResponsesFaults(delay_s=2.5))
        call = asyncio.create_task(harness.run_call(stack, callback_call(), timeout=20))
        await until(lambda: len(op.of("call.ended")) == 1)
        ended_at = op.arrived[-1]
        call_id = op.of("call.ended")[0]["data"]["call_id"]
        row = await stack.runtime.store.get_analysis(call_id)
        assert row is None or row.status == "pending"  # the model is still thinking
        assert op.of("call.analyzed") == []
        outcome = await call
        await until(lambda: len(op.of("call.analyzed")) == 1)
    assert outcome.analysis is not None
    assert outcome.analysis["status"] == "completed"
    analyzed_at = op.arrived[[e["type"] for e in op.events].index("call.analyzed")]
    assert analyzed_at - ended_at >= 1.5  # the analysis came later; the report did not wait for it


async def test_a_responses_api_failing_a_few_times_is_retried_to_success(
    operator: tuple[Operator, RunningServer], tmp_path: Path
) -> None:
    op, server = operator
    async with harness.running_stack(settings_for(server, tmp_path / "calls.jsonl"), time_scale=SCALE) as stack:
        # two 503s (retried within the first attempt), then an answer not valid against the schema (the attempt
        # fails and is tried again after the backoff), then a good answer
        stack.sim.faults = Faults(responses=ResponsesFaults(fail_first=2, status=503, invalid_first=1))
        outcome = await harness.run_call(stack, callback_call(), timeout=20)
        await until(lambda: len(op.of("call.analyzed")) == 1)
        requests = len(stack.sim.responses.bodies)
        row = await stack.runtime.store.get_analysis(outcome.sim.call_id)
    assert requests == 4
    assert row is not None
    assert row.status == "done"
    assert row.attempts == 2
    assert row.last_error is not None
    assert row.last_error.startswith("schema: the answer is not valid against the schema")
    result = op.of("call.analyzed")[0]["data"]["analysis"]
    assert result["status"] == "completed"
    assert result["attempts"] == 2
    assert list(Draft202012Validator(FIELDS).iter_errors(result["fields"])) == []


async def test_a_responses_api_failing_for_good_leaves_an_analysis_that_says_why(
    operator: tuple[Operator, RunningServer], tmp_path: Path
) -> None:
    op, server = operator
    log_path = tmp_path / "calls.jsonl"
    async with harness.running_stack(settings_for(server, log_path), time_scale=SCALE) as stack:
        stack.sim.faults = Faults(responses=ResponsesFaults(fail_first=1000, status=500))
        outcome = await harness.run_call(stack, callback_call(), timeout=20)
        await until(lambda: len(op.of("call.analyzed")) == 1)
        requests = len(stack.sim.responses.bodies)
        row = await stack.runtime.store.get_analysis(outcome.sim.call_id)
    # QUICK.max_attempts attempts, each with the calls API's quick retries of a 5xx
    assert requests == QUICK.max_attempts * 3
    assert row is not None
    assert row.status == "failed"
    assert row.attempts == QUICK.max_attempts
    assert row.cost_usd is None
    result = op.of("call.analyzed")[0]["data"]["analysis"]
    assert result["status"] == "failed"
    assert result["attempts"] == QUICK.max_attempts
    assert result["error"].startswith("HTTP 500 ")
    assert "The server had an error" in result["error"]
    assert result["summary"] is None
    assert result["fields"] is None
    assert row.result == result
    assert op.of("call.analyzed")[0]["data"]["cost_breakdown"]["analysis_usd"] is None
    assert jsonl(log_path)[-1]["analysis"]["error"] == result["error"]


async def test_openai_refusing_the_request_fails_the_analysis_at_once_with_the_reason(
    operator: tuple[Operator, RunningServer], tmp_path: Path
) -> None:
    op, server = operator
    async with harness.running_stack(settings_for(server, tmp_path / "calls.jsonl"), time_scale=SCALE) as stack:
        stack.sim.faults = Faults(responses=ResponsesFaults(fail_first=1000, status=400))
        outcome = await harness.run_call(stack, callback_call(), timeout=20)
        await until(lambda: len(op.of("call.analyzed")) == 1)
        requests = len(stack.sim.responses.bodies)
        row = await stack.runtime.store.get_analysis(outcome.sim.call_id)
    assert requests == 1  # a 4xx is final: neither the quick retries nor a second attempt
    assert row is not None
    assert row.status == "failed"
    assert row.attempts == 1
    result = op.of("call.analyzed")[0]["data"]["analysis"]
    assert result["status"] == "failed"
    assert result["error"].startswith("HTTP 400 invalid_json_schema: Invalid schema for response_format")


async def test_no_analysis_without_an_analysis_block_or_without_anything_said(
    operator: tuple[Operator, RunningServer], tmp_path: Path
) -> None:
    op, server = operator
    settings = settings_for(server, tmp_path / "calls.jsonl", callers=Callers(deny=("+1999*",)))
    settings = settings.model_copy(
        update={"profiles": {**settings.profiles, "plain": AgentProfile()},
                "routes": (*settings.routes, Route(profile="plain", dialed=("+14155550100",)))}
    )  # fmt: skip
    plain = callback_call("plain").model_copy(update={"dialed": "+14155550100"})
    silent = CallSpec(name="refused", caller="+19995550123", expect=Expectation(ended_reason="rejected"))
    async with harness.running_stack(settings, time_scale=SCALE) as stack:
        first = await harness.run_call(stack, plain, timeout=20)
        second = await harness.run_call(stack, silent, timeout=20)
        await until(lambda: len(op.of("call.ended")) == 2)
        assert first.record is not None
        assert first.record.profile == "plain"
        assert second.record is not None
        assert second.record.ended_reason == "rejected"
        await asyncio.sleep(3 * QUICK.poll_s)  # the worker has looked: nothing to analyse
        rows = [await stack.runtime.store.get_analysis(o.sim.call_id) for o in (first, second)]
        requests = len(stack.sim.responses.bodies)
    assert rows == [None, None]
    assert requests == 0
    assert op.of("call.analyzed") == []
    assert first.analysis is None
    assert second.analysis is None


async def test_a_shutdown_mid_analysis_gives_it_back_and_the_next_process_finishes_it_once(
    operator: tuple[Operator, RunningServer], tmp_path: Path
) -> None:
    """The drain bound: the app's exit waits at most ``shutdown_wait_s`` for an analysis the model is still on,
    within ``reports.flush_timeout_s`` in all; the analysis stays in the store, claimable at once, and the next
    process on the same store finishes it: one ``call.analyzed``."""
    op, server = operator
    state = tmp_path / "state.db"
    log_path = tmp_path / "calls.jsonl"
    settings = settings_for(server, log_path, analysis=QUICK.model_copy(update={"timeout_s": 60.0}))
    async with harness.running_stack(settings, time_scale=SCALE, store_path=state) as stack:
        stack.sim.faults = Faults(responses=ResponsesFaults(delay_s=60))
        call = asyncio.create_task(harness.run_call(stack, callback_call(), timeout=20))
        await until(lambda: len(op.of("call.ended")) == 1)
        call.cancel()  # it would wait for the analysis
        call_id = op.of("call.ended")[0]["data"]["call_id"]
        store = stack.runtime.store

        async def claimed() -> bool:
            row = await store.get_analysis(call_id)
            return row is not None and row.lease_owner is not None and len(stack.sim.responses.bodies) == 1

        await until(claimed)
        exit_started = time.monotonic()
    exit_s = time.monotonic() - exit_started
    # the wait for the analysis is bounded by half the flush budget, and the whole stop by the flush budget (the
    # simulator's own stop and a second of scheduling slack on a loaded machine on top)
    assert shutdown_wait_s(settings) == settings.reports.flush_timeout_s / 2
    assert exit_s < settings.reports.flush_timeout_s + 1.5
    async with await SQLiteStore.open(state) as kept:
        row = await kept.get_analysis(call_id)
    assert row is not None
    assert row.status == "pending"
    assert row.lease_owner is None  # given back: claimable at once, not after analysis.lease_s
    assert row.attempts == 0  # the cut attempt is not counted
    assert op.of("call.analyzed") == []
    async with harness.running_stack(settings, time_scale=SCALE, store_path=state) as again:
        await until(lambda: len(op.of("call.analyzed")) == 1)
        row = await again.runtime.store.get_analysis(call_id)
        assert len(again.sim.responses.bodies) == 1
    assert row is not None
    assert row.status == "done"
    assert row.attempts == 1
    assert len(op.of("call.analyzed")) == 1
    assert op.of("call.analyzed")[0]["data"]["call_id"] == call_id
    assert [line.get("event") for line in jsonl(log_path)] == [None, "call.analyzed"]


async def test_a_lapsed_lease_passes_the_analysis_to_another_replica_and_the_late_answer_is_fenced(
    operator: tuple[Operator, RunningServer], tmp_path: Path
) -> None:
    """Two replicas on one store: A's model is slow past A's lease, B claims the analysis and finishes it; A's
    late answer finds its lease gone and writes nothing: one ``call.analyzed``."""
    op, server = operator
    state = tmp_path / "state.db"
    # A's model answers late enough for B to start and claim the lapsed lease even on a loaded machine (with 5 s,
    # B's start-up under make test's four processes once took longer, and A's answer, unclaimed, rightly won)
    delay = 8.0
    settings = settings_for(
        server, tmp_path / "calls.jsonl", analysis=QUICK.model_copy(update={"lease_s": 1.0, "timeout_s": 12.0})
    )
    async with harness.running_stack(settings, time_scale=SCALE, store_path=state) as a:
        a.sim.faults = Faults(responses=ResponsesFaults(delay_s=delay))
        call = asyncio.create_task(harness.run_call(a, callback_call(), timeout=20))
        await until(lambda: len(op.of("call.ended")) == 1)
        call.cancel()  # it would wait for the analysis
        call_id = op.of("call.ended")[0]["data"]["call_id"]
        await until(lambda: len(a.sim.responses.bodies) == 1)  # A asked; its model takes `delay` seconds
        asked = time.monotonic()
        async with harness.running_stack(settings, time_scale=SCALE, store_path=state) as b:
            await until(lambda: len(op.of("call.analyzed")) == 1)
            assert len(b.sim.responses.bodies) == 1
            row = await b.runtime.store.get_analysis(call_id)
            assert row is not None
            assert row.status == "done"
            assert row.attempts >= 2  # A's claim (and, on a slow machine, A's again once it lapsed), then B's
            # A's answer comes back meanwhile, and is refused by the fence
            await asyncio.sleep(max(0.0, asked + delay + 0.7 - time.monotonic()))
            assert a.app.state.analyses.completed == 0
            assert b.app.state.analyses.completed == 1
    assert len(op.of("call.analyzed")) == 1
