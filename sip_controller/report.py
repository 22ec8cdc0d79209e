"""What is kept about a call as it happens: timeline, transcripts, tool calls, usage; and its summary."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from sip_controller.events import Usage

Role = Literal["caller", "assistant"]


@dataclass(frozen=True)
class TranscriptEntry:
    role: Role
    text: str
    at_s: float


@dataclass(frozen=True)
class ToolCallRecord:
    call_id: str
    name: str
    arguments: str
    at_s: float
    outcome: str
    detail: str = ""


@dataclass
class UsageTotals:
    responses: int = 0
    input_text_tokens: int = 0
    input_audio_tokens: int = 0
    cached_text_tokens: int = 0
    cached_audio_tokens: int = 0
    output_text_tokens: int = 0
    output_audio_tokens: int = 0

    def add(self, usage: Usage) -> None:
        i = usage.input_token_details
        o = usage.output_token_details
        self.responses += 1
        self.input_text_tokens += i.text_tokens
        self.input_audio_tokens += i.audio_tokens
        self.cached_text_tokens += i.cached_tokens_details.text_tokens
        self.cached_audio_tokens += i.cached_tokens_details.audio_tokens
        self.output_text_tokens += o.text_tokens
        self.output_audio_tokens += o.audio_tokens


def mask_number(number: str | None) -> str | None:
    """Keep a caller number useful for support without exposing it: ``+1415***0123``."""
    if not number:
        return number
    if len(number) <= 6:
        return "*" * len(number)
    shown = len(number) - 3  # never reveal more than all but three characters
    tail = min(4, shown // 2)
    head = min(5, shown - tail)
    return f"{number[:head]}***{number[len(number) - tail:]}"


@dataclass
class CallRecord:
    """Everything recorded about one call, appended as events arrive so an abrupt end loses nothing."""

    call_id: str
    profile: str
    received_at: datetime
    caller: str | None = None
    dialed: str | None = None
    state: str = "received"
    ended_reason: str | None = None
    duration_s: float | None = None
    timeline: list[tuple[float, str]] = field(default_factory=list)
    transcripts: list[TranscriptEntry] = field(default_factory=list)
    tool_calls: list[ToolCallRecord] = field(default_factory=list)
    usage: UsageTotals = field(default_factory=UsageTotals)
    errors: list[str] = field(default_factory=list)
    ignored_events: int = 0

    def mark(self, at_s: float, what: str) -> None:
        self.timeline.append((round(at_s, 3), what))

    def summary(self) -> dict[str, Any]:
        """The per-call summary (no transcript text, caller masked): safe for an info-level log line."""
        return {
            "call_id": self.call_id,
            "profile": self.profile,
            "caller": mask_number(self.caller),
            "state": self.state,
            "ended_reason": self.ended_reason,
            "duration_s": self.duration_s,
            "turns_caller": sum(1 for t in self.transcripts if t.role == "caller"),
            "turns_assistant": sum(1 for t in self.transcripts if t.role == "assistant"),
            "tool_calls": [t.name for t in self.tool_calls],
            "responses": self.usage.responses,
            "errors": len(self.errors),
            "ignored_events": self.ignored_events,
        }

    def to_dict(self) -> dict[str, Any]:
        """The full record, transcripts included (for operators, not for info logs)."""
        return {
            **self.summary(),
            "caller": self.caller,
            "dialed": self.dialed,
            "received_at": self.received_at.isoformat(),
            "timeline": [{"at_s": t, "event": e} for t, e in self.timeline],
            "transcripts": [{"role": t.role, "text": t.text, "at_s": t.at_s} for t in self.transcripts],
            "tool_calls": [vars(t) for t in self.tool_calls],
            "usage": vars(self.usage),
            "errors": list(self.errors),
        }
