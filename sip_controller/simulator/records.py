"""What happened to each simulated call, for tests and reports to assert on."""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from .rules import AudioState
from .scenario import CallSpec, EndedBy

ResponseKind = Literal["audio", "text", "tool"]
ResponseSource = Literal["auto", "client"]


@dataclass
class ResponseRecord:
    """One model response. ``audio_stopped_at`` stays ``None`` when its audio was cut (hangup, clear).

    ``session_version`` is how many ``session.update`` patches had been applied when it was created.
    """

    id: str
    kind: ResponseKind
    source: ResponseSource
    transcript: str
    created_at: float
    tool_name: str | None = None
    tool_call_id: str | None = None
    audio_started_at: float | None = None
    audio_stopped_at: float | None = None
    audio_cleared: bool = False
    session_version: int = 0
    #: an out-of-band response (``conversation: "none"``): text only, not part of the conversation
    out_of_band: bool = False
    #: the ``response.metadata`` the client sent with its ``response.create`` (echoed on created / done)
    metadata: dict[str, Any] | None = None
    #: how it ended (``response.done``): ``completed``, ``cancelled``, ``failed`` or ``incomplete``, and why
    #: (``turn_detected``, ``client_cancelled``, ``server_error``, ``max_output_tokens``, …)
    status: str = "completed"
    status_detail: str | None = None


@dataclass
class ClientEvent:
    """A client event received on the sideband (``type`` is ``"<invalid>"`` for a frame that isn't JSON)."""

    t: float
    type: str
    payload: Any


@dataclass
class SimCall:
    """The record of one call. Times are seconds since the simulator started (monotonic)."""

    call_id: str
    name: str
    spec: CallSpec
    webhook_id: str
    event_id: str
    placed_at: float
    delivery_statuses: list[int] = field(default_factory=list)
    accept_count: int = 0
    accept_bodies: list[Any] = field(default_factory=list)
    accept_errors: list[dict[str, Any]] = field(default_factory=list)
    accepted_at: float | None = None
    reject_status: int | None = None
    session: dict[str, Any] = field(default_factory=dict)
    session_updates: list[dict[str, Any]] = field(default_factory=list)
    session_version: int = 0
    session_updated_at: list[float] = field(default_factory=list)
    audio_state: AudioState = "clean"
    errors_sent: list[dict[str, Any]] = field(default_factory=list)
    first_error_at: float | None = None
    client_events: list[ClientEvent] = field(default_factory=list)
    function_outputs: list[dict[str, Any]] = field(default_factory=list)
    responses: list[ResponseRecord] = field(default_factory=list)
    transcripts: list[dict[str, Any]] = field(default_factory=list)
    greeting_heard: bool = False
    #: hold-music segments the far side produced (``hold_music`` steps)
    hold_segments: int = 0
    #: how far the caller's script (``spec.steps``) got, for a Twilio call whose later legs and ``<Gather>`` go
    #: on from it (#16): the steps over (a ``say`` is over once spoken, whether or not the model answered it),
    #: the step under way (-1: none yet), when it began, and the hold-music parts (``every`` seconds each) it began
    steps_done: int = 0
    step_index: int = -1
    step_started_at: float | None = None
    step_chunks: int = 0
    #: times the caller spoke over the assistant and cut it off (server VAD's ``interrupt_response``)
    barge_ins: int = 0
    #: times server VAD's ``idle_timeout_ms`` fired (``input_audio_buffer.timeout_triggered``)
    idle_timeouts: int = 0
    sideband_connects: int = 0
    #: when each sideband connected (``Simulator.now()``): a second one is a re-attach, e.g. after a takeover
    sideband_attached_at: list[float] = field(default_factory=list)
    sideband_close_code: int | None = None
    hangup_count: int = 0
    hangup_at: float | None = None
    refers: list[str] = field(default_factory=list)
    ended_by: EndedBy | None = None
    ended_at: float | None = None
    last_audio_stopped_at: float | None = None
    audio_playing_at_hangup: bool = False
    hangup_gap_s: float | None = None
    #: every /accept request that reached the call (including refused and injected failures)
    accept_attempts: int = 0
    #: /accept requests that arrived after the call had ended (each answered 404)
    late_accepts: int = 0
    #: the caller was still on the line when ``max_call_seconds`` ran out (nobody ended the call)
    max_call_reached: bool = False
    #: times the simulator dropped the sideband on purpose
    sideband_drops: int = 0
    #: faults injected into this call: ``{"t", "kind", ...}`` (the first 200) and counts by kind
    faults_injected: list[dict[str, Any]] = field(default_factory=list)
    fault_counts: dict[str, int] = field(default_factory=dict)
    #: the seed the call's fault decisions were drawn from (``None``: no faults configured)
    fault_seed: int | None = None
    ended: asyncio.Event = field(default_factory=asyncio.Event, repr=False, compare=False)

    @property
    def is_ended(self) -> bool:
        return self.ended_by is not None

    @property
    def fault_kinds(self) -> set[str]:
        """The kinds of fault injected into this call (``accept_500``, ``sideband_drop``, …)."""
        return set(self.fault_counts)

    @property
    def left_up(self) -> bool:
        """Accepted, and then nobody ended it: still up, or up until ``max_call_seconds`` ran out."""
        return self.accepted_at is not None and (not self.is_ended or self.max_call_reached)

    @property
    def hangup_after_audio(self) -> bool:
        """The agent hung up after the last ``output_audio_buffer.stopped`` with nothing playing."""
        return (
            self.hangup_count > 0
            and not self.audio_playing_at_hangup
            and self.hangup_gap_s is not None
            and self.hangup_gap_s >= 0
        )

    @property
    def hangup_after_error_s(self) -> float | None:
        """Seconds from the first sideband ``error`` event to the agent's ``/hangup``; ``None`` if either is missing."""
        if self.hangup_at is None or self.first_error_at is None:
            return None
        return round(self.hangup_at - self.first_error_at, 6)

    def client_event_types(self) -> list[str]:
        return [event.type for event in self.client_events]

    def summary(self) -> dict[str, Any]:
        """Everything above as JSON-serialisable data (the spec by name only)."""
        data: dict[str, Any] = {}
        for key, value in self.__dict__.items():
            if key in ("ended", "spec"):
                continue
            if key in ("responses", "client_events"):
                data[key] = [asdict(item) for item in value]
            else:
                data[key] = value
        data["hangup_after_audio"] = self.hangup_after_audio
        data["hangup_after_error_s"] = self.hangup_after_error_s
        data["left_up"] = self.left_up
        return data


