"""Scenario files: the demo scenario loads, and bad files fail with errors that name the field."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sip_controller.config import ConfigError
from sip_controller.simulator import CallSpec, ScenarioError, Step, harness, load_scenario, parse_scenario

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "sip_controller" / "simulator" / "scenarios" / "demo.yaml"
EXAMPLE = ROOT / "config" / "sipctl.example.yaml"
SHIPPED = sorted((ROOT / "config" / "scenarios").glob("*.yaml"))


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No stray SIPCTL_*/OPENAI_* variables, and a working directory other than the repository."""
    for name in list(os.environ):
        if name.upper().startswith(("SIPCTL_", "OPENAI_")):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def test_demo_scenario_loads_with_its_three_calls() -> None:
    scenario = load_scenario(DEMO)
    assert scenario.name == "demo"
    calls = {call.name: call for call in scenario.calls}
    assert list(calls) == ["goodbye", "caller-hangs-up", "duplicate-delivery"]

    goodbye = calls["goodbye"]
    assert goodbye.expect is not None
    assert (goodbye.expect.ended_by, goodbye.expect.ended_reason) == ("agent", "agent_end_call")
    assert (goodbye.expect.accept_count, goodbye.expect.hangup_after_audio) == (1, True)
    assert goodbye.expect.greeting_heard is True
    last = goodbye.steps[-1]
    assert last.tool is not None
    assert last.tool.name == "end_call"
    assert last.then == "Thanks for calling, goodbye!"

    hangs_up = calls["caller-hangs-up"]
    assert hangs_up.expect is not None
    assert (hangs_up.expect.ended_by, hangs_up.expect.ended_reason) == ("caller", "caller_hangup")
    assert hangs_up.steps[-1].hangup is True

    dupes = calls["duplicate-delivery"]
    assert dupes.deliveries == 3
    assert dupes.expect is not None
    assert (dupes.expect.accept_count, dupes.expect.ended_reason) == (1, "agent_end_call")


def test_defaults_match_the_documented_ones() -> None:
    spec = CallSpec(name="x")
    assert (spec.caller, spec.dialed, spec.deliveries, spec.refer) == (
        "+14155550123",
        "+18005550100",
        1,
        "succeed",
    )
    assert (spec.ring_timeout, spec.greeting_wait, spec.max_call_seconds) == (20.0, 1.5, 30.0)
    assert spec.steps == [] and spec.headers == {} and spec.expect is None  # noqa: PT018
    assert spec.session_update_delay is None


BAD_FILE = """\
name: broken
calls:
  - name: first
    steps:
      - say: Hello
        reply: Hi
      - sya: Typo here
  - name: second
    caller: "0044 20 7946 0000"
    refer: maybe
    expect:
      ended_by: someone
      acept_count: 1
"""


