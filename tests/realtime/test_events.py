"""Tests for sip_controller.realtime.events: typed sideband server events, parsed once, never raising."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sip_controller.realtime import events as ev
from sip_controller.realtime.events import parse_server_event


def parse(data: dict[str, Any]) -> ev.ServerEvent:
    return parse_server_event(json.dumps(data))


def test_error_event() -> None:
    event = parse(
        {
            "type": "error",
            "event_id": "event_1",
            "error": {
                "type": "invalid_request_error",
                "code": "invalid_value",
                "message": "Missing required parameter: 'session.type'",
                "param": "session.type",
                "event_id": "ctl_session_1",
            },
        }
    )
    assert isinstance(event, ev.ErrorEvent)
    assert event.event_id == "event_1"
    assert event.error.type == "invalid_request_error"
    assert event.error.code == "invalid_value"
    assert event.error.message == "Missing required parameter: 'session.type'"
    assert event.error.param == "session.type"
    assert event.error.event_id == "ctl_session_1"


def test_error_event_minimal_and_null_fields() -> None:
    event = parse({"type": "error", "error": {"code": None, "param": None}})
    assert isinstance(event, ev.ErrorEvent)
    assert event.error.code is None
    assert event.error.message == ""


@pytest.mark.parametrize("kind", ["session.created", "session.updated"])
def test_session_events(kind: str) -> None:
    event = parse({"type": kind, "session": {"type": "realtime", "model": "gpt-realtime-2.1"}})
    assert isinstance(event, ev.SessionEvent)
    assert event.type == kind
    assert event.session["model"] == "gpt-realtime-2.1"


def test_response_done_with_usage_and_function_call() -> None:
    event = parse(
        {
            "type": "response.done",
            "event_id": "e9",
            "response": {
                "object": "realtime.response",
                "id": "resp_1",
                "status": "completed",
                "status_details": None,
                "output": [
                    {"type": "message", "id": "item_1", "role": "assistant", "content": []},
                    {
                        "type": "function_call",
                        "id": "item_2",
                        "call_id": "call_1",
                        "name": "end_call",
                        "arguments": '{"reason": "bye"}',
                    },
                ],
                "usage": {
                    "total_tokens": 300,
                    "input_tokens": 200,
                    "output_tokens": 100,
                    "input_token_details": {
                        "text_tokens": 120,
                        "audio_tokens": 80,
                        "cached_tokens": 64,
                        "cached_tokens_details": {"text_tokens": 60, "audio_tokens": 4},
                    },
                    "output_token_details": {"text_tokens": 20, "audio_tokens": 80},
                },
            },
        }
    )
    assert isinstance(event, ev.ResponseEvent)
    assert event.type == "response.done"
    resp = event.response
    assert resp.id == "resp_1"
    assert resp.status == "completed"
    assert [item.type for item in resp.output] == ["message", "function_call"]
    call = resp.output[1]
    assert (call.call_id, call.name, call.arguments) == ("call_1", "end_call", '{"reason": "bye"}')
    assert resp.usage is not None
    assert resp.usage.total_tokens == 300
    assert resp.usage.input_token_details.text_tokens == 120
    assert resp.usage.input_token_details.cached_tokens == 64
    assert resp.usage.input_token_details.cached_tokens_details.audio_tokens == 4
    assert resp.usage.output_token_details.audio_tokens == 80


def test_response_created_minimal_defaults() -> None:
    event = parse({"type": "response.created", "response": {"id": "resp_2", "status": "in_progress"}})
    assert isinstance(event, ev.ResponseEvent)
    assert event.type == "response.created"
    assert event.response.id == "resp_2"
    assert event.response.output == []
    assert event.response.usage is None


def test_usage_fields_all_optional() -> None:
    event = parse({"type": "response.done", "response": {"id": "r", "usage": {}}})
    assert isinstance(event, ev.ResponseEvent)
    usage = event.response.usage
    assert usage is not None
    assert usage.input_token_details.cached_tokens_details.text_tokens == 0
    assert usage.output_token_details.audio_tokens == 0


def test_function_call_arguments_done() -> None:
    event = parse(
        {
            "type": "response.function_call_arguments.done",
            "call_id": "call_9",
            "name": "end_call",
            "arguments": "{}",
            "response_id": "resp_3",
            "item_id": "item_3",
            "output_index": 0,
        }
    )
    assert isinstance(event, ev.FunctionCallArgumentsDone)
    assert (event.call_id, event.name, event.arguments) == ("call_9", "end_call", "{}")
    assert (event.response_id, event.item_id) == ("resp_3", "item_3")


def test_output_transcript_done() -> None:
    event = parse(
        {
            "type": "response.output_audio_transcript.done",
            "response_id": "resp_4",
            "item_id": "item_4",
            "transcript": "Goodbye!",
        }
    )
    assert isinstance(event, ev.OutputTranscriptDone)
    assert event.transcript == "Goodbye!"
    assert event.response_id == "resp_4"


def test_input_transcription_completed_and_failed() -> None:
    done = parse(
        {
            "type": "conversation.item.input_audio_transcription.completed",
            "item_id": "item_5",
            "transcript": "I'd like to book",
        }
    )
    assert isinstance(done, ev.InputTranscriptionCompleted)
    assert done.transcript == "I'd like to book"
    failed = parse(
        {"type": "conversation.item.input_audio_transcription.failed", "item_id": "item_6", "error": {"code": "x"}}
    )
    assert isinstance(failed, ev.InputTranscriptionFailed)
    assert failed.item_id == "item_6"


@pytest.mark.parametrize("kind", ["input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped"])
def test_speech_edges(kind: str) -> None:
    event = parse({"type": kind, "audio_start_ms": 100, "item_id": "i"})
    assert isinstance(event, ev.SpeechEdge)
    assert event.type == kind


@pytest.mark.parametrize(
    "kind", ["output_audio_buffer.started", "output_audio_buffer.stopped", "output_audio_buffer.cleared"]
)
def test_output_audio_buffer(kind: str) -> None:
    event = parse({"type": kind, "response_id": "resp_7"})
    assert isinstance(event, ev.OutputAudioBuffer)
    assert event.type == kind
    assert event.response_id == "resp_7"


def test_dtmf() -> None:
    event = parse({"type": "input_audio_buffer.dtmf_event_received", "event": "#", "received_at": 1763769600})
    assert isinstance(event, ev.DtmfReceived)
    assert event.event == "#"


@pytest.mark.parametrize(
    "kind",
    [
        "response.audio.delta",
        "conversation.item.created",
        "live.something",
        "",
    ],
)
def test_unknown_types_are_kept(kind: str) -> None:
    event = parse({"type": kind, "event_id": "e1", "anything": [1, 2]})
    assert isinstance(event, ev.UnknownEvent)
    assert event.type == kind
    assert event.event_id == "e1"


def test_bytes_input_is_accepted() -> None:
    event = parse_server_event(b'{"type": "output_audio_buffer.stopped", "response_id": "r"}')
    assert isinstance(event, ev.OutputAudioBuffer)


# ---- what OpenAI really sends (issue 15): failed/incomplete/cancelled responses, rate limits, idle timeouts -----

FAILED_DONE: dict[str, Any] = {
    "type": "response.done",
    "event_id": "event_9",
    "response": {
        "object": "realtime.response",
        "id": "resp_1",
        "status": "failed",
        "status_details": {
            "type": "failed",
            "error": {
                "type": "insufficient_quota",
                "code": "insufficient_quota",
                "message": "You exceeded your quota.",
            },
        },
        "output": [],
        "conversation_id": "conv_1",
        "output_modalities": ["audio"],
        "max_output_tokens": "inf",
        "metadata": {"sipctl": "greeting", "n": "1"},
        "usage": None,
    },
}
BARGE_IN_DONE: dict[str, Any] = {
    "type": "response.done",
    "event_id": "event_10",
    "response": {
        "id": "resp_2",
        "status": "cancelled",
        "status_details": {"type": "cancelled", "reason": "turn_detected"},
        "output": [],
    },
}
INCOMPLETE_DONE: dict[str, Any] = {
    "type": "response.done",
    "event_id": "event_11",
    "response": {
        "id": "resp_3",
        "status": "incomplete",
        "status_details": {"type": "incomplete", "reason": "max_output_tokens"},
        "output": [],
    },
}
RATE_LIMITS: dict[str, Any] = {
    "type": "rate_limits.updated",
    "event_id": "event_12",
    "rate_limits": [
        {"name": "requests", "limit": 1000, "remaining": 999, "reset_seconds": 0.06},
        {"name": "tokens", "limit": 40000, "remaining": 38211, "reset_seconds": 2.68},
    ],
}
IDLE_TIMEOUT: dict[str, Any] = {
    "type": "input_audio_buffer.timeout_triggered",
    "event_id": "event_13",
    "audio_start_ms": 13216,
    "audio_end_ms": 19232,
    "item_id": "item_7",
}


def test_a_failed_response_carries_its_status_details() -> None:
    event = parse(FAILED_DONE)
    assert isinstance(event, ev.ResponseEvent)
    details = event.response.status_details
    assert event.response.status == "failed"
    assert details is not None
    assert details.type == "failed"
    assert details.reason is None
    assert details.error == ev.StatusError(
        type="insufficient_quota", code="insufficient_quota", message="You exceeded your quota."
    )
    assert event.response.usage is None


@pytest.mark.parametrize(
    ("frame", "status", "reason"),
    [(BARGE_IN_DONE, "cancelled", "turn_detected"), (INCOMPLETE_DONE, "incomplete", "max_output_tokens")],
)
def test_cancelled_and_incomplete_responses_say_why(frame: dict[str, Any], status: str, reason: str) -> None:
    event = parse(frame)
    assert isinstance(event, ev.ResponseEvent)
    assert event.response.status == status
    assert event.response.status_details == ev.StatusDetails(type=status, reason=reason)


def test_a_completed_response_may_have_null_status_details() -> None:
    event = parse({"type": "response.done", "response": {"id": "r", "status": "completed", "status_details": None}})
    assert isinstance(event, ev.ResponseEvent)
    assert event.response.status_details is None


def test_rate_limits_updated() -> None:
    event = parse(RATE_LIMITS)
    assert isinstance(event, ev.RateLimitsUpdated)
    assert event.rate_limits == [
        ev.RateLimit(name="requests", limit=1000, remaining=999, reset_seconds=0.06),
        ev.RateLimit(name="tokens", limit=40000, remaining=38211, reset_seconds=2.68),
    ]
    bare = parse({"type": "rate_limits.updated", "rate_limits": [{}]})
    assert isinstance(bare, ev.RateLimitsUpdated)
    assert bare.rate_limits == [ev.RateLimit()]


def test_idle_timeout_triggered() -> None:
    event = parse(IDLE_TIMEOUT)
    assert isinstance(event, ev.InputAudioTimeout)
    assert (event.audio_start_ms, event.audio_end_ms, event.item_id) == (13216, 19232, "item_7")


@pytest.mark.parametrize("frame", [FAILED_DONE, BARGE_IN_DONE, INCOMPLETE_DONE, RATE_LIMITS, IDLE_TIMEOUT])
def test_the_sample_frames_are_what_the_openai_sdk_parses(frame: dict[str, Any]) -> None:
    """The frames above are OpenAI's shapes: the SDK's own server-event union takes them as they are."""
    realtime = pytest.importorskip("openai.types.realtime")
    pydantic = pytest.importorskip("pydantic")
    parsed = pydantic.TypeAdapter(realtime.RealtimeServerEvent).validate_python(frame)
    assert parsed.type == frame["type"]
    assert parse(frame).type == frame["type"]


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "not json",
        "{",
        b"\xff\xfe\x00garbage",
        b"\x80\x81",
        "[]",
        "42",
        "null",
        '"error"',
        "{}",
        '{"type": 5}',
        '{"type": null}',
        '{"type": ["error"]}',
    ],
)
def test_garbage_is_malformed(raw: str | bytes) -> None:
    event = parse_server_event(raw)
    assert isinstance(event, ev.MalformedEvent)
    assert event.type == "malformed"
    assert event.reason


@pytest.mark.parametrize(
    "data",
    [
        {"type": "error"},  # no error object
        {"type": "error", "error": "boom"},
        {"type": "response.done"},  # no response
        {"type": "response.done", "response": {"id": "r", "output": "nope"}},
        {"type": "response.done", "response": {"id": "r", "usage": {"total_tokens": "many"}}},
        {"type": "response.function_call_arguments.done", "name": "end_call"},  # no call_id
        {"type": "output_audio_buffer.stopped", "response_id": 7},
        {"type": "rate_limits.updated", "event_id": 5},
    ],
)
def test_known_type_with_bad_fields_is_malformed(data: dict[str, Any]) -> None:
    event = parse(data)
    assert isinstance(event, ev.MalformedEvent)
    assert event.reason.startswith(f"{data['type']}: ")
    assert "invalid field" in event.reason


def test_huge_integer_is_malformed_not_an_exception() -> None:
    """Python refuses to convert integers over 4300 digits (ValueError, not JSONDecodeError)."""
    raw = '{"type": "response.done", "response": {"id": "r", "usage": {"total_tokens": ' + "9" * 5000 + "}}}"
    event = parse_server_event(raw)
    assert isinstance(event, ev.MalformedEvent)


def test_deeply_nested_frame_is_malformed_not_an_exception() -> None:
    raw = '{"type": "session.updated", "session": {"x": ' + "[" * 100_000 + "]" * 100_000 + "}}"
    event = parse_server_event(raw)
    assert isinstance(event, ev.MalformedEvent)


@settings(max_examples=150, deadline=None)
@given(raw=st.binary(max_size=200) | st.text(max_size=200))
def test_never_raises_for_arbitrary_input(raw: bytes | str) -> None:
    event = parse_server_event(raw)
    assert isinstance(event, ev.MalformedEvent | ev.UnknownEvent)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(
    kind=st.sampled_from(sorted(ev._MODELS)) | st.text(max_size=20),
    body=st.dictionaries(
        st.sampled_from(["event_id", "error", "session", "response", "call_id", "response_id", "transcript", "x"]),
        _json,
        max_size=4,
    ),
)
def test_never_raises_for_arbitrary_event_objects(kind: str, body: dict[str, Any]) -> None:
    event = parse({**body, "type": kind})
    assert event.type == ("malformed" if isinstance(event, ev.MalformedEvent) else kind)


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(sorted(ev._MODELS)) | st.text(max_size=20),
    body=st.dictionaries(
        st.sampled_from(["event_id", "error", "session", "response", "call_id", "response_id", "transcript",
                         "item_id", "name", "arguments", "x"]),
        _json,
        max_size=5,
    ),
)
def test_the_fast_path_agrees_with_the_general_one(kind: str, body: dict[str, Any]) -> None:
    """OpenAI's frames start with ``type``: they take the one-pass path, which must decide exactly as the
    general path (json.loads, then the model) does."""
    raw = json.dumps({"type": kind, **body}, separators=(",", ":"))
    assert parse_server_event(raw) == ev._parse_general(raw)


@pytest.mark.parametrize(
    "raw",
    [
        '{"type":"response.done","type":"error","error":{"message":"m"}}',  # a repeated key: the last one counts
        '{"type":"resp\\u006fnse.done","response":{"id":"r"}}',  # an escape in the type
        '{"type":"response.done","response":{"id":"r","usage":{"total_tokens":' + "9" * 5000 + "}}}",
        '{"type":"output_audio_buffer.stopped"',  # truncated
    ],
)
def test_unusual_frames_take_the_general_path(raw: str) -> None:
    assert parse_server_event(raw) == ev._parse_general(raw)
