"""Driving the pure call state machine in tests: wire-event builders, a machine with a clock, action filters.

Shared by the machine-level test modules (tests/ is on sys.path when pytest runs them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sip_controller.agent.profile import AgentProfile
from sip_controller.calls.actions import Action, CancelTimer, Finish, Hangup, Refer, Send, StartTimer
from sip_controller.calls.inputs import AcceptOk, Attached, HangupOk, Input, SidebandClosed, SidebandEvent, Start
from sip_controller.calls.machine import CallMachine
from sip_controller.calls.pricing import ModelPrices
from sip_controller.calls.report import CallRecord
from sip_controller.calls.states import CallState
from sip_controller.calls.tags import PURPOSE_KEY, SEQ_KEY
from sip_controller.realtime.events import parse_server_event

RECEIVED = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def sb(data: dict[str, Any]) -> SidebandEvent:
    """A sideband input built from a wire event, parsed the way the sideband parses it."""
    return SidebandEvent(parse_server_event(json.dumps(data)))


def response_created(rid: str, metadata: dict[str, Any] | None = None) -> SidebandEvent:
    response: dict[str, Any] = {"id": rid, "status": "in_progress", "output": []}
    if metadata is not None:
        response["metadata"] = metadata
    return sb({"type": "response.created", "response": response})


def response_done(
    rid: str,
    status: str = "completed",
    output: list[dict[str, Any]] | None = None,
    usage: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
    details: dict[str, Any] | None = None,
) -> SidebandEvent:
    response: dict[str, Any] = {"id": rid, "status": status, "output": output or []}
    if details is not None:
        response["status_details"] = {"type": status, **details}
    if usage is not None:
        response["usage"] = usage
    if metadata is not None:
        response["metadata"] = metadata
    return sb({"type": "response.done", "response": response})


def fc(call_id: str, name: str = "end_call", arguments: str = '{"reason": "caller said goodbye"}') -> dict[str, Any]:
    return {"type": "function_call", "id": f"item_{call_id}", "call_id": call_id, "name": name, "arguments": arguments}


def failed(rid: str, metadata: dict[str, Any] | None = None, code: str = "server_error") -> SidebandEvent:
    """A response that ended ``failed`` with OpenAI's error in ``status_details``."""
    error = {"type": "server_error" if code == "server_error" else "invalid_request_error", "code": code,
             "message": f"The model failed ({code})."}
    return response_done(rid, "failed", metadata=metadata, details={"error": error})


def barged(rid: str, metadata: dict[str, Any] | None = None) -> SidebandEvent:
    """A response cancelled because the caller started speaking (server VAD's barge-in)."""
    return response_done(rid, "cancelled", metadata=metadata, details={"reason": "turn_detected"})


def audio(kind: str, rid: str | None) -> SidebandEvent:
    return sb({"type": f"output_audio_buffer.{kind}", "response_id": rid})


def said(rid: str, text: str) -> SidebandEvent:
    return sb({"type": "response.output_audio_transcript.done", "response_id": rid, "item_id": "i", "transcript": text})


def heard(text: str) -> SidebandEvent:
    return sb({"type": "conversation.item.input_audio_transcription.completed", "item_id": "i", "transcript": text})


def speech(kind: str) -> SidebandEvent:
    return sb({"type": f"input_audio_buffer.speech_{kind}", "audio_start_ms": 0, "item_id": "i"})


def dtmf(digit: str) -> SidebandEvent:
    return sb({"type": "input_audio_buffer.dtmf_event_received", "event": digit, "received_at": 1})


def session_updated() -> SidebandEvent:
    return sb({"type": "session.updated", "session": {"type": "realtime"}})


def usage(
    text_in: int = 0,
    audio_in: int = 0,
    text_out: int = 0,
    audio_out: int = 0,
    cached_text: int = 0,
    cached_audio: int = 0,
) -> dict[str, Any]:
    return {
        "total_tokens": text_in + audio_in + text_out + audio_out,
        "input_token_details": {
            "text_tokens": text_in,
            "audio_tokens": audio_in,
            "cached_tokens": cached_text + cached_audio,
            "cached_tokens_details": {"text_tokens": cached_text, "audio_tokens": cached_audio},
        },
        "output_token_details": {"text_tokens": text_out, "audio_tokens": audio_out},
    }


