"""The bounded chaos soak in ``make test``: 100 calls, 20% with injected faults, every invariant at zero."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from sip_controller.simulator import soak

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


async def test_bounded_chaos_soak(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = io.StringIO()
    reports = tmp_path / "reports.jsonl"
    result = await soak.run_soak(
        calls=100, fault_rate=0.2, seed=20251122, concurrency=25, max_wall_s=50, reports=reports, out=out
    )
    table = out.getvalue()
    with capsys.disabled():
        print("\n" + table)
    assert result.calls == 100
    assert result.faulted_calls >= 10
    assert set(result.mixes) == set(soak.FAULT_MIX)
    assert len(result.injected) >= 10, result.injected
    assert result.ended_once == 100
    assert result.never_ended == []
    assert result.ended_twice == []
    assert result.double_accepts == []
    assert result.orphans == []
    assert result.late_accepts == []
    assert result.reports_written == 100
    assert result.missing_reports == []
    assert result.webhook_5xx == 0
    assert result.webhook_unanswered == 0
    assert result.unfinished_sim_calls == []
    assert result.sim_task_errors == 0
    assert not result.timed_out
    assert result.wall_s < 50
    assert result.ok, table
    lines = reports.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 100
    assert all(json.loads(line)["ended_reason"] for line in lines)
    assert "ended exactly once" in table
    assert "result" in table


def test_the_plan_is_seeded() -> None:
    first = soak.plan(200, 0.2, seed=3)
    again = soak.plan(200, 0.2, seed=3)
    other = soak.plan(200, 0.2, seed=4)
    assert [(s.model_dump(), k) for s, k in first] == [(s.model_dump(), k) for s, k in again]
    assert [k for _, k in first] != [k for _, k in other]
    kinds = {k for _, k in first if k is not None}
    assert kinds == set(soak.FAULT_MIX)
    assert 20 <= sum(k is not None for _, k in first) <= 60
    assert len({s.caller for s, _ in first}) == 200


def test_a_finished_twice_or_orphaned_call_fails_the_result() -> None:
    result = soak.SoakResult(calls=1, seed=1, fault_rate=0.0, wall_s=0.1, ended_once=1)
    assert result.ok
    result.ended_twice.append("rtc_x")
    assert not result.ok
    assert "FAILED" in result.table()
    result = soak.SoakResult(calls=1, seed=1, fault_rate=0.0, wall_s=0.1, ended_once=1, orphans=["rtc_y"])
    assert not result.ok


@pytest.mark.parametrize("kwargs", [{"calls": 0}, {"fault_rate": 1.5}, {"concurrency": 0}])
async def test_bounds_are_checked(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be"):
        await soak.run_soak(**kwargs)  # type: ignore[arg-type]


def test_sipctl_soak_arguments() -> None:
    from sip_controller.cli import _parser

    args = _parser().parse_args(["soak", "--calls", "50", "--fault-rate", "0.3", "--seed", "9", "--concurrency", "5"])
    assert (args.command, args.calls, args.fault_rate, args.seed, args.concurrency) == ("soak", 50, 0.3, 9, 5)
    defaults = _parser().parse_args(["soak"])
    assert (defaults.calls, defaults.fault_rate, defaults.concurrency) == (1000, 0.2, 25)
