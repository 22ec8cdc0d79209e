"""The simulator's hold music step and its answers to out-of-band hold checks, driven over a real sideband."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from websockets.asyncio.client import ClientConnection, connect

from sip_controller.service.loopback import serve
from sip_controller.simulator import CallSpec, HoldMusic, Simulator, Step, ToolCall, new_webhook_secret
from sip_controller.simulator.events import spoken_line, transcription_usage

pytestmark = pytest.mark.anyio

SCALE = 0.02
KEY = "sk-sim-test"
PCMU = {"type": "audio/pcmu"}
TRANSCRIBE = {"model": "gpt-4o-mini-transcribe"}


def body(create_response: bool) -> dict[str, Any]:
    turn = {"type": "server_vad", "create_response": create_response}
    return {
        "type": "realtime",
        "model": "gpt-realtime-2.1",
        "instructions": "You wait on hold for the caller.",
        "audio": {
            "input": {"format": PCMU, "transcription": TRANSCRIBE, "turn_detection": turn},
            "output": {"format": PCMU, "voice": "marin"},
        },
    }


@contextlib.asynccontextmanager
async def sim() -> AsyncIterator[tuple[Simulator, httpx.AsyncClient]]:
    async def hook(request: Request) -> Response:
        return Response(status_code=200)

    secret = new_webhook_secret()
    app = Starlette(routes=[Route("/webhooks/openai", hook, methods=["POST"])])
    async with serve(app) as hooks, Simulator(webhook_secret=secret, webhook_url=f"{hooks.url}/webhooks/openai",
                         time_scale=SCALE, api_key=KEY) as simulator:
        headers = {"Authorization": f"Bearer {KEY}"}
        async with httpx.AsyncClient(base_url=simulator.base_url, headers=headers, timeout=5.0) as http:
            yield simulator, http
        assert simulator.task_errors == []


def sideband(simulator: Simulator, call_id: str) -> Any:
    url = simulator.base_url.replace("http://", "ws://") + f"/realtime?call_id={call_id}"
    return connect(url, additional_headers={"Authorization": f"Bearer {KEY}"})


async def collect(ws: ClientConnection, until: str, timeout: float = 5.0) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while True:
            seen.append(json.loads(await ws.recv()))
            if seen[-1]["type"] == until:
                return seen


def check(transcript_hint: str) -> dict[str, Any]:
    return {
        "type": "response.create",
        "event_id": "ctl_hold_check_1",
        "response": {
            "conversation": "none",
            "output_modalities": ["text"],
            "instructions": f"Is a live person speaking? Answer yes or no.\n\nTranscript: {transcript_hint}",
            "tool_choice": "none",
            "metadata": {"purpose": "sipctl_hold_check"},
        },
    }


MUSIC = HoldMusic(seconds=100, every=20, segment=4)


async def test_hold_music_is_answered_by_the_model_while_the_session_answers_on_its_own() -> None:
    spec = CallSpec(name="music-answered", greeting_wait=0, max_call_seconds=300, steps=[Step(hold_music=MUSIC)])
    async with sim() as (simulator, http):
        call = await simulator.place_call(spec)
        assert (await http.post(f"/realtime/calls/{call.call_id}/accept", json=body(True))).status_code == 200
        async with sideband(simulator, call.call_id) as ws:
            await collect(ws, "session.created")
            events: list[dict[str, Any]] = []
            for _ in range(5):
                events += await collect(ws, "response.done")
    transcripts = [e for e in events if e["type"] == "conversation.item.input_audio_transcription.completed"]
    assert [t["transcript"] for t in transcripts] == ["[hold music]"] * 5
    usage = transcripts[0]["usage"]
    assert usage["type"] == "tokens"
    assert usage["input_token_details"]["audio_tokens"] == 40  # 4 s at 10 tokens a second
    assert usage["output_tokens"] >= 1
    kinds = [e["type"] for e in events]
    assert kinds.count("input_audio_buffer.speech_started") == kinds.count("input_audio_buffer.speech_stopped") == 5
    assert kinds.count("input_audio_buffer.committed") == 5
    done = [e["response"] for e in events if e["type"] == "response.done"]
    assert [d["output"][0]["content"][0]["transcript"] for d in done] == ["Sorry, I didn't catch that."] * 5
    assert all(d["usage"]["output_token_details"]["audio_tokens"] > 0 for d in done)
    assert call.hold_segments == 5
    assert [r.source for r in call.responses] == ["auto"] * 5
    # segments come every 20 nominal seconds whatever the model does
    stamps = [t["t"] for t in call.transcripts if t["role"] == "caller"]
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert all(abs(gap - 20 * SCALE) < 10 * SCALE for gap in gaps)


async def test_hold_checks_are_text_only_out_of_band_answers_and_leave_the_callers_turn_alone() -> None:
    steps = [
        Step(hold_music=HoldMusic(seconds=40, every=20, segment=2)),
        Step(say="Hi, thanks for holding, this is Dana from billing.", reply="Hi Dana!"),
    ]
    spec = CallSpec(name="checks", greeting_wait=0, max_call_seconds=300, steps=steps)
    async with sim() as (simulator, http):
        call = await simulator.place_call(spec)
        assert (await http.post(f"/realtime/calls/{call.call_id}/accept", json=body(False))).status_code == 200
        async with sideband(simulator, call.call_id) as ws:
            await collect(ws, "session.created")
            answers: list[str] = []
            for _ in range(3):
                await collect(ws, "conversation.item.input_audio_transcription.completed")
                await ws.send(json.dumps(check("…")))
                events = await collect(ws, "response.done")
                assert [e["type"] for e in events] == [  # text only: no audio, nothing joins the conversation
                    "response.created",
                    "rate_limits.updated",
                    "response.output_item.added",
                    "response.content_part.added",
                    "response.output_text.delta",
                    "response.output_text.done",
                    "response.content_part.done",
                    "response.output_item.done",
                    "response.done",
                ]
                created, done = events[0]["response"], events[-1]["response"]
                assert created["conversation_id"] is None
                assert done["conversation_id"] is None  # out of band: in no conversation
                assert created["metadata"] == done["metadata"] == {"purpose": "sipctl_hold_check"}
                assert done["output_modalities"] == ["text"]
                (item,) = done["output"]
                assert item["type"] == "message"
                (content,) = item["content"]
                assert content["type"] == "output_text"
                answers.append(content["text"])
                usage = done["usage"]
                assert usage["output_token_details"] == {"text_tokens": 1, "audio_tokens": 0}
                assert events[5]["text"] == content["text"]
                assert usage["input_token_details"]["audio_tokens"] == 0
                assert 0 < usage["input_tokens"] < 100
            # the person's turn is still waiting for a normal response.create
            await ws.send(json.dumps({"type": "response.create", "response": {"metadata": {"n": "1"}}}))
            reply = await collect(ws, "response.done")
    assert answers == ["no", "no", "yes"]
    normal = [e["response"] for e in reply if e["type"] in ("response.created", "response.done")]
    assert [r["metadata"] for r in normal] == [{"n": "1"}, {"n": "1"}]
    assert normal[0]["conversation_id"] == normal[1]["conversation_id"]
    assert normal[0]["conversation_id"].startswith("conv_")
    assert normal[1]["output"][0]["content"][0]["transcript"] == "Hi Dana!"
    assert [r.out_of_band for r in call.responses] == [True, True, True, False]
    assistant = [t["text"] for t in call.transcripts if t["role"] == "assistant"]
    assert assistant == ["Hi Dana!"]  # hold checks are not part of what was said


async def test_hold_markers_are_configurable() -> None:
    steps = [Step(say="Thank you for calling Acme, your call is important to us.")]
    spec = CallSpec(name="markers", greeting_wait=0, max_call_seconds=60, steps=steps)
    async with sim() as (simulator, http):
        call = await simulator.place_call(spec)
        assert (await http.post(f"/realtime/calls/{call.call_id}/accept", json=body(False))).status_code == 200
        runtime = simulator._ctx.runtimes[call.call_id]
        async with sideband(simulator, call.call_id) as ws:
            await collect(ws, "conversation.item.input_audio_transcription.completed")
            assert runtime.hold_check_answer() == "no"
            simulator._ctx.hold_markers = ("[hold music]",)
            assert runtime.hold_check_answer() == "yes"


def test_hold_music_step_validation() -> None:
    step = Step.model_validate({"hold_music": {"seconds": 1200}})
    assert step.kind == "hold_music"
    assert step.hold_music == HoldMusic(seconds=1200, every=20, segment=4, text="[hold music]")
    with pytest.raises(ValidationError, match="segment must be shorter"):
        HoldMusic(seconds=60, every=5, segment=5)
    with pytest.raises(ValidationError, match="exactly one of"):
        Step.model_validate({"hold_music": {"seconds": 60}, "wait": 1})
    with pytest.raises(ValidationError, match="only go with say"):
        Step.model_validate({"hold_music": {"seconds": 60}, "reply": "hi"})


def test_refer_modes_in_order_and_the_last_repeats() -> None:
    spec = CallSpec(name="refers", refer=["ignore", "fail", "succeed"])
    assert [spec.refer_mode(i) for i in range(5)] == ["ignore", "fail", "succeed", "succeed", "succeed"]
    with pytest.raises(ValidationError):
        CallSpec(name="none", refer=[])


def test_transcription_usage_follows_the_model() -> None:
    def session(model: str | None) -> dict[str, Any]:
        return {"audio": {"input": {"transcription": None if model is None else {"model": model}}}}

    assert transcription_usage(session(None), "hi", 1.0) is None
    assert transcription_usage(session("whisper-1"), "hi there", 2.5) == {"type": "duration", "seconds": 2.5}
    tokens = transcription_usage(session("gpt-4o-transcribe"), "hello there", 3.0)
    assert tokens is not None
    assert tokens["input_token_details"] == {"text_tokens": 0, "audio_tokens": 30}


def test_free_form_instructions_become_a_short_line() -> None:
    assert spoken_line('Greet the caller by saying exactly "Hello, Example Dental!"') == "Hello, Example Dental!"
    assert spoken_line("Ask the caller briefly whether they are still there. One short sentence.") == (
        "Ask the caller briefly whether they are still there."
    )
    long = "Say a short, warm goodbye to the caller in one sentence, in the language of the conversation."
    assert len(spoken_line(long).split()) == 12


async def test_once_hold_mode_is_on_the_music_is_not_answered() -> None:
    steps = [
        Step(say="Please hold.", tool=ToolCall(name="wait_on_hold")),
        Step(hold_music=HoldMusic(seconds=40, every=20, segment=2)),
    ]
    spec = CallSpec(name="shape", greeting_wait=0, max_call_seconds=100, steps=steps)
    async with sim() as (simulator, http):
        call = await simulator.place_call(spec)
        assert (await http.post(f"/realtime/calls/{call.call_id}/accept", json=body(True))).status_code == 200
        async with sideband(simulator, call.call_id) as ws:
            first = await collect(ws, "response.done")
            assert first[-1]["response"]["output"][0]["name"] == "wait_on_hold"
            turn = {"type": "server_vad", "create_response": False}
            update = {"type": "realtime", "audio": {"input": {"turn_detection": turn}}}
            await ws.send(json.dumps({"type": "session.update", "session": update}))
            await collect(ws, "session.updated")
            await asyncio.wait_for(call.ended.wait(), 10)
    assert call.hold_segments == 2
    assert [r.source for r in call.responses] == ["auto"]  # the music was not answered once hold mode was on
