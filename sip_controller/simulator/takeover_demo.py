"""The demo's last call (#13): its controller is SIGKILLed mid-call and another replica takes it over.

Two real ``sipctl serve`` child processes (:class:`~sip_controller.simulator.replicas.Replicas`) share one store, a
SQLite file in a temporary folder (SQLite is shared fine by processes on one host). The call is placed on replica
A; once the caller has had an answer and gone quiet, A is SIGKILLed (no drain, no goodbye). Replica B's next
heartbeat after A's lease lapsed takes the call over, re-attaches the sideband by call_id and supervises it to its
normal end: the caller says goodbye, the agent runs ``end_call`` and hangs up after its goodbye audio. The caller
notices only a short gap (the simulated caller waits for the sideband to be back before speaking again).

What is printed comes from the call's report, the ``call.ended`` document a loopback
:class:`~sip_controller.simulator.replicas.ReportSink` received (``takeovers`` names the new owner and the gap
since the lost owner's last heartbeat), plus two moments only the demo knows: the SIGKILL and the sideband
re-attaching at the simulator (the measured gap). :func:`check` makes it a pass/fail.

Time: the caller's script runs at the demo's ``--time-scale`` like the scenario's calls. The lease and the
heartbeat are real seconds (like every ``limits`` value, they guard real I/O and are not scaled); short ones here
so the demo stays quick (production defaults: ``state.lease_s`` 6 s, ``state.heartbeat_s`` 2 s). The replicas run
the built-in default settings (the store, the report endpoint and these two aside), unscaled.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from sip_controller.config import StoreSettings
from sip_controller.simulator.core import Simulator
from sip_controller.simulator.harness import DEMO_ANALYSIS
from sip_controller.simulator.records import SimCall
from sip_controller.simulator.replicas import Replicas, ReportSink, endpoints_env
from sip_controller.simulator.scenario import CallSpec, Step, ToolCall
from sip_controller.simulator.webhook_sender import new_webhook_secret
from sip_controller.state.sqlite import SQLiteStore

TITLE = "takeover: the controller is killed mid-call"
#: the demo's lease and heartbeat (real seconds); the production defaults are StoreSettings'
LEASE_S = 1.5
HEARTBEAT_S = 0.5
QUESTION = "Hi, what are your opening hours on Friday?"
ANSWER = "On Fridays we are open from nine until five."
GOODBYE = "Great, thanks. Goodbye!"
FAREWELL = "Thanks for calling, goodbye!"
#: the caller's quiet spell after the answer, nominal seconds (``time_scale`` applies)
QUIET_S = 4.0
#: real seconds between the answer heard and the SIGKILL: one flush of the call's journal (0.5 s), so that the
#: store holds the first exchange when the call is taken over
KILL_AFTER_S = 0.6
#: the quiet spell lasts at least this long in real time after the kill is due, whatever the time scale, so the
#: kill lands in it
QUIET_MARGIN_S = 1.0


def takeover_call(time_scale: float) -> CallSpec:
    """The caller: a question, a quiet spell (the SIGKILL falls in it), then goodbye (after the re-attach: the
    simulated caller waits for the sideband to be up before each step)."""
    return CallSpec(
        name="takeover",
        caller="+14155550126",
        greeting_wait=max(5.0, 3.0 / time_scale),  # a bound, not a delay: the replicas' timers are not scaled
        max_call_seconds=max(120.0, 60.0 / time_scale),
        steps=[
            Step(say=QUESTION, reply=ANSWER),
            Step(wait=max(QUIET_S, (KILL_AFTER_S + QUIET_MARGIN_S) / time_scale)),
            Step(
                say=GOODBYE,
                tool=ToolCall(name="end_call", arguments={"reason": "caller said goodbye"}),
                then=FAREWELL,
            ),
        ],
    )


@dataclass
class TakeoverRun:
    """What happened to the taken-over call, on every side."""

    time_scale: float
    call: SimCall | None = None
    #: the ``call.ended`` documents received for the call (a redelivery of one webhook-id counted once)
    reports: list[dict[str, Any]] = field(default_factory=list)
    #: distinct ``call.started`` deliveries for the call
    started_reports: int = 0
    #: the pids of replica A (the call's first owner, killed) and B (the survivor)
    pid_a: int | None = None
    pid_b: int | None = None
    #: the SIGKILL: wall time (``time.time()``) and the simulator's clock
    killed_at: float | None = None
    killed_sim: float | None = None
    #: the replicas (``A``, ``B``) whose log says ``call.taken_over`` for the call
    taken_over_logged_by: list[str] = field(default_factory=list)
    #: the call's post-call analysis, from its ``call.analyzed`` event (B analyses the call it finished, #17)
    analysis: dict[str, Any] | None = None
    #: why the run stopped early (a timeout, a replica that would not start), with the replicas' log tails
    error: str | None = None
    logs: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def report(self) -> dict[str, Any] | None:
        return self.reports[0] if len(self.reports) == 1 else None

    @property
    def gap_s(self) -> float | None:
        """The measured gap: from the SIGKILL to the sideband re-attached by call_id (the simulator's clock)."""
        if self.call is None or self.killed_sim is None or len(self.call.sideband_attached_at) < 2:
            return None
        return self.call.sideband_attached_at[1] - self.killed_sim


def pid_of(process_id: object) -> int | None:
    """The pid in a lease's process id (``<host>-<pid>-<random>``, ``state.factory.new_process_id``)."""
    if not isinstance(process_id, str):
        return None
    parts = process_id.rsplit("-", 2)
    return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None


def check(run: TakeoverRun) -> list[str]:
    """Why the demo's takeover call failed; empty when it was supervised to its normal end by replica B after the
    kill, taken over once, and reported exactly once."""
    if run.error is not None:
        return [run.error]
    call = run.call
    if call is None:
        return ["the call was never placed"]
    problems: list[str] = []
    if call.accept_count != 1:
        problems.append(f"accepted {call.accept_count} times, expected once")
    if not call.greeting_heard:
        problems.append("the caller did not hear the greeting")
    if call.ended_by != "agent" or call.max_call_reached:
        problems.append(f"not supervised to its end: ended by {call.ended_by}, left up={call.max_call_reached}")
    if not call.hangup_after_audio:
        problems.append(f"no hangup after the goodbye audio (hangups {call.hangup_count}, gap {call.hangup_gap_s})")
    if call.audio_state != "clean":
        problems.append(f"the caller's audio: {call.audio_state}")
    if call.sideband_connects != 2:
        problems.append(f"{call.sideband_connects} sideband connects, expected 2 (the attach and one re-attach)")
    if run.killed_at is None:
        problems.append("replica A was never killed")
    elif call.ended_at is not None and run.killed_sim is not None and call.ended_at < run.killed_sim:
        problems.append("the call ended before replica A was killed")
    if len(run.reports) != 1:
        problems.append(f"reported {len(run.reports)} times (call.ended), expected once")
    if run.started_reports != 1:
        problems.append(f"{run.started_reports} call.started reports, expected one")
    report = run.report
    if report is not None:
        if report.get("ended_reason") != "agent_end_call":
            problems.append(f"ended_reason {report.get('ended_reason')}, expected agent_end_call")
        tools = [t.get("name") for t in report.get("tool_calls") or [] if isinstance(t, dict)]
        if "end_call" not in tools:
            problems.append(f"end_call was not run (tool calls: {tools})")
        takeovers = [t for t in report.get("takeovers") or [] if isinstance(t, dict)]
        if len(takeovers) != 1:
            problems.append(f"{len(takeovers)} takeovers on the report, expected one")
        elif run.pid_b is None or pid_of(takeovers[0].get("by")) != run.pid_b:
            problems.append(f"taken over by {takeovers[0].get('by')}, not replica B (pid {run.pid_b})")
    if run.taken_over_logged_by != ["B"]:
        problems.append(f"call.taken_over logged by {run.taken_over_logged_by or 'no replica'}, expected B only")
    return problems


class _Stuck(Exception):
    """A wait of the demo ran out."""


async def _until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    try:
        async with asyncio.timeout(timeout):
            # the simulator's records and the sink's deliveries have no event to wait on: polled
            while not predicate():  # noqa: ASYNC110
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise _Stuck(f"timed out after {timeout:g} s waiting for {what}") from None


def _analyzed(sink: ReportSink, call_id: str) -> dict[str, Any] | None:
    """The call's analysis from the first ``call.analyzed`` event the sink received for it."""
    for delivery in sink.of_type("call.analyzed"):
        analysis = delivery.data.get("analysis") if delivery.call_id == call_id else None
        if isinstance(analysis, dict):
            return analysis
    return None


def _answered(call: SimCall) -> bool:
    """The answer to the caller's question has been heard in full: the caller is quiet from here."""
    return any(r.transcript == ANSWER and r.audio_stopped_at is not None for r in call.responses)


async def run_takeover(
    *, time_scale: float, timeout: float = 90.0, started: asyncio.Event | None = None
) -> TakeoverRun:
    """Place the call on replica A, SIGKILL A while the caller is quiet, let B take the call over and finish it;
    collect what every side saw and :func:`check` it. Never raises for a failed run: ``problems`` says why.

    A and B are one replica each (:class:`Replicas` of one, each with its folder and log) on the same SQLite file,
    migrated here first so that they can start together. ``started`` is set once both are up (or could not start):
    ``sipctl demo`` starts the scenario's calls then, so that they do not share the CPU with two start-ups."""
    try:
        return await _run_takeover(time_scale=time_scale, timeout=timeout, started=started or asyncio.Event())
    finally:
        if started is not None:
            started.set()


async def _run_takeover(*, time_scale: float, timeout: float, started: asyncio.Event) -> TakeoverRun:
    run = TakeoverRun(time_scale=time_scale)
    secret = new_webhook_secret()
    sides: dict[str, Replicas] = {}
    with tempfile.TemporaryDirectory(prefix="sipctl-demo-") as folder:
        try:
            async with asyncio.timeout(timeout):
                async with Simulator(webhook_secret=secret, time_scale=time_scale) as sim, ReportSink() as sink:
                    store_path = Path(folder) / "sipctl-state.db"
                    env = {
                        **endpoints_env([sink.url]),
                        "SIPCTL_STATE__PATH": str(store_path),
                        # the demo's analysis (#17): the survivor analyses the call and sends call.analyzed
                        "SIPCTL_PROFILES__DEFAULT__ANALYSIS": json.dumps(
                            DEMO_ANALYSIS.model_dump(mode="json", by_alias=True, exclude_none=True)
                        ),
                    }
                    for name in ("A", "B"):
                        sides[name] = Replicas(
                            1,
                            workdir=Path(folder) / name,
                            api_base=sim.base_url,
                            api_key=sim.api_key,
                            webhook_secret=secret,
                            env=env,
                            lease_s=LEASE_S,
                            heartbeat_s=HEARTBEAT_S,
                        )
                    # the schema first (what ``sipctl migrate`` does before a deployment): then A and B start together
                    await (await SQLiteStore.open(store_path)).aclose()
                    async with contextlib.AsyncExitStack() as stack:
                        side_a, side_b = sides["A"], sides["B"]
                        for side in (side_a, side_b):
                            stack.push_async_callback(side.aclose)
                        results = await asyncio.gather(
                            side_a.__aenter__(), side_b.__aenter__(), return_exceptions=True
                        )
                        started.set()
                        for result in results:
                            if isinstance(result, BaseException):
                                raise result
                        a, b = side_a.replicas[0], side_b.replicas[0]
                        run.pid_a = a.proc.pid if a.proc else None
                        run.pid_b = b.proc.pid if b.proc else None
                        sim.webhook_url = a.webhook_url
                        call = run.call = await sim.place_call(takeover_call(time_scale))
                        await _until(lambda: _answered(call), 30, "the answer to the caller's question")
                        await _until(
                            lambda: any(d.call_id == call.call_id for d in sink.of_type("call.started")),
                            15,
                            "call.started",
                        )
                        await asyncio.sleep(KILL_AFTER_S)
                        run.killed_at = await side_a.kill(a.index)
                        # the simulator's clock at the signal (``kill`` returns once the process is reaped)
                        run.killed_sim = sim.now() - (time.time() - run.killed_at)
                        try:
                            await sim.wait_ended(call.call_id, 30)
                        except TimeoutError:
                            raise _Stuck("timed out after 30 s waiting for the call to end") from None
                        await _until(lambda: call.call_id in sink.ended_by_call(), 15, "call.ended")
                        await _until(lambda: _analyzed(sink, call.call_id) is not None, 15, "call.analyzed")
                        run.analysis = _analyzed(sink, call.call_id)
                        run.taken_over_logged_by = [
                            name
                            for name, side in sides.items()
                            for e in side.events("call.taken_over")
                            if e.get("call_id") == call.call_id
                        ]
                    # B has stopped (a drain): a second report of the call would have been sent by now
                    run.reports = [d.data for d in sink.ended_by_call().get(call.call_id, [])]
                    run.started_reports = len(
                        {d.webhook_id for d in sink.of_type("call.started") if d.call_id == call.call_id}
                    )
        except Exception as exc:  # a timeout, a replica that would not start, the store: the demo's verdict
            if isinstance(exc, _Stuck | TimeoutError):
                run.error = str(exc) or f"timed out after {timeout:g} s"
            else:
                run.error = f"{type(exc).__name__}: {exc}"
            run.logs = "\n".join(f"replica {name}: …{side.log_tail(0, 1500)}" for name, side in sides.items())
    run.problems = check(run)
    return run


# ---- printing -------------------------------------------------------------------------------------------------


def _at_s(iso: object, base: float) -> float | None:
    if not isinstance(iso, str):
        return None
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() - base
    except ValueError:
        return None


def _replica(process_id: object, run: TakeoverRun) -> str:
    pid = pid_of(process_id)
    if pid is not None and pid == run.pid_b:
        return "replica B"
    if pid is not None and pid == run.pid_a:
        return "replica A"
    return "an unknown process"


def timeline(run: TakeoverRun) -> list[tuple[float, str, str]]:
    """The call's timeline from its report (``at_s``, who, what), with the SIGKILL and the sideband's re-attach
    at the simulator (``demo``), which only the demo knows, in their places."""
    report, call = run.report, run.call
    if report is None:
        return []
    stamps = report.get("timestamps") or {}
    received = _at_s(stamps.get("received_at"), 0.0)
    if received is None:
        return []
    lines: list[tuple[float, str, str]] = [(0.0, "controller", "webhook received (replica A)")]
    for key, what in (("accepted_at", "accepted"), ("attached_at", "sideband attached")):
        at = _at_s(stamps.get(key), received)
        if at is not None:
            lines.append((at, "controller", what))
    for t in report.get("transcript") or []:
        lines.append((float(t["at_s"]), str(t["role"]), f"“{t['text']}”"))
    for tool in report.get("tool_calls") or []:
        arguments = json.dumps(tool.get("arguments"), ensure_ascii=False)
        lines.append((float(tool["at_s"]), "controller", f"tool {tool['name']} {arguments}: {tool['outcome']}"))
    if run.killed_at is not None:
        lines.append((run.killed_at - received, "demo", "replica A SIGKILLed (the caller is quiet)"))
    for taken in report.get("takeovers") or []:
        at = _at_s(taken.get("at"), received)
        gap = taken.get("gap_s")
        since = f", {gap:.2f} s after A's last heartbeat" if isinstance(gap, int | float) else ""
        who = f"{_replica(taken.get('by'), run)} ({taken.get('by')}, epoch {taken.get('epoch')})"
        lines.append((at if at is not None else 0.0, "controller", f"TAKEN OVER by {who}{since}"))
    gap_s = run.gap_s
    if call is not None and gap_s is not None and run.killed_at is not None:
        lines.append((run.killed_at - received + gap_s, "demo", "the sideband re-attached by call_id"))
    duration = (report.get("timings") or {}).get("duration_s")
    if isinstance(duration, int | float):
        confirmed = " (hangup confirmed)" if report.get("hangup_confirmed") else ""
        lines.append((float(duration), "controller", f"ended: {report.get('ended_reason')}{confirmed}"))
    return sorted(lines, key=lambda line: line[0])


def print_takeover(run: TakeoverRun, out: TextIO) -> None:
    """What the call shows, its timeline, the measured gap, what each side counted, and the verdict."""
    prod = StoreSettings()
    print(f"\n── {TITLE}", file=out)
    print(
        "  Two real `sipctl serve` processes, replicas A and B, share one store (a SQLite file in a temporary "
        "folder).\n"
        f"  Lease {LEASE_S:g} s, heartbeat {HEARTBEAT_S:g} s to keep the demo quick (production defaults: "
        f"{prod.lease_s:g} s / {prod.heartbeat_s:g} s).\n"
        "  The call is placed on A; A is SIGKILLed while the caller is quiet; B takes the call over, re-attaches its\n"
        "  sideband by call_id and supervises it to its end. The caller hears nothing but a short silence.",
        file=out,
    )
    call, report = run.call, run.report
    if call is not None:
        print(f"  call {call.call_id}: replica A pid {run.pid_a}, replica B pid {run.pid_b}", file=out)
    if report is not None:
        print("  timeline (from the call.ended report; `demo` lines: what only the demo saw):", file=out)
        for at, who, what in timeline(run):
            print(f"  {at:7.2f}s  {who:<11} {what}", file=out)
        takeovers = report.get("takeovers") or []
        print(f"  report: ended_reason={report.get('ended_reason')} takeovers={json.dumps(takeovers)}", file=out)
    gap = run.gap_s
    if gap is not None:
        print(
            f"  measured gap: {gap:.2f} s from the SIGKILL to the sideband re-attached by call_id (bounded by the "
            f"lease {LEASE_S:g} s + a heartbeat {HEARTBEAT_S:g} s + the re-attach)",
            file=out,
        )
    if call is not None:
        hangup = f"{call.hangup_gap_s:.2f}s" if call.hangup_gap_s is not None else "n/a"
        print(
            f"  simulator: accepts={call.accept_count} sideband_connects={call.sideband_connects} "
            f"audio={call.audio_state} ended_by={call.ended_by} hangup_after_goodbye_audio={hangup} "
            f"call.ended reports={len(run.reports)}",
            file=out,
        )
    for problem in run.problems:
        print(f"  ✗ {problem}", file=out)
    if run.logs:
        print(f"  the replicas' logs (last lines):\n{run.logs}", file=out)
    verdict = "ok" if run.ok else "FAILED"
    print(f"\ntakeover: {verdict}", file=out)
