"""The SDK referee (tests/sdk_referee.py) itself: OpenAI's documented examples pass, and each way the simulator
used to differ from OpenAI (issue 15, items 1-8) is refused, naming the message."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from standardwebhooks import Webhook

from sip_controller.simulator import new_webhook_secret
from sip_controller.simulator.observe import WireRecord, notify, observing
from tests.sdk_referee import (
    DOCUMENTED_BEYOND_SDK,
    DOCUMENTED_NULLS,
    SdkReferee,
    StreamChecker,
    check_client_event,
    check_rest_body,
    check_server_event,
    check_webhook,
    run_refereed,
)

# OpenAI's own examples (API reference, Realtime server events), trimmed where long
SESSION_CREATED: dict[str, Any] = {
    "type": "session.created",
    "event_id": "event_C9G5RJeJ2gF77mV7f2B1j",
    "session": {
        "type": "realtime",
        "object": "realtime.session",
        "id": "sess_C9G5QPteg4UIbotdKLoYQ",
        "model": "gpt-realtime-2025-08-28",
        "output_modalities": ["audio"],
        "instructions": "Be brief.",
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "prompt": None,
        "expires_at": 1756324625,
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": {
                    "type": "server_vad",
                    "threshold": 0.5,
                    "prefix_padding_ms": 300,
                    "silence_duration_ms": 200,
                    "idle_timeout_ms": None,
                    "create_response": True,
                    "interrupt_response": True,
                },
            },
            "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "marin", "speed": 1},
        },
        "include": None,
    },
}
ITEM = {
    "id": "item_1",
    "type": "message",
    "status": "completed",
    "role": "assistant",
    "content": [{"type": "output_audio", "transcript": "Loud and clear!"}],
}
RESPONSE = {
    "object": "realtime.response",
    "id": "resp_1",
    "status": "completed",
    "status_details": None,
    "output": [ITEM],
    "conversation_id": "conv_1",
    "output_modalities": ["audio"],
    "max_output_tokens": "inf",
    "audio": {"output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "alloy"}},
    "usage": {
        "total_tokens": 253,
        "input_tokens": 132,
        "output_tokens": 121,
        "input_token_details": {
            "text_tokens": 119,
            "audio_tokens": 13,
            "image_tokens": 0,
            "cached_tokens": 64,
            "cached_tokens_details": {"text_tokens": 64, "audio_tokens": 0, "image_tokens": 0},
        },
        "output_token_details": {"text_tokens": 30, "audio_tokens": 91},
    },
    "metadata": None,
}
DTMF = {"type": "input_audio_buffer.dtmf_event_received", "event": "9", "received_at": 1763605109}
WHERE = {"response_id": "resp_1", "item_id": "item_1", "output_index": 0}


def ev(kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, "event_id": f"event_{kind}", **fields}


def assistant_stream() -> list[dict[str, Any]]:
    """One assistant message the way OpenAI sends it."""
    started = {**ITEM, "status": "in_progress", "content": []}
    part = {**WHERE, "content_index": 0}
    return [
        ev("response.created", response={**RESPONSE, "status": "in_progress", "output": [], "usage": None}),
        ev("rate_limits.updated", rate_limits=[{"name": "requests", "limit": 5, "remaining": 4, "reset_seconds": 60}]),
        ev("response.output_item.added", response_id="resp_1", output_index=0, item=started),
        ev("conversation.item.added", previous_item_id=None, item=started),
        ev("response.content_part.added", **part, part={"type": "audio", "transcript": ""}),
        ev("output_audio_buffer.started", response_id="resp_1"),
        ev("response.output_audio_transcript.delta", **part, delta="Loud and clear!"),
        ev("response.output_audio_transcript.done", **part, transcript="Loud and clear!"),
        ev("response.content_part.done", **part, part={"type": "audio", "transcript": "Loud and clear!"}),
        ev("response.output_item.done", response_id="resp_1", output_index=0, item=ITEM),
        ev("conversation.item.done", previous_item_id=None, item=ITEM),
        ev("response.done", response=RESPONSE),
        ev("output_audio_buffer.stopped", response_id="resp_1"),
    ]


def stream_problems(events: list[dict[str, Any]]) -> list[str]:
    checker = StreamChecker()
    return [problem for event in events for problem in [*check_server_event(event), *checker.check(event)]]


# ---- OpenAI's documented shapes pass ----------------------------------------------------------------


def test_openais_examples_pass() -> None:
    assert check_server_event(SESSION_CREATED) == []
    assert check_server_event(ev("response.done", response=RESPONSE)) == []
    assert check_server_event(DTMF) == []
    timeout = ev("input_audio_buffer.timeout_triggered", audio_start_ms=13216, audio_end_ms=19232, item_id="i")
    assert check_server_event(timeout) == []
    assert stream_problems(assistant_stream()) == []


def test_the_allow_list_is_what_lets_the_session_fields_through_and_names_its_sources() -> None:
    assert {path for _kind, path in DOCUMENTED_BEYOND_SDK} == {"session.object", "session.id", "session.expires_at"}
    assert all("OpenAI API reference" in source for source in DOCUMENTED_BEYOND_SDK.values())
    assert all("docstring" in source for source in DOCUMENTED_NULLS.values())
    renamed = copy.deepcopy(SESSION_CREATED)
    renamed["session"]["expires"] = 1  # not documented anywhere: refused
    assert check_server_event(renamed) == ["session.expires: not declared by SessionCreatedEvent"]


# ---- each old difference is refused, naming the field -----------------------------------------------


def test_1_an_assistant_message_without_its_items_is_refused() -> None:
    kept = {"response.created", "output_audio_buffer.started", "response.output_audio_transcript.done", "response.done"}
    beta_like = [e for e in assistant_stream() if e["type"] in kept]  # what the simulator used to send
    assert "response.output_audio_transcript.done" in [e["type"] for e in beta_like]
    problems = stream_problems(beta_like)
    assert any("before response.output_item.added of item item_1" in p for p in problems), problems
    assert any("output item item_1 was never streamed" in p for p in problems), problems
    assert any("before an audio response.content_part.added" in p for p in problems), problems


def test_2_the_beta_conversation_item_created_is_refused() -> None:
    user = {**ITEM, "role": "user", "content": [{"type": "input_audio", "transcript": None}]}
    created = ev("conversation.item.created", previous_item_id=None, item=user)
    (problem,) = stream_problems([created])
    assert "beta-era event" in problem


def test_3_arguments_done_after_the_output_item_done_is_refused() -> None:
    call = {"id": "item_1", "type": "function_call", "status": "completed", "call_id": "call_1", "name": "end_call",
            "arguments": "{}"}
    old_order = [
        ev("response.created", response={**RESPONSE, "status": "in_progress", "output": [], "usage": None}),
        ev("response.output_item.added", response_id="resp_1", output_index=0, item={**call, "arguments": ""}),
        ev("response.output_item.done", response_id="resp_1", output_index=0, item=call),
        ev("response.function_call_arguments.done", **WHERE, call_id="call_1", name="end_call", arguments="{}"),
    ]
    problems = stream_problems(old_order)
    assert problems == ["before response.function_call_arguments.done of item item_1"]


def test_4_a_dtmf_event_with_an_event_id_is_refused() -> None:
    assert check_server_event({**DTMF, "event_id": "event_1"}) == [
        "event_id: not declared by InputAudioBufferDtmfEventReceivedEvent"
    ]


def test_5_null_ids_are_refused() -> None:
    (cleared,) = check_server_event(ev("output_audio_buffer.cleared", response_id=None))
    assert cleared.startswith("refused by OutputAudioBufferCleared: response_id")
    in_conversation = assistant_stream()
    for event in in_conversation:
        if event["type"] in ("response.created", "response.done"):
            event["response"] = {**event["response"], "conversation_id": None}
    problems = stream_problems(in_conversation)
    assert any("conversation_id is null, yet item item_1 joined" in p for p in problems), problems
    cancelled = ev("response.done", response={**RESPONSE, "status": "cancelled", "status_details": None})
    created = ev("response.created", response={**RESPONSE, "status": "in_progress", "output": [], "usage": None})
    assert any("without status_details" in p for p in stream_problems([created, cancelled]))


def test_6_beta_fields_the_controller_might_send_are_refused() -> None:
    assert check_client_event({"type": "response.create", "response": {"temperature": 0.8}}) == [
        "response.temperature: not declared by ResponseCreateEvent"
    ]
    assert check_client_event({"type": "input_audio_buffer.commit"}) == []
    assert check_client_event({"type": "conversation.item.retrieve", "item_id": "i"}) == []
    truncate = {"type": "conversation.item.truncate", "item_id": "i", "content_index": 0, "audio_end_ms": 1}
    assert check_client_event(truncate) == []
    assert check_client_event({"type": "response.create", "response": {"metadata": {"n": 1}}})[0].startswith(
        "refused by ResponseCreateEvent: response.metadata.n"
    )
    assert check_rest_body("accept", {"type": "realtime", "temperature": 0.8}) == [
        "temperature: not declared by CallAcceptParams"
    ]
    nested = {"type": "realtime", "audio": {"input": {"turn_detection": {"type": "server_vad", "eagerness": "low"}}}}
    (problem,) = check_rest_body("accept", nested)
    assert problem == "audio.input.turn_detection.eagerness: not declared by CallAcceptParams"
    assert check_rest_body("accept", {"type": "realtime", "voice": "alloy"}, frozenset({"voice"})) == []


def test_rest_bodies_are_checked_with_the_params_types() -> None:
    off = {"type": "realtime", "audio": {"input": {"transcription": None, "turn_detection": None}}}
    assert check_rest_body("accept", off) == []  # the documented null
    assert check_rest_body("refer", {"target_uri": "tel:+14155550199"}) == []
    assert check_rest_body("refer", {"target": "tel:+1"})[0].startswith("refused by CallReferParams")
    assert check_rest_body("reject", None) == []
    assert check_rest_body("reject", {"status_code": 486}) == []
    assert check_rest_body("hangup", None) == []
    assert check_rest_body("hangup", {"now": True}) == ["/hangup takes no body"]


def test_7_the_new_behaviours_use_events_the_sdk_knows() -> None:
    failed = {**RESPONSE, "status": "failed", "output": [],
              "status_details": {"type": "failed", "error": {"type": "insufficient_quota", "code": "insufficient_quota",
                                                             "message": "quota"}}}
    assert check_server_event(ev("response.done", response=failed)) == []
    truncated = ev("conversation.item.truncated", item_id="i", content_index=0, audio_end_ms=1500)
    assert check_server_event(truncated) == []
    assert check_server_event(ev("conversation.item.retrieved", item=ITEM)) == []


def test_8_a_transcript_without_usage_is_refused() -> None:
    kind = "conversation.item.input_audio_transcription.completed"
    no_usage = ev(kind, item_id="i", content_index=0, transcript="hi")
    (problem,) = check_server_event(no_usage)
    assert "usage: Field required" in problem


# ---- webhooks ----------------------------------------------------------------------------------------


def signed(secret: str, body: str) -> dict[str, str]:
    now = datetime.now(UTC)
    return {
        "webhook-id": "wh_1",
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign("wh_1", now, body),
    }


def test_webhooks_must_pass_the_sdks_unwrap() -> None:
    secret = new_webhook_secret()
    data = {"call_id": "rtc_1", "sip_headers": [{"name": "From", "value": "<sip:+1@x>"}], "sip_media_security": "srtp"}
    event = {"object": "event", "id": "evt_1", "type": "realtime.call.incoming", "created_at": 1, "data": data}
    body = json.dumps(event)
    assert check_webhook(body, signed(secret, body), secret) == []
    (wrong,) = check_webhook(body, signed(new_webhook_secret(), body), secret)
    assert wrong.startswith("client.webhooks.unwrap refused it: InvalidWebhookSignatureError")
    extra = json.dumps({**event, "data": {**data, "sip_trunk": "x"}})
    assert check_webhook(extra, signed(secret, extra), secret) == [
        "data.sip_trunk: not declared by RealtimeCallIncomingWebhookEvent"
    ]


# ---- the referee on the wire, and in pytest --------------------------------------------------------------


def test_the_referee_names_the_message_and_the_call() -> None:
    referee = SdkReferee(check_clients=False)
    with observing(referee):
        notify((), WireRecord("server_event", "rtc_9", "input_audio_buffer.dtmf_event_received",
                              {**DTMF, "event_id": "event_7"}), [])
        notify((), WireRecord("client_event", "rtc_9", "response.create", {"type": "response.create",
                                                                            "response": {"temperature": 1}}), [])
    assert referee.problems == [
        "server event input_audio_buffer.dtmf_event_received (event_7) on call rtc_9: "
        "event_id: not declared by InputAudioBufferDtmfEventReceivedEvent"
    ]  # client events are not judged here
    report = referee.report()
    assert report is not None
    assert report.startswith("the openai SDK refused 1 wire message(s):")


class _Item:
    def get_closest_marker(self, name: str) -> None:
        return None


def test_a_refused_message_fails_the_running_test() -> None:
    wrapper = run_refereed(_Item(), clients_by_default=True)  # type: ignore[arg-type]
    next(wrapper)  # the test's call phase starts
    notify((), WireRecord("rest_request", "rtc_1", "accept", {"type": "realtime", "temperature": 0.8}), [])
    with pytest.raises(pytest.fail.Exception, match="REST body of /accept on call rtc_1: temperature"):
        wrapper.send(None)
