"""What the call state machine takes in and gives out: inputs, actions, states, reasons, timer names."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

from sip_controller.realtime import events as ev

EndedReason = Literal[
    "caller_hangup",
    "agent_end_call",
    "transferred",
    "transfer_failed",
    "max_duration",
    "silence_timeout",
    "budget_exceeded",
    "session_error",
    "accept_failed",
    "rejected",
    "shutdown",
    "operator_hangup",
]

#: Sideband error codes that say something about one request, not about the session being broken.
BENIGN_ERROR_CODES = frozenset(
    {"response_cancel_not_active", "conversation_already_has_active_response", "rate_limit_exceeded"}
)

GOODBYE_INSTRUCTIONS = (
    "Say a short, warm goodbye to the caller in one sentence, in the language of the conversation. "
    "Do not ask anything and do not call any tool."
)
SHUTDOWN_INSTRUCTIONS = (
    "The line has to close now for maintenance. Apologise briefly, invite the caller to call back, and say "
    "goodbye in one or two sentences. Do not call any tool."
)


class CallState(StrEnum):
    RECEIVED = "received"
    ACCEPTING = "accepting"
    ACCEPTED = "accepted"
    ATTACHED = "attached"
    ENDING = "ending"
    ENDED = "ended"
    REJECTED = "rejected"
    FAILED = "failed"


# ---- inputs -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Start:
    pass


@dataclass(frozen=True)
class AcceptOk:
    pass


@dataclass(frozen=True)
class AcceptFailed:
    gone: bool
    detail: str
    #: OpenAI refused the body (400): the config is wrong, and the caller must not be left ringing
    invalid: bool = False


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
    pass


@dataclass(frozen=True)
class HangupFailed:
    gone: bool
    detail: str


@dataclass(frozen=True)
class Shutdown:
    """The process is draining: wrap up politely and hang up."""


@dataclass(frozen=True)
class ToolDone:
    """An operator tool (HTTP, Python) answered; ``output`` goes to the model as the function output."""

    call_id: str
    ok: bool
    output: str
    duration_s: float
    outcome: str = "ok"


@dataclass(frozen=True)
class ReferOk:
    pass


@dataclass(frozen=True)
class ReferFailed:
    detail: str


@dataclass(frozen=True)
class OperatorTransfer:
    """An operator asked for the caller to be transferred to an allow-listed target."""

    target: str


@dataclass(frozen=True)
class OperatorHangup:
    """An operator asked for the call to end: politely (goodbye first) or at once."""

    now: bool = False


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
    | OperatorHangup
    | OperatorTransfer
)

# ---- actions ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Accept:
    body: dict[str, Any]


@dataclass(frozen=True)
class Attach:
    pass


@dataclass(frozen=True)
class Send:
    event: dict[str, Any]


@dataclass(frozen=True)
class Hangup:
    pass


@dataclass(frozen=True)
class StartTimer:
    name: str
    seconds: float


@dataclass(frozen=True)
class CancelTimer:
    name: str


@dataclass(frozen=True)
class Finish:
    reason: EndedReason


@dataclass(frozen=True)
class Reattach:
    """The sideband dropped while the call may still be up: open it again (bounded retries)."""


@dataclass(frozen=True)
class Reject:
    status_code: int


@dataclass(frozen=True)
class RunTool:
    """Run an operator tool; the answer comes back as ToolDone."""

    call_id: str
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class Refer:
    target_uri: str


Action = Accept | Attach | Reattach | Send | Hangup | Reject | RunTool | Refer | StartTimer | CancelTimer | Finish

#: sideband reconnects allowed per call before giving up and hanging up through REST
MAX_RECONNECTS = 3

GOODBYE_TIMER = "goodbye"
CLOSE_WAIT_TIMER = "close_wait"
SESSION_ACK_TIMER = "session_ack"

TRANSFER_ANNOUNCE_TIMER = "transfer_announce"
TRANSFER_VERIFY_TIMER = "transfer_verify"
MAX_WRAP_TIMER = "max_duration_wrap_up"
MAX_END_TIMER = "max_duration_end"
SILENCE_TIMER = "silence"
HOLD_MAX_TIMER = "hold_max"
DTMF_FLUSH_TIMER = "dtmf_flush"
HANGUP_RETRY_TIMER = "hangup_retry"
#: rounds of (already retried) hangup requests before a call is given up as unconfirmed
MAX_HANGUP_ROUNDS = 5
FILLER_TIMER_PREFIX = "filler:"
