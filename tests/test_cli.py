"""The `sipctl` CLI: check-config's exit codes and outputs, bad scenario files."""

from __future__ import annotations

import gc
import json
import os
from pathlib import Path
from typing import Any

import pytest

from sip_controller.cli import main
from tests.test_config import TWO_BAD_TOOLS

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "sipctl.example.yaml"
BROKEN = ROOT / "config" / "examples" / "broken.yaml"
#: a well-formed Standard Webhooks secret (whsec_ + base64)
GOOD_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The credentials `serve` needs, no stray SIPCTL_* variables, and a working directory without
    config/sipctl.yaml."""
    for name in list(os.environ):
        if name.upper().startswith(("SIPCTL_", "OPENAI_")):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("OPENAI_WEBHOOK_SECRET", GOOD_SECRET)
    monkeypatch.chdir(tmp_path)


def the_only_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


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


@pytest.mark.parametrize("scale", ["0", "-1"])
def test_demo_refuses_a_time_scale_that_is_not_positive_before_starting_anything(
    scale: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--time-scale", scale]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == "sipctl: --time-scale must be positive"
    assert captured.out == ""


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


# ---- start-up refusals: one line, exit 2, the same in serve and check-config (issue 14, items 12 and 15) -------

COMMANDS = [["serve", "--port", "0"], ["check-config"]]


@pytest.mark.parametrize("command", COMMANDS, ids=["serve", "check-config"])
@pytest.mark.parametrize("secret", ["whsec_a", "whsec_!!!", "whsec_", "whsec_ab,whsec_!!"])
def test_a_malformed_webhook_secret_is_one_line_and_exit_2(
    command: list[str], secret: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OPENAI_WEBHOOK_SECRET", secret)
    assert main(command) == 2
    captured = capsys.readouterr()
    line = the_only_line(captured.err)
    assert line.startswith("sipctl: OPENAI_WEBHOOK_SECRET: ")
    assert "base64" in line
    assert "copy" in line  # the fix
    bad = secret.split(",")[-1]
    if bad != "whsec_":  # the secret is never echoed (the bare prefix is named in the fix)
        assert bad not in line.removeprefix("sipctl: OPENAI_WEBHOOK_SECRET: ")
    assert "Traceback" not in captured.err
    assert captured.out == ""


@pytest.mark.parametrize("command", COMMANDS, ids=["serve", "check-config"])
def test_a_config_path_that_is_a_directory_is_one_line_and_exit_2(
    command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "sipctl.yaml"
    folder.mkdir()
    assert main(["--config", str(folder), *command]) == 2
    line = the_only_line(capsys.readouterr().err)
    assert line.startswith(f"sipctl: --config: {str(folder)!r} is a directory")
    assert "YAML config file" in line


@pytest.mark.parametrize("command", COMMANDS, ids=["serve", "check-config"])
def test_an_unreadable_config_file_is_one_line_and_exit_2(
    command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "sipctl.yaml"
    path.write_text("port: 8000\n", encoding="utf-8")
    path.chmod(0)
    if os.access(path, os.R_OK):  # root reads anything: make the read fail the way it fails for others
        real_open = Path.open

        def deny(self: Path, *args: Any, **kwargs: Any) -> Any:
            if self == path:
                raise PermissionError(13, "Permission denied", str(path))
            return real_open(self, *args, **kwargs)

        monkeypatch.setattr(Path, "open", deny)
    assert main(["--config", str(path), *command]) == 2
    line = the_only_line(capsys.readouterr().err)
    assert line.startswith(f"sipctl: {path}: cannot read the config file (Permission denied)")
    assert "readable" in line


# ---- check-config is the start-up check (issue 14, item 13) ---------------------------------------------------

SEVERAL_PROBLEMS = """\
limits:
  max_concurrent_calls: many
  dedupe_ttl_s: 60
routes:
  - {profile: sales, dialed: ["+1800555*"]}
  - {profile: default, dialed: ["18005550100"]}
  - {profile: default, header: Customer, values: [gold]}
  - {profile: default, dialed: ["abc"]}
reports:
  endpoints:
    - {url: "https://ops.example.com/hooks/calls", secret_env: SIPCTL_TEST_REPORT_SECRET}
