"""What is kept about a call as it happens: timeline, transcripts, tool calls, usage; and its summary."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

from sip_controller.agent.tools import ToolArgumentsError, decode_arguments
from sip_controller.calls.legs import merge_legs
from sip_controller.realtime.events import Usage
from sip_controller.telephony.callbacks import answered

#: ``keypad``: one digit the caller pressed (DTMF), whatever became of it
Role = Literal["caller", "assistant", "keypad"]


@dataclass(frozen=True, slots=True)
class TranscriptEntry:
    role: Role
    text: str
    at_s: float


@dataclass(slots=True)
class ToolCallRecord:
    """One tool call. ``outcome``: ok, error, timeout, invalid_arguments, unknown_tool, interrupted, pending."""

    call_id: str
    name: str
    arguments: str
    at_s: float
    outcome: str
    detail: str = ""
    result: str = ""
    duration_s: float | None = None


#: failed and incomplete responses kept on a call's record (the first ones; all are counted)
MAX_FAILED_RESPONSES_KEPT = 50
#: barge-ins kept on a call's record (each line bounds its own, so a call has only a few)
MAX_BARGE_INS_KEPT = 20


@dataclass(frozen=True, slots=True)
class FailedResponse:
    """A response that ended ``failed`` or ``incomplete``, with OpenAI's ``status_details``. ``purpose``: the
    controller's line it was (``greeting``, ``goodbye``, ``transfer``, ``wrap_up``, …) or None for the model's
    own answer."""

    response_id: str
    status: str
    reason: str | None
    error_type: str | None
    error_code: str | None
    error_message: str | None
    purpose: str | None
    at_s: float

    def to_dict(self) -> dict[str, Any]:
        error = None
        if self.error_type is not None or self.error_code is not None or self.error_message is not None:
            error = {"type": self.error_type, "code": self.error_code, "message": self.error_message}
        return {
            "id": self.response_id,
            "status": self.status,
            "reason": self.reason,
            "error": error,
            "purpose": self.purpose,
            "at_s": round(self.at_s, 3),
        }


#: what became of a line the caller talked over
BargeInThen = Literal["resumed", "answered", "noted", "hung_up", "referred"]


@dataclass(frozen=True, slots=True)
class BargeIn:
    """The caller spoke over one of the controller's lines (``goodbye``, ``transfer``, ``wrap_up``)."""

    line: str
    at_s: float
    then: BargeInThen


@dataclass(slots=True)
class RateLimitState:
    """The latest values of one of the project's rate limits, as ``rate_limits.updated`` said."""

    limit: int | None
    remaining: int | None
    reset_seconds: float | None
    at_s: float


@dataclass(slots=True)
class UsageTotals:
    responses: int = 0
    input_text_tokens: int = 0
    input_audio_tokens: int = 0
    cached_text_tokens: int = 0
    cached_audio_tokens: int = 0
    output_text_tokens: int = 0
    output_audio_tokens: int = 0

    def add_totals(self, other: UsageTotals) -> None:
        for key, value in asdict(other).items():
            setattr(self, key, getattr(self, key) + value)

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


@dataclass(slots=True)
class TranscriptionUsage:
    audio_tokens: int = 0
    text_tokens: int = 0
    output_tokens: int = 0
    seconds: float = 0.0


