"""End to end: real uvicorn controller + the simulator on loopback, outcomes asserted on both sides."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from sip_controller.cli import main
from sip_controller.config import AgentProfile, Settings, TurnDetection
from sip_controller.simulator import CallSpec, Expectation, Step, ToolCall, harness, load_scenario, new_webhook_secret

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

SCALE = 0.05
DEMO = Path(__file__).parents[2] / "sip_controller" / "simulator" / "scenarios" / "demo.yaml"


def goodbye_call(name: str = "goodbye", **kwargs: object) -> CallSpec:
    return CallSpec.model_validate(
        {
            "name": name,
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


async def test_demo_scenario_outcomes_on_both_sides() -> None:
    settings = harness.with_demo_outbound(Settings())
    run = await harness.run_scenario(load_scenario(DEMO), settings, time_scale=SCALE, timeout=30)
    assert list(run.problems.values()) == [[] for _ in range(len(run))]
    outcomes = run.calls
    by_name = {o.spec.name: o for o in outcomes}

    bye = by_name["goodbye"]
    assert bye.record is not None
    assert bye.record.ended_reason == "agent_end_call"
    body = bye.sim.accept_bodies[0]
    assert body["type"] == "realtime"
    assert body["audio"]["input"]["format"] == {"type": "audio/pcmu"} == body["audio"]["output"]["format"]
    assert body["audio"]["output"]["voice"] == "marin"
    assert "voice" not in body
    assert [t["name"] for t in body["tools"]] == ["end_call"]
    # hung up after the goodbye's output_audio_buffer.stopped, never over it
    assert bye.sim.hangup_count == 1
    assert bye.sim.hangup_gap_s is not None
    assert bye.sim.hangup_gap_s >= 0
    assert not bye.sim.audio_playing_at_hangup
    assert bye.sim.greeting_heard
    callers = [t.text for t in bye.record.transcripts if t.role == "caller"]
    assistant = [t.text for t in bye.record.transcripts if t.role == "assistant"]
    assert callers == ["Hi, what are your opening hours on Saturday?", "Great, that is all I needed. Goodbye!"]
    assert "Thanks for calling, goodbye!" in assistant
    assert [t.name for t in bye.record.tool_calls] == ["end_call"]
    assert bye.record.usage.responses >= 3

    hung = by_name["caller-hangs-up"]
    assert hung.record is not None
    assert hung.record.ended_reason == "caller_hangup"
    assert hung.sim.hangup_count == 0

    dup = by_name["duplicate-delivery"]
    assert dup.sim.delivery_statuses == [200, 200, 200]
    assert dup.sim.accept_count == 1

    # through Twilio (#16): the outbound call a person answers, the one a voicemail answers, the call to the number
    placed, voicemail, inbound = run.twilio
    assert [(o.name, o.direction) for o in run.twilio] == [
        ("twilio-outbound", "outbound"), ("twilio-voicemail", "outbound"), ("twilio-inbound", "inbound")
    ]
    for outcome in (placed, inbound):
        assert outcome.twilio is not None
        assert outcome.record is not None
        assert outcome.record.twilio_call_sid == outcome.twilio.sid
        assert outcome.record.ended_reason == "agent_end_call"
        assert [leg.call_id for leg in outcome.legs] == outcome.twilio.openai_call_ids
    assert placed.record is not None
    assert placed.record.profile == harness.DEMO_OUTBOUND_PROFILE
    assert "calling Ada for Example Dental" in placed.legs[0].accept_bodies[0]["instructions"]
    assert voicemail.twilio is not None
    assert voicemail.record is not None
    assert (voicemail.twilio.answered_by, voicemail.record.ended_reason) == ("machine_end_beep", "voicemail")
    assert voicemail.twilio.beep_at is not None
    assert "Hi Sam, this is Example Dental" in " ".join(voicemail.twilio.voicemail_message)


def test_sipctl_demo_passes_and_shows_the_call_taken_over_after_its_controller_is_killed(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``sipctl demo`` (``make demo``): the scenario's calls, the call steered through the admin API and the takeover
    call (two ``sipctl serve`` processes, the first SIGKILLed mid-call), which the second supervises to its end; the
    timeline shows the takeover after the kill, and the measured gap is within the lease, a heartbeat and the
    re-attach; it ends with each call's analysis and the console's address with the demo's admin token."""
    for name in list(os.environ):
        if name.upper().startswith(("SIPCTL_", "OPENAI_")):
            monkeypatch.delenv(name, raising=False)  # a fresh machine: no API key, built-in defaults
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--time-scale", "0.2"]) == 0
    out = capsys.readouterr().out
    assert "3 passed, 0 failed" in out
    # the Twilio calls: their Twilio timelines beside the OpenAI legs
    assert "twilio: 3 passed, 0 failed" in out
    twilio = out[out.index("── twilio outbound: twilio-outbound") : out.index("twilio: 3 passed")]
    assert "twilio  status callback in-progress → HTTP 200" in twilio
    assert "twilio  dials sip:proj_sipctlsim@sip.api.openai.com;transport=tls → rtc_" in twilio
    assert "controller  accepted" in twilio
    assert "── twilio inbound: twilio-inbound" in twilio
    assert "twilio  voicemail beep" in twilio
    assert "controller  ended: voicemail" in twilio
    takeover = out[out.index("── takeover: the controller is killed mid-call") :]
    lines = takeover.splitlines()
    kill = next(i for i, line in enumerate(lines) if "replica A SIGKILLed (the caller is quiet)" in line)
    taken = next(i for i, line in enumerate(lines) if "TAKEN OVER by replica B" in line)
    goodbye = next(i for i, line in enumerate(lines) if "“Great, thanks. Goodbye!”" in line)
    assert kill < taken < goodbye
    assert "ended: agent_end_call (hangup confirmed)" in takeover
    assert '"gap_s": ' in takeover
    gap = re.search(r"measured gap: (\d+\.\d+) s from the SIGKILL to the sideband re-attached by call_id", takeover)
    assert gap is not None, takeover
    assert 0 < float(gap.group(1)) <= 1.5 + 2 * 0.5 + 2.0
    assert "sideband_connects=2" in takeover
    assert "call.ended reports=1" in takeover
    assert "✗" not in out
    assert "takeover: ok\n\ndemo: all 8 calls passed\n" in out
    # the steered call (#17): say now, context and say next through the admin API, each checked by the demo
    steered = out[out.index("── steered: the operator steers a live call") : out.index("steered: ok")]
    operator = [line.split("operator    ")[1] for line in steered.splitlines() if "operator    POST" in line]
    assert [line.split(" “")[0] for line in operator] == [
        "POST /v1/calls/{id}/say when=now", "POST /v1/calls/{id}/context", "POST /v1/calls/{id}/say when=next"
    ]  # fmt: skip
    assert all(line.endswith("→ 202") for line in operator)
    assert "model       received a system message: “The parcel is two days late." in steered
    assert "control: a waiting line from operator is said" in steered
    # it ends with a short analysis per call, then the console and how to sign in
    closing = out[out.index("── analyses: each call's post-call analysis") :]
    calls = ("goodbye", "caller-hangs-up", "duplicate-delivery", "twilio-outbound", "twilio-inbound", "steered",
             "takeover")  # fmt: skip
    for name in calls:  # the takeover call's by replica B, which finished it (its call.analyzed)
        assert re.search(rf"^  {re.escape(name)} +(success|no success) +The caller said: ", closing, re.M), name
    console = re.search(r"^console: (http://127\.0\.0\.1:\d+)/  sign in with the admin token (\S+)$", closing, re.M)
    assert console is not None, closing
    assert f"{console.group(1)}/?token={console.group(2)} once" in closing
    assert out.rstrip().endswith("`sipctl demo --serve` keeps it up, with these calls, until Ctrl-C")
    assert "whsec_" not in out
    assert "sk-" not in out