def check_expectations(call: SimCall) -> list[str]:
    """Mismatches between ``call.spec.expect`` and what happened; empty when all hold.

    ``ended_reason`` is the controller's own verdict and is not checked here.
    """
    expect = call.spec.expect
    if expect is None:
        return []
    problems: list[str] = []

    def compare(name: str, wanted: object, got: object) -> None:
        if wanted is not None and wanted != got:
            problems.append(f"{call.name}: {name}: expected {wanted!r}, got {got!r}")

    compare("ended_by", expect.ended_by, call.ended_by)
    compare("accept_count", expect.accept_count, call.accept_count)
    compare("audio_state", expect.audio_state, call.audio_state)
    compare("greeting_heard", expect.greeting_heard, call.greeting_heard)
    compare("model_spoke", expect.model_spoke, any(r.audio_started_at is not None for r in call.responses))
    compare("refers", expect.refers, call.refers)
    if expect.hangup_after_audio is not None and expect.hangup_after_audio != call.hangup_after_audio:
        detail = (
            "no agent hangup"
            if call.hangup_count == 0
            else f"audio playing at hangup: {call.audio_playing_at_hangup}, gap: {call.hangup_gap_s}"
        )
        problems.append(
            f"{call.name}: hangup_after_audio: expected {expect.hangup_after_audio!r}, "
            f"got {call.hangup_after_audio!r} ({detail})"
        )
    if expect.max_hangup_after_error_s is not None:
        limit = expect.max_hangup_after_error_s
        waited = call.hangup_after_error_s
        if call.first_error_at is None:
            problems.append(f"{call.name}: max_hangup_after_error_s: no server error event was sent")
        elif call.hangup_at is None:
            problems.append(
                f"{call.name}: max_hangup_after_error_s: no agent hangup after the error at {call.first_error_at}"
            )
        elif waited is not None and waited > limit:
            problems.append(
                f"{call.name}: max_hangup_after_error_s: expected a hangup within {limit!r} s of the first error, "
                f"got {waited!r} s"
            )
    for wanted_text in expect.transcript_contains or []:
        needle = wanted_text.casefold()
        if not any(needle in str(t["text"]).casefold() for t in call.transcripts):
            problems.append(f"{call.name}: transcript_contains: {wanted_text!r} not found")
    return problems
