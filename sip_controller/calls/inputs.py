"""What the call machine takes in: one dataclass per kind of input, and their union ``Input``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sip_controller.realtime import events as ev


@dataclass(frozen=True)
class Start:
    pass


@dataclass(frozen=True)
class AcceptOk:
    #: OpenAI answered 400 ``call_already_accepted`` to a retry after our own earlier accept went unanswered
    #: (timeout, reset, 5xx): that accept went through, and the call is ours (we hold its claim)
    already_accepted: bool = False


@dataclass(frozen=True)
class AcceptFailed:
    gone: bool
    detail: str
    #: OpenAI refused the body (400): the config is wrong, and the caller must not be left ringing
    invalid: bool = False
    #: why retrying stopped (the ring budget ran out, a Retry-After past it, an error not worth retrying)
    why: str = ""


@dataclass(frozen=True)
class Attached:
    pass


@dataclass(frozen=True)
class AttachFailed:
    gone: bool
    detail: str


@dataclass(frozen=True)
class SidebandEvent:
    event: ev.ServerEvent


@dataclass(frozen=True)
class SidebandClosed:
    code: int | None
    reason: str = ""


@dataclass(frozen=True)
class TimerFired:
    name: str


@dataclass(frozen=True)
class HangupOk:
    #: hangup requests sent for this answer (quick retries included)
    attempts: int = 1


@dataclass(frozen=True)
class HangupFailed:
    gone: bool
    detail: str
    attempts: int = 1


@dataclass(frozen=True)
class Shutdown:
    """The process is draining: wrap up politely and hang up (``now``: the wrap-up took too long; hang up at once
    and keep retrying the hangup until OpenAI confirms it)."""

    now: bool = False


@dataclass(frozen=True)
class ToolDone:
    """An operator tool (HTTP, Python) answered; ``output`` goes to the model as the function output."""

    call_id: str
    ok: bool
    output: str
    duration_s: float
    outcome: str = "ok"
    #: live-control actions the answer carried (#17: ``calls/features/control.py``), and why they were refused
    actions: tuple[OperatorSay | OperatorContext | OperatorMute, ...] = ()
    actions_problem: str = ""


@dataclass(frozen=True)
class ReferOk:
    """The transfer was handed over: OpenAI's ``/refer`` answered 2xx (``openai``), or, on a call Twilio bridged,
    Twilio took the redirect of its call to the target (``twilio``, #16). Either way it counts once the call
    leaves OpenAI."""

    via: Literal["openai", "twilio"] = "openai"


@dataclass(frozen=True)
class ReferFailed:
    detail: str


@dataclass(frozen=True)
class ParkOk:
    """Twilio took the call off its ``<Dial>`` into OpenAI onto the parking TwiML (#16): the OpenAI leg ends."""


@dataclass(frozen=True)
class ParkFailed:
    """The call could not be parked (not a Twilio call here, Twilio refused, the store away): it stays on hold
    mode in this session."""

    detail: str


@dataclass(frozen=True)
class OperatorTransfer:
    """An operator asked for the caller to be transferred to an allow-listed target."""

    target: str


@dataclass(frozen=True)
class MachineDetection:
    """Twilio's answering-machine detection on a call we placed (#16): ``answered_by`` as Twilio sends it
    (``human``, ``machine_start``, ``machine_end_beep``/``_silence``/``_other``, ``fax``, ``unknown``)."""

    answered_by: str


@dataclass(frozen=True)
class OperatorHangup:
    """An operator asked for the call to end: politely (goodbye first) or at once."""

    now: bool = False


@dataclass(frozen=True)
class OperatorSay:
    """Have the model say exactly ``text`` (#17): ``now`` (what it is saying is cut off) or ``next`` (after the
    answer in progress). ``source``: ``operator`` (the admin API, the console) or ``tool`` (an HTTP tool's answer)."""

    text: str
    when: str = "now"
    source: str = "operator"


@dataclass(frozen=True)
class OperatorContext:
    """Add a system message the model sees from now on (#17)."""

    text: str
    source: str = "operator"


@dataclass(frozen=True)
class OperatorMute:
    """``muted``: the agent stops answering on its own (the caller is still heard and transcribed); False: it
    answers again (#17)."""

    muted: bool
    source: str = "operator"


Input = (
    Start
    | AcceptOk
    | AcceptFailed
    | Attached
    | AttachFailed
    | SidebandEvent
    | SidebandClosed
    | TimerFired
    | HangupOk
    | HangupFailed
    | Shutdown
    | ToolDone
    | ReferOk
    | ReferFailed
    | ParkOk
    | ParkFailed
    | OperatorHangup
    | OperatorTransfer
    | MachineDetection
    | OperatorSay
    | OperatorContext
    | OperatorMute
)
