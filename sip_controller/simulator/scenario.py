"""Scenario files: scripted callers (``CallSpec``), what should happen (``Expectation``), YAML loading."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sip_controller.config import yaml_problem

from .faults import Faults

E164 = r"^\+[1-9][0-9]{1,14}$"
EndedBy = Literal["caller", "agent", "refer", "reject", "missed", "session_limit"]
AudioStateName = Literal["clean", "static", "broken"]
ReferMode = Literal["succeed", "ignore", "fail"]
_HEADER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*$")
_DTMF = re.compile(r"^[0-9*#A-D]+$")
StepKind = Literal["say", "wait", "hangup", "dtmf", "hold_music"]
STEP_KINDS: tuple[StepKind, ...] = ("say", "wait", "hangup", "dtmf", "hold_music")


class ScenarioError(ValueError):
    """A scenario file that cannot be read or does not validate; the message names the bad fields."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ToolCall(_Strict):
    """A function call the model makes: ``{name: end_call, arguments: {reason: done}}``."""

    name: str = Field(min_length=1)
    arguments: dict[str, Any] = Field(default_factory=dict)


DEFAULT_HOLD_REPLY = "Sorry, I didn't catch that."
#: nominal seconds a caller waits for the controller's greeting before speaking (``CallSpec.greeting_wait``)
GREETING_WAIT = 1.5