"""


def problem_lines(err: str) -> list[str]:
    return [line.removeprefix("  - ") for line in err.splitlines() if line.startswith("  - ")]


def check_config_refuses(path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> list[str]:
    """``text`` written to ``path``: check-config refuses it (exit 2); the problem lines it printed."""
    path.write_text(text, encoding="utf-8")
    assert main(["--config", str(path), "check-config"]) == 2
    return problem_lines(capsys.readouterr().err)


def test_check_config_reports_schema_and_cross_reference_problems_in_one_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "sipctl.yaml"
    found = check_config_refuses(path, SEVERAL_PROBLEMS, capsys)
    assert sorted(p.split(":", 1)[0] for p in found) == [
        "limits.dedupe_ttl_s",
        "limits.max_concurrent_calls",
        "reports.endpoints[0].secret_env",
        "routes[0].profile",
        "routes[1].dialed[0]",
        "routes[2].header",
        "routes[3].dialed[0]",
    ], found
    assert all(p.count("(got ") <= 1 for p in found), found
    assert "'+18005550100'" in next(p for p in found if p.startswith("routes[1].dialed"))
    assert "300" in next(p for p in found if p.startswith("limits.dedupe_ttl_s"))
    assert "SIPCTL_TEST_REPORT_SECRET" in next(p for p in found if p.startswith("reports.endpoints[0]"))


#: a pattern that can never match, a mistyped one, and test_config.py's two bad tools
EVERY_TOOL_AND_PATTERN = 'callers:\n  allow: ["18005550100", 5]\n' + TWO_BAD_TOOLS


def test_check_config_names_each_bad_tool_and_list_entry_by_index_in_one_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    problems = check_config_refuses(tmp_path / "sipctl.yaml", EVERY_TOOL_AND_PATTERN, capsys)
    found = [p.split(":", 1)[0] for p in problems]
    for where in (
        "profiles.default.tools[1].timeout_s",
        "profiles.default.tools[2].handler",
        "callers.allow[0]",
        "callers.allow[1]",
    ):
        assert where in found, found


def test_serve_refuses_with_exactly_what_check_config_reports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "sipctl.yaml"
    checked = check_config_refuses(path, SEVERAL_PROBLEMS, capsys)
    assert main(["--config", str(path), "serve", "--port", "0"]) == 2
    assert problem_lines(capsys.readouterr().err) == checked


@pytest.mark.parametrize("command", COMMANDS, ids=["serve", "check-config"])
def test_an_unset_report_signing_secret_is_refused_by_both(
    command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "sipctl.yaml"
    path.write_text(
        "reports:\n  endpoints:\n    - {url: 'https://ops.example.com/h', secret_env: SIPCTL_TEST_REPORT_SECRET}\n",
        encoding="utf-8",
    )
    assert main(["--config", str(path), *command]) == 2
    line = the_only_line(capsys.readouterr().err)
    assert line.startswith("sipctl: reports.endpoints[0].secret_env: ")
    assert "the environment variable SIPCTL_TEST_REPORT_SECRET is not set" in line
    assert "export" in line


def test_check_config_passes_a_report_endpoint_whose_secret_is_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "sipctl.yaml"
    path.write_text(
        "reports:\n  endpoints:\n    - {url: 'https://ops.example.com/h', secret_env: SIPCTL_TEST_REPORT_SECRET}\n",
        encoding="utf-8",
    )
    monkeypatch.setenv("SIPCTL_TEST_REPORT_SECRET", GOOD_SECRET)
    assert main(["--config", str(path), "check-config"]) == 0
    monkeypatch.setenv("SIPCTL_TEST_REPORT_SECRET", "whsec_!!!")
    assert main(["--config", str(path), "check-config"]) == 2
    assert "reports.endpoints[0].secret_env" in capsys.readouterr().err


@pytest.mark.parametrize("missing", ["OPENAI_API_KEY", "OPENAI_WEBHOOK_SECRET"])
def test_check_config_refuses_what_serve_needs_from_the_environment(
    missing: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(missing)
    assert main(["check-config"]) == 2
    assert the_only_line(capsys.readouterr().err).startswith(f"sipctl: {missing} is not set")


# ---- messages a newcomer meets (issue 14, item 15) ------------------------------------------------------------


@pytest.mark.parametrize("via", ["--port", "SIPCTL_PORT"])
def test_a_port_in_use_is_one_line_naming_the_port_setting_before_anything_starts(
    via: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        if via == "--port":
            argv = ["serve", "--port", str(port)]
        else:
            monkeypatch.setenv("SIPCTL_PORT", str(port))
            argv = ["serve"]
        assert main(argv) == 2
    captured = capsys.readouterr()
    line = the_only_line(captured.err)
    assert line.startswith(f"sipctl: {via}")
    assert f"127.0.0.1:{port} is already in use" in line
    assert "--port" in line and "SIPCTL_PORT" in line  # noqa: PT018
    assert "started" not in captured.err + captured.out


@pytest.mark.parametrize("command", COMMANDS, ids=["serve", "check-config"])
def test_a_missing_config_file_is_named_by_the_option_that_gave_it(
    command: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--config", "missing.yaml", *command]) == 2
    line = the_only_line(capsys.readouterr().err)
    assert line.startswith("sipctl: --config: 'missing.yaml' does not exist")
    monkeypatch.setenv("SIPCTL_CONFIG", "gone.yaml")
    assert main(command) == 2
    assert the_only_line(capsys.readouterr().err).startswith("sipctl: SIPCTL_CONFIG: 'gone.yaml' does not exist")


@pytest.mark.parametrize("command", COMMANDS, ids=["serve", "check-config"])
def test_a_bad_environment_override_names_the_variable_the_operator_set(
    command: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SIPCTL_LIMITS__MAX_CONCURRENT_CALLS", "abc")
    assert main(command) == 2
    line = the_only_line(capsys.readouterr().err)
    assert line.startswith("sipctl: SIPCTL_LIMITS__MAX_CONCURRENT_CALLS (limits.max_concurrent_calls): ")
    assert "valid integer" in line
    assert "(got 'abc')" in line


def test_an_environment_override_that_is_not_json_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SIPCTL_ROUTES", "abc")
    assert main(["check-config"]) == 2
    line = the_only_line(capsys.readouterr().err)
    assert line.startswith("sipctl: SIPCTL_ROUTES: ")
    assert "JSON" in line


@pytest.mark.parametrize("command", COMMANDS, ids=["serve", "check-config"])
def test_a_yaml_syntax_error_is_file_line_column_message(
    command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "sipctl.yaml"
    path.write_text("port: 8000\nprofiles:\n  default: [unclosed\n", encoding="utf-8")
    assert main(["--config", str(path), *command]) == 2
    line = the_only_line(capsys.readouterr().err)
    assert line.startswith(f"sipctl: {path}:3:")
    assert "expected ',' or ']'" in line


# ---- sipctl simulate config/scenarios/<name>.yaml, as the README writes it (issue 14, item 14) -----------------


@pytest.mark.e2e
def test_simulate_runs_a_shipped_scenario_with_the_config_it_names(capsys: pytest.CaptureFixture[str]) -> None:
    path = ROOT / "config" / "scenarios" / "keypad.yaml"
    assert main(["simulate", str(path), "--time-scale", "0.02"]) == 0
    out = capsys.readouterr().out
    assert f"config: {EXAMPLE} (named by the scenario)" in out
    assert "1 passed, 0 failed" in out


def test_simulate_refuses_a_config_that_cannot_serve_the_scenario(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plain = tmp_path / "plain.yaml"
    plain.write_text("profiles:\n  default: {voice: marin}\n", encoding="utf-8")
    path = ROOT / "config" / "scenarios" / "transfer.yaml"
    assert main(["--config", str(plain), "simulate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"sipctl: {path}: the config {plain} (--config) cannot serve this scenario")
    assert "front_desk" in err


def test_serve_refuses_an_unwritable_call_log_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("OPENAI_WEBHOOK_SECRET", "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo=")
    monkeypatch.setenv("SIPCTL_REPORTS__JSONL_PATH", str(blocker / "calls.jsonl"))
    monkeypatch.setenv("SIPCTL_STATE__PATH", str(tmp_path / "state.db"))
    assert main(["serve", "--port", "0"]) == 2
    line = the_only_line(capsys.readouterr().err)
    assert line.startswith("sipctl: reports.jsonl_path: cannot write the call log")
    assert not (tmp_path / "state.db").exists()  # refused before anything started


def test_serve_refuses_an_unusable_state_file_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("OPENAI_WEBHOOK_SECRET", "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo=")
    monkeypatch.setenv("SIPCTL_STATE__PATH", str(blocker / "state.db"))
    assert main(["serve", "--port", "0"]) == 2
    line = the_only_line(capsys.readouterr().err)
    assert line.startswith(f"sipctl: SQLite file {blocker / 'state.db'}: cannot use the state file")
    assert "state.path" in line
