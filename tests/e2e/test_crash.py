"""Crash tests (#13) with real ``sipctl serve`` processes: calls spread over the replicas, one SIGKILLed mid-calls
(no drain, no goodbye: an OOM kill or a lost node) and restarted. Every call is supervised to its end by a
survivor (or the restarted process) and reported exactly once; zero double accepts, zero orphans, zero lost
reports. On PostgreSQL: three replicas, one killed. On SQLite: the one process, killed and restarted on the same
file. Leases are short here (1.5 s, heartbeat 0.5 s) so the test takes seconds; the defaults are 6 s and 2 s."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sip_controller.simulator import CallSpec, SimCall, Simulator, Step, new_webhook_secret
from sip_controller.simulator.replicas import Replicas, ReportSink, endpoints_env

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

SCALE = 0.05
LEASE_S = 1.5
HEARTBEAT_S = 0.5
#: nominal seconds of quiet in each call between its question and its goodbye (x SCALE: 8 s of real time), long
#: enough for the kill, the lapse of the lease (1.5 s) and the takeover to fall inside it
QUIET = 160.0


def _call(i: int) -> CallSpec:
    return CallSpec(
        name=f"call-{i}",
        caller=f"+1415555{i:04d}",  # one caller each: the per-caller rate limit is not what is tested here
        greeting_wait=5,
        max_call_seconds=2000,
        steps=[
            Step(say="Hi, what are your opening hours on Friday?", reply="We're open from nine until five."),
            Step(wait=QUIET),
            Step(
                say="Great, thanks. Goodbye!",
                tool={"name": "end_call", "arguments": {"reason": "caller said goodbye"}},
                then="Thanks for calling, goodbye!",
            ),
        ],
    )


async def _all(predicate: object, timeout: float, what: str) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not predicate():  # type: ignore[operator]
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout:g} s waiting for {what}") from None


async def _crash_and_recover(
    tmp_path: Path, *, replicas: int, calls: int, database_url: str | None, victim: int = 0
) -> None:
    secret = new_webhook_secret()
    async with (
        Simulator(webhook_secret=secret, time_scale=SCALE) as sim,
        ReportSink() as sink,
        Replicas(
            replicas, workdir=tmp_path / "cluster", api_base=sim.base_url, api_key=sim.api_key,
            webhook_secret=secret, database_url=database_url, env=endpoints_env([sink.url]),
            lease_s=LEASE_S, heartbeat_s=HEARTBEAT_S,
        ) as cluster,
    ):  # fmt: skip
        placed: list[tuple[SimCall, int]] = []
        for i in range(calls):
            url = cluster.next_webhook_url()
            sim.webhook_url = url
            owner = next(r.index for r in cluster.replicas if r.webhook_url == url)
            placed.append((await sim.place_call(_call(i)), owner))
        await _all(lambda: all(c.greeting_heard for c, _ in placed), 30, "every greeting")
        await _all(lambda: len(sink.of_type("call.started")) >= calls, 15, "every call.started")

        await cluster.kill(victim)
        killed_at = sim.now()
        await cluster.start(victim)  # the same slot again: a restart after the crash

        for call, _ in placed:
            await sim.wait_ended(call.call_id, 60)
        await _all(lambda: len(sink.ended_by_call()) >= calls, 30, "every call.ended")
        events = cluster.events()

    victims = [call for call, owner in placed if owner == victim]
    assert victims, "the killed replica had no calls"
    problems: list[str] = []
    reports = sink.ended_by_call()
    for call, owner in placed:
        tag = f"{call.name} (replica {owner})"
        if call.accept_count != 1:
            problems.append(f"{tag}: {call.accept_count} accepts")
        if call.ended_by != "agent" or call.max_call_reached:
            problems.append(f"{tag}: ended by {call.ended_by}, max_call_reached={call.max_call_reached} (orphaned?)")
        if call.hangup_count != 1:
            problems.append(f"{tag}: {call.hangup_count} hangups")
        ended = reports.get(call.call_id, [])
        if len(ended) != 1:
            problems.append(f"{tag}: {len(ended)} call.ended reports")
            continue
        report = ended[0].data
        if report.get("ended_reason") != "agent_end_call":
            problems.append(f"{tag}: ended_reason {report.get('ended_reason')}")
        takeovers = report.get("takeovers") or []
        if owner == victim:
            if len(takeovers) != 1:
                problems.append(f"{tag}: takeovers {takeovers}")
            if call.sideband_connects != 2:
                problems.append(f"{tag}: {call.sideband_connects} sideband connects, expected a re-attach")
        elif takeovers or call.sideband_connects != 1:
            problems.append(f"{tag}: a survivor's call was disturbed: {takeovers}, {call.sideband_connects} connects")
    strays = set(reports) - {c.call_id for c, _ in placed}
    if strays:
        problems.append(f"reports for calls nobody placed: {sorted(strays)}")
    started = sink.of_type("call.started")
    if len({d.webhook_id for d in started}) != calls:
        problems.append(f"{len({d.webhook_id for d in started})} distinct call.started for {calls} calls")
    assert not problems, "\n".join(problems) + "\n" + cluster.log_tail(victim)

    # the takeover: from the kill to the sideband re-attached, bounded by the lease, a heartbeat and the re-attach
    gaps = [call.sideband_attached_at[1] - killed_at for call in victims]
    assert max(gaps) <= LEASE_S + 2 * HEARTBEAT_S + 2.0, gaps
    taken = [e for e in events if e.get("event") == "call.taken_over"]
    assert {e.get("call_id") for e in taken} == {c.call_id for c in victims}, taken


async def test_postgresql_three_replicas_one_killed_mid_calls(tmp_path: Path, pg_schema: str) -> None:
    await _crash_and_recover(tmp_path, replicas=3, calls=15, database_url=pg_schema)


async def test_sqlite_the_one_process_killed_and_restarted(tmp_path: Path) -> None:
    await _crash_and_recover(tmp_path, replicas=1, calls=8, database_url=None)
