"""The reproductions at the top of issue #13, repeated against real ``sipctl serve`` processes (the SIGKILL one is
tests/e2e/test_crash.py): each once lost a call, a report or both; now nothing is lost.

- the same webhook delivered to two replicas: one accept, no reject, no contradictory report;
- an accept whose answer is lost: the retry hears ``call_already_accepted`` and the call is supervised;
- a hangup that keeps failing through a SIGTERM drain: the call is not reported ``shutdown`` while it is up; the
  restarted process hangs it up once OpenAI answers, and reports it once, confirmed;
- the report sink down for 60 calls, then a restart: every report delivered once the sink is back.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sip_controller.simulator import CallSpec, Simulator, Step, new_webhook_secret
from sip_controller.simulator.replicas import Replicas, ReportSink, endpoints_env
from sip_controller.state.sqlite import SQLiteStore

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

SCALE = 0.05
GOODBYE = Step(
    say="Great, thanks. Goodbye!",
    tool={"name": "end_call", "arguments": {"reason": "caller said goodbye"}},
    then="Thanks for calling, goodbye!",
)


def _call(i: int, *, quiet: float = 0.0, **extra: object) -> CallSpec:
    steps = [Step(say="What time do you open?", reply="We open at nine.")]
    if quiet:
        steps.append(Step(wait=quiet))
    steps.append(GOODBYE)
    return CallSpec.model_validate(
        {"name": f"call-{i}", "caller": f"+1415555{i:04d}", "greeting_wait": 5, "max_call_seconds": 3000,
         "ring_timeout": 400, "steps": [s.model_dump(exclude_none=True) for s in steps], **extra}
    )  # fmt: skip


async def _until(predicate: object, timeout: float, what: str) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not predicate():  # type: ignore[operator]
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout:g} s waiting for {what}") from None


async def test_the_same_webhook_at_two_replicas_is_accepted_once(tmp_path: Path, pg_schema: str) -> None:
    secret = new_webhook_secret()
    async with (
        Simulator(webhook_secret=secret, time_scale=SCALE) as sim,
        ReportSink() as sink,
        Replicas(
            2, workdir=tmp_path, api_base=sim.base_url, api_key=sim.api_key, webhook_secret=secret,
            database_url=pg_schema, env=endpoints_env([sink.url]),
        ) as cluster,
    ):  # fmt: skip
        first, second = cluster.replicas
        sim.webhook_url = first.webhook_url
        calls = [await sim.place_call(_call(i), also_to=[second.webhook_url]) for i in range(6)]
        for call in calls:
            await sim.wait_ended(call.call_id, 30)
        await _until(lambda: len(sink.ended_by_call()) >= len(calls), 15, "every call.ended")
    reports = sink.ended_by_call()
    for call in calls:
        assert sorted(call.delivery_statuses) == [200, 200], call.delivery_statuses  # both answered, no 5xx
        assert call.accept_count == 1, call.name
        assert call.reject_status is None, call.name  # the loser never rejects the winner's call
        assert call.ended_by == "agent", call.name
        assert [d.data["ended_reason"] for d in reports[call.call_id]] == ["agent_end_call"], call.name
    assert len(sink.of_type("call.started")) == len(calls)


async def test_an_accept_whose_answer_is_lost_is_supervised_not_rejected(tmp_path: Path) -> None:
    secret = new_webhook_secret()
    # OpenAI carries the accept out but its answer never comes back (held 6 s, past the controller's 5 s timeout)
    spec = _call(0, faults={"accept_answer_lost": 1, "accept_answer_hold": 120})
    async with (
        Simulator(webhook_secret=secret, time_scale=SCALE) as sim,
        ReportSink() as sink,
        Replicas(
            1, workdir=tmp_path, api_base=sim.base_url, api_key=sim.api_key, webhook_secret=secret,
            env=endpoints_env([sink.url]),
        ) as cluster,
    ):  # fmt: skip
        sim.webhook_url = cluster.next_webhook_url()
        call = await sim.place_call(spec)
        await sim.wait_ended(call.call_id, 40)
        await _until(lambda: call.call_id in sink.ended_by_call(), 15, "the call.ended report")
    assert call.fault_counts.get("accept_answer_lost") == 1
    assert call.accept_count == 2  # ours, then the retry that heard call_already_accepted
    assert call.reject_status is None
    assert call.greeting_heard
    assert call.ended_by == "agent"
    assert call.hangup_count == 1
    [report] = sink.ended_by_call()[call.call_id]
    assert report.data["ended_reason"] == "agent_end_call"


async def test_a_hangup_failing_through_a_drain_is_confirmed_after_the_restart_and_reported_once(
    tmp_path: Path,
) -> None:
    secret = new_webhook_secret()
    spec = _call(0, quiet=4000, faults={"hangup": {"error_rate": 1.0, "status": 500, "max_errors": 100}})
    async with (
        Simulator(webhook_secret=secret, time_scale=SCALE) as sim,
        ReportSink() as sink,
        Replicas(
            1, workdir=tmp_path, api_base=sim.base_url, api_key=sim.api_key, webhook_secret=secret,
            env={**endpoints_env([sink.url]), "SIPCTL_LIMITS__DRAIN_WRAP_UP_S": "2",
                 "SIPCTL_REPORTS__FLUSH_TIMEOUT_S": "1"},
        ) as cluster,
    ):  # fmt: skip
        sim.webhook_url = cluster.next_webhook_url()
        call = await sim.place_call(spec)
        await _until(lambda: call.greeting_heard, 15, "the greeting")
        assert await cluster.stop(0) == 0  # SIGTERM: the drain wraps the call up, but every hangup answers 500
        assert not call.is_ended  # the call is still up at OpenAI...
        assert sink.ended_by_call() == {}  # ...so it was not reported (once, a "shutdown" report for a live call)
        async with await SQLiteStore.open(tmp_path / "sipctl-state.db", migrate=False) as store:
            row = await store.get_call(call.call_id)
        assert row is not None
        assert row.state == "hanging_up"
        assert row.wake_at is not None

        sim.heal(call.call_id, "hangup")  # OpenAI answers hangups again
        await cluster.start(0)  # the restarted process finds the call hanging_up and finishes the job
        await sim.wait_ended(call.call_id, 40)
        await _until(lambda: call.call_id in sink.ended_by_call(), 15, "the call.ended report")
        await asyncio.sleep(0.5)  # a second report would come now
    assert call.hangup_count == 1
    assert call.fault_counts.get("hangup_500", 0) >= 1
    [report] = sink.ended_by_call()[call.call_id]
    assert report.data["ended_reason"] == "shutdown"
    assert report.data["hangup_confirmed"] is True
    assert report.data["hangup_attempts"] == call.fault_counts["hangup_500"] + 1


async def test_reports_wait_out_a_dead_sink_and_a_restart_and_are_all_delivered_once(tmp_path: Path) -> None:
    secret = new_webhook_secret()
    async with (
        Simulator(webhook_secret=secret, time_scale=SCALE) as sim,
        ReportSink() as sink,
        Replicas(
            1, workdir=tmp_path, api_base=sim.base_url, api_key=sim.api_key, webhook_secret=secret,
            env={**endpoints_env([sink.url]), "SIPCTL_REPORTS__FLUSH_TIMEOUT_S": "1",
                 "SIPCTL_LIMITS__CALLER_CALLS_PER_MINUTE": "0"},
        ) as cluster,
    ):  # fmt: skip
        sink.down = True
        sim.webhook_url = cluster.next_webhook_url()
        calls = await asyncio.gather(*(sim.place_call(_call(i)) for i in range(60)))
        for call in calls:
            await sim.wait_ended(call.call_id, 60)
        assert await cluster.stop(0) == 0  # 120 reports (started, ended) wait in the store's outbox
        assert sink.deliveries == []
        sink.down = False
        await cluster.start(0)
        await _until(lambda: len(sink.ended_by_call()) >= 60, 30, "every call.ended")
        await asyncio.sleep(0.5)
    ended = sink.ended_by_call()
    assert sorted(ended) == sorted(c.call_id for c in calls)
    assert all(len(reports) == 1 for reports in ended.values())
    assert len({d.webhook_id for d in sink.of_type("call.started")}) == 60
