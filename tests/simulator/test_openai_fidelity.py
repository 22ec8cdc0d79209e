"""Where the simulator was not OpenAI (issue 15, "Where the simulator is not OpenAI", items 1-8).

Each test drives the simulator the way a controller would and would have caught one difference; the SDK referee
(tests/sdk_referee.py, on for this whole folder) checks every event's shape and order besides.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosedOK

from sip_controller.simulator import CallSpec, Faults, SimCall, Step, ToolCall, parse_scenario
from sip_controller.simulator.faults import ResponseFailure
from sip_controller.simulator.scenario import RateLimits, ScenarioError
from tests.sdk_referee import check_client_event
from tests.simulator.test_simulator import (
    CALLER_TURN,
    FUNCTION_CALL,
    GOOD_BODY,
    PCMU,
    SCALE,
    Env,
    assistant_line,
    events_until,
    next_event,
    running,
    send,
    types,
)

pytestmark = pytest.mark.anyio

TRANSCRIBE = {"model": "gpt-4o-mini-transcribe"}
LONG_LINE = " ".join(f"word{i}" for i in range(30))  # 9 s of speech: five transcript deltas


def body_with(**audio_input: Any) -> dict[str, Any]:
    """GOOD_BODY with ``audio.input`` fields replaced."""
    return {
        **GOOD_BODY,
        "audio": {
            "input": {"format": PCMU, "transcription": TRANSCRIBE, **audio_input},
            "output": {"format": PCMU, "voice": "marin"},
        },
    }


def say(line: str) -> dict[str, Any]:
    return {"type": "response.create", "response": {"instructions": f'Say "{line}"'}}


async def started_call(env: Env, spec: CallSpec, body: dict[str, Any] | None = None) -> SimCall:
    call = await env.sim.place_call(spec)
    assert (await env.accept(call, body)).status_code == 200
    return call


async def drain(ws: Any, quiet: float = 0.3) -> list[dict[str, Any]]:
    """Every event until none comes for ``quiet`` seconds."""
    seen: list[dict[str, Any]] = []
    while True:
        try:
            seen.append(await next_event(ws, timeout=quiet))
        except TimeoutError:
            return seen


def by_type(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == kind]


# ---- 1. assistant messages are items -------------------------------------------------------------


async def test_1_an_assistant_message_streams_as_an_item_that_a_history_builder_sees() -> None:
    spec = CallSpec(name="items", greeting_wait=10, steps=[Step(say="What time is it?", reply="It is noon.")])
    async with running() as env:
        call = await started_call(env, spec)
        async with env.sideband(call.call_id) as ws:
            await next_event(ws)
            await send(ws, say("Hello, bakery here."))
            greeting = await events_until(ws, "output_audio_buffer.stopped")
            turn = await events_until(ws, "output_audio_buffer.stopped")
    assert types(greeting) == [*assistant_line(), "output_audio_buffer.stopped"]
    added, part_added, delta, part_done, item_done = (greeting[i] for i in (2, 4, 6, 8, 9))
    item_id = added["item"]["id"]
    assert added["item"] == {
        "id": item_id,
        "object": "realtime.item",
        "type": "message",
        "status": "in_progress",
        "role": "assistant",
        "content": [],
    }
    assert part_added["part"] == {"type": "audio", "transcript": ""}
    assert (delta["item_id"], delta["delta"]) == (item_id, "Hello, bakery here.")
    assert part_done["part"] == {"type": "audio", "transcript": "Hello, bakery here."}
    assert item_done["item"]["content"] == [{"type": "output_audio", "transcript": "Hello, bakery here."}]
    # a client that builds its history from conversation items (as the SDK's helpers do) sees both sides
    history = [
        (e["item"]["role"], e["item"]["content"][0].get("transcript"))
        for e in [*greeting, *turn]
        if e["type"] == "conversation.item.done"
    ]
    assert history == [("assistant", "Hello, bakery here."), ("user", None), ("assistant", "It is noon.")]
    assert types(turn) == [*CALLER_TURN, *assistant_line(), "output_audio_buffer.stopped"]


# ---- 2. conversation.item.create is answered the GA way ----------------------------------------------


async def test_2_conversation_item_create_is_answered_with_added_then_done() -> None:
    async with running() as env:
        call = await started_call(env, CallSpec(name="create", greeting_wait=0))
        async with env.sideband(call.call_id) as ws:
            await next_event(ws)
            text = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "I'm Dana."}]}
            await send(ws, {"type": "conversation.item.create", "item": text})
            added, done = await next_event(ws), await next_event(ws)
            await send(ws, {"type": "conversation.item.create", "item": {**text, "id": "item_mine"}})
            mine = [await next_event(ws), await next_event(ws)]
    assert (added["type"], done["type"]) == ("conversation.item.added", "conversation.item.done")
    assert added["item"] == done["item"]
    assert added["item"]["content"] == text["content"]
    assert added["item"]["status"] == "completed"
    assert added["previous_item_id"] is None
    assert [e["item"]["id"] for e in mine] == ["item_mine", "item_mine"]
    assert mine[0]["previous_item_id"] == added["item"]["id"]
    assert call.errors_sent == []


# ---- 3. function calls in OpenAI's order --------------------------------------------------------------


async def test_3_a_function_call_streams_added_then_arguments_then_done() -> None:
    tool = ToolCall(name="lookup_order", arguments={"order_id": "A-12345", "include": ["items", "eta"]})
    spec = CallSpec(name="tool", greeting_wait=0, steps=[Step(say="Where is my order?", tool=tool)])
    async with running() as env:
        call = await started_call(env, spec)
        async with env.sideband(call.call_id) as ws:
            events = await events_until(ws, "response.done")
    calls = events[events.index(by_type(events, "response.created")[0]) :]
    arguments = json.dumps(tool.arguments)
    deltas = by_type(calls, "response.function_call_arguments.delta")
    assert len(deltas) == 3  # 24 characters each
    assert types(calls) == [*FUNCTION_CALL[:5], *["response.function_call_arguments.delta"] * 2, *FUNCTION_CALL[6:]]
    assert "".join(d["delta"] for d in deltas) == arguments
    (args_done,) = by_type(calls, "response.function_call_arguments.done")
    (item_done,) = by_type(calls, "response.output_item.done")
    assert args_done["arguments"] == item_done["item"]["arguments"] == arguments
    assert args_done["call_id"] == item_done["item"]["call_id"] == deltas[0]["call_id"]
    assert by_type(calls, "response.output_item.added")[0]["item"]["arguments"] == ""
    assert call.responses[0].tool_call_id == args_done["call_id"]


# ---- 4. DTMF --------------------------------------------------------------------------------------------


async def test_4_dtmf_events_carry_exactly_the_ga_fields() -> None:
    spec = CallSpec(name="keys", greeting_wait=0, steps=[Step(dtmf="1#")])
    async with running() as env:
        call = await started_call(env, spec)
        async with env.sideband(call.call_id) as ws:
            await next_event(ws)
            keys = [await next_event(ws), await next_event(ws)]
    assert [sorted(k) for k in keys] == [["event", "received_at", "type"]] * 2
    assert [k["event"] for k in keys] == ["1", "#"]
    assert all(isinstance(k["received_at"], int) for k in keys)


# ---- 5. conversation_id, status_details, cleared ------------------------------------------------------


async def test_5_responses_name_their_conversation_and_every_cleared_names_its_response() -> None:
    async with running() as env:
        call = await started_call(env, CallSpec(name="ids", greeting_wait=0))
        async with env.sideband(call.call_id) as ws:
            await next_event(ws)
            await send(ws, {"type": "output_audio_buffer.clear"})  # nothing is playing: nothing to report
            await send(ws, say("One."))
            first = await events_until(ws, "output_audio_buffer.stopped")
            assert first[0]["type"] == "response.created"  # no cleared without a response
            await send(ws, say(LONG_LINE))
            second = await events_until(ws, "response.done")
            await send(ws, {"type": "output_audio_buffer.clear"})
            cleared = await next_event(ws)
    conversations = {e["response"]["conversation_id"] for e in [*first, *second] if "response" in e}
    assert len(conversations) == 1
    assert next(iter(conversations)).startswith("conv_")
    assert first[-2]["response"]["status_details"] is None  # completed: null, as in OpenAI's example
    assert cleared == {**cleared, "type": "output_audio_buffer.cleared", "response_id": second[0]["response"]["id"]}
    assert call.responses[1].audio_cleared


# ---- 6. what OpenAI accepts and refuses -----------------------------------------------------------------


async def test_6_commit_retrieve_and_truncate_are_answered() -> None:
    async with running() as env:
        call = await started_call(env, CallSpec(name="valid", greeting_wait=0))
        async with env.sideband(call.call_id) as ws:
            await next_event(ws)
            await send(ws, {"type": "input_audio_buffer.commit", "event_id": "c1"})
            committed = await events_until(ws, "conversation.item.input_audio_transcription.completed")
            await send(ws, {"type": "input_audio_buffer.clear"})
            assert (await next_event(ws))["type"] == "input_audio_buffer.cleared"
            await send(ws, say(LONG_LINE))
            line = await events_until(ws, "response.done")
            item_id = line[-1]["response"]["output"][0]["id"]
            await send(ws, {"type": "conversation.item.retrieve", "item_id": item_id})
            retrieved = await next_event(ws)
            cut = {"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0}
            await send(ws, {**cut, "audio_end_ms": 1500})
            truncated = await next_event(ws)
            await send(ws, {"type": "conversation.item.retrieve", "item_id": "item_nope", "event_id": "r2"})
            missing = await next_event(ws)
            await send(ws, {**cut, "audio_end_ms": 99_000})
            too_long = await next_event(ws)
    assert types(committed) == [
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.done",
        "conversation.item.input_audio_transcription.completed",
    ]
    assert committed[1]["item"]["role"] == "user"
    assert committed[-1]["transcript"] == ""  # silence
    assert retrieved["type"] == "conversation.item.retrieved"
    assert retrieved["item"]["content"] == [{"type": "output_audio", "transcript": LONG_LINE}]
    assert truncated == {**truncated, "type": "conversation.item.truncated", "item_id": item_id, "audio_end_ms": 1500}
    assert (missing["error"]["code"], missing["error"]["event_id"]) == ("item_not_found", "r2")
    assert (too_long["type"], too_long["error"]["param"]) == ("error", "audio_end_ms")
    assert [e["error"]["code"] for e in call.errors_sent] == ["item_not_found", "invalid_value"]


async def test_6_a_beta_temperature_and_a_model_change_are_refused() -> None:
    async with running() as env:
        call = await started_call(env, CallSpec(name="refused", greeting_wait=0))
        async with env.sideband(call.call_id) as ws:
            await next_event(ws)
            await send(ws, {"type": "response.create", "event_id": "t1", "response": {"temperature": 0.8}})
            temperature = await next_event(ws)
            change = {"type": "realtime", "model": "gpt-realtime-2.1-mini"}
            await send(ws, {"type": "session.update", "event_id": "m1", "session": change})
            model = await next_event(ws)
            same = {"type": "realtime", "model": GOOD_BODY["model"], "instructions": "Be brief."}
            await send(ws, {"type": "session.update", "session": same})  # restating the model is no change
            updated = await next_event(ws)
    assert temperature["error"]["code"] == "unknown_parameter"
    assert temperature["error"]["param"] == "response.temperature"
    assert temperature["error"]["event_id"] == "t1"
    assert (model["error"]["param"], model["error"]["event_id"]) == ("session.model", "m1")
    assert updated["type"] == "session.updated"
    assert call.responses == []
    assert call.session_updates == [same]


SDK_TABLE: list[tuple[str, dict[str, Any]]] = [
    ("commit", {"type": "input_audio_buffer.commit"}),
    ("clear input", {"type": "input_audio_buffer.clear"}),
    ("clear output", {"type": "output_audio_buffer.clear"}),
    ("user text", {"type": "conversation.item.create", "item": {"type": "message", "role": "user",
                                                             "content": [{"type": "input_text", "text": "hi"}]}}),
    ("response", {"type": "response.create", "response": {"instructions": "Hi", "metadata": {"k": "v"}}}),
    ("out of band", {"type": "response.create", "response": {"conversation": "none", "output_modalities": ["text"]}}),
    ("update", {"type": "session.update", "session": {"type": "realtime", "instructions": "x"}}),
    ("beta temperature", {"type": "response.create", "response": {"temperature": 0.7}}),
    ("beta modalities", {"type": "response.create", "response": {"modalities": ["audio", "text"]}}),
    ("beta voice", {"type": "response.create", "response": {"voice": "alloy"}}),
    ("beta max tokens", {"type": "response.create", "response": {"max_response_output_tokens": 100}}),
    ("number metadata", {"type": "response.create", "response": {"metadata": {"n": 1}}}),
    ("beta session", {"type": "session.update", "session": {"type": "realtime", "modalities": ["audio"]}}),
    ("beta event", {"type": "response.audio.delta"}),
]


@pytest.mark.parametrize(("name", "event"), SDK_TABLE, ids=[name for name, _ in SDK_TABLE])
async def test_6_the_simulator_refuses_exactly_what_the_sdk_refuses(name: str, event: dict[str, Any]) -> None:
    sdk_accepts = check_client_event(event) == []
    async with running() as env:
        call = await started_call(env, CallSpec(name="table", greeting_wait=0))
        async with env.sideband(call.call_id) as ws:
            await next_event(ws)
            await send(ws, event)
            await drain(ws)
    simulator_accepts = call.errors_sent == []
    assert simulator_accepts == sdk_accepts, (name, call.errors_sent)


# ---- 7. barge-in, cancel, failed and incomplete responses, rate limits, idle timeout, session limit ------


async def test_7_barging_into_a_response_being_generated_cancels_it() -> None:
    spec = CallSpec(
        name="barge",
        greeting_wait=10,
        response_time=20,  # 1 s to generate here: the caller cuts in while it is still in progress
        steps=[Step(say="Sorry, stop!", interrupt=7.0, reply="Of course, go ahead.")],  # 0.35 s in
    )
    async with running() as env:
        call = await started_call(env, spec)
        async with env.sideband(call.call_id) as ws:
            await next_event(ws)
            await send(ws, say(LONG_LINE))
            events = await events_until(ws, "output_audio_buffer.stopped", timeout=5)
    greeting_id = events[0]["response"]["id"]
    assert types(events).index("input_audio_buffer.speech_started") < types(events).index("output_audio_buffer.cleared")
    (cleared,) = by_type(events, "output_audio_buffer.cleared")
    assert cleared["response_id"] == greeting_id
    assert by_type(events, "conversation.item.truncated") == []  # still in progress: it ends incomplete instead
    done = next(e["response"] for e in by_type(events, "response.done") if e["response"]["id"] == greeting_id)
    assert done["status"] == "cancelled"
    assert done["status_details"] == {"type": "cancelled", "reason": "turn_detected"}
    (item,) = done["output"]
    assert item["status"] == "incomplete"
    assert 0 < len(item["content"][0]["transcript"]) < len(LONG_LINE)
    assert call.barge_ins == 1
    assert (call.responses[0].status, call.responses[0].status_detail) == ("cancelled", "turn_detected")
    assert call.responses[0].audio_cleared
    assert call.greeting_heard is False
    assert call.responses[1].transcript == "Of course, go ahead."


async def test_7_barging_in_after_the_response_is_done_only_cuts_its_audio() -> None:
    spec = CallSpec(name="late-barge", greeting_wait=10, steps=[Step(say="Hang on.", interrupt=2.0)])
    async with running() as env:
        call = await started_call(env, spec)
        async with env.sideband(call.call_id) as ws:
            await next_event(ws)
            await send(ws, say(LONG_LINE))
            events = await events_until(ws, "conversation.item.truncated")
    assert types(events).index("response.done") < types(events).index("input_audio_buffer.speech_started")
    assert types(events)[-2:] == ["output_audio_buffer.cleared", "conversation.item.truncated"]
    assert call.responses[0].status == "completed"
    assert call.responses[0].audio_cleared
    assert 1500 <= events[-1]["audio_end_ms"] < 9000  # about 2 s of the line was heard


async def test_7_without_interrupt_response_the_assistant_talks_on() -> None:
    spec = CallSpec(name="no-interrupt", greeting_wait=10, steps=[Step(say="Hang on.", interrupt=1.0)])
    body = body_with(turn_detection={"type": "server_vad", "interrupt_response": False})
    async with running() as env:
        call = await started_call(env, spec, body)
        async with env.sideband(call.call_id) as ws:
            await next_event(ws)
            await send(ws, say(LONG_LINE))
            events = await events_until(ws, "output_audio_buffer.stopped")
    assert "input_audio_buffer.speech_started" in types(events)
    assert "output_audio_buffer.cleared" not in types(events)
    assert call.barge_ins == 0
    assert call.responses[0].audio_stopped_at is not None


async def test_7_response_cancel_ends_the_active_response_and_its_audio() -> None:
    spec = CallSpec(name="cancel", greeting_wait=0, response_time=40)  # 2 s to generate here
    async with running() as env:
        call = await started_call(env, spec)
        async with env.sideband(call.call_id) as ws:
            await next_event(ws)
            await send(ws, say(LONG_LINE))
            await events_until(ws, "response.output_audio_transcript.delta")
            await send(ws, say("Another line."))  # one response at a time in the conversation
            busy = await events_until(ws, "error")
            await send(ws, {"type": "response.cancel", "event_id": "x1"})
            rest = await events_until(ws, "output_audio_buffer.stopped")
            await send(ws, {"type": "response.cancel", "event_id": "x2"})
            late = await next_event(ws)
    assert busy[-1]["error"]["code"] == "conversation_already_has_active_response"
    (done,) = by_type(rest, "response.done")
    assert done["response"]["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
    heard = call.responses[0]
    assert heard.audio_started_at is not None
    assert heard.audio_stopped_at is not None
    assert heard.audio_stopped_at - heard.audio_started_at < 9 * SCALE  # only what was generated played
    assert (late["error"]["code"], late["error"]["event_id"]) == ("response_cancel_not_active", "x2")
    assert len(call.responses) == 1


async def test_7_a_failed_response_says_why_and_its_line_waits_for_the_next_request() -> None:
    failures = [
        ResponseFailure(nth=1, source="client"),
        ResponseFailure(says="goodbye", code="insufficient_quota"),
    ]
    spec = CallSpec(
        name="failures",
        greeting_wait=10,
        faults=Faults(response_failures=failures),
        steps=[Step(say="Bye!", tool=ToolCall(name="end_call"), then="Thanks, goodbye!")],
    )
    async with running() as env:
        call = await started_call(env, spec)
        async with env.sideband(call.call_id) as ws:
            await next_event(ws)
            await send(ws, say("Hello!"))
            failed = await events_until(ws, "response.done")
            await send(ws, say("Hello again!"))  # the caller waits for a greeting that is not a failure
            await events_until(ws, "output_audio_buffer.stopped")
            tool_call = by_type(await events_until(ws, "response.done"), "response.function_call_arguments.done")[0]
            output = {"type": "function_call_output", "call_id": tool_call["call_id"], "output": "{}"}
            await send(ws, {"type": "conversation.item.create", "item": output})
            await send(ws, {"type": "response.create"})
            goodbye_failed = (await events_until(ws, "response.done"))[-1]["response"]
            await send(ws, {"type": "response.create"})
            goodbye = await events_until(ws, "response.done")
    assert types(failed) == ["response.created", "rate_limits.updated", "response.done"]
    assert failed[-1]["response"]["status"] == "failed"
    assert failed[-1]["response"]["status_details"]["error"]["type"] == "server_error"
    assert failed[-1]["response"]["output"] == []
    assert goodbye_failed["status_details"]["error"]["code"] == "insufficient_quota"
    assert goodbye_failed["output"] == []
    # the goodbye line was not said, so the next response.create says it
    assert goodbye[-1]["response"]["output"][0]["content"][0]["transcript"] == "Thanks, goodbye!"
    assert [r.status for r in call.responses] == ["failed", "completed", "completed", "failed", "completed"]
    assert [r.status_detail for r in call.responses] == ["server_error", None, None, "insufficient_quota", None]
    assert call.fault_counts == {"response_failed": 2}
    assert call.greeting_heard is True  # the greeting asked for again


async def test_7_an_incomplete_response_stops_at_max_output_tokens() -> None:
    async with running() as env:
        spec = CallSpec(name="tokens", greeting_wait=0)
        call = await started_call(env, spec, {**GOOD_BODY, "max_output_tokens": 60})
        async with env.sideband(call.call_id) as ws:
            await next_event(ws)
            await send(ws, say(LONG_LINE))
            events = await events_until(ws, "output_audio_buffer.stopped")
            filtered = CallSpec(
                name="filtered",
                greeting_wait=0,
                faults=Faults(response_failures=[ResponseFailure(status="incomplete", reason="content_filter")]),
            )
        other = await started_call(env, filtered)
        async with env.sideband(other.call_id) as ws:
            await next_event(ws)
            await send(ws, say("one two three four five six seven eight"))
            cut = (await events_until(ws, "response.done"))[-1]["response"]
    done = by_type(events, "response.done")[0]["response"]
    assert done["status"] == "incomplete"
    assert done["status_details"] == {"type": "incomplete", "reason": "max_output_tokens"}
    said = done["output"][0]["content"][0]["transcript"]
    assert LONG_LINE.startswith(said)
    assert 0 < len(said.split()) < 30
    assert done["output"][0]["status"] == "incomplete"
    assert done["usage"]["output_tokens"] <= 60
    assert call.responses[0].status_detail == "max_output_tokens"
    assert cut["status_details"] == {"type": "incomplete", "reason": "content_filter"}
    assert cut["output"][0]["content"][0]["transcript"] == "one two three four"


async def test_7_rate_limits_are_reported_as_each_response_starts() -> None:
    limits = RateLimits(requests=100, tokens=10_000, requests_remaining=3, reset_seconds=12.5)
    async with running() as env:
        call = await started_call(env, CallSpec(name="limits", greeting_wait=0, rate_limits=limits))
        async with env.sideband(call.call_id) as ws:
            await next_event(ws)
            updates = []
            for line in ("One.", "Two."):
                await send(ws, say(line))
                events = await events_until(ws, "response.done")
                updates.append({r["name"]: r for r in events[1]["rate_limits"]})
    assert [u["requests"]["remaining"] for u in updates] == [2, 1]
    assert {u["requests"]["limit"] for u in updates} == {100}
    assert updates[0]["tokens"]["limit"] == 10_000
    assert 0 < updates[1]["tokens"]["remaining"] < updates[0]["tokens"]["remaining"] < 10_000
    assert updates[0]["tokens"]["reset_seconds"] == 12.5


async def test_7_idle_timeout_reprompts_and_never_hangs_up() -> None:
    spec = CallSpec(name="idle", greeting_wait=0, max_call_seconds=20, idle_reply="Hello? Are you there?")
    body = body_with(turn_detection={"type": "server_vad", "idle_timeout_ms": 5000})  # 0.25 s here
    async with running() as env:
        call = await started_call(env, spec, body)
        async with env.sideband(call.call_id) as ws:
            await next_event(ws)
            events = await events_until(ws, "output_audio_buffer.stopped")
            again = await events_until(ws, "input_audio_buffer.timeout_triggered")
        await env.sim.wait_ended(call.call_id, 5)
    assert types(events)[:5] == [
        "input_audio_buffer.timeout_triggered",
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.done",
        "conversation.item.input_audio_transcription.completed",
    ]
    timeout = events[0]
    assert timeout["audio_end_ms"] - timeout["audio_start_ms"] == 5000
    assert events[1]["item_id"] == timeout["item_id"]
    assert by_type(events, "response.output_audio_transcript.done")[0]["transcript"] == "Hello? Are you there?"
    assert again[-1]["item_id"] != timeout["item_id"]
    assert call.idle_timeouts >= 2
    assert call.ended_by == "caller"  # OpenAI re-prompts; it never hangs up


async def test_7_no_idle_timeout_without_idle_timeout_ms() -> None:
    async with running() as env:
        call = await started_call(env, CallSpec(name="quiet", greeting_wait=0, max_call_seconds=10))
        async with env.sideband(call.call_id) as ws:
            await next_event(ws)
            with pytest.raises(ConnectionClosedOK):
                await next_event(ws, timeout=3)
    assert call.idle_timeouts == 0


async def test_7_the_session_ends_at_its_limit() -> None:
    spec = CallSpec(name="limit", greeting_wait=0, max_call_seconds=60, session_limit=4)  # 0.2 s here
    async with running() as env:
        call = await started_call(env, spec)
        async with env.sideband(call.call_id) as ws:
            await next_event(ws)
            error = await next_event(ws, timeout=3)
            with pytest.raises(ConnectionClosedOK):
                await next_event(ws)
            assert ws.close_code == 1000
    assert (error["type"], error["error"]["code"]) == ("error", "session_expired")
    assert call.ended_by == "session_limit"
    assert call.ended_at is not None
    assert call.accepted_at is not None
    assert call.ended_at - call.accepted_at >= 4 * SCALE * 0.9


# ---- 8. transcription off ------------------------------------------------------------------------------


async def test_8_no_caller_transcripts_when_transcription_is_off() -> None:
    spec = CallSpec(name="no-transcripts", greeting_wait=0, steps=[Step(say="Is anybody there?")])
    async with running() as env:
        call = await started_call(env, spec, body_with(transcription=None))
        async with env.sideband(call.call_id) as ws:
            await next_event(ws)
            turn = await events_until(ws, "conversation.item.done")
            with pytest.raises(TimeoutError):
                await next_event(ws, timeout=0.3)
    assert types(turn) == CALLER_TURN[:5]
    assert turn[-1]["item"]["content"] == [{"type": "input_audio", "transcript": None}]
    assert call.transcripts == [{"role": "caller", "text": "Is anybody there?", "t": call.transcripts[0]["t"]}]


# ---- the scenario keys ---------------------------------------------------------------------------------


def test_the_new_scenario_keys_load_from_yaml_data() -> None:
    scenario = parse_scenario(
        {
            "name": "openai-behaviours",
            "calls": [
                {
                    "name": "all",
                    "response_time": 0.5,
                    "idle_reply": "Still there?",
                    "session_limit": 120,
                    "rate_limits": {"requests": 50, "tokens": 4000, "tokens_remaining": 100},
                    "steps": [{"say": "Wait!", "interrupt": 0.5, "reply": "Sure."}],
                    "faults": {
                        "response_failures": [
                            {"says": "goodbye", "code": "insufficient_quota", "times": 2},
                            {"nth": 1, "source": "client", "status": "incomplete", "reason": "content_filter"},
                        ]
                    },
                    "expect": {"ended_by": "session_limit"},
                }
            ],
        }
    )
    (call,) = scenario.calls
    assert call.steps[0].interrupt == 0.5
    assert call.faults is not None
    assert [f.detail for f in call.faults.response_failures] == ["insufficient_quota", "content_filter"]
    assert call.rate_limits.tokens_remaining == 100


@pytest.mark.parametrize(
    ("call", "problem"),
    [
        ({"steps": [{"wait": 1, "interrupt": 1}]}, "interrupt only go with say"),
        ({"session_limit": 4000}, "session_limit"),
        ({"faults": {"response_failures": [{"status": "failed", "reason": "content_filter"}]}}, "reason goes with"),
        ({"faults": {"response_failures": [{"nth": 1, "says": "x"}]}}, "not both"),
        ({"faults": {"response_failures": [{"code": "teapot"}]}}, "code"),
    ],
)
def test_bad_new_scenario_keys_are_named(call: dict[str, Any], problem: str) -> None:
    with pytest.raises(ScenarioError, match=problem):
        parse_scenario({"name": "bad", "calls": [{"name": "c", **call}]})


async def test_client_events_the_simulator_refuses_are_errors_not_silence() -> None:
    """An unknown type still names GA's client events; append is refused with a reason (a SIP line's audio is RTP)."""
    async with running() as env:
        call = await started_call(env, CallSpec(name="unknown", greeting_wait=0))
        async with env.sideband(call.call_id) as ws:
            await next_event(ws)
            await send(ws, {"type": "input_audio_buffer.append", "audio": "AAAA"})
            append = await next_event(ws)
            await send(ws, {"type": "transcription_session.update"})
            unknown = await next_event(ws)
    assert "RTP" in append["error"]["message"]
    assert "'conversation.item.truncate'" in unknown["error"]["message"]
    assert len(call.errors_sent) == 2


def test_the_sdk_referee_watches_this_suite() -> None:
    from sip_controller.simulator import observe
    from tests.sdk_referee import SdkReferee

    (referee,) = [o for o in observe._process_observers if isinstance(o, SdkReferee)]
    assert referee.check_clients is False  # the tests here play the client, badly on purpose