async def test_bad_signature_gets_401_and_the_call_is_never_accepted() -> None:
    async with harness.running_stack(Settings(), time_scale=SCALE, controller_secrets=(new_webhook_secret(),)) as st:
        call = await st.sim.place_call(goodbye_call(ring_timeout=3))
        call = await st.sim.wait_ended(call.call_id, 15)
        assert call.delivery_statuses
        assert set(call.delivery_statuses) == {401}
        assert call.accept_count == 0
        assert call.ended_by == "missed"
        assert st.runtime.registry.get(call.call_id) is None


async def test_secret_rotation_accepts_either_secret() -> None:
    old = new_webhook_secret()
    async with harness.running_stack(Settings(), time_scale=SCALE) as st:
        # the controller knows an old secret first and the simulator's one second
        st.runtime.verifier = type(st.runtime.verifier)([old, st.sim.webhook_secret])
        spec = goodbye_call(expect=Expectation(ended_reason="agent_end_call"))
        outcome = await harness.run_call(st, spec, timeout=20)
    assert outcome.problems == []


async def test_vad_tuning_is_sent_by_session_update_not_on_accept() -> None:
    profile = AgentProfile(turn_detection=TurnDetection(silence_duration_ms=700, threshold=0.6))
    async with harness.running_stack(Settings(profiles={"default": profile}), time_scale=SCALE) as st:
        outcome = await harness.run_call(st, goodbye_call(), timeout=20)
    sim = outcome.sim
    assert sim.accept_errors == []
    accept_td = sim.accept_bodies[0]["audio"]["input"]["turn_detection"]
    assert "silence_duration_ms" not in accept_td
    assert "threshold" not in accept_td
    update = sim.session_updates[0]
    assert update["type"] == "realtime"
    assert update["audio"]["input"]["turn_detection"]["silence_duration_ms"] == 700
    assert update["audio"]["input"]["format"] == update["audio"]["output"]["format"] == {"type": "audio/pcmu"}
    assert sim.session["audio"]["input"]["turn_detection"]["threshold"] == 0.6
    assert sim.audio_state == "clean"
    assert outcome.record is not None
    assert outcome.record.ended_reason == "agent_end_call"


