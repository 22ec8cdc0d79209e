"""A ``CallPort`` with no machine behind it, for testing a feature on its own: it answers the feature's
questions from plain fields and records what the feature asked the call to do."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sip_controller.calls.actions import Action, Send, StartTimer
from sip_controller.calls.report import CallRecord, ToolCallRecord
from sip_controller.calls.states import EndedReason
from sip_controller.realtime import events as ev


@dataclass
class Update:
    patch: dict[str, Any]
    what: str
    then: list[Action]


@dataclass
class FakePort:
    live: bool = True
    muted: bool = False
    record: CallRecord = field(default_factory=lambda: CallRecord("rtc_unit", "unit", datetime(2026, 1, 1, tzinfo=UTC)))
    audio_started: set[str] = field(default_factory=set)
    audio_stopped: set[str] = field(default_factory=set)
    spoken: set[str] = field(default_factory=set)
    #: what the feature asked of the call
    endings: list[tuple[EndedReason, str | None]] = field(default_factory=list)
    transfers: list[str] = field(default_factory=list)
    pauses: list[bool] = field(default_factory=list)
    updates: list[Update] = field(default_factory=list)
    #: names waiting for the caller's turn to be over (``after_caller_turn``), and why the model failed
    waiting: list[str] = field(default_factory=list)
    model_failures: list[str] = field(default_factory=list)
    seq: int = 0

    def next_event_id(self, kind: str) -> str:
        self.seq += 1
        return f"unit_{kind}_{self.seq}"

    def ask(self, response: Mapping[str, Any], *, purpose: str) -> Send:
        event_id = self.next_event_id("response")
        metadata = {**(response.get("metadata") or {}), "sipctl": purpose, "n": str(self.seq)}
        return Send({"type": "response.create", "event_id": event_id, "response": {**response, "metadata": metadata}})

    def say(self, instructions: str, *, purpose: str = "say") -> Send:
        return self.ask({"instructions": instructions, "tool_choice": "none"}, purpose=purpose)

    def respond(self, purpose: str = "answer") -> Send:
        return self.ask({}, purpose=purpose)

    def tool_output(self, call_id: str, output: dict[str, Any] | str) -> Send:
        text = output if isinstance(output, str) else json.dumps(output)
        item = {"type": "function_call_output", "call_id": call_id, "output": text}
        return Send({"type": "conversation.item.create", "event_id": self.next_event_id("item"), "item": item})

    def user_text(self, text: str) -> Send:
        item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
        return Send({"type": "conversation.item.create", "event_id": self.next_event_id("item"), "item": item})

    def note(self, text: str) -> Send:
        item = {"type": "message", "role": "system", "content": [{"type": "input_text", "text": text}]}
        return Send({"type": "conversation.item.create", "event_id": self.next_event_id("item"), "item": item})

    def after_caller_turn(self, name: str, rel: float) -> list[Action]:
        self.waiting.append(name)
        return [StartTimer(name, 30.0)]

    def model_failed(self, rel: float, why: str) -> list[Action]:
        """Like the machine: the call stops being live (it hangs up)."""
        self.model_failures.append(why)
        self.live = False
        return [Send({"type": "fake.hangup", "why": why})]

    def update_session(self, patch: dict[str, Any], rel: float, *, what: str, then: list[Action]) -> list[Action]:
        self.updates.append(Update(patch, what, then))
        return [Send({"type": "session.update", "event_id": self.next_event_id("session"), "session": patch})]

    def begin_ending(self, reason: EndedReason, rel: float, instructions: str | None) -> list[Action]:
        """Like the machine: the call stops being live, and the goodbye (if any) is asked for."""
        self.endings.append((reason, instructions))
        self.live = False
        return [self.say(instructions)] if instructions is not None else []

    def start_transfer(self, target: str, rel: float) -> list[Action]:
        self.transfers.append(target)
        return [Send({"type": "fake.transfer", "target": target})]

    def pause_silence(self, paused: bool) -> list[Action]:
        self.pauses.append(paused)
        return [Send({"type": "fake.pause_silence", "paused": paused})]


def sent(actions: list[Action]) -> list[dict[str, Any]]:
    return [a.event for a in actions if isinstance(a, Send)]


def instructions(actions: list[Action]) -> list[str]:
    return [e["response"]["instructions"] for e in sent(actions) if e["type"] == "response.create" and "response" in e]


def tool_call(name: str, call_id: str = "call_1") -> ToolCallRecord:
    return ToolCallRecord(call_id, name, "{}", 1.0, "ok")


def response(
    rid: str,
    *,
    status: str = "completed",
    text: str | None = None,
    audio: bool = False,
    metadata: dict[str, Any] | None = None,
    reason: str | None = None,
    error_code: str | None = None,
) -> ev.Response:
    content: list[dict[str, Any]] = []
    if text is not None:
        content.append({"type": "output_text", "text": text})
    if audio:
        content.append({"type": "output_audio", "transcript": ""})
    output = [ev.OutputItem(type="message", content=content)] if content else []
    details = None
    if reason is not None or error_code is not None:
        error = ev.StatusError(type="server_error", code=error_code) if error_code is not None else None
        details = ev.StatusDetails(type=status, reason=reason, error=error)
    return ev.Response(id=rid, status=status, status_details=details, output=output, metadata=metadata)


def system_notes(actions: list[Action]) -> list[str]:
    return [
        e["item"]["content"][0]["text"]
        for e in sent(actions)
        if e["type"] == "conversation.item.create" and e["item"].get("role") == "system"
    ]


def marks(port: FakePort) -> list[str]:
    """The call's timeline, without the times."""
    return [what for _, what in port.record.timeline]