@dataclass
class Call:
    """A machine plus a clock that advances 0.5 s per input (set ``now`` to jump)."""

    profile: AgentProfile = field(default_factory=AgentProfile)
    prices: ModelPrices | None = None
    close_wait_s: float = 3.0
    now: float = 100.0
    log: list[Action] = field(default_factory=list)
    #: the silence watchdog adds timer actions to every speech edge; tests of it turn it on explicitly
    silence_watchdog: bool = False

    def __post_init__(self) -> None:
        if not self.silence_watchdog and self.profile.watchdogs.silence_timeout_s is not None:
            quiet = self.profile.watchdogs.model_copy(update={"silence_timeout_s": None})
            self.profile = self.profile.model_copy(update={"watchdogs": quiet})
        self.record = CallRecord(call_id="rtc_1", profile="default", received_at=RECEIVED)
        self.m = CallMachine(
            call_id="rtc_1",
            profile_name="default",
            profile=self.profile,
            record=self.record,
            close_wait_s=self.close_wait_s,
            today=RECEIVED.date(),
            prices=self.prices,
        )

    def state(self) -> CallState:
        return self.m.state

    def feed(self, inp: Input) -> list[Action]:
        actions = self.m.handle(inp, self.now)
        self.now += 0.5
        self.log.extend(actions)
        assert_tagged(self.log)  # every response.create of every machine test carries the tags.py scheme
        return actions

    def attach(self) -> list[Action]:
        """Start -> AcceptOk -> Attached; returns the actions of Attached."""
        self.feed(Start())
        self.feed(AcceptOk())
        return self.feed(Attached())

    def greeted(self) -> None:
        """Attach and play the greeting (response r_greet) to the end."""
        self.attach()
        for inp in (
            response_created("r_greet"),
            audio("started", "r_greet"),
            said("r_greet", "Hello! Thanks for calling."),
            response_done("r_greet", usage=usage(text_in=100, audio_out=50)),
            audio("stopped", "r_greet"),
        ):
            actions = self.feed(inp)
            if not self.silence_watchdog:  # with it on, speech edges (re)start its timer
                assert actions == []

    def tag(self, purpose: str | None = None) -> dict[str, Any]:
        """The metadata of the latest response.create the machine sent (for ``purpose``, when given): what
        OpenAI echoes on that response's response.created and response.done."""
        for event in reversed(creates(self.log)):
            metadata = (event.get("response") or {}).get("metadata")
            if isinstance(metadata, dict) and (purpose is None or metadata.get("sipctl") == purpose):
                return metadata
        raise AssertionError(f"no response.create for {purpose or 'anything'} was sent")

    def play(self, rid: str, text: str = "Okay.") -> list[Action]:
        """A response the machine asked for (its latest request): created, audio, transcript, done, stopped;
        all actions."""
        meta = self.tag()
        out: list[Action] = []
        for inp in (
            response_created(rid, meta),
            audio("started", rid),
            said(rid, text),
            response_done(rid, metadata=meta),
            audio("stopped", rid),
        ):
            out.extend(self.feed(inp))
        return out


def sends(actions: list[Action]) -> list[dict[str, Any]]:
    return [a.event for a in actions if isinstance(a, Send)]


def creates(actions: list[Action]) -> list[dict[str, Any]]:
    return [e for e in sends(actions) if e["type"] == "response.create"]


def plain_answer(event: dict[str, Any]) -> str | None:
    """The purpose of a plain ``response.create`` (the model answers the conversation as it stands: the body holds
    nothing but the tag), or None for any other event."""
    response = event.get("response")
    if event.get("type") != "response.create" or not isinstance(response, dict) or set(response) != {"metadata"}:
        return None
    purpose = response["metadata"].get(PURPOSE_KEY)
    return purpose if isinstance(purpose, str) else None


def assert_tagged(actions: list[Action]) -> None:
    """Every ``response.create`` in ``actions`` carries ``calls/tags.py``'s metadata: what it is for (``sipctl``)
    and a number no other request of the call has (``n``), so its response is recognised by the tag alone."""
    numbers: set[str] = set()
    for event in creates(actions):
        metadata = (event.get("response") or {}).get("metadata")
        assert isinstance(metadata, dict), f"an untagged response.create: {event}"
        purpose, n = metadata.get(PURPOSE_KEY), metadata.get(SEQ_KEY)
        assert isinstance(purpose, str), f"no {PURPOSE_KEY!r} in {event}"
        assert purpose, f"an empty {PURPOSE_KEY!r} in {event}"
        assert isinstance(n, str), f"no {SEQ_KEY!r} in {event}"
        assert n.isdigit(), f"{SEQ_KEY!r} is not a number in {event}"
        assert n not in numbers, f"two requests tagged n={n}"
        numbers.add(n)
        assert all(isinstance(v, str) for v in metadata.values()), f"metadata values must be strings: {event}"


def finishes(actions: list[Action]) -> list[Finish]:
    return [a for a in actions if isinstance(a, Finish)]


def refers(actions: list[Action]) -> list[Refer]:
    return [a for a in actions if isinstance(a, Refer)]


def hangups(actions: list[Action]) -> int:
    return sum(1 for a in actions if isinstance(a, Hangup))


def timers(actions: list[Action]) -> dict[str, float]:
    return {a.name: a.seconds for a in actions if isinstance(a, StartTimer)}


def cancelled(actions: list[Action]) -> set[str]:
    return {a.name for a in actions if isinstance(a, CancelTimer)}


def function_output(event: dict[str, Any]) -> tuple[str, Any]:
    assert event["type"] == "conversation.item.create"
    item = event["item"]
    assert item["type"] == "function_call_output"
    assert isinstance(item["output"], str)
    return item["call_id"], json.loads(item["output"])


def outputs(actions: list[Action]) -> dict[str, Any]:
    return dict(
        function_output(e)
        for e in sends(actions)
        if e["type"] == "conversation.item.create" and e["item"]["type"] == "function_call_output"
    )


def end_after_goodbye(c: Call, rid: str = "r_bye") -> list[Action]:
    """Play the goodbye: no hangup until its audio stopped; then hang up and close. Returns the last actions."""
    meta = c.tag("goodbye")
    created, done = response_created(rid, meta), response_done(rid, metadata=meta)
    for inp in (created, audio("started", rid), said(rid, "Goodbye!"), done):
        assert hangups(c.feed(inp)) == 0
    assert hangups(c.feed(audio("stopped", rid))) == 1
    c.feed(HangupOk())
    return c.feed(SidebandClosed(1000))