def test_bad_file_names_every_bad_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD_FILE)
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    message = str(caught.value)
    assert str(path) in message
    assert "calls[0] (first).steps[1].sya: unknown field" in message
    assert "calls[1] (second).caller:" in message
    assert "calls[1] (second).refer:" in message
    assert "calls[1] (second).expect.ended_by:" in message
    assert "calls[1] (second).expect.acept_count: unknown field" in message


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        pytest.param("name: x\n", "calls: field required", id="no-calls"),
        pytest.param("- just\n- a list\n", "must be a mapping", id="not-a-mapping"),
        pytest.param("name: x\ncalls: [{name: a}, {name: a}]\n", "unique", id="duplicate-names"),
        pytest.param(
            "name: x\ncalls:\n  - name: a\n    steps: [{say: hi, wait: 1}]\n", "exactly one", id="two-keys"
        ),
        pytest.param(
            "name: x\ncalls:\n  - name: a\n    steps: [{then: bye}]\n", "exactly one", id="no-main-key"
        ),
        pytest.param(
            "name: x\ncalls:\n  - {name: a, steps: [{say: hi, then: bye}]}\n",
            "then only goes with tool",
            id="then-without-tool",
        ),
        pytest.param(
            "name: x\ncalls:\n  - {name: a, steps: [{hangup: false}]}\n",
            "hangup must be true",
            id="hangup-false",
        ),
        pytest.param(
            "name: x\ncalls:\n  - {name: a, deliveries: 0}\n", "calls[0] (a).deliveries", id="deliveries"
        ),
        pytest.param(
            "name: x\ncalls:\n  - {name: a, headers: {'Bad Header': v}}\n",
            "invalid SIP header name",
            id="header-name",
        ),
        pytest.param(
            "name: x\ncalls:\n  - {name: a, session_update_delay: -1}\n",
            "calls[0] (a).session_update_delay",
            id="negative-update-delay",
        ),
        pytest.param(
            "name: x\ncalls:\n  - {name: a, expect: {max_hangup_after_error_s: -0.5}}\n",
            "calls[0] (a).expect.max_hangup_after_error_s",
            id="negative-hangup-limit",
        ),
        pytest.param("name: [unclosed\n", "not valid YAML", id="yaml-syntax"),
    ],
)
def test_bad_scenarios_are_explained(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(ScenarioError, match=r"s\.yaml") as caught:
        load_scenario(path)
    assert fragment in str(caught.value)


def test_missing_file_is_a_scenario_error(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="cannot read"):
        load_scenario(tmp_path / "nope.yaml")


def test_parse_scenario_accepts_plain_data() -> None:
    scenario = parse_scenario(
        {"name": "x", "calls": [{"name": "a", "steps": [{"dtmf": "12#"}, {"wait": 0}]}]}
    )
    assert scenario.calls[0].steps == [Step(dtmf="12#"), Step(wait=0)]
    assert [step.kind for step in scenario.calls[0].steps] == ["dtmf", "wait"]


def test_update_delay_and_hangup_limit_load_from_yaml(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(
        "name: x\ncalls:\n  - name: a\n    session_update_delay: 0.5\n"
        "    expect: {max_hangup_after_error_s: 2}\n"
    )
    (call,) = load_scenario(path).calls
    assert call.session_update_delay == 0.5
    assert call.expect is not None
    assert call.expect.max_hangup_after_error_s == 2.0


# ---- a scenario names the config it needs (issue 14, item 14) ---------------------------------------------------


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_scenario_names_a_config_that_can_serve_it(path: Path) -> None:
    """What `sipctl simulate config/scenarios/<name>.yaml` loads, from any working directory, without --config."""
    assert load_scenario(path).config_path == EXAMPLE
    prepared = harness.prepare(path)
    assert prepared.config_path == EXAMPLE
    assert prepared.config_origin == f"{path}: config"


@pytest.mark.usefixtures("clean_env")
def test_the_scenario_config_is_relative_to_the_scenario_file(tmp_path: Path) -> None:
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "sales.yaml").write_text(
        "default_profile: sales\nprofiles:\n  sales: {voice: cedar}\n", encoding="utf-8"
    )
    (tmp_path / "scenarios").mkdir()
    scenario = tmp_path / "scenarios" / "s.yaml"
    scenario.write_text(
        "name: s\nconfig: ../configs/sales.yaml\ncalls: [{name: a, expect: {profile: sales}}]\n", encoding="utf-8"
    )
    (tmp_path / "elsewhere").mkdir()
    os.chdir(tmp_path / "elsewhere")
    prepared = harness.prepare(scenario)
    assert prepared.settings.default_profile == "sales"
    assert prepared.config_path == tmp_path / "configs" / "sales.yaml"


@pytest.mark.usefixtures("clean_env")
def test_a_missing_scenario_config_is_named_by_the_scenario_key(tmp_path: Path) -> None:
    scenario = tmp_path / "s.yaml"
    scenario.write_text("name: s\nconfig: nope.yaml\ncalls: [{name: a}]\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        harness.prepare(scenario)
    (line,) = info.value.problems
    assert line.startswith(f"{scenario}: config: '{tmp_path / 'nope.yaml'}' does not exist")


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("transfer", "front_desk is not a transfer target of profile default"),
        ("keypad", "front_desk is not a transfer target of profile default"),
        ("hold", "expects profile claims_line, which this config does not define"),
        ("budget", "expects profile hotline, which this config does not define"),
        ("python-tool", "opening_hours, which profile default does not offer"),
        ("denied-caller", None),
    ],
)
def test_a_config_that_cannot_serve_the_scenario_is_refused_before_any_call(
    tmp_path: Path, name: str, reason: str | None
) -> None:
    plain = tmp_path / "plain.yaml"
    plain.write_text("profiles:\n  default: {voice: marin}\n", encoding="utf-8")
    path = ROOT / "config" / "scenarios" / f"{name}.yaml"
    if reason is None:  # nothing in the config contradicts the scenario: it runs, and its outcome will tell
        assert harness.prepare(path, config=plain).config_path == plain
        return
    with pytest.raises(ScenarioError) as info:
        harness.prepare(path, config=plain)
    message = str(info.value)
    assert message.startswith(f"{path}: the config {plain} (--config) cannot serve this scenario")
    assert reason in message
    assert f"written for {EXAMPLE}" in message  # the fix: the config the scenario names


@pytest.mark.usefixtures("clean_env")
def test_a_config_that_refuses_the_caller_cannot_serve_a_call_expected_to_be_answered(tmp_path: Path) -> None:
    strict = tmp_path / "strict.yaml"
    strict.write_text("callers:\n  allow: ['+44*']\n", encoding="utf-8")
    with pytest.raises(ScenarioError, match=r"calls\[0\] \(goodbye\): this config refuses the caller"):
        harness.prepare(ROOT / "config" / "scenarios" / "goodbye.yaml", config=strict)