@dataclass(slots=True)
class CallRecord:
    """Everything recorded about one call, appended as events arrive so an abrupt end loses nothing.

    Times ending in ``_s`` are seconds since the webhook arrived (``received_at``)."""

    call_id: str
    profile: str
    received_at: datetime
    caller: str | None = None
    dialed: str | None = None
    twilio_call_sid: str | None = None
    #: a call Twilio bridged into OpenAI (#16): ``id``, ``direction``, ``call_sid``, ``from``/``to`` as Twilio saw
    #: them, ``status`` (the latest status callback), ``answered_by``, ``error_code``
    twilio: dict[str, Any] | None = None
    #: a call we placed (``POST /v1/outbound``): ``id`` (the request's) and ``variables``
    outbound: dict[str, Any] | None = None
    #: Twilio's recording of the call (#16: ``sid``, ``url``, ``duration_s``, ``channels``), when it arrived
    #: before the report was written
    recording: dict[str, Any] | None = None
    state: str = "received"
    ended_reason: str | None = None
    #: while ``state`` is ``ending``: the reason it will end with (stored, so a takeover ends it with that reason)
    ending_reason: str | None = None
    duration_s: float | None = None
    accepted_s: float | None = None
    attached_s: float | None = None
    #: seconds on hold (wait_on_hold) and the model usage spent while on hold (also counted in `usage`)
    hold_s: float = 0.0
    #: the turn detection the call is left with (#13, #17), kept so a takeover restores it: live control's mute
    #: (``features/control.py``) and since when the call waits on hold (``features/hold.py``; None: not on hold)
    muted: bool = False
    on_hold_since_s: float | None = None
    hold_usage: UsageTotals = field(default_factory=UsageTotals)
    transcription: TranscriptionUsage = field(default_factory=TranscriptionUsage)
    #: the caller transcription that arrived while on hold (hold music, announcements; also in `transcription`)
    hold_transcription: TranscriptionUsage = field(default_factory=TranscriptionUsage)
    cost_usd: float = 0.0
    hold_cost_usd: float = 0.0
    #: the part of ``cost_usd`` that is the input transcription's (#17: the history's cost split)
    transcription_cost_usd: float = 0.0
    transfer_target: str | None = None
    transfer_outcome: str | None = None
    timeline: list[tuple[float, str]] = field(default_factory=list)
    transcripts: list[TranscriptEntry] = field(default_factory=list)
    tool_calls: list[ToolCallRecord] = field(default_factory=list)
    usage: UsageTotals = field(default_factory=UsageTotals)
    errors: list[str] = field(default_factory=list)
    ignored_events: int = 0
    #: responses that ended failed or incomplete (the first ``MAX_FAILED_RESPONSES_KEPT``), and how many in all
    failed_responses: list[FailedResponse] = field(default_factory=list)
    failed_responses_total: int = 0
    #: the caller talking over the controller's lines, and what the controller did about it
    barge_ins: list[BargeIn] = field(default_factory=list)
    #: the latest value of each rate limit OpenAI reported during the call, by name (``requests``, ``tokens``)
    rate_limits: dict[str, RateLimitState] = field(default_factory=dict)
    #: hangup requests sent to OpenAI (quick retries included); whether OpenAI confirmed the call is over: True
    #: (our hangup answered 2xx or 404, or OpenAI closed the session after it), False (the record was closed
    #: while our hangup was still unconfirmed: the call may be up, left ``hanging_up`` for a retry), None (we
    #: never hung up: the caller did, or the call was never answered)
    hangup_attempts: int = 0
    hangup_confirmed: bool | None = None
    #: each time another process took the call over after its owner's lease lapsed (#13): ``at`` (ISO-8601),
    #: ``gap_s`` (from the lost owner's last heartbeat to the takeover), ``by`` (the new owner's process id)
    takeovers: list[dict[str, Any]] = field(default_factory=list)
    #: a call parked on Twilio during a long hold (#16): the report documents of its earlier OpenAI legs (each
    #: ended ``parked``), in order, and its parks (``calls/legs.py``: ``merge_legs``'s spells); the report is then
    #: the whole call's, of all its legs
    earlier_legs: list[dict[str, Any]] = field(default_factory=list)
    park_spells: list[dict[str, Any]] = field(default_factory=list)

    def mark(self, at_s: float, what: str) -> None:
        self.timeline.append((round(at_s, 3), what))

    def add_failed_response(self, entry: FailedResponse) -> None:
        self.failed_responses_total += 1
        if len(self.failed_responses) < MAX_FAILED_RESPONSES_KEPT:
            self.failed_responses.append(entry)

    def add_barge_in(self, entry: BargeIn) -> None:
        if len(self.barge_ins) < MAX_BARGE_INS_KEPT:
            self.barge_ins.append(entry)

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
            "cost_usd": round(self.cost_usd, 6),
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
            "tool_calls": [asdict(t) for t in self.tool_calls],
            "usage": asdict(self.usage),
            "errors": list(self.errors),
        }


# ---- the end-of-call report ---------------------------------------------------------------------------------

#: bumped on any incompatible change of the documents below (fields removed, renamed or retyped)
SCHEMA_VERSION = 1