async def test_negotiated_codec_omits_formats_and_stays_clean_without_tools() -> None:
    profile = AgentProfile(codec="negotiated", tools=(), greeting=None)
    spec = CallSpec(name="negotiated", steps=[Step(say="Hello?", reply="Hi there."), Step(hangup=True)])
    async with harness.running_stack(Settings(profiles={"default": profile}), time_scale=SCALE) as st:
        outcome = await harness.run_call(st, spec, timeout=20)
    body = outcome.sim.accept_bodies[0]
    assert "format" not in body["audio"]["input"]
    assert "format" not in body["audio"]["output"]
    assert "tools" not in body
    assert outcome.sim.audio_state == "clean"
    assert not outcome.sim.greeting_heard
    assert outcome.record is not None
    assert outcome.record.ended_reason == "caller_hangup"


async def test_concurrent_calls_each_end_once() -> None:
    specs = [goodbye_call(f"call-{i}", expect=Expectation(ended_reason="agent_end_call")) for i in range(6)]
    specs.append(
        CallSpec(
            name="hangs-up",
            steps=[Step(say="Hello?", reply="Hi."), Step(hangup=True)],
            expect=Expectation(ended_reason="caller_hangup", ended_by="caller"),
        )
    )
    seen: list[str] = []
    async with harness.running_stack(Settings(), time_scale=SCALE) as st:
        st.runtime.registry.on_finished.append(lambda rec: seen.append(rec.call_id))
        import asyncio

        outcomes = await asyncio.gather(*(harness.run_call(st, s, timeout=30) for s in specs))
    assert [o.problems for o in outcomes] == [[] for _ in outcomes]
    assert sorted(seen) == sorted(o.sim.call_id for o in outcomes)
    assert all(o.sim.accept_count == 1 for o in outcomes)


def test_tool_call_model_is_exported() -> None:
    assert ToolCall(name="end_call").name == "end_call"
