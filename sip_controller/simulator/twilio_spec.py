"""What the Twilio stand-in is scripted with: who answers a number it calls (:class:`Callee`), and the Twilio
calls a scenario file declares (:class:`TwilioScenario`: outbound calls placed through the controller, inbound
calls to one of the account's numbers).

A callee's outcome decides the status callbacks (``StatusCallbackEvent`` ``initiated``/``ringing``/``answered``/
``completed``; the last one's ``CallStatus`` is the outcome):

===================== ====================================================================== =================
outcome               what happens                                                           final CallStatus
===================== ====================================================================== =================
answer                rings ``ring_seconds``, a person answers; once bridged to OpenAI the   completed
                      person follows ``steps`` (the OpenAI leg's script)
busy                  refused at once (SIP 486), no ringing                                  busy
no_answer             rings until the call's ``Timeout`` (or ``ring_seconds`` if shorter)    no-answer
failed                the carrier refuses the call (``error_code``, ``sip_response_code``)   failed
voicemail             answers after ``ring_seconds``; the greeting plays, then a beep (AMD   completed
                      ``machine_end_beep``); what is said after the beep is the message
fax                   answers with a fax tone (AMD ``fax``), hangs up after a few seconds    completed
hangup_while_ringing  rings ``ring_seconds``, then declines (SIP 603)                        busy
===================== ====================================================================== =================

Durations are nominal seconds, multiplied by the simulator's ``time_scale``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from .scenario import E164, CallSpec, Expectation, Step, _Strict

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
    #: what should happen on the OpenAI leg (checked like a call's ``expect``)
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

    def leg_spec(self, name: str, caller: str, dialed: str, ring_timeout: float) -> CallSpec:
        """The OpenAI leg's script: the person's ``steps``; a machine listens silently until it hangs up."""
        machine = self.outcome in ("voicemail", "fax")
        limit = self.max_message_seconds if self.outcome == "voicemail" else self.max_call_seconds
        return CallSpec(
            name=name,
            caller=caller,
            dialed=dialed,
            ring_timeout=ring_timeout,
            steps=[] if machine else list(self.steps),
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


class OutboundCall(_Strict):
    """A call the controller places (``POST /v1/outbound``) to ``to``, answered by ``callee``."""

    model_config = {**_Strict.model_config, "populate_by_name": True}

    name: str = Field(min_length=1)
    to: str = Field(pattern=E164)
    from_: str | None = Field(default=None, alias="from", pattern=E164)
    profile: str | None = Field(default=None, min_length=1)
    variables: dict[str, str] = Field(default_factory=dict)
    callee: Callee = Callee()
    expect: TwilioExpectation | None = None


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

    def leg_spec(self, name: str, ring_timeout: float) -> CallSpec:
        return CallSpec(
            name=name,
            caller=self.from_,
            dialed=self.to,
            ring_timeout=ring_timeout,
            steps=list(self.steps),
            max_call_seconds=self.max_call_seconds,
            expect=self.openai,
        )


class TwilioScenario(_Strict):
    """``twilio:`` in a scenario file: the account's ``numbers`` and the calls on them."""

    numbers: list[Annotated[str, Field(pattern=E164)]] = Field(default_factory=lambda: ["+18005550100"], min_length=1)
    outbound: list[OutboundCall] = Field(default_factory=list)
    inbound: list[InboundCall] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> TwilioScenario:
        if not self.outbound and not self.inbound:
            raise ValueError("twilio: declare at least one outbound or inbound call")
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
        return [call.name for call in self.outbound] + [call.name for call in self.inbound]