def _iso(received_at: datetime, offset_s: float | None) -> str | None:
    """Wall-clock ISO-8601 UTC (millisecond precision, ``Z``) of ``received_at + offset_s``."""
    if offset_s is None:
        return None
    base = received_at if received_at.tzinfo is not None else received_at.replace(tzinfo=UTC)
    moment = (base + timedelta(seconds=offset_s)).astimezone(UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _mark_s(record: CallRecord, what: str) -> float | None:
    """When the timeline first shows ``what`` (a fallback while an ``*_s`` field is not filled in)."""
    for at_s, event in record.timeline:
        if event == what:
            return at_s
    return None


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * 1000)


def _decoded(arguments: str) -> Any:
    """Tool arguments as JSON when they are valid JSON within the tool-argument limits (size, nesting), else the
    raw string the model sent. Never raises: nothing the model sends may cost a call its report."""
    if not arguments.strip():
        return arguments
    try:
        return decode_arguments(arguments)
    except ToolArgumentsError:
        return arguments


def _transcription_dict(t: TranscriptionUsage) -> dict[str, float]:
    return {
        "audio_tokens": t.audio_tokens,
        "text_tokens": t.text_tokens,
        "output_tokens": t.output_tokens,
        "seconds": round(t.seconds, 3),
    }


def _usage_dict(totals: UsageTotals) -> dict[str, int]:
    return {
        "responses": totals.responses,
        "input_text_tokens": totals.input_text_tokens,
        "input_audio_tokens": totals.input_audio_tokens,
        "cached_text_tokens": totals.cached_text_tokens,
        "cached_audio_tokens": totals.cached_audio_tokens,
        "output_text_tokens": totals.output_text_tokens,
        "output_audio_tokens": totals.output_audio_tokens,
    }


def _timestamps(record: CallRecord, accepted_s: float | None, attached_s: float | None) -> dict[str, str | None]:
    return {
        "received_at": _iso(record.received_at, 0.0),
        "accepted_at": _iso(record.received_at, accepted_s),
        "attached_at": _iso(record.received_at, attached_s),
        "ended_at": _iso(record.received_at, record.duration_s),
    }


def _head(record: CallRecord, mask_caller: bool) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "call_id": record.call_id,
        "profile": record.profile,
        "caller": mask_number(record.caller) if mask_caller else record.caller,
        "caller_masked": mask_caller,
        "dialed": record.dialed,
        "twilio_call_sid": record.twilio_call_sid,
        "twilio": _twilio_part(record.twilio, mask_caller),
        "outbound": None if record.outbound is None else dict(record.outbound),
        # what answered a call we placed with answering-machine detection: human, machine, fax, unknown (#16)
        "answered_by": answered(record.twilio.get("answered_by")) if record.twilio is not None else None,
        "state": record.state,
    }


class TwilioSide(Protocol):
    """What the report takes from a Twilio call row (``state.twilio_calls.TwilioCallRow``)."""

    @property
    def id(self) -> str: ...

    @property
    def direction(self) -> str: ...

    @property
    def call_sid(self) -> str | None: ...

    @property
    def from_number(self) -> str | None: ...

    @property
    def to_number(self) -> str | None: ...

    @property
    def status(self) -> str: ...

    @property
    def answered_by(self) -> str | None: ...

    @property
    def error_code(self) -> int | None: ...


def twilio_part(row: TwilioSide) -> dict[str, Any]:
    """``CallRecord.twilio`` from the store's row of the Twilio call."""
    return {
        "id": row.id,
        "direction": row.direction,
        "call_sid": row.call_sid,
        "from": row.from_number,
        "to": row.to_number,
        "status": row.status,
        "answered_by": row.answered_by,
        "error_code": row.error_code,
    }


def twilio_inputs(record: CallRecord) -> dict[str, Any]:
    """What a bridged call keeps in its row's inputs, for a replica that takes it over (``calls/takeover.py``)."""
    out: dict[str, Any] = {}
    if record.twilio is not None:
        out["twilio"] = dict(record.twilio)
    if record.outbound is not None:
        out["outbound"] = dict(record.outbound)
    return out


def _twilio_part(twilio: dict[str, Any] | None, mask_caller: bool) -> dict[str, Any] | None:
    """The Twilio side of the report; the remote party's number masked like the caller (an inbound call's
    ``from``, an outbound call's ``to``)."""
    if twilio is None:
        return None
    out = dict(twilio)
    if mask_caller:
        remote = "to" if out.get("direction") == "outbound" else "from"
        out[remote] = mask_number(out.get(remote))
    return out


