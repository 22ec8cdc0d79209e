"""The Twilio calls the store keeps (#16): plain data in and out of ``create_twilio_call``, ``get_twilio_call``,
``update_twilio_call``, ``link_twilio_call`` and ``set_twilio_park`` (both backends; the SQL is in each backend's
module)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from sip_controller.state.records import StoreError

#: how long the sweep keeps a Twilio call after it was made (``created_at``, indexed): ``GET /v1/outbound/{id}``
#: answers for it, its Idempotency-Key places nothing new, a late callback (a recording) still finds it. A Twilio
#: call lasts at most a day, so a week-old row is over whatever its last status said.
KEEP_TWILIO_CALLS_S = 7 * 86_400.0
#: a status after which Twilio's call is over: a late callback with an earlier status does not replace it
FINAL_STATUSES = ("completed", "busy", "no-answer", "canceled", "failed")
TWILIO_CALL_COLUMNS = (
    "id, correlation, direction, call_sid, idempotency_key, request_hash, profile, from_number, to_number, "
    "variables, status, answered_by, error_code, call_id, events, park, created_at, updated_at"
)
#: the ``ended_reason`` of an OpenAI leg that ended while its Twilio call was parked on a hold: the call goes on,
#: so history leaves the row out until ``close_parked`` gives it the call's real end
PARKED = "parked"
#: the ``ended_reason`` of a later leg of a parked call once the call's report is on its first leg's row: history
#: lists the call once, by its first leg
MERGED = "merged"


class CorrelationTaken(StoreError):
    """``set_twilio_park`` gave a Twilio call a correlation id another Twilio call has (nothing written)."""


@dataclass(frozen=True)
class NewTwilioCall:
    """A Twilio call as first written: when its voice webhook arrives (inbound) or before it is placed (outbound)."""

    id: str
    correlation: str
    direction: Literal["inbound", "outbound"]
    status: str
    call_sid: str | None = None
    idempotency_key: str | None = None
    #: a digest of the outbound request: the same idempotency key with another request is refused
    request_hash: str | None = None
    profile: str | None = None
    from_number: str | None = None
    to_number: str | None = None
    variables: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TwilioCallRow:
    id: str
    correlation: str
    direction: str
    call_sid: str | None
    idempotency_key: str | None
    request_hash: str | None
    profile: str | None
    from_number: str | None
    to_number: str | None
    variables: dict[str, str]
    status: str
    answered_by: str | None
    error_code: int | None
    #: the OpenAI call it became (or, for a call that never reached OpenAI, the id its report carries)
    call_id: str | None
    #: the status callbacks, in the order they arrived
    events: list[dict[str, Any]]
    #: what the controller keeps while the call is parked on a hold (opaque JSON); None when it is not parked
    park: dict[str, Any] | None
    created_at: float
    updated_at: float

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES


def twilio_call_row(row: Any, load: Callable[[Any], Any]) -> TwilioCallRow:
    return TwilioCallRow(
        id=row["id"],
        correlation=row["correlation"],
        direction=row["direction"],
        call_sid=row["call_sid"],
        idempotency_key=row["idempotency_key"],
        request_hash=row["request_hash"],
        profile=row["profile"],
        from_number=row["from_number"],
        to_number=row["to_number"],
        variables=dict(load(row["variables"])),
        status=row["status"],
        answered_by=row["answered_by"],
        error_code=row["error_code"],
        call_id=row["call_id"],
        events=list(load(row["events"])),
        park=None if row["park"] is None else dict(load(row["park"])),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def lookup(id: str | None, correlation: str | None, call_sid: str | None) -> tuple[str, str]:
    """The one column ``get_twilio_call`` looks a row up by, and its value."""
    given = [(name, value) for name, value in (("id", id), ("correlation", correlation), ("call_sid", call_sid))
             if value is not None]  # fmt: skip
    if len(given) != 1:
        raise ValueError("look a Twilio call up by exactly one of id, correlation and call_sid")
    return given[0]


def closing_changes(
    *, ended_reason: str, report: object, summary: Mapping[str, Any], cost_usd: float | None, ended_at: float | None,
    now: float,
) -> dict[str, Any]:
    """The ``calls`` columns ``close_parked`` sets (both backends; ``report`` already in the backend's form, and
    ``summary`` the history's ``finish_columns``). ValueError for the reason ``parked``: the row would stay parked."""
    if ended_reason == PARKED:
        raise ValueError("close a parked leg with the reason the call ended, not 'parked'")
    # the report is new, so retention keeps its transcript for the usual time again
    changes: dict[str, Any] = {
        "ended_reason": ended_reason, "report": report, "transcript_stripped_at": None, "updated_at": now, **summary,
    }  # fmt: skip
    if cost_usd is not None:
        changes["cost_usd"] = cost_usd
    if ended_at is not None:
        changes["ended_at"] = ended_at
    return changes
