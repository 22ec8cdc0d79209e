"""The `sipctl` CLI: check-config's exit codes and outputs, bad scenario files."""

from __future__ import annotations

import gc
import json
from pathlib import Path

import pytest

from sip_controller.cli import main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "sipctl.example.yaml"
BROKEN = ROOT / "config" / "examples" / "broken.yaml"


def test_check_config_on_the_broken_example_prints_every_problem_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(BROKEN), "check-config"]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("  - ")]
    assert len(lines) == 18
    assert any("temperature` was removed from the GA Realtime API" in line for line in lines)
    assert any("only function and MCP tools" in line for line in lines)


def test_check_config_json_reports_errors_as_data(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(BROKEN), "check-config", "--json"]) == 2
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False
    assert len(report["errors"]) == 18
    assert all(e.startswith("profiles.support.") for e in report["errors"])


def test_check_config_json_on_a_good_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(EXAMPLE), "check-config", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True
    assert report["errors"] == report["warnings"] == []
    default = report["profiles"]["default"]
    assert default["accept"]["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    update = default["deferred_session_update"]
    assert update["type"] == "session.update"
    assert update["session"]["type"] == "realtime"
    assert update["session"]["audio"]["input"]["turn_detection"]["silence_duration_ms"] == 600
    assert report["notes"]


def test_print_accept_prints_the_accept_bodies_and_the_deferred_update(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(EXAMPLE), "check-config", "--print-accept"]) == 0
    captured = capsys.readouterr()
    bodies = json.loads(captured.out)
    body = bodies["default"]
    assert body["type"] == "realtime"
    assert body["model"] == "gpt-realtime-2.1"
    assert body["audio"]["input"]["format"]["type"] == body["audio"]["output"]["format"]["type"] == "audio/pcmu"
    assert body["audio"]["output"]["voice"] == "marin"
    assert any(t["type"] == "function" and t["name"] == "end_call" for t in body["tools"])
    assert "session.update sent right after the sideband attaches" in captured.err


def test_check_config_prints_warnings_but_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("profiles:\n  default:\n    model: gpt-realtime-mini\n", encoding="utf-8")
    assert main(["--config", str(path), "check-config"]) == 0
    err = capsys.readouterr().err
    assert "warning: profiles.default.model: 'gpt-realtime-mini' shuts down on 2027-01-20" in err


def test_other_commands_refuse_a_broken_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(BROKEN), "demo"]) == 2
    assert "invalid configuration" in capsys.readouterr().err


def test_simulate_names_the_bad_field_of_a_scenario(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scenario = tmp_path / "s.yaml"
    scenario.write_text("name: x\ncalls:\n  - name: a\n    steps: [{say: hi, bogus: 1}]\n", encoding="utf-8")
    assert main(["--config", str(EXAMPLE), "simulate", str(scenario)]) == 2
    assert "bogus" in capsys.readouterr().err


def test_serve_tunes_the_collector_freezing_start_up_objects() -> None:
    from sip_controller.cli import GC_THRESHOLDS, _tune_gc

    before = gc.get_threshold()
    try:
        _tune_gc()
        assert gc.get_threshold() == GC_THRESHOLDS
        assert gc.get_freeze_count() > 0  # modules and models loaded so far are out of every later collection
        assert gc.isenabled()  # tuned, never switched off: cyclic garbage is still collected
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