def started_document(record: CallRecord, *, mask_caller: bool = True) -> dict[str, Any]:
    """The ``call.started`` document: who called whom and when (no transcript, usage or outcome yet)."""
    accepted_s = record.accepted_s if record.accepted_s is not None else _mark_s(record, "accepted")
    attached_s = record.attached_s if record.attached_s is not None else _mark_s(record, "attached")
    return {**_head(record, mask_caller), "timestamps": _timestamps(record, accepted_s, attached_s)}


def report_document(record: CallRecord, *, mask_caller: bool = True) -> dict[str, Any]:
    """The end-of-call report (``call.ended`` and the JSONL call log): a stable, JSON-ready document.

    Pure: reads the record, never changes it. Fields not filled in (a call that was never accepted or
    attached, a record still being written) come out as ``null``, never as an error. The schema is
    documented in the README (``## End-of-call report``); ``schema_version`` changes with it. A call parked on
    Twilio (#16: ``earlier_legs``) reports all its OpenAI legs as one call (``calls/legs.py``: ``merge_legs``)."""
    accepted_s = record.accepted_s if record.accepted_s is not None else _mark_s(record, "accepted")
    attached_s = record.attached_s if record.attached_s is not None else _mark_s(record, "attached")
    ended_s = record.duration_s
    accept_to_attach = attached_s - accepted_s if attached_s is not None and accepted_s is not None else None
    talk_s: float | None = None
    if attached_s is not None and ended_s is not None:
        talk_s = round(max(0.0, ended_s - attached_s - record.hold_s), 3)
    transcript = sorted(record.transcripts, key=lambda t: t.at_s)  # stable: equal times keep arrival order
    document = {
        **_head(record, mask_caller),
        "ended_reason": record.ended_reason,
        "timestamps": _timestamps(record, accepted_s, attached_s),
        "timings": {
            "webhook_to_accept_ms": _ms(accepted_s),
            "accept_to_attach_ms": _ms(accept_to_attach),
            "duration_s": None if ended_s is None else round(ended_s, 3),
            "talk_s": talk_s,
            "hold_s": round(record.hold_s, 3),
            "parked_s": 0.0,
        },
        "transfer": {"target": record.transfer_target, "outcome": record.transfer_outcome},
        "recording": None if record.recording is None else dict(record.recording),
        "transcript": [{"role": t.role, "text": t.text, "at_s": round(t.at_s, 3)} for t in transcript],
        "tool_calls": [
            {
                "id": t.call_id,
                "name": t.name,
                "arguments": _decoded(t.arguments),
                "result": t.result or None,
                "at_s": round(t.at_s, 3),
                "duration_s": None if t.duration_s is None else round(t.duration_s, 3),
                "outcome": t.outcome,
                "detail": t.detail or None,
            }
            for t in record.tool_calls
        ],
        # what happened besides the words, in order: answers, watchdogs, hold, keypad, transfers, operator actions
        # (their kind, source and length, never the text an operator sent)
        "timeline": [{"at_s": round(at_s, 3), "event": event} for at_s, event in record.timeline],
        "usage": {
            **_usage_dict(record.usage),
            "hold": {**_usage_dict(record.hold_usage), "transcription": _transcription_dict(record.hold_transcription)},
            "transcription": _transcription_dict(record.transcription),
        },
        "cost_usd": round(record.cost_usd, 6),
        "hold_cost_usd": round(record.hold_cost_usd, 6),
        "transcription_cost_usd": round(record.transcription_cost_usd, 6),
        "errors": list(record.errors),
        "ignored_events": record.ignored_events,
        "failed_responses": [f.to_dict() for f in record.failed_responses],
        "failed_responses_total": record.failed_responses_total,
        "barge_ins": [{"line": b.line, "at_s": round(b.at_s, 3), "then": b.then} for b in record.barge_ins],
        "hangup_confirmed": record.hangup_confirmed,
        "hangup_attempts": record.hangup_attempts,
        "takeovers": [dict(t) for t in record.takeovers],
        "rate_limits": {
            name: {
                "limit": r.limit,
                "remaining": r.remaining,
                "reset_seconds": r.reset_seconds,
                "at_s": round(r.at_s, 3),
            }
            for name, r in record.rate_limits.items()
        },
        # a call parked on Twilio (#16): its OpenAI legs and parks (``calls/legs.py``); a call never parked has none
        "legs": None,
        "parked": None,
    }
    if record.earlier_legs:
        return merge_legs(record.earlier_legs, document, record.park_spells)
    return document
