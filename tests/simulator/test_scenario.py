"""Scenario files: the demo scenario loads, and bad files fail with errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from sip_controller.simulator import CallSpec, ScenarioError, Step, load_scenario, parse_scenario

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "sip_controller" / "simulator" / "scenarios" / "demo.yaml"


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
