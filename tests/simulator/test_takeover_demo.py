"""The demo's taken-over call (``simulator/takeover_demo.py``): its pass/fail check and what it prints, on
recorded outcomes (the run itself, with real ``sipctl serve`` processes, is in tests/e2e/test_call_flow.py)."""

from __future__ import annotations

import copy
import io
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from sip_controller.simulator import CallSpec, SimCall
from sip_controller.simulator.takeover_demo import TakeoverRun, check, pid_of, print_takeover, timeline

RECEIVED = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
PID_A, PID_B = 4101, 4202


def _report() -> dict[str, Any]:
    return {
        "call_id": "rtc_demo",
        "ended_reason": "agent_end_call",
        "timestamps": {
            "received_at": "2026-01-01T00:00:00.000Z",
            "accepted_at": "2026-01-01T00:00:00.010Z",
            "attached_at": "2026-01-01T00:00:00.020Z",
        },
        "timings": {"duration_s": 7.1},
        "transcript": [
            {"role": "assistant", "text": "Hello!", "at_s": 0.02},
            {"role": "caller", "text": "Opening hours?", "at_s": 2.7},
            {"role": "caller", "text": "Goodbye!", "at_s": 6.5},
        ],
        "tool_calls": [
            {"name": "end_call", "arguments": {"reason": "caller said goodbye"}, "at_s": 6.51, "outcome": "ok"}
        ],
        # a host name with dashes: the pid is the second field from the end
        "takeovers": [{"at": "2026-01-01T00:00:05.900Z", "gap_s": 1.6, "by": f"demo-host-{PID_B}-a1b2c3", "epoch": 2}],
        "hangup_confirmed": True,
    }


def _run() -> TakeoverRun:
    """A run where everything went right: B took the call over 1.3 s after the kill and finished it."""
    call = SimCall(call_id="rtc_demo", name="takeover", spec=CallSpec(name="takeover"), webhook_id="wh",
                   event_id="evt", placed_at=0.0)  # fmt: skip
    call.accept_count = 1
    call.greeting_heard = True
    call.ended_by = "agent"
    call.hangup_count = 1
    call.hangup_gap_s = 0.0
    call.sideband_connects = 2
    call.sideband_attached_at = [0.5, 11.3]
    call.ended_at = 12.5
    return TakeoverRun(
        time_scale=0.5,
        call=call,
        reports=[_report()],
        started_reports=1,
        pid_a=PID_A,
        pid_b=PID_B,
        killed_at=RECEIVED + 4.7,
        killed_sim=10.0,
        taken_over_logged_by=["B"],
    )


def _printed(run: TakeoverRun) -> str:
    out = io.StringIO()
    print_takeover(run, out)
    return out.getvalue()


def test_a_call_taken_over_by_b_and_finished_passes_and_its_timeline_shows_the_takeover_and_the_gap() -> None:
    run = _run()
    assert check(run) == []
    assert run.gap_s == pytest.approx(1.3)
    whats = [what for _, _, what in timeline(run)]
    kill = whats.index("replica A SIGKILLed (the caller is quiet)")
    taken = next(i for i, w in enumerate(whats) if w.startswith("TAKEN OVER by replica B"))
    reattached = whats.index("the sideband re-attached by call_id")
    goodbye = whats.index("“Goodbye!”")
    assert kill < taken < reattached < goodbye
    assert whats[-1] == "ended: agent_end_call (hangup confirmed)"
    at = {what: at_s for at_s, _, what in timeline(run)}
    assert at["the sideband re-attached by call_id"] == pytest.approx(6.0)
    assert at[whats[taken]] == pytest.approx(5.9)

    text = _printed(run)
    assert "── takeover: the controller is killed mid-call" in text
    assert "production defaults: 6 s / 2 s" in text
    assert f"TAKEN OVER by replica B (demo-host-{PID_B}-a1b2c3, epoch 2), 1.60 s after A's last heartbeat" in text
    assert "measured gap: 1.30 s from the SIGKILL to the sideband re-attached by call_id" in text
    assert text.rstrip().endswith("takeover: ok")
    assert "✗" not in text


def _two_reports(run: TakeoverRun) -> None:
    run.reports.append(copy.deepcopy(run.reports[0]))


def _no_takeover(run: TakeoverRun) -> None:
    run.reports[0]["takeovers"] = []


def _taken_by_a(run: TakeoverRun) -> None:
    run.reports[0]["takeovers"][0]["by"] = f"demo-host-{PID_A}-a1b2c3"


def _left_up(run: TakeoverRun) -> None:
    assert run.call is not None
    run.call.ended_by = "caller"
    run.call.max_call_reached = True


def _never_reattached(run: TakeoverRun) -> None:
    assert run.call is not None
    run.call.sideband_connects = 1
    run.call.sideband_attached_at = [0.5]


def _over_before_the_kill(run: TakeoverRun) -> None:
    assert run.call is not None
    run.call.ended_at = 9.0  # the simulator's clock; the kill was at 10.0


def _hung_up_by_another_reason(run: TakeoverRun) -> None:
    run.reports[0]["ended_reason"] = "session_error"


@pytest.mark.parametrize(
    ("spoil", "problem"),
    [
        (_two_reports, "reported 2 times (call.ended), expected once"),
        (lambda run: run.reports.clear(), "reported 0 times (call.ended), expected once"),
        (_no_takeover, "0 takeovers on the report, expected one"),
        (_taken_by_a, f"taken over by demo-host-{PID_A}-a1b2c3, not replica B (pid {PID_B})"),
        (_left_up, "not supervised to its end: ended by caller, left up=True"),
        (_never_reattached, "1 sideband connects, expected 2 (the attach and one re-attach)"),
        (_hung_up_by_another_reason, "ended_reason session_error, expected agent_end_call"),
        (_over_before_the_kill, "the call ended before replica A was killed"),
    ],
)
def test_the_takeover_call_fails_when_it_was_not_finished_taken_over_once_and_reported_once(
    spoil: Callable[[TakeoverRun], None], problem: str
) -> None:
    run = _run()
    spoil(run)
    run.problems = check(run)
    assert problem in run.problems
    assert not run.ok
    text = _printed(run)
    assert f"✗ {problem}" in text
    assert text.rstrip().endswith("takeover: FAILED")


def test_a_run_that_stopped_early_fails_with_its_reason_and_the_replicas_logs() -> None:
    run = TakeoverRun(time_scale=0.5, error="timed out after 30 s waiting for call.ended", logs="replica-1: …boom")
    run.problems = check(run)
    assert run.problems == ["timed out after 30 s waiting for call.ended"]
    text = _printed(run)
    assert "✗ timed out after 30 s waiting for call.ended" in text
    assert "replica-1: …boom" in text
    assert text.rstrip().endswith("takeover: FAILED")


@pytest.mark.parametrize(
    ("process_id", "pid"),
    [("vm-12491-1a0ce1", 12491), ("my-host-name-77-abcdef", 77), ("nopid", None), ("host-x-abc", None), (None, None)],
)
def test_pid_of_reads_the_pid_in_a_lease_process_id(process_id: object, pid: int | None) -> None:
    assert pid_of(process_id) == pid