class HoldMusic(_Strict):
    """``hold_music: {seconds: 1200, every: 20, text: "[hold music]"}``: the far side plays hold music.

    Every ``every`` seconds for ``seconds`` in all, the line produces a speech segment ``segment`` seconds long
    whose transcript is ``text`` (what server VAD and transcription make of music). While the session answers
    on its own (``turn_detection.create_response`` true), the model answers each segment with ``reply``.
    ``text: null`` is a silent hold: no speech at all for ``seconds``.

    On a Twilio call parked on a ``<Gather>`` (#16), each ``every``-second part (a *chunk*) ends one Gather:
    heard as ``text`` (confidence 0.35) after ``every`` seconds, or, silent, with nothing heard after the
    Gather's ``timeout``.
    """

    seconds: float = Field(gt=0, le=3600)
    every: float = Field(default=20.0, gt=0)
    segment: float = Field(default=4.0, gt=0)
    text: str | None = Field(default="[hold music]", min_length=1)
    reply: str = Field(default=DEFAULT_HOLD_REPLY, min_length=1)

    @property
    def chunks(self) -> int:
        """How many ``every``-second parts the music has (at least one)."""
        return max(1, int(self.seconds // self.every))

    def after(self, chunks: int) -> HoldMusic:
        """The music left once ``chunks`` of its parts have played (fewer than :attr:`chunks`)."""
        return self.model_copy(update={"seconds": self.seconds - chunks * self.every})

    @model_validator(mode="after")
    def _segment_fits(self) -> HoldMusic:
        if self.segment >= self.every:
            raise ValueError("segment must be shorter than every (there is a pause between segments)")
        return self


class Step(_Strict):
    """One thing the caller does. Exactly one main key: ``say``, ``wait``, ``hangup``, ``dtmf`` or ``hold_music``.

    With ``say``: ``reply`` (what the model answers) or ``tool`` (the model calls a tool instead), and with a
    tool, ``then`` (what the model says on the controller's next ``response.create``). ``interrupt: s`` makes
    the caller barge in: instead of waiting for the assistant's audio to end, they start speaking ``s`` seconds
    into it (waiting at most ``interrupt_wait`` seconds, default 5, for audio to start if none is playing: a
    longer wait barges into a line the controller says later, such as a wrap-up or a goodbye).
    """

    say: str | None = Field(default=None, min_length=1)
    reply: str | None = Field(default=None, min_length=1)
    tool: ToolCall | None = None
    then: str | None = Field(default=None, min_length=1)
    interrupt: float | None = Field(default=None, ge=0)
    interrupt_wait: float | None = Field(default=None, gt=0, le=3600)
    wait: float | None = Field(default=None, ge=0)
    hangup: bool | None = None
    dtmf: str | None = None
    hold_music: HoldMusic | None = None

    @field_validator("dtmf")
    @classmethod
    def _digits(cls, value: str | None) -> str | None:
        if value is not None and not _DTMF.match(value):
            raise ValueError("dtmf must be digits 0-9, *, #, A-D")
        return value

    @field_validator("hangup")
    @classmethod
    def _hangup_true(cls, value: bool | None) -> bool | None:
        if value is False:
            raise ValueError("hangup must be true (leave the key out otherwise)")
        return value

    @model_validator(mode="after")
    def _one_action(self) -> Step:
        main = [k for k in STEP_KINDS if getattr(self, k) is not None]
        if len(main) != 1:
            found = ", ".join(main) if main else "none"
            raise ValueError(f"a step needs exactly one of {', '.join(STEP_KINDS)} (found: {found})")
        if self.say is None:
            with_say = ("reply", "tool", "then", "interrupt", "interrupt_wait")
            extra = [k for k in with_say if getattr(self, k) is not None]
            if extra:
                raise ValueError(f"{', '.join(extra)} only go with say")
        if self.reply is not None and self.tool is not None:
            raise ValueError("a step has either reply or tool, not both")
        if self.then is not None and self.tool is None:
            raise ValueError("then only goes with tool")
        if self.interrupt_wait is not None and self.interrupt is None:
            raise ValueError("interrupt_wait only goes with interrupt")
        return self

    @property
    def kind(self) -> StepKind:
        if self.say is not None:
            return "say"
        if self.wait is not None:
            return "wait"
        if self.hangup is not None:
            return "hangup"
        if self.hold_music is not None:
            return "hold_music"
        return "dtmf"


class Expectation(_Strict):
    """What should have happened to a call. Every field is optional; only stated ones are checked.

    ``ended_reason``, ``tools_called``, ``transfer_target``, ``max_cost_usd``, ``min_cost_usd`` and ``profile``
    are the controller's own record of the call: the harness (``sipctl simulate``) checks them, the simulator's
    :func:`check_expectations` does not.
    """

    ended_reason: str | None = None
    ended_by: EndedBy | None = None
    accept_count: int | None = Field(default=None, ge=0)
    audio_state: AudioStateName | None = None
    greeting_heard: bool | None = None
    #: whether any of the model's audio played on the call (``false``: the model never said a word)
    model_spoke: bool | None = None
    hangup_after_audio: bool | None = None
    transcript_contains: list[str] | None = None
    refers: list[str] | None = None
    max_hangup_after_error_s: float | None = Field(default=None, ge=0)
    #: names of the tools the controller ran, in call order (from its record)
    tools_called: list[str] | None = None
    #: the transfer target name the controller used last (from its record)
    transfer_target: str | None = None
    #: bounds on the controller's estimated cost of the call, USD
    max_cost_usd: float | None = Field(default=None, ge=0)
    min_cost_usd: float | None = Field(default=None, ge=0)
    #: the agent profile the controller chose (routing)
    profile: str | None = None


class RateLimits(_Strict):
    """What ``rate_limits.updated`` reports as each response starts: the project's request and token limits
    per window, and what is left of them when the call begins (default: all of it). Each response takes one
    request and reserves tokens for its output; what it used is taken from the tokens when it is done."""

    requests: int = Field(default=5000, ge=1)
    tokens: int = Field(default=800_000, ge=1)
    requests_remaining: int | None = Field(default=None, ge=0)
    tokens_remaining: int | None = Field(default=None, ge=0)
    reset_seconds: float = Field(default=60.0, ge=0)


class CallSpec(_Strict):
    """One scripted caller. Durations are nominal seconds, multiplied by the simulator's ``time_scale``."""

    name: str = Field(min_length=1)
    caller: str = Field(default="+14155550123", pattern=E164)
    dialed: str = Field(default="+18005550100", pattern=E164)
    headers: dict[str, str] = Field(default_factory=dict)
    deliveries: int = Field(default=1, ge=1, le=20)
    ring_timeout: float = Field(default=20.0, gt=0)
    greeting_wait: float = Field(default=GREETING_WAIT, ge=0)
    max_call_seconds: float = Field(default=30.0, gt=0)
    #: what /refer does; a list gives one mode per /refer in order (the last one repeats)
    refer: ReferMode | list[ReferMode] = "succeed"
    session_update_delay: float | None = Field(default=None, ge=0)
    #: how long the model takes to generate a response (``response.created`` to ``response.done``; its audio
    #: starts at once); while it generates, it can be cancelled (``response.cancel``, or the caller barging in)
    #: and another in-band ``response.create`` is refused (``conversation_already_has_active_response``)
    response_time: float = Field(default=0.0, ge=0)
    #: what the model says when server VAD's ``idle_timeout_ms`` fires (``input_audio_buffer.timeout_triggered``)
    idle_reply: str = Field(default="Are you still there?", min_length=1)
    #: OpenAI ends every session after 60 minutes; a shorter limit tests the same ending sooner
    session_limit: float = Field(default=3600.0, gt=0, le=3600)
    #: what ``rate_limits.updated`` reports
    rate_limits: RateLimits = RateLimits()
    steps: list[Step] = Field(default_factory=list)
    #: a ``say`` step the caller spoke before this call began (a Twilio ``<Gather>`` heard it while the call was
    #: parked, #16): the caller does not speak first, and the model answers the controller's first in-band
    #: ``response.create`` (its greeting) with the step's ``reply`` (or ``tool``, then ``then``)
    opening: Step | None = None
    expect: Expectation | None = None
    #: faults injected into this call (the fields stated here override the simulator's own ``faults``)
    faults: Faults | None = None

    @field_validator("opening")
    @classmethod
    def _opening_is_said(cls, value: Step | None) -> Step | None:
        if value is not None and (value.say is None or (value.reply is None and value.tool is None)):
            raise ValueError("opening is a say step with a reply or a tool (what the model answers first)")
        return value

    @field_validator("refer", mode="before")
    @classmethod
    def _refer_modes(cls, value: object) -> object:
        """One readable error for a bad mode (not one per member of the union)."""
        modes = get_args(ReferMode)
        expected = "Input should be 'succeed', 'ignore' or 'fail', or a non-empty list of them"
        if isinstance(value, list):
            if not value or any(mode not in modes for mode in value):
                raise ValueError(expected)
        elif value not in modes:
            raise ValueError(expected)
        return value

    def refer_mode(self, attempt: int) -> ReferMode:
        """What the ``attempt``-th /refer (0-based) does."""
        if isinstance(self.refer, list):
            return self.refer[min(attempt, len(self.refer) - 1)]
        return self.refer

    @field_validator("headers")
    @classmethod
    def _header_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name, header_value in value.items():
            if not _HEADER_NAME.match(name):
                raise ValueError(f"invalid SIP header name {name!r}")
            if "\r" in header_value or "\n" in header_value:
                raise ValueError(f"header {name!r} has a line break in its value")
        return value


# ---- Twilio calls (the simulator's Twilio stand-in; described in twilio_spec.py) ----

CalleeOutcome = Literal["answer", "busy", "no_answer", "failed", "voicemail", "fax", "hangup_while_ringing"]
AnsweredBy = Literal[
    "human", "machine_start", "machine_end_beep", "machine_end_silence", "machine_end_other", "fax", "unknown"
]
CallStatus = Literal["queued", "initiated", "ringing", "in-progress", "completed", "busy", "no-answer", "canceled",
                     "failed"]  # fmt: skip
#: the final statuses: the call is over
FINAL_STATUSES = frozenset({"completed", "busy", "no-answer", "canceled", "failed"})
DEFAULT_GREETING = "Hi, you've reached the voicemail of Sam. Please leave a message after the tone."
#: nominal seconds per spoken word (``<Say>``, a voicemail greeting)
SECONDS_PER_WORD = 0.4
#: nominal seconds a person who spoke while the call was parked waits for the new leg's answer (its greeting)
OPENING_WAIT = 10.0


def speech_seconds(text: str) -> float:
    """How long ``text`` takes to say (nominal seconds), at least half a second."""
    return max(0.5, len(text.split()) * SECONDS_PER_WORD)


class Callee(_Strict):
    """Who or what answers when the stand-in calls a number (see the module's table)."""

    outcome: CalleeOutcome = "answer"
    #: seconds of ringing before the outcome (``None``: 2, or until the call's ``Timeout`` for ``no_answer``)
    ring_seconds: float | None = Field(default=None, ge=0)
    #: the answering-machine verdict when the call asked for AMD (``None``: from the outcome; with
    #: ``MachineDetection=Enable`` a machine is ``machine_start``)
    answered_by: AnsweredBy | None = None
    #: how long AMD takes to call a human, a fax or the start of a machine
    amd_seconds: float = Field(default=2.0, gt=0)
    #: Twilio's error code for ``failed``; ``sip_response_code`` overrides the outcome's SIP code
    error_code: int = Field(default=13224, ge=10000, le=99999)
    sip_response_code: int | None = Field(default=None, ge=300, le=699)
    #: the voicemail greeting (spoken before the beep; its length from its words unless stated)
    greeting: str = Field(default=DEFAULT_GREETING, min_length=1)
    greeting_seconds: float | None = Field(default=None, gt=0)
    #: no beep: DetectMessageEnd reports ``machine_end_silence`` instead of ``machine_end_beep``
    beep: bool = True
    #: the voicemail hangs up this long after the beep
    max_message_seconds: float = Field(default=60.0, gt=0)
    #: the person's script once the call is bridged to OpenAI (``answer``)
    steps: list[Step] = Field(default_factory=list)
    #: the person (or machine) hangs up after this long on the line, whatever the TwiML does
    max_call_seconds: float = Field(default=120.0, gt=0)
    #: what should happen on the OpenAI leg (checked like a call's ``expect``); on a call parked on Twilio
    #: (#16), on its last leg (the earlier ones were hung up by the park)
    expect: Expectation | None = None

    @model_validator(mode="after")
    def _steps_for_a_person(self) -> Callee:
        if self.steps and self.outcome != "answer":
            raise ValueError(f"steps are a person's script: only with outcome answer (not {self.outcome})")
        return self

    def rings_for(self, timeout: float) -> float:
        """Nominal seconds this callee rings when the call allows ``timeout`` seconds of ringing."""
        if self.outcome == "no_answer":
            return timeout if self.ring_seconds is None else min(self.ring_seconds, timeout)
        if self.outcome in ("busy", "failed"):
            return 0.0
        return 2.0 if self.ring_seconds is None else self.ring_seconds

    @property
    def greeting_length(self) -> float:
        return self.greeting_seconds if self.greeting_seconds is not None else speech_seconds(self.greeting)

    def verdict(self, mode: str) -> AnsweredBy:
        """What AMD (``Enable`` or ``DetectMessageEnd``) reports for this callee."""
        if self.answered_by is not None:
            return self.answered_by
        if self.outcome == "fax":
            return "fax"
        if self.outcome != "voicemail":
            return "human"
        if mode != "DetectMessageEnd":
            return "machine_start"
        return "machine_end_beep" if self.beep else "machine_end_silence"

    @property
    def is_person(self) -> bool:
        """A person answers (``steps`` is their script); else a machine, or nobody."""
        return self.outcome == "answer"

    def leg_spec(
        self,
        name: str,
        caller: str,
        dialed: str,
        ring_timeout: float,
        *,
        steps: list[Step] | None = None,
        opening: Step | None = None,
    ) -> CallSpec:
        """The OpenAI leg's script: the person's ``steps`` (or what is left of them: ``steps``, with the
        ``opening`` a ``<Gather>`` heard while the call was parked); a machine listens silently until it hangs
        up."""
        machine = self.outcome in ("voicemail", "fax")
        limit = self.max_message_seconds if self.outcome == "voicemail" else self.max_call_seconds
        return CallSpec(
            name=name,
            caller=caller,
            dialed=dialed,
            ring_timeout=ring_timeout,
            steps=[] if machine else list(self.steps if steps is None else steps),
            opening=None if machine else opening,
            greeting_wait=OPENING_WAIT if opening is not None and not machine else GREETING_WAIT,
            max_call_seconds=limit,
            expect=self.expect,
        )


class TwilioExpectation(_Strict):
    """What should have happened on the Twilio side of a call; only stated fields are checked."""

    #: the ``CallStatus`` of every status callback, in order (``[initiated, ringing, in-progress, completed]``)
    statuses: list[CallStatus] | None = None
    final_status: CallStatus | None = None
    answered_by: AnsweredBy | None = None
    #: the call reached OpenAI (a ``<Dial><Sip>`` to the project)
    bridged: bool | None = None
    #: SIP header names that must be in the OpenAI webhook's ``sip_headers`` (values are the controller's)
    sip_headers: list[str] | None = None
    #: texts the voicemail recorded after the beep (case-insensitive substrings)
    voicemail_contains: list[str] | None = None
    error_code: int | None = None
    #: no TwiML problem, refused request or unsigned answer was recorded
    no_problems: bool | None = None
    #: how many OpenAI calls the call was bridged to (a parked call, #16: one more per return from the park)
    openai_legs: int | None = Field(default=None, ge=0)
    #: at least this many ``<Gather>`` ran on the call (a parked call listening, #16)
    min_gathers: int | None = Field(default=None, ge=0)


class ReportExpectation(_Strict):
    """What the controller's report of a Twilio call should say (its ``call.ended`` record, checked by the harness:
    ``sipctl simulate``); only stated fields are checked. A call that never reached OpenAI is reported under the
    outbound request's id with an ``ended_reason`` of its own (``no_answer``, ``busy``, ``failed``, ``canceled``)."""

    ended_reason: str | None = None
    #: the profile the call was given
    profile: str | None = None
    #: the report's ``twilio.error_code`` (Twilio's code for a failed call)
    error_code: int | None = None
    #: the report's ``twilio.answered_by`` (answering-machine detection's verdict)
    answered_by: AnsweredBy | None = None
    #: the report's ``legs``: how many OpenAI calls the call had (a parked call, #16)
    legs: int | None = Field(default=None, ge=1)
    #: the report's ``parked.parked_s`` in nominal seconds (divided by the run's time scale) is at least this
    parked_min_s: float | None = Field(default=None, ge=0)
    #: every leg's ``duration_s`` in nominal seconds is at most this (no OpenAI session ran into its 60 minutes)
    max_leg_s: float | None = Field(default=None, gt=0)


class OutboundCall(_Strict):
    """A call the controller places (``POST /v1/outbound``) to ``to``, answered by ``callee``."""

    model_config = {**_Strict.model_config, "populate_by_name": True}

    name: str = Field(min_length=1)
    to: str = Field(pattern=E164)
    from_: str | None = Field(default=None, alias="from", pattern=E164)
    profile: str | None = Field(default=None, min_length=1)
    variables: dict[str, str] = Field(default_factory=dict)
    callee: Callee = Callee()
    #: nominal seconds after the call was placed when the operator cancels it (``POST /v1/outbound/{id}/cancel``);
    #: a call still queued or ringing then ends ``canceled``
    cancel_after: float | None = Field(default=None, ge=0)
    expect: TwilioExpectation | None = None
    #: what the controller's report of the call should say
    report: ReportExpectation | None = None


class InboundCall(_Strict):
    """A person calling one of the account's numbers; ``steps`` is their script once bridged to OpenAI."""

    model_config = {**_Strict.model_config, "populate_by_name": True}

    name: str = Field(min_length=1)
    from_: str = Field(default="+14155550123", alias="from", pattern=E164)
    to: str = Field(pattern=E164)
    #: the caller gives up this many seconds after dialling if nobody has answered yet
    hangup_while_ringing: float | None = Field(default=None, ge=0)
    steps: list[Step] = Field(default_factory=list)
    max_call_seconds: float = Field(default=120.0, gt=0)
    expect: TwilioExpectation | None = None
    #: what should happen on the OpenAI leg
    openai: Expectation | None = None
    #: what the controller's report of the call should say
    report: ReportExpectation | None = None

    def leg_spec(
        self, name: str, ring_timeout: float, *, steps: list[Step] | None = None, opening: Step | None = None
    ) -> CallSpec:
        return CallSpec(
            name=name,
            caller=self.from_,
            dialed=self.to,
            ring_timeout=ring_timeout,
            steps=list(self.steps if steps is None else steps),
            opening=opening,
            greeting_wait=OPENING_WAIT if opening is not None else GREETING_WAIT,
            max_call_seconds=self.max_call_seconds,
            expect=self.openai,
        )


# ---- an outbound batch (#16): the controller's dialler works it on a simulated clock (simulator/batch_run.py) ----

BatchOutcome = Literal["completed", "voicemail", "no_answer", "busy", "failed", "canceled", "do_not_call"]


class BatchRow(_Strict):
    """A row of a batch: the number, the profile's variables, the callee's time zone, and who answers each attempt
    (``callees``: one per call in order, the last one repeating)."""

    to: str = Field(pattern=E164)
    variables: dict[str, str] = Field(default_factory=dict)
    timezone: str | None = Field(default=None, min_length=1)
    callees: list[Callee] = Field(default_factory=lambda: [Callee()], min_length=1)


class GeneratedRows(_Strict):
    """``count`` rows whose numbers count up from ``first``; ``{n}`` in a variable's value is the row's number (from
    1); row ``n`` is answered as ``callees[(n - 1) % len(callees)]`` says (each item: one callee per attempt)."""

    count: int = Field(ge=1, le=1000)
    first: str = Field(pattern=E164)
    variables: dict[str, str] = Field(default_factory=dict)
    timezone: str | None = Field(default=None, min_length=1)
    callees: list[list[Callee]] = Field(default_factory=lambda: [[Callee()]], min_length=1)

    @model_validator(mode="after")
    def _fits(self) -> GeneratedRows:
        if len(str(int(self.first[1:]) + self.count - 1)) > 15:
            raise ValueError("first: counting up from it leaves E.164 (15 digits at most)")
        if any(not attempts for attempts in self.callees):
            raise ValueError("callees: each item lists at least one callee")
        return self

    def rows(self) -> list[BatchRow]:
        base = int(self.first[1:])
        return [
            BatchRow(
                to=f"+{base + i}",
                variables={k: v.replace("{n}", str(i + 1)) for k, v in self.variables.items()},
                timezone=self.timezone,
                callees=self.callees[i % len(self.callees)],
            )
            for i in range(self.count)
        ]


class BatchPacing(_Strict):
    calls_per_second: float = Field(default=1.0, gt=0, le=50)
    max_in_flight: int = Field(default=10, ge=1, le=1000)


class BatchHours(_Strict):
    """Local ``HH:MM`` times in the callee's zone (the row's ``timezone``, else this one)."""

    start: str = Field(pattern=r"^[0-2][0-9]:[0-5][0-9]$")
    end: str = Field(pattern=r"^[0-2][0-9]:[0-5][0-9]$")
    timezone: str | None = Field(default=None, min_length=1)


class BatchRetries(_Strict):
    no_answer: int = Field(default=0, ge=0, le=10)
    busy: int = Field(default=0, ge=0, le=10)
    delay_s: float = Field(default=600.0, ge=0)


class BatchExpectation(_Strict):
    """What should have happened to the batch; only stated fields are checked (the harness always checks the rest:
    each number called as its callees and the retries say, never outside calling hours by the simulated clock, the
    do-not-call numbers never dialled, the pacing and ``max_in_flight`` kept, retries ``delay_s`` apart)."""

    #: the batch's status at the end
    status: Literal["done", "running", "paused", "canceled"] = "done"
    #: the finished rows by outcome
    outcomes: dict[BatchOutcome, int] | None = None
    #: the rows refused when the batch was made (the do-not-call numbers among them)
    rejected: int | None = Field(default=None, ge=0)
    #: Twilio calls placed in all (retries included)
    calls: int | None = Field(default=None, ge=0)
    #: the simulated clock's time when the last call was placed is before this (ISO 8601 with its offset)
    last_call_before: datetime | None = None


class OutboundBatch(_Strict):
    """``twilio.batch``: one outbound batch made through ``POST /v1/outbound/batches`` and dialled by the
    controller's dialler while the simulated clock, from ``start``, runs the calling hours."""

    model_config = {**_Strict.model_config, "populate_by_name": True}

    name: str = Field(min_length=1)
    #: the simulated clock's start: an ISO 8601 time with its UTC offset (``2026-03-10T07:30:00-05:00``)
    start: datetime
    profile: str | None = Field(default=None, min_length=1)
    from_: str | None = Field(default=None, alias="from", pattern=E164)
    pacing: BatchPacing = BatchPacing()
    calling_hours: BatchHours | None = None
    retries: BatchRetries = BatchRetries()
    #: patterns added to the config's ``twilio.do_not_call`` for the run (its rows are refused, never dialled)
    do_not_call: list[Annotated[str, Field(pattern=r"^\+[0-9*?]{1,15}$")]] = Field(default_factory=list)
    rows: list[BatchRow] = Field(default_factory=list)
    generate: GeneratedRows | None = None
    expect: BatchExpectation = BatchExpectation()

    @model_validator(mode="after")
    def _consistent(self) -> OutboundBatch:
        if self.start.tzinfo is None:
            raise ValueError("start: give the UTC offset (e.g. 2026-03-10T07:30:00-05:00)")
        if not self.rows and self.generate is None:
            raise ValueError("a batch needs rows, generate, or both")
        seen: set[str] = set()
        for row in self.all_rows():
            if row.to in seen:
                raise ValueError(f"{row.to} is in the batch twice (rows and generate): a batch calls each number once")
            seen.add(row.to)
        return self

    def all_rows(self) -> list[BatchRow]:
        return list(self.rows) + (self.generate.rows() if self.generate is not None else [])

    def request(self) -> dict[str, Any]:
        """The ``POST /v1/outbound/batches`` body."""
        body: dict[str, Any] = {
            "rows": [
                {"to": r.to, "variables": dict(r.variables), **({"timezone": r.timezone} if r.timezone else {})}
                for r in self.all_rows()
            ],
            "pacing": self.pacing.model_dump(),
            "retries": self.retries.model_dump(),
        }
        if self.profile is not None:
            body["profile"] = self.profile
        if self.from_ is not None:
            body["from"] = self.from_
        if self.calling_hours is not None:
            body["calling_hours"] = self.calling_hours.model_dump(exclude_none=True)
        return body


class TwilioScenario(_Strict):
    """``twilio:`` in a scenario file: the account's ``numbers`` and the calls on them."""

    numbers: list[Annotated[str, Field(pattern=E164)]] = Field(default_factory=lambda: ["+18005550100"], min_length=1)
    outbound: list[OutboundCall] = Field(default_factory=list)
    inbound: list[InboundCall] = Field(default_factory=list)
    #: an outbound batch the controller dials (#16)
    batch: OutboundBatch | None = None

    @model_validator(mode="after")
    def _consistent(self) -> TwilioScenario:
        if not self.outbound and not self.inbound and self.batch is None:
            raise ValueError("twilio: declare at least one outbound or inbound call, or a batch")
        owned = set(self.numbers)
        for i, call in enumerate(self.inbound):
            if call.to not in owned:
                raise ValueError(
                    f"inbound[{i}] ({call.name}).to: {call.to} is not one of the account's numbers "
                    f"({', '.join(self.numbers)})"
                )
        for i, out in enumerate(self.outbound):
            if out.from_ is not None and out.from_ not in owned:
                raise ValueError(
                    f"outbound[{i}] ({out.name}).from: {out.from_} is not one of the account's numbers "
                    f"({', '.join(self.numbers)})"
                )
        return self

    @property
    def names(self) -> list[str]:
        batch = [self.batch.name] if self.batch is not None else []
        return [call.name for call in self.outbound] + [call.name for call in self.inbound] + batch


class Scenario(_Strict):
    """A named set of calls: ``{name, description, config, calls: [CallSpec, ...]}``.

    ``config`` names the controller config the scenario was written for (a path relative to the scenario file;
    :func:`load_scenario` makes it absolute). ``sipctl simulate`` uses it unless ``--config`` is given.
    """

    name: str = Field(min_length=1)
    description: str = ""
    config: str | None = Field(default=None, min_length=1)
    calls: list[CallSpec] = Field(default_factory=list)
    #: Twilio calls: outbound ones placed through the controller, inbound ones to the account's numbers
    twilio: TwilioScenario | None = None

    @property
    def config_path(self) -> Path | None:
        return Path(self.config) if self.config is not None else None

    @model_validator(mode="after")
    def _unique_names(self) -> Scenario:
        if not self.calls and self.twilio is None:
            raise ValueError("calls: field required (a scenario needs calls, or twilio calls)")
        seen: set[str] = set()
        for name in [call.name for call in self.calls] + (self.twilio.names if self.twilio is not None else []):
            if name in seen:
                raise ValueError(f"call names must be unique: {name!r} appears twice")
            seen.add(name)
        return self


def _where(loc: tuple[int | str, ...], data: object) -> str:
    """``("calls", 0, "steps", 1, "sya")`` -> ``calls[0] (goodbye).steps[1].sya``."""
    out = ""
    node: object = data
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            node = node[part] if isinstance(node, list) and 0 <= part < len(node) else None
            named = isinstance(node, dict) and isinstance(node.get("name"), str)
            if named and isinstance(node, dict) and out.startswith("calls[") and out.count("[") == 1:
                out += f" ({node['name']})"
        else:
            out += f".{part}" if out else part
            node = node.get(part) if isinstance(node, dict) else None
    return out or "(top level)"


def format_validation_error(exc: ValidationError, data: object, source: str) -> str:
    lines = [
        f"{source}: invalid scenario ({exc.error_count()} problem{'s' if exc.error_count() != 1 else ''})"
    ]
    for err in exc.errors(include_url=False):
        message = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown field"
        elif err["type"] == "missing":
            message = "field required"
        lines.append(f"  {_where(tuple(err['loc']), data)}: {message}")
    return "\n".join(lines)


def parse_scenario(data: object, source: str = "<scenario>") -> Scenario:
    """Validate already-parsed YAML/JSON data; raises :class:`ScenarioError`."""
    if not isinstance(data, dict):
        raise ScenarioError(f"{source}: a scenario must be a mapping with name and calls")
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError(format_validation_error(exc, data, source)) from None


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario YAML file; raises :class:`ScenarioError` naming the bad fields. A relative
    ``config`` is resolved against the scenario file's folder."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(f"{file}: cannot read scenario: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ScenarioError(yaml_problem(file, exc)) from None
    scenario = parse_scenario(data, str(file))
    if scenario.config is not None:
        config = (file.parent / scenario.config).resolve()
        scenario = scenario.model_copy(update={"config": str(config)})
    return scenario
