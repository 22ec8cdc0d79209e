"""Fault injection in the simulator: each fault kind is really injected, recorded and seeded; and where a
fault exercises a controller behaviour, what the real controller (uvicorn, loopback) does about it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from sip_controller.config import Settings
from sip_controller.service.loopback import serve
from sip_controller.simulator import CallSpec, Faults, SimCall, Simulator, harness, new_webhook_secret, parse_scenario
from sip_controller.simulator.faults import EndpointFaults, FaultInjector

pytestmark = pytest.mark.anyio

SCALE = 0.05
KEY = "sk-sim-test"
AUTH = {"Authorization": f"Bearer {KEY}"}
PCMU = {"type": "audio/pcmu"}
BODY: dict[str, Any] = {
    "type": "realtime",
    "model": "gpt-realtime-2.1",
    "instructions": "You answer the phone for a bakery.",
    "audio": {"input": {"format": PCMU}, "output": {"format": PCMU, "voice": "marin"}},
}


# ---- the sim on its own: a throwaway webhook receiver, httpx and a websockets client ----------------


@dataclass
class Receiver:
    webhook_ids: list[str] = field(default_factory=list)


@dataclass
class SimEnv:
    sim: Simulator
    http: httpx.AsyncClient
    receiver: Receiver

    async def place(self, faults: dict[str, Any] | None = None, **spec: Any) -> SimCall:
        data: dict[str, Any] = {"name": spec.pop("name", "call"), **spec}
        if faults is not None:
            data["faults"] = faults
        return await self.sim.place_call(CallSpec.model_validate(data))

    async def post(self, call: SimCall, action: str, body: Any = None) -> httpx.Response:
        url = f"{self.sim.base_url}/realtime/calls/{call.call_id}/{action}"
        return await self.http.post(url, json=body, headers=AUTH)

    def ws_url(self, call: SimCall) -> str:
        return self.sim.base_url.replace("http", "ws", 1) + f"/realtime?call_id={call.call_id}"


@contextlib.asynccontextmanager
async def sim_env(faults: Faults | None = None) -> AsyncIterator[SimEnv]:
    receiver = Receiver()

    async def webhook(request: Request) -> Response:
        receiver.webhook_ids.append(request.headers["webhook-id"])
        return Response(status_code=200)

    app = Starlette(routes=[Route("/hook", webhook, methods=["POST"])])
    secret = new_webhook_secret()
    async with (
        serve(app) as server,
        httpx.AsyncClient(timeout=10) as http,
        Simulator(webhook_secret=secret, webhook_url=f"{server.url}/hook", time_scale=SCALE, faults=faults) as sim,
    ):
        yield SimEnv(sim, http, receiver)
        assert sim.task_errors == []


@contextlib.asynccontextmanager
async def sideband(env: SimEnv, call: SimCall) -> AsyncIterator[ClientConnection]:
    async with connect(env.ws_url(call), additional_headers=AUTH, open_timeout=5, close_timeout=1) as ws:
        yield ws


async def frames(ws: ClientConnection, count: int, timeout: float = 3.0) -> list[str]:
    out: list[str] = []
    async with asyncio.timeout(timeout):
        while len(out) < count:
            frame = await ws.recv()
            out.append(frame if isinstance(frame, str) else frame.decode())
    return out


async def drain(ws: ClientConnection) -> None:
    """Read until the connection closes (raises ``ConnectionClosed``), at most 3 s."""
    async with asyncio.timeout(3):
        while True:
            await ws.recv()


def types(texts: list[str]) -> list[str]:
    out = []
    for text in texts:
        try:
            data = json.loads(text)
        except ValueError:
            out.append("<invalid>")
            continue
        out.append(data.get("type", "<no type>") if isinstance(data, dict) else "<not object>")
    return out


# ---- the model -----------------------------------------------------------------------------------


def test_faults_are_off_by_default_and_strict() -> None:
    faults = Faults()
    assert faults.accept.error_rate == 0
    assert faults.drop_sideband_at is None
    assert faults.malformed_events == 0
    assert not faults.redeliver_after_hangup
    assert CallSpec(name="x").faults is None
    with pytest.raises(ValidationError):
        Faults.model_validate({"accept": {"error_rate": 2}})
    with pytest.raises(ValidationError):
        Faults.model_validate({"accept": {"status": 418}})
    with pytest.raises(ValidationError):
        Faults.model_validate({"drop_sideband_at": "sometimes"})
    with pytest.raises(ValidationError):
        Faults.model_validate({"typo": 1})


def test_a_calls_faults_override_only_what_they_state() -> None:
    base = Faults(seed=7, accept_404_race=1, redeliver_after_hangup=True)
    merged = base.merged(Faults.model_validate({"accept_404_race": 3}))
    assert merged.accept_404_race == 3
    assert merged.redeliver_after_hangup
    assert merged.seed == 7
    assert base.merged(None) is base


def test_scenario_yaml_takes_a_faults_block() -> None:
    scenario = parse_scenario(
        {
            "name": "chaos",
            "calls": [
                {
                    "name": "a",
                    "faults": {
                        "seed": 3,
                        "accept": {"error_rate": 0.5, "status": 429, "retry_after": 1, "latency": {"fixed": 0.2}},
                        "drop_sideband_at": "random",
                        "malformed_events": 0.1,
                    },
                }
            ],
        }
    )
    faults = scenario.calls[0].faults
    assert faults is not None
    assert faults.accept.status == 429
    assert faults.accept.latency is not None
    assert faults.accept.latency.fixed == 0.2
    assert faults.drop_sideband_at == "random"


def test_seeded_decisions_repeat_and_differ_by_seed() -> None:
    def draws(seed: int) -> list[object]:
        record = SimCall(call_id="c", name="n", spec=CallSpec(name="n"), webhook_id="w", event_id="e", placed_at=0)
        faults = Faults.model_validate(
            {
                "seed": seed,
                "accept": {"error_rate": 0.5, "max_errors": 100, "latency": {"min": 0, "max": 1}},
                "malformed_events": 0.5,
                "drop_sideband_at": "random",
                "drop_sideband_count": 3,
            }
        )
        injector = FaultInjector(faults, "n", record)
        out: list[object] = []
        for _ in range(20):
            out.append(injector.error("accept", 0.0) is not None)
            out.append(round(injector.latency("accept"), 9))
            out.append(injector.malformed({"type": "response.done"}, 0.0))
        out.append(injector.drop_delay())
        return out

    assert draws(1) == draws(1)
    assert draws(1) != draws(2)


# ---- each fault, injected by the running simulator ---------------------------------------------


@pytest.mark.parametrize("status", [429, 500, 503])
async def test_accept_errors_then_success_bounded_by_max_errors(status: int) -> None:
    async with sim_env() as env:
        faults = {"accept": {"error_rate": 1, "status": status, "max_errors": 2, "retry_after": 2}}
        call = await env.place(faults)
        statuses = []
        for _ in range(3):
            response = await env.post(call, "accept", BODY)
            statuses.append(response.status_code)
            if status == 429 and response.status_code == 429:
                assert response.headers["retry-after"] == "2"
        assert statuses == [status, status, 200]
        assert call.accept_count == 1
        assert call.accept_attempts == 3
        assert call.fault_counts == {f"accept_{status}": 2}
        assert call.fault_seed is not None


async def test_seeded_runs_of_the_simulator_repeat() -> None:
    async def statuses(seed: int) -> list[int]:
        async with sim_env(Faults.model_validate({"seed": seed})) as env:
            call = await env.place({"hangup": {"error_rate": 0.5, "max_errors": 100}}, name="same-name")
            await env.post(call, "accept", BODY)
            out = []
            for _ in range(12):
                response = await env.post(call, "hangup")
                out.append(response.status_code)
                if response.status_code == 200:
                    break
            return out

    first = await statuses(11)
    assert first == await statuses(11)
    assert first[-1] == 200


async def test_endpoint_latency_is_scaled() -> None:
    async with sim_env() as env:
        call = await env.place({"accept": {"latency": {"fixed": 4.0}}})
        started = time.monotonic()
        response = await env.post(call, "accept", BODY)
        assert response.status_code == 200
        assert time.monotonic() - started >= 4.0 * SCALE
        assert call.fault_counts == {"accept_latency": 1}


async def test_accept_404_race_then_accepted() -> None:
    async with sim_env() as env:
        call = await env.place({"accept_404_race": 2})
        codes = [(await env.post(call, "accept", BODY)).status_code for _ in range(3)]
        assert codes == [404, 404, 200]
        assert call.accepted_at is not None
        assert call.fault_counts == {"accept_404_race": 2}


async def test_hangup_while_ringing_makes_every_accept_404() -> None:
    async with sim_env() as env:
        call = await env.place({"hangup_while_ringing": 1.0})
        response = await env.post(call, "accept", BODY)  # held until the caller gave up, then 404
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "call_id_not_found"
        assert call.ended_by == "missed"
        assert (await env.post(call, "accept", BODY)).status_code == 404
        assert call.accept_count == 0
        assert call.late_accepts == 2
        assert call.fault_counts == {"hangup_while_ringing": 1}


async def test_sideband_handshake_error() -> None:
    async with sim_env() as env:
        call = await env.place({"sideband": {"error_rate": 1, "status": 503, "max_errors": 1}})
        assert (await env.post(call, "accept", BODY)).status_code == 200
        with pytest.raises(InvalidStatus) as refused:
            async with sideband(env, call):
                pass
        assert refused.value.response.status_code == 503
        async with sideband(env, call) as ws:
            assert types(await frames(ws, 1)) == ["session.created"]
        assert call.sideband_connects == 1
        assert call.fault_counts == {"sideband_503": 1}


@pytest.mark.parametrize(("mode", "code"), [("abrupt", 1006), ("1011", 1011)])
async def test_drop_sideband_keeps_the_call_up_and_a_reconnect_works(mode: str, code: int) -> None:
    async with sim_env() as env:
        call = await env.place({"drop_sideband_at": 1.0, "drop_sideband_mode": mode}, max_call_seconds=100)
        assert (await env.post(call, "accept", BODY)).status_code == 200
        async with sideband(env, call) as ws:
            with pytest.raises(ConnectionClosed):
                await drain(ws)
            assert ws.close_code == code
        assert call.sideband_drops == 1
        assert not call.is_ended
        async with sideband(env, call) as ws:
            assert types(await frames(ws, 1)) == ["session.created"]
            await asyncio.sleep(2.0 * SCALE)  # the drop count (1) is used up: this socket stays
            assert ws.close_code is None
        assert call.sideband_connects == 2
        assert call.fault_counts == {"sideband_drop": 1}


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("invalid_json", ["<invalid>", "session.created"]),
        ("unknown_type", ["sim.unknown_event", "session.created"]),
        ("missing_fields", ["session.created", "session.created"]),
        ("duplicate", ["session.created", "session.created"]),
    ],
)
async def test_malformed_events(kind: str, expected: list[str]) -> None:
    async with sim_env() as env:
        call = await env.place({"malformed_events": 1.0, "malformed_kinds": [kind], "malformed_max": 1})
        assert (await env.post(call, "accept", BODY)).status_code == 200
        async with sideband(env, call) as ws:
            got = await frames(ws, 2)
        assert types(got) == expected
        if kind == "missing_fields":
            assert "session" not in json.loads(got[0])
        if kind == "duplicate":
            assert got[0] == got[1]
        assert call.fault_counts == {f"malformed_{kind}": 1}


async def test_out_of_order_event_comes_after_the_next_one() -> None:
    async with sim_env() as env:
        faults = {"malformed_events": 1.0, "malformed_kinds": ["out_of_order"], "malformed_max": 1}
        call = await env.place(faults)
        assert (await env.post(call, "accept", BODY)).status_code == 200
        async with sideband(env, call) as ws:
            await ws.send(json.dumps({"type": "no.such.event"}))  # its error event overtakes session.created
            got = types(await frames(ws, 2))
        assert got in (["error", "session.created"], ["session.created", "error"])
        assert call.fault_counts == {"malformed_out_of_order": 1}


async def test_out_of_order_event_is_flushed_when_nothing_follows() -> None:
    async with sim_env() as env:
        call = await env.place({"malformed_events": 1.0, "malformed_kinds": ["out_of_order"], "malformed_max": 1})
        assert (await env.post(call, "accept", BODY)).status_code == 200
        async with sideband(env, call) as ws:
            assert types(await frames(ws, 1)) == ["session.created"]


@pytest.mark.parametrize("new_id", [False, True])
async def test_duplicate_webhooks_arrive_late(new_id: bool) -> None:
    async with sim_env() as env:
        faults = {"duplicate_webhooks": 3, "duplicate_webhook_new_id": new_id, "webhook_delay": {"fixed": 1.0}}
        call = await env.place(faults)
        assert env.receiver.webhook_ids == [call.webhook_id]
        assert await env.sim.settle(5)
        assert len(env.receiver.webhook_ids) == 4
        assert call.delivery_statuses == [200, 200, 200, 200]
        distinct = len(set(env.receiver.webhook_ids))
        assert distinct == (4 if new_id else 1)
        assert call.fault_counts == {"duplicate_webhook": 3}
        await env.post(call, "reject")


async def test_redeliver_after_hangup() -> None:
    async with sim_env() as env:
        call = await env.place({"redeliver_after_hangup": True})
        assert (await env.post(call, "accept", BODY)).status_code == 200
        assert (await env.post(call, "hangup")).status_code == 200
        assert await env.sim.settle(5)
        assert env.receiver.webhook_ids == [call.webhook_id, call.webhook_id]
        assert call.fault_counts == {"redeliver_after_hangup": 1}
        assert (await env.post(call, "accept", BODY)).status_code == 404
        assert call.late_accepts == 1


async def test_a_call_left_up_is_visible() -> None:
    async with sim_env() as env:
        call = await env.place(max_call_seconds=2)
        assert (await env.post(call, "accept", BODY)).status_code == 200
        async with sideband(env, call) as ws:
            await frames(ws, 1)
            await env.sim.wait_ended(call.call_id, 5)
        assert call.ended_by == "caller"
        assert call.max_call_reached
        assert call.left_up
        assert call.summary()["left_up"] is True


# ---- what the controller does about them (real uvicorn + simulator) -----------------------------------


def goodbye(name: str = "goodbye", **kwargs: Any) -> CallSpec:
    return CallSpec.model_validate(
        {
            "name": name,
            "max_call_seconds": 40,
            "steps": [
                {"say": "What time do you open?", "reply": "We open at nine."},
                {
                    "say": "Thanks, bye!",
                    "tool": {"name": "end_call", "arguments": {"reason": "caller said goodbye"}},
                    "then": "Thank you for calling, goodbye!",
                },
            ],
            **kwargs,
        }
    )


#: the controller waits this long for the sideband to close after its /hangup (default 3 s)
FAST = Settings.model_validate({"limits": {"hangup_close_wait_s": 0.3}})


async def run(spec: CallSpec, timeout: float = 15) -> harness.CallOutcome:
    async with harness.running_stack(FAST, time_scale=SCALE) as stack:
        outcome = await harness.run_call(stack, spec, timeout=timeout)
        assert await stack.sim.settle(5)
        assert stack.sim.task_errors == []
        outcome.record = stack.runtime.registry.get(outcome.sim.call_id)
        return outcome


def reason(outcome: harness.CallOutcome) -> str | None:
    return outcome.record.ended_reason if outcome.record else None


@pytest.mark.e2e
@pytest.mark.parametrize("status", [429, 500, 503])
async def test_e2e_accept_error_then_success_is_accepted_once(status: int) -> None:
    faults = {"accept": {"error_rate": 1, "status": status, "max_errors": 2}}
    outcome = await run(goodbye(faults=faults))
    assert outcome.sim.accept_attempts == 3
    assert outcome.sim.accept_count == 1
    assert reason(outcome) == "agent_end_call"
    assert outcome.sim.hangup_count == 1
    assert not outcome.sim.left_up


@pytest.mark.e2e
async def test_e2e_accept_404_race_is_accepted() -> None:
    outcome = await run(goodbye(faults={"accept_404_race": 2}))
    assert outcome.sim.fault_counts == {"accept_404_race": 2}
    assert outcome.sim.accept_count == 1
    assert reason(outcome) == "agent_end_call"


@pytest.mark.e2e
@pytest.mark.parametrize(("mode", "code"), [("abrupt", 1006), ("1011", 1011)])
async def test_e2e_sideband_dropped_mid_call_reconnects_and_ends_normally(mode: str, code: int) -> None:
    outcome = await run(goodbye(faults={"drop_sideband_at": 1.0, "drop_sideband_mode": mode}))
    assert outcome.sim.sideband_drops == 1
    assert outcome.sim.sideband_connects == 2
    assert reason(outcome) == "agent_end_call"
    assert outcome.sim.ended_by == "agent"
    assert outcome.record is not None
    assert any(f"sideband closed (code {code})" in what for _t, what in outcome.record.timeline)
    assert outcome.sim.accept_count == 1


@pytest.mark.e2e
async def test_e2e_sideband_that_keeps_dropping_is_hung_up() -> None:
    outcome = await run(goodbye(faults={"drop_sideband_at": 0.5, "drop_sideband_count": 4}))
    assert outcome.sim.sideband_drops == 4
    assert reason(outcome) == "session_error"
    assert outcome.sim.hangup_count == 1
    assert not outcome.sim.left_up


@pytest.mark.e2e
async def test_e2e_redelivery_after_hangup_does_nothing() -> None:
    spec = CallSpec.model_validate(
        {
            "name": "hangs-up",
            "steps": [{"say": "Hello?", "reply": "Hi, how can I help?"}, {"hangup": True}],
            "faults": {"redeliver_after_hangup": True},
        }
    )
    outcome = await run(spec)
    assert outcome.sim.fault_counts == {"redeliver_after_hangup": 1}
    assert outcome.sim.delivery_statuses == [200, 200]
    assert outcome.sim.accept_attempts == 1
    assert outcome.sim.late_accepts == 0
    assert reason(outcome) == "caller_hangup"


@pytest.mark.e2e
async def test_e2e_duplicate_webhooks_with_new_ids_accept_once() -> None:
    faults = {"duplicate_webhooks": 3, "duplicate_webhook_new_id": True, "webhook_delay": {"min": 0, "max": 2}}
    outcome = await run(goodbye(faults=faults))
    assert outcome.sim.delivery_statuses == [200, 200, 200, 200]
    assert outcome.sim.accept_attempts == 1
    assert reason(outcome) == "agent_end_call"


@pytest.mark.e2e
async def test_e2e_hangup_while_ringing_is_accept_failed_without_hangup_or_sideband() -> None:
    outcome = await run(goodbye(faults={"hangup_while_ringing": 0.0}))
    assert outcome.sim.ended_by == "missed"
    assert outcome.sim.accept_count == 0
    assert outcome.sim.late_accepts >= 1
    assert reason(outcome) == "accept_failed"
    assert outcome.sim.hangup_count == 0
    assert outcome.sim.sideband_connects == 0


@pytest.mark.e2e
async def test_e2e_a_retry_after_beyond_the_ring_budget_rejects_the_call_at_once() -> None:
    faults = {"accept": {"error_rate": 1, "status": 429, "retry_after": 30, "max_errors": 100}}
    started = time.monotonic()
    outcome = await run(goodbye(faults=faults))
    assert time.monotonic() - started < 5  # the 8 s ring budget was not waited out
    assert outcome.sim.accept_attempts == 1
    assert outcome.sim.accept_count == 0
    assert outcome.sim.ended_by == "reject"
    assert outcome.sim.reject_status == 503  # limits.accept_give_up_status
    assert reason(outcome) == "accept_failed"
    assert outcome.record is not None
    assert any("Retry-After 30s" in e for e in outcome.record.errors)


@pytest.mark.e2e
async def test_e2e_hangup_500_once_is_retried() -> None:
    outcome = await run(goodbye(faults={"hangup": {"error_rate": 1, "status": 500, "max_errors": 1}}))
    assert outcome.sim.fault_counts == {"hangup_500": 1}
    assert outcome.sim.hangup_count == 1
    assert outcome.sim.ended_by == "agent"
    assert reason(outcome) == "agent_end_call"


@pytest.mark.e2e
async def test_e2e_malformed_events_do_not_derail_the_call() -> None:
    outcome = await run(goodbye(faults={"seed": 5, "malformed_events": 0.4, "malformed_max": 12}))
    assert sum(outcome.sim.fault_counts.values()) >= 1
    assert outcome.sim.accept_count == 1
    assert reason(outcome) in ("agent_end_call", "caller_hangup")
    assert not outcome.sim.left_up


@pytest.mark.e2e
async def test_e2e_transient_sideband_handshake_error_is_retried() -> None:
    outcome = await run(goodbye(faults={"sideband": {"error_rate": 1, "status": 503, "max_errors": 1}}))
    assert outcome.sim.fault_counts == {"sideband_503": 1}
    assert reason(outcome) == "agent_end_call"


@pytest.mark.e2e
async def test_e2e_hangup_failing_for_a_while_does_not_leave_the_call_up() -> None:
    faults = {"hangup": {"error_rate": 1, "status": 500, "max_errors": 6}}
    outcome = await run(goodbye(faults=faults, max_call_seconds=100))  # the caller stays 5 s on the line
    assert reason(outcome) == "agent_end_call"
    assert not outcome.sim.left_up
    assert outcome.sim.hangup_count == 1


def test_a_healed_endpoint_stops_failing_and_the_healing_is_recorded() -> None:
    record = SimCall(call_id="rtc_h", name="h", spec=CallSpec(name="h"), webhook_id="wh", event_id="evt", placed_at=0)
    injector = FaultInjector(Faults(hangup=EndpointFaults(error_rate=1.0, max_errors=100)), "h", record)
    assert injector.error("hangup", 0.0) is not None
    assert injector.error("hangup", 0.1) is not None
    injector.heal("hangup", 0.2)
    assert [injector.error("hangup", t) for t in (0.3, 0.4, 0.5)] == [None, None, None]
    assert record.fault_counts == {"hangup_500": 2, "hangup_healed": 1}
