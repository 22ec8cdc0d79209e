"""What the call machine gives out: one dataclass per kind of action, and their union ``Action``. The
supervisor executes them in order."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sip_controller.calls.states import EndedReason


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
class HangingUp:
    """The hangup is not confirmed yet: it is tried again in ``retry_in_s`` (a ``StartTimer`` follows). The
    supervisor tells the store (state ``hanging_up``, ``wake_at``) so that any replica can finish the hangup if
    this process goes away."""

    retry_in_s: float
    attempts: int


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


@dataclass(frozen=True)
class EndTwilioCall:
    """Hang up the call's Twilio side through Twilio's Calls API (``Status=completed``): the line to an answering
    machine drops at once, whatever OpenAI's side is still doing (#16)."""


@dataclass(frozen=True)
class Park:
    """Park the call on Twilio (#16): the Calls API moves the Twilio call off its ``<Dial>`` into OpenAI (the
    OpenAI leg ends) onto TwiML that listens for a person; the answer comes back as ``ParkOk`` or ``ParkFailed``.
    ``reason``: what the call waits for (the open task, for the next leg's instructions)."""

    expected_min: float
    reason: str


Action = (
    Accept | Attach | Reattach | Send | Hangup | HangingUp | Reject | RunTool | Refer | StartTimer | CancelTimer
    | Finish | EndTwilioCall | Park
)
